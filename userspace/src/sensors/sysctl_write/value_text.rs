//! Turning the bytes of sysctl names and values into text for events.

use super::policy::swap_dots_and_slashes;
use crate::event::text::escape_bytes;

/// A value as sysctl(8) shows it: surrounding whitespace trimmed.
pub fn value_text(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    escape_bytes(&bytes[start..end])
}

/// The dotted name sysctl(8) prints for a /proc/sys path such as
/// `net/ipv4/conf/eth0.1/forwarding` (`net.ipv4.conf.eth0/1.forwarding`).
pub fn dotted_name(bytes: &[u8]) -> String {
    swap_dots_and_slashes(&escape_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_escapes() {
        assert_eq!(value_text(b"  600\n"), "600");
        assert_eq!(value_text(b"4096\t87380\t6291456\n"), "4096\t87380\t6291456");
        assert_eq!(value_text(b"a\xffb\xfe"), "a\\xffb\\xfe");
        assert_eq!(value_text(b"|/usr/bin\\x"), "|/usr/bin\\\\x");
        assert_eq!(value_text("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(value_text(b"\n"), "");
    }

    #[test]
    fn names_are_dotted() {
        assert_eq!(dotted_name(b"net/ipv4/tcp_keepalive_time"), "net.ipv4.tcp_keepalive_time");
        assert_eq!(dotted_name(b"net/ipv4/conf/eth0.1/forwarding"), "net.ipv4.conf.eth0/1.forwarding");
    }
}
