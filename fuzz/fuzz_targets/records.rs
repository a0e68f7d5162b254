//! Ring-buffer records as the kernel side writes them, through every
//! sensor's decoder (the first four bytes pick the kind).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nstrail::sensors::fuzz_records(data);
});
