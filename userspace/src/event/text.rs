//! Turning what came from the system into text: bytes into lossless strings
//! for events, and strings into text that is safe to print on a terminal.

use std::borrow::Cow;

/// Text of raw bytes: valid UTF-8 kept, every other byte written `\xNN`,
/// and a backslash written `\\`, so nothing is dropped and escapes are
/// unambiguous.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A path as event text (see [`escape_bytes`]).
pub fn path_text(path: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    match path.to_str() {
        Some(text) if !text.contains('\\') => text.to_owned(),
        _ => escape_bytes(path.as_os_str().as_bytes()),
    }
}

/// Whether a terminal could act on this character instead of showing it:
/// C0 and C1 controls, DEL, and the bidirectional overrides that reorder
/// what follows them.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text safe to print on a terminal: control characters and escape
/// sequences shown as `\n`, `\t`, `\e`, `\x07`, `\u{202e}`, never sent raw.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if is_unsafe(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_keep_every_byte() {
        assert_eq!(escape_bytes(b"a\xffb\xfe"), "a\\xffb\\xfe");
        assert_eq!(escape_bytes(b"|/usr/bin\\x"), "|/usr/bin\\\\x");
        assert_eq!(escape_bytes("caf\u{e9}".as_bytes()), "caf\u{e9}");
    }

    #[test]
    fn escape_sequences_are_shown_not_sent() {
        let title_and_clear = "x\u{1b}]0;owned\u{7}\u{1b}[2Jy";
        assert_eq!(terminal_safe(title_and_clear), "x\\e]0;owned\\x07\\e[2Jy");
        assert_eq!(terminal_safe("a\nb\tc\u{7f}\u{9b}"), "a\\nb\\tc\\x7f\\x9b");
        assert_eq!(terminal_safe("evil\u{202e}txt"), "evil\\u{202e}txt");
        assert!(matches!(terminal_safe("plain café"), Cow::Borrowed("plain café")));
    }
}
