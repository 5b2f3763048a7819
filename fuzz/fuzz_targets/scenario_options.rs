//! Any JSON body's options (zones, lines, mask, webhook_url and the rest), as the API checks
//! them: options or an error naming a field that was sent, never a panic; accepted options
//! read back unchanged, and zones and lines answer where a point is without panicking.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vap_core::options::{Defaults, ScenarioOptions};

fn defaults() -> &'static Defaults {
    static DEFAULTS: OnceLock<Defaults> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let catalogue =
            vap_core::models::Catalogue::load(&models, "ssdlite_person_300", vap_core::models::Check::Manifests).unwrap();
        Defaults { catalogue, fps: 2.0, min_confidence: None }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    match ScenarioOptions::from_request(&body, defaults()) {
        Ok(options) => {
            let back: ScenarioOptions = serde_json::from_value(serde_json::to_value(&options).unwrap()).unwrap();
            assert_eq!(back, options);
            for zone in &options.zones {
                let _ = zone.polygon.contains(0.5, 0.5);
            }
        }
        Err(e) => {
            // An unknown key is named whole; a known one by its path (`zones[1].name`).
            let top = e.field.split(['[', '.']).next().unwrap_or_default();
            let sent = body.contains_key(&e.field) || body.contains_key(top) || top == "model";
            assert!(sent, "error names a field not sent: {e}");
        }
    }
});
