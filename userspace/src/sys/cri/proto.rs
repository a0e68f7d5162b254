//! The few protobuf (proto3 wire format) messages the CRI calls need,
//! encoded and decoded by hand: varints, length-delimited fields, and maps
//! as repeated `{1: key, 2: value}` entries.

/// A message being written.
#[derive(Debug, Default, Clone)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    fn length_delimited(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    /// A string field (proto3 leaves out the empty string).
    pub fn string(&mut self, field: u32, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.length_delimited(field, value.as_bytes());
        }
        self
    }

    /// An integer or bool field (proto3 leaves out zero).
    pub fn uint(&mut self, field: u32, value: u64) -> &mut Self {
        if value != 0 {
            self.key(field, 0);
            self.varint(value);
        }
        self
    }

    /// An embedded message (always written: its presence matters).
    pub fn message(&mut self, field: u32, message: &Writer) -> &mut Self {
        self.length_delimited(field, &message.0)
    }

    /// A `map<string, string>` field.
    pub fn map<'a>(&mut self, field: u32, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> &mut Self {
        for (key, value) in entries {
            let mut entry = Writer::new();
            entry.string(1, key).string(2, value);
            self.message(field, &entry);
        }
        self
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct Malformed(&'static str);

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// A received message: its fields in wire order.
#[derive(Debug)]
pub struct Message<'a>(Vec<(u32, Value<'a>)>);

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(Malformed("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed("varint longer than 10 bytes"))
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], Malformed> {
    let end = at.checked_add(len).filter(|end| *end <= bytes.len()).ok_or(Malformed("truncated field"))?;
    let slice = &bytes[*at..end];
    *at = end;
    Ok(slice)
}

impl<'a> Message<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Malformed> {
        let mut fields = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let key = read_varint(bytes, &mut at)?;
            let field = u32::try_from(key >> 3).map_err(|_| Malformed("field number too large"))?;
            let value = match key & 7 {
                0 => Value::Varint(read_varint(bytes, &mut at)?),
                1 => take(bytes, &mut at, 8).map(|_| Value::Fixed)?,
                2 => {
                    let len = read_varint(bytes, &mut at)?;
                    Value::Bytes(take(bytes, &mut at, usize::try_from(len).unwrap_or(usize::MAX))?)
                }
                5 => take(bytes, &mut at, 4).map(|_| Value::Fixed)?,
                _ => return Err(Malformed("unknown wire type")),
            };
            fields.push((field, value));
        }
        Ok(Self(fields))
    }

    fn last(&self, field: u32) -> Option<Value<'a>> {
        self.0.iter().rev().find(|(f, _)| *f == field).map(|(_, v)| *v)
    }

    /// A string field; empty when absent (or not text).
    pub fn string(&self, field: u32) -> String {
        match self.last(field) {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        }
    }

    /// An integer or enum field; 0 when absent.
    pub fn uint(&self, field: u32) -> u64 {
        match self.last(field) {
            Some(Value::Varint(v)) => v,
            _ => 0,
        }
    }

    /// An embedded message; empty when absent.
    pub fn message(&self, field: u32) -> Result<Message<'a>, Malformed> {
        match self.last(field) {
            Some(Value::Bytes(b)) => Message::parse(b),
            _ => Ok(Message(Vec::new())),
        }
    }

    /// Every occurrence of a repeated message field.
    pub fn messages(&self, field: u32) -> Result<Vec<Message<'a>>, Malformed> {
        self.0
            .iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| match v {
                Value::Bytes(b) => Message::parse(b),
                _ => Err(Malformed("a message field holds a number")),
            })
            .collect()
    }

    /// A `map<string, string>` field.
    pub fn map(&self, field: u32) -> Result<Vec<(String, String)>, Malformed> {
        Ok(self.messages(field)?.iter().map(|e| (e.string(1), e.string(2))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let mut inner = Writer::new();
        inner.string(1, "web").uint(4, 300);
        let mut outer = Writer::new();
        outer.message(1, &inner).map(6, [("app", "web")]).uint(2, 1).string(3, "");
        let bytes = outer.into_bytes();
        let message = Message::parse(&bytes).unwrap();
        let inner = message.message(1).unwrap();
        assert_eq!((inner.string(1), inner.uint(4)), ("web".to_owned(), 300));
        assert_eq!(message.map(6).unwrap(), vec![("app".to_owned(), "web".to_owned())]);
        assert_eq!((message.uint(2), message.string(3)), (1, String::new()));
        // 300 is the varint ac 02.
        assert_eq!(&Writer::new().uint(4, 300).clone().into_bytes(), &[0x20, 0xac, 0x02]);
    }

    #[test]
    fn truncated_or_odd_input_is_an_error_not_a_panic() {
        for bytes in [&[0x0a, 5, b'a'][..], &[0x80; 11], &[0x0b], &[0x09, 1, 2]] {
            assert!(Message::parse(bytes).is_err(), "{bytes:?}");
        }
    }
}
