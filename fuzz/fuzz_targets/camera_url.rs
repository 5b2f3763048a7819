//! Any camera URL a client could POST: accepted or refused, never a panic; an accepted one has
//! no control character, re-parses to itself, and its redacted form still parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vap_core::camera_url::CameraUrl;
use vap_core::destination::DestinationPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let policy = DestinationPolicy::default();
    let _ = vap_core::destination::literal_address(text);
    for allow_files in [false, true] {
        if let Ok(url) = CameraUrl::parse(text, allow_files, &policy) {
            assert!(!url.expose().chars().any(char::is_control), "{:?}", url.expose());
            let again = CameraUrl::parse(url.expose(), allow_files, &policy).expect("an accepted URL re-parses");
            assert_eq!(again.expose(), url.expose());
            let _ = url.redacted();
        }
    }
});
