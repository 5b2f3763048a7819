//! Any bytes on `events`, as the inbox parses them: an error or an event, never a panic; an
//! event that parses serialises and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vap_core::events::SceneEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = SceneEvent::parse(data) {
        let again = serde_json::to_vec(&event).expect("a parsed event serialises");
        assert_eq!(SceneEvent::parse(&again).expect("and parses back"), event);
    }
});
