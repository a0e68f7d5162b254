//! rtnetlink datagrams as the device sensor's listener reads them: message
//! framing, link attributes, nsid notifications, and the pairing of moves.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for message in nstrail::sys::rtnetlink::messages(data) {
        let Ok(message) = message else { break };
        let _ = nstrail::sys::rtnetlink::Link::parse(message.payload);
        let _ = nstrail::sys::rtnetlink::nsid_of(message.payload);
        let _ = nstrail::sys::rtnetlink::error_of(&message);
    }
    nstrail::sensors::device_move::pairing::fuzz_datagram(data);
});
