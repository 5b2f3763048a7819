//! Any bytes on `results`, as the inbox parses them: an error or a record, never a panic; a
//! record that parses serialises and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vap_core::events::ResultsRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = ResultsRecord::parse(data) {
        let again = match &record {
            ResultsRecord::Frame(f) => serde_json::to_vec(f),
            ResultsRecord::End(e) => serde_json::to_vec(e),
        }
        .expect("a parsed record serialises");
        assert_eq!(ResultsRecord::parse(&again).expect("and parses back"), record);
    }
});
