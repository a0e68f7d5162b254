//! /proc/PID/mountinfo, read as the bytes the kernel writes: paths are
//! decoded the way the kernel encodes them (`\040` space, `\011` tab,
//! `\012` newline, `\134` backslash) and may be any bytes, not only UTF-8.
//! (procfs's parser keeps the escapes and refuses a whole table that has
//! one non-UTF-8 path, so one odd mount anywhere would hide every name.)

use std::{
    ffi::OsString,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::PathBuf,
};

/// One mount, with just the fields nstrail needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount's root within its file system (`net:[4026532177]` for nsfs).
    pub root: OsString,
    /// Where it is mounted, in the mount namespace of the process read.
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// The mounts of process `pid` (its mount namespace's table).
pub fn of_process(pid: u32) -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read(format!("/proc/{pid}/mountinfo"))?))
}

/// Parses mountinfo text; lines that do not have the documented shape
/// (proc(5)) are skipped.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|b| *b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<Mount> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    // id parent major:minor root mount-point options [optional...] - type source super-options
    let separator = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let fs_type = fields.get(separator + 1)?;
    Some(Mount {
        root: OsString::from_vec(unescape(fields.get(3)?)),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
        fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
    })
}

/// Undoes the kernel's `\ooo` octal escapes (show_mountinfo's mangle()).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |n, d| n.wrapping_mul(8).wrapping_add(d - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// The root of an nsfs mount of a network namespace: its inode.
pub fn nsfs_net_inode(root: &std::ffi::OsStr) -> Option<u32> {
    std::str::from_utf8(root.as_bytes()).ok()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escaped_and_non_utf8_paths() {
        let text = b"36 35 0:4 net:[4026532177] /run/netns/rt\\040sp rw shared:5 - nsfs nsfs rw\n\
                     37 35 0:4 net:[4026532178] /run/netns/a\\012b\\134c rw - nsfs nsfs rw\n\
                     38 35 0:4 net:[4026532179] /run/netns/\xff\xfe rw - nsfs nsfs rw\n\
                     garbage\n\
                     22 1 0:21 / /proc rw,nosuid - proc proc rw\n";
        let mounts = parse(text);
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        assert_eq!(mounts[0].mount_point, PathBuf::from("/run/netns/rt sp"));
        assert_eq!(nsfs_net_inode(&mounts[0].root), Some(4026532177));
        assert_eq!(mounts[0].fs_type, "nsfs");
        assert_eq!(mounts[1].mount_point, PathBuf::from("/run/netns/a\nb\\c"));
        assert_eq!(mounts[2].mount_point.as_os_str().as_bytes(), b"/run/netns/\xff\xfe");
        assert_eq!((mounts[3].fs_type.as_str(), nsfs_net_inode(&mounts[3].root)), ("proc", None));
    }

    #[test]
    fn reads_its_own_table() {
        let mounts = of_process(std::process::id()).unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == std::path::Path::new("/")), "{mounts:?}");
    }
}
