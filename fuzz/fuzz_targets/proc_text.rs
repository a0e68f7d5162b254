//! Text from /proc and /sys the agent parses: mountinfo (with the kernel's
//! escapes), sockstat, kallsyms, and the kernel's BTF.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nstrail::sys::mountinfo::parse(data);
    let _ = nstrail::sys::btf::Btf::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = nstrail::sys::proc::parse_tcp_inuse(text);
        let _ = nstrail::sys::kallsyms::find_text_symbol(text, "cleanup_net");
    }
});
