//! Audit log files as `nstrail verify` and `tail --since` read them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(line) = std::str::from_utf8(line) {
            let _ = nstrail::audit::split_line(line);
        }
    }
    // verify reads files: one per input, in the fuzzer's own scratch folder.
    thread_local! {
        static PATH: std::path::PathBuf =
            std::env::temp_dir().join(format!("nstrail-fuzz-audit-{}.jsonl", std::process::id()));
    }
    PATH.with(|path| {
        if std::fs::write(path, data).is_ok() {
            let _ = nstrail::audit::verify(std::slice::from_ref(path));
        }
    });
});
