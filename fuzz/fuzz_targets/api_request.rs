//! Request lines a client of the local API may send.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let _ = nstrail::serve::api::request_of(line);
    }
});
