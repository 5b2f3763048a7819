//! The OpenAPI document as this server enforces it: the shipped file describes a server with
//! tokens; without tokens no route is guarded, and /metrics is guarded only when configured so.

use serde_json::{json, Value};

use vap_core::config::ApiSettings;

const SHIPPED: &str = include_str!("openapi.json");

/// The document to serve for `settings` (made once at start).
pub fn document(settings: &ApiSettings) -> String {
    let mut doc: Value =
        serde_json::from_str(SHIPPED).expect("crates/api/src/openapi.json is JSON (a unit test checks)");
    let tokens = !settings.auth_token.is_empty() || !settings.read_token.is_empty();
    if !tokens {
        doc["security"] = json!([]);
        for_each_operation(&mut doc, |_, _, op| {
            if let Some(responses) = op["responses"].as_object_mut() {
                responses.remove("401");
                responses.remove("403");
            }
        });
    } else if !settings.metrics_public {
        let metrics = &mut doc["paths"]["/metrics"]["get"];
        if let Some(op) = metrics.as_object_mut() {
            op.remove("security");
        }
        metrics["responses"]["401"] = json!({
            "description": "Missing or wrong bearer token.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        });
    }
    doc.to_string()
}

fn for_each_operation(doc: &mut Value, mut f: impl FnMut(&str, &str, &mut Value)) {
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            f(path, method, op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vap_core::config::Secret;

    fn guarded(doc: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let global = doc["security"].as_array().is_some_and(|s| !s.is_empty());
        let mut doc = doc.clone();
        for_each_operation(&mut doc, |path, method, op| {
            let own = op.get("security").and_then(Value::as_array).map(|s| !s.is_empty());
            if own.unwrap_or(global) {
                assert!(op["responses"]["401"].is_object(), "{method} {path}: guarded without a 401");
                out.push(format!("{method} {path}"));
            } else {
                assert!(op["responses"].get("401").is_none(), "{method} {path}: open with a 401");
            }
        });
        out
    }

    #[test]
    fn the_served_document_guards_exactly_what_the_server_does() {
        let open = ApiSettings::default();
        let doc: Value = serde_json::from_str(&document(&open)).unwrap();
        assert!(guarded(&doc).is_empty());
        let with_token = ApiSettings { auth_token: Secret::new("t"), ..ApiSettings::default() };
        let doc: Value = serde_json::from_str(&document(&with_token)).unwrap();
        let g = guarded(&doc);
        assert!(g.contains(&"post /api/v1/scenario/init".to_string()) && g.contains(&"get /api/v1/models".to_string()));
        for open in ["get /health", "get /ready", "get /metrics", "get /openapi.json", "get /docs"] {
            assert!(!g.contains(&open.to_string()), "{open}");
        }
        let private = ApiSettings { metrics_public: false, ..with_token };
        let doc: Value = serde_json::from_str(&document(&private)).unwrap();
        assert!(guarded(&doc).contains(&"get /metrics".to_string()));
    }
}
