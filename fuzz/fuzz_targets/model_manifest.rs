//! Any manifest text in the models directory: a manifest or an error naming it, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vap_core::models::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = Manifest::parse(text, std::path::Path::new("/models/fuzz.toml")) {
        let _ = (m.classes().count(), m.output_format());
    }
});
