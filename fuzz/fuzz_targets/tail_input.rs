//! What `nstrail tail` parses: `--since` values and the records it filters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = nstrail::event::filter::since_timestamp(text, 1_795_826_104_000_000_000);
    let _ = nstrail::event::clock::parse_rfc3339(text);
    if let Ok(record) = serde_json::from_str::<serde_json::Value>(text) {
        let filter = nstrail::event::filter::Filter {
            types: vec!["netns_create".into()],
            netns: Some("blue".into()),
            container: Some("runc:a".into()),
            pod: Some("shop/web".into()),
            comm: Some("ip".into()),
            pid: Some(1),
        };
        let _ = filter.matches(&record);
        let _ = serde_json::from_value::<nstrail::event::Event>(record);
    }
});
