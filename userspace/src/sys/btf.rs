//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): just enough
//! to find struct members and their byte offsets, so probe offsets come from
//! the running kernel rather than the machine the probes were built on.
//!
//! Format: Documentation/bpf/btf.rst in the kernel tree.

use std::collections::HashMap;

/// Where the running kernel exposes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data is truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("the kernel's BTF has no struct {0}")]
    NoSuchStruct(String),
    #[error("the kernel's struct {strukt} has no member {member}")]
    NoSuchMember { strukt: String, member: String },
    #[error("member {0} is a bitfield or not byte aligned")]
    NotByteAligned(String),
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union, with its members.
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: look through to `target`.
    Alias {
        target: u32,
    },
    Other,
}

/// Parsed BTF: the types needed to resolve member offsets.
pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or(BtfError::Truncated(at))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Truncated(at))
}

fn string_at(strings: &[u8], offset: u32) -> String {
    let start = offset as usize;
    let Some(tail) = strings.get(start..) else {
        return String::new();
    };
    let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

impl Btf {
    /// Parses little-endian BTF as the kernel exposes it.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated(hdr_len + str_off + str_len))?;
        if data.len() < types_end {
            return Err(BtfError::Truncated(types_end));
        }

        let mut types = vec![Type::Other];
        let mut structs_by_name = HashMap::new();
        let mut at = types_start;
        while at < types_end {
            let id = types.len() as u32;
            let name_off = u32_at(data, at)?;
            let info = u32_at(data, at + 4)?;
            let size_or_type = u32_at(data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let offset = u32_at(data, at + 8)?;
                        members.push(Member {
                            name: string_at(strings, u32_at(data, at)?),
                            type_id: u32_at(data, at + 4)?,
                            // With kind_flag the top 8 bits hold a bitfield size.
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                        });
                        at += 12;
                    }
                    let name = string_at(strings, name_off);
                    if kind == KIND_STRUCT && !name.is_empty() {
                        structs_by_name.entry(name.clone()).or_insert(id);
                    }
                    Type::Composite { size: size_or_type, members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { target: size_or_type }
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    at += 12;
                    Type::Other
                }
                KIND_ENUM | KIND_FUNC_PROTO => {
                    at += 8 * vlen;
                    Type::Other
                }
                KIND_DATASEC | KIND_ENUM64 => {
                    at += 12 * vlen;
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other,
                _ => return Err(BtfError::UnknownKind { id, kind }),
            };
            types.push(ty);
        }
        Ok(Self { types, structs_by_name })
    }

    /// Byte offset of a member of `strukt`, following a dotted path through
    /// nested structs (`"ns.inum"`) and anonymous structs and unions.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut type_id = *self.structs_by_name.get(strukt).ok_or_else(|| BtfError::NoSuchStruct(strukt.to_owned()))?;
        let mut bits = 0u32;
        for part in path.split('.') {
            let (member_bits, member_type) = self
                .find_member(type_id, part)
                .ok_or_else(|| BtfError::NoSuchMember { strukt: strukt.to_owned(), member: path.to_owned() })?;
            bits += member_bits;
            type_id = member_type;
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::NotByteAligned(format!("{strukt}.{path}")));
        }
        Ok(bits / 8)
    }

    /// The first of `paths` that `strukt` has (fields get renamed between
    /// kernels), with the path that matched.
    pub fn first_member_offset<'p>(&self, strukt: &str, paths: &[&'p str]) -> Result<(u32, &'p str), BtfError> {
        let mut last = BtfError::NoSuchStruct(strukt.to_owned());
        for path in paths {
            match self.member_offset(strukt, path) {
                Ok(offset) => return Ok((offset, path)),
                Err(err) => last = err,
            }
        }
        Err(match last {
            BtfError::NoSuchMember { .. } => {
                BtfError::NoSuchMember { strukt: strukt.to_owned(), member: paths.join(" or ") }
            }
            other => other,
        })
    }

    /// Size in bytes of a named struct.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = self.structs_by_name.get(strukt).ok_or_else(|| BtfError::NoSuchStruct(strukt.to_owned()))?;
        match &self.types[*id as usize] {
            Type::Composite { size, .. } => Ok(*size),
            _ => Err(BtfError::NoSuchStruct(strukt.to_owned())),
        }
    }

    fn resolve(&self, mut id: u32) -> u32 {
        // Alias chains are short; the bound guards against malformed loops.
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// (bit offset, type id) of `name` in composite `id`, looking into
    /// anonymous members.
    fn find_member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.types.get(self.resolve(id) as usize)? else {
            return None;
        };
        for member in members {
            if member.name == name {
                return Some((member.bit_offset, member.type_id));
            }
        }
        for member in members.iter().filter(|m| m.name.is_empty()) {
            if let Some((bits, ty)) = self.find_member(member.type_id, name) {
                return Some((member.bit_offset + bits, ty));
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests, type by type.
    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size: u32) -> u32 {
            let name_off = self.string(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for v in [name_off, info, size] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub fn ptr(&mut self, target: u32) -> u32 {
            self.header("", KIND_PTR, 0, false, target)
        }

        pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, 0, false, target)
        }

        /// `members`: (name, type id, bit offset).
        pub fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let id = self.header(name, kind, members.len() as u32, false, size);
            for (member, ty, bits) in members {
                let off = self.string(member);
                for v in [off, *ty, *bits] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }

        pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, name, size, members)
        }

        pub fn union(&mut self, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_UNION, "", size, members)
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            let hdr_len = 24u32;
            for v in [hdr_len, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let uint = b.int("unsigned int", 4);
        let u64t = b.int("long long unsigned int", 8);
        let refcount = b.strukt("refcount_struct", 4, &[("refs", int, 0)]);
        let refcount_t = b.typedef("refcount_t", refcount);
        let ns_common = b.strukt(
            "ns_common",
            32,
            &[
                ("ns_type", uint, 0),
                ("stashed", u64t, 64),
                ("ops", u64t, 128),
                ("inum", uint, 192),
                ("__ns_ref", refcount_t, 224),
            ],
        );
        let anon = b.union(8, &[("net_cookie", u64t, 0), ("alias", u64t, 0)]);
        let _net = b.strukt("net", 128, &[("passive", refcount_t, 0), ("ns", ns_common, 64), ("", anon, 512)]);
        let task = b.strukt("task_struct", 64, &[("pid", int, 32), ("tgid", int, 64)]);
        let _ = b.ptr(task);
        Btf::parse(&b.build()).expect("sample BTF parses")
    }

    #[test]
    fn finds_nested_member_offsets() {
        let btf = sample();
        assert_eq!(btf.member_offset("net", "ns.inum"), Ok(8 + 24));
        assert_eq!(btf.member_offset("net", "ns.__ns_ref"), Ok(8 + 28));
        assert_eq!(btf.member_offset("task_struct", "tgid"), Ok(8));
    }

    #[test]
    fn looks_into_anonymous_unions() {
        assert_eq!(sample().member_offset("net", "net_cookie"), Ok(64));
    }

    #[test]
    fn first_member_offset_takes_the_name_this_kernel_has() {
        let btf = sample();
        assert_eq!(btf.first_member_offset("net", &["ns.count", "ns.__ns_ref"]), Ok((36, "ns.__ns_ref")));
        assert_eq!(
            btf.first_member_offset("net", &["ns.count", "count"]),
            Err(BtfError::NoSuchMember { strukt: "net".into(), member: "ns.count or count".into() })
        );
    }

    #[test]
    fn reports_missing_structs_and_members() {
        let btf = sample();
        assert_eq!(btf.member_offset("nope", "x"), Err(BtfError::NoSuchStruct("nope".into())));
        assert!(matches!(btf.member_offset("net", "ns.missing"), Err(BtfError::NoSuchMember { .. })));
        assert_eq!(btf.struct_size("net"), Ok(128));
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert_eq!(Btf::parse(&[0u8; 4]).err(), Some(BtfError::BadHeader));
        let mut blob = BtfBuilder::new();
        blob.int("int", 4);
        let data = blob.build();
        assert!(matches!(Btf::parse(&data[..30]), Err(BtfError::Truncated(_))));
    }
}
