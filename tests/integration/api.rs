//! The REST API against a real PostgreSQL: contract, bad input, idempotency, pagination, auth.

use crate::common;

use std::collections::HashSet;

use common::{unique, TestApp};
use hyper::{Method, StatusCode};
use serde_json::json;

fn assert_error(r: &common::Response, status: StatusCode, code: &str, mentions: &str) {
    assert_eq!(r.status, status, "body: {}", r.text);
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "body: {}", r.text);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.to_lowercase().contains(&mentions.to_lowercase()),
        "message '{message}' should mention '{mentions}'"
    );
}

#[tokio::test]
async fn health_answers_healthy() {
    let app = TestApp::spawn().await;
    let r = app.get("/health").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "healthy"}));
}

#[tokio::test]
async fn init_answers_the_legacy_contract_and_writes_one_outbox_event() {
    let app = TestApp::spawn().await;
    let r = app.post_json("/api/v1/scenario/init", &json!({"camera_url": "rtsp://cam.example:554/live"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = r.json();
    assert_eq!(body["status"], "init_startup");
    assert_eq!(body["camera_url"], "rtsp://cam.example:554/live");
    let uuid: uuid::Uuid = body["scenario_uuid"].as_str().unwrap().parse().unwrap();
    assert!(body["created_at"].is_string() && body["updated_at"].is_string());

    let got = app.get(&format!("/api/v1/scenario/{uuid}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["status"], "init_startup");
    assert_eq!(got.json()["worker"], serde_json::Value::Null);

    let events = app
        .scalar(&format!("SELECT count(*) FROM outbox WHERE scenario_uuid = '{uuid}' AND event_type = 'init_scenario'"))
        .await;
    assert_eq!(events, 1);

    let p = app.get(&format!("/api/v1/prediction/{uuid}")).await;
    assert_eq!(p.status, StatusCode::OK);
    let p = p.json();
    assert_eq!(p["scenario_uuid"], uuid.to_string());
    assert_eq!(p["total_frames_processed"], 0);
    assert_eq!(p["results"], json!([]));
}

/// The default policy refuses loopback however it is spelt (only loopback is posted here: the
/// link-local and metadata addresses are the same code path, covered by crates/core/src/destination.rs).
#[tokio::test]
async fn camera_hosts_the_destination_policy_refuses_get_a_400_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|s| {
        s.destinations.allow = vec![];
        s.destinations.deny = vec!["127.0.0.2/32".into()];
    })
    .await;
    let init = "/api/v1/scenario/init";
    for (url, mentions) in [
        ("rtsp://admin:pw@127.0.0.1:8554/live", "127.0.0.1 is loopback"),
        ("http://localhost:8080/a.mjpg", "127.0.0.1 is loopback"),
        ("rtsp://2130706433/live", "127.0.0.1 is loopback"),
        ("rtsp://0x7f.1/live", "127.0.0.1 is loopback"),
        ("http://[::1]:8080/a.mjpg", "::1 is loopback"),
        ("https://[::ffff:127.0.0.1]/a", "127.0.0.1 is loopback"),
        ("rtsp://0.0.0.0/live", "unspecified"),
    ] {
        let r = app.post_json(init, &json!({ "camera_url": url })).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", mentions);
        assert!(!r.text.contains("pw"), "{}", r.text);
    }
    let allowed = TestApp::spawn_with(|s| s.destinations.deny = vec!["127.0.0.2/32".into()]).await;
    let r = allowed.post_json(init, &json!({ "camera_url": "rtsp://127.0.0.2:8554/live" })).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "127.0.0.2 is in destinations.deny");
    let r = allowed.post_json(init, &json!({ "camera_url": "rtsp://127.0.0.1:8554/live" })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let stored: i64 =
        app.pool.get().await.unwrap().query_one("SELECT count(*) FROM scenarios", &[]).await.unwrap().get(0);
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_problem() {
    let app = TestApp::spawn().await;
    let init = "/api/v1/scenario/init";
    let json_ct = [("content-type", "application/json")];

    let r = app.request(Method::POST, init, &json_ct, "{\"camera_url\": ").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_json", "not valid JSON");
    let r = app.request(Method::POST, init, &json_ct, "[1,2]").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_body", "JSON object");
    let r = app.post_json(init, &json!({"url": "rtsp://x/y"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "missing_camera_url", "camera_url is required");
    let r = app.post_json(init, &json!({"camera_url": 42})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "must be a string");
    let r = app.post_json(init, &json!({"camera_url": ""})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "empty");
    let r = app.post_json(init, &json!({"camera_url": "not a url at all"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "does not parse");
    // Control characters and backslashes: a 400 naming them, never a 500 nor a cleaned-up URL.
    for (url, mentions) in [
        ("rtsp://h/a\u{0}b", "U+0000"),
        ("rtsp://h:6379/a\r\nSET x y\r\n", "U+000D"),
        ("rtsp://cam/live\t", "U+0009"),
        ("rtsp://cam\\live", "backslash"),
    ] {
        let r = app.post_json(init, &json!({ "camera_url": url })).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", mentions);
    }
    let r = app.post_json(init, &json!({"camera_url": "ftp://cam/video"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "scheme 'ftp'");
    let r = app.post_json(init, &json!({"camera_url": "/srv/video.mp4"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "local file");
    let r = app.post_json(init, &json!({"camera_url": "file:///srv/video.mp4"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "local file");
    let long = format!("rtsp://cam/{}", "a".repeat(2100));
    let r = app.post_json(init, &json!({"camera_url": long})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_camera_url", "limit is 2048");
    let big = format!("{{\"camera_url\": \"rtsp://cam/x\", \"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let r = app.request(Method::POST, init, &json_ct, big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "65536");
    let r =
        app.request(Method::POST, init, &[("content-type", "text/plain")], "{\"camera_url\": \"rtsp://c/x\"}").await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "text/plain");
    let r = app.request(Method::POST, init, &[], "{\"camera_url\": \"rtsp://c/x\"}").await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "application/json");
    let r = app.get(init).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "POST");
    assert_eq!(r.headers["allow"], "POST");
    let r = app.request(Method::PUT, "/api/v1/scenario/6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10", &[], "").await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "PUT");
    assert_eq!(r.headers["allow"], "GET, HEAD, PATCH, DELETE");
    let r = app.request(Method::DELETE, "/api/v1/scenario/6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10", &[], "").await;
    assert_error(&r, StatusCode::NOT_FOUND, "scenario_not_found", "not found");

    for path in [
        "/api/v1/scenario/not-a-uuid",
        "/api/v1/scenario/123/shutdown",
        "/api/v1/prediction/zzz",
        "/api/v1/prediction/zzz/stream",
    ] {
        let method = if path.ends_with("shutdown") { Method::POST } else { Method::GET };
        let r = app.request(method, path, &[], "").await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_uuid", "not a valid UUID");
    }
    let ghost = uuid::Uuid::new_v4();
    for (method, path) in [
        (Method::GET, format!("/api/v1/scenario/{ghost}")),
        (Method::POST, format!("/api/v1/scenario/{ghost}/shutdown")),
        (Method::GET, format!("/api/v1/prediction/{ghost}")),
        (Method::GET, format!("/api/v1/prediction/{ghost}/stream")),
    ] {
        let r = app.request(method, &path, &[], "").await;
        assert_error(&r, StatusCode::NOT_FOUND, "scenario_not_found", &ghost.to_string());
    }
    let r = app.get("/api/v1/nothing/here").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", "/api/v1/nothing/here");
    let uuid = app.create_scenario("rtsp://cam/1").await;
    let r = app.get(&format!("/api/v1/prediction/{uuid}?limit=0")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_parameter", "limit");
    let r = app.get(&format!("/api/v1/prediction/{uuid}?after_frame=abc")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_parameter", "after_frame");
    let r = app.get("/api/v1/scenarios?status=running").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_parameter", "status must be one of");
    let r = app.get("/api/v1/scenarios?cursor=-4").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_cursor", "cursor");

    // Nothing above was stored.
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 1);
    assert_eq!(app.scalar("SELECT count(*) FROM outbox").await, 1);
}

#[tokio::test]
async fn every_bad_option_is_a_400_naming_the_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let square = json!([[0, 0], [1, 0], [1, 1], [0, 1]]);
    let cases = [
        (json!({"model": "resnet_9000"}), "model", "unknown model 'resnet_9000'"),
        (json!({"model": ["ssdlite_person_300"]}), "model", "must be a string"),
        (
            json!({"model": "ssdlite_person_300", "classes": ["car"]}),
            "classes",
            "model 'ssdlite_person_300' has no class 'car'",
        ),
        (json!({"model": "yolov3_tiny_coco_416", "classes": ["unicorn"]}), "classes", "has no class 'unicorn'"),
        (json!({"classes": "person"}), "classes", "must be an array"),
        (json!({"classes": [1]}), "classes[0]", "must be a string"),
        (json!({"classes": []}), "classes", "at least one"),
        (json!({"fps": 0.05}), "fps", "from 0.1 to 30"),
        (json!({"fps": 60}), "fps", "from 0.1 to 30"),
        (json!({"fps": "10"}), "fps", "must be a number"),
        (json!({"min_confidence": -0.1}), "min_confidence", "from 0 to 1"),
        (json!({"min_confidence": 2}), "min_confidence", "from 0 to 1"),
        (json!({"min_confidence": true}), "min_confidence", "must be a number"),
        (json!({"name": 5}), "name", "must be a string"),
        (json!({"name": "x".repeat(201)}), "name", "1 to 200 characters"),
        (json!({"mask": [[[0, 0], [1, 1]]]}), "mask[0]", "3 to 64 points"),
        (json!({"mask": [vec![json!([0.5, 0.5]); 65]]}), "mask[0]", "3 to 64 points"),
        (json!({"mask": [[[0, 0], [1, 0], [1, -0.2]]]}), "mask[0][2]", "normalised to 0..1"),
        (json!({"mask": [[[0, 0], [1, 0], [2, 1]]]}), "mask[0][2]", "normalised to 0..1"),
        (json!({"mask": [[[0, 0], [1, 0], "corner"]]}), "mask[0][2]", "[x, y]"),
        (json!({"mask": [[[0, 0], [1, 0], [1, 1, 1]]]}), "mask[0][2]", "[x, y]"),
        (json!({"mask": vec![square.clone(); 17]}), "mask", "at most 16 polygons"),
        (json!({"mask": "left half"}), "mask", "must be an array"),
        (json!({"classses": ["person"]}), "classses", "not an option"),
        (json!({"zones": [{"name": "door"}]}), "zones[0].polygon", "is required"),
        (json!({"zones": [{"name": "door", "polygon": [[0, 0], [1, 0], [1, 7]]}]}), "zones[0].polygon[2]", "0..1"),
        (
            json!({"zones": [{"name": "door", "polygon": square, "classes": ["unicorn"]}]}),
            "zones[0].classes",
            "no class 'unicorn'",
        ),
        (
            json!({"zones": [{"name": "door", "polygon": square, "dwell_seconds": -1}]}),
            "zones[0].dwell_seconds",
            "from 1",
        ),
        (
            json!({"zones": [{"name": "a", "polygon": square}, {"name": "a", "polygon": square}]}),
            "zones[1].name",
            "used twice",
        ),
        (json!({"zones": [{"name": "a", "polygon": square, "color": "red"}]}), "zones[0].color", "not a field"),
        (json!({"lines": [{"name": "gate", "points": [[0, 0], [1, 1], [0, 1]]}]}), "lines[0].points", "two points"),
        (json!({"lines": [{"name": "gate", "points": [[0.2, 0.2], [0.2, 0.2]]}]}), "lines[0].points", "must differ"),
        (json!({"lines": [{"points": [[0, 0], [1, 1]]}]}), "lines[0].name", "is required"),
        (json!({"lines": "across"}), "lines", "must be an array"),
        (json!({"decode": "some"}), "decode", "must be one of all, reference, keyframes, got 'some'"),
        (json!({"decode": 1}), "decode", "must be a string"),
    ];
    for (options, field, reason) in cases {
        let mut body = options.clone();
        body["camera_url"] = "rtsp://cam/1".into();
        let r = app.post_json("/api/v1/scenario/init", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{options}: {}", r.text);
        let e = &r.json()["error"];
        assert_eq!(
            (e["code"].as_str(), e["field"].as_str()),
            (Some("invalid_option"), Some(field)),
            "{options}: {}",
            r.text
        );
        assert!(e["message"].as_str().unwrap().contains(reason), "{options}: {}", r.text);
    }
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 0);
    assert_eq!(app.scalar("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn options_are_stored_and_shown_in_effect_and_the_catalogue_is_listed() {
    let app = TestApp::spawn().await;
    // The old contract: defaults, resolved against the default model.
    let plain = app.scenario(app.create_scenario("rtsp://cam/1").await).await;
    let mut options = plain["options"].clone();
    // The default model's own threshold (0.4 as f32).
    let threshold = options.as_object_mut().unwrap().remove("min_confidence").unwrap().as_f64().unwrap();
    assert!((threshold - 0.4).abs() < 1e-6, "{plain}");
    assert_eq!(
        options,
        json!({"name": null, "model": "yolov4_tiny_coco_416", "fps": 2.0, "classes": null, "mask": [], "zones": [], "lines": [], "webhook_url": null, "snapshot_interval_s": 2.0, "retention_days": null, "motion_gating": true, "decode": "all"}),
        "{plain}"
    );
    // COCO's own names; darknet's spelling still works, stored as COCO's.
    let old_names = json!({"classes": ["motorbike", "person", "motorcycle", "tvmonitor"]});
    let aliased = app.scenario(app.create_scenario_with("rtsp://cam/3", old_names).await).await;
    assert_eq!(aliased["options"]["classes"], json!(["motorcycle", "person", "tv"]), "{aliased}");
    let mask = json!([[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]]);
    let body =
        json!({"name": "Gate 3", "model": "yolov3_tiny_coco_416", "fps": 5, "classes": ["car", "truck"], "mask": mask});
    let id = app.create_scenario_with("rtsp://cam/2", body).await;
    let got = app.scenario(id).await;
    let o = &got["options"];
    assert_eq!(
        (o["name"].as_str(), o["model"].as_str(), o["fps"].as_f64()),
        (Some("Gate 3"), Some("yolov3_tiny_coco_416"), Some(5.0))
    );
    // The model's own threshold, since none was asked for.
    assert!((o["min_confidence"].as_f64().unwrap() - 0.4).abs() < 1e-6, "{got}");
    assert_eq!((&o["classes"], &o["mask"]), (&json!(["car", "truck"]), &mask), "{got}");

    let models = app.get("/api/v1/models").await;
    assert_eq!(models.status, StatusCode::OK, "{}", models.text);
    let m = models.json();
    assert_eq!(m["default_model"], "yolov4_tiny_coco_416");
    let names: Vec<&str> = m["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ssdlite_person_300", "yolov3_tiny_coco_416", "yolov4_tiny_coco_416"]);
    let coco = &m["models"][1];
    assert_eq!((coco["classes"].as_array().unwrap().len(), &coco["classes"][2]), (80, &json!("car")));
    assert_eq!(
        (&coco["input"], &coco["output_format"], &coco["default"]),
        (&json!({"width": 416, "height": 416}), &json!("yolov8"), &json!(false))
    );
    // The person model's background is not a class one can ask for.
    assert_eq!(m["models"][0]["classes"], json!(["person"]));
    assert_eq!(m["models"][0]["labels"], json!(["background", "person"]));
}

#[tokio::test]
async fn patch_changes_options_with_one_event_and_refuses_what_it_cannot_do() {
    let app = TestApp::spawn().await;
    let id = app.create_scenario_with("rtsp://cam/1", json!({"fps": 4, "name": "lobby"})).await;
    let path = format!("/api/v1/scenario/{id}");
    let count_updates =
        format!("SELECT count(*) FROM outbox WHERE event_type = 'update_scenario' AND scenario_uuid = '{id}'");
    let updates = || app.scalar(&count_updates);

    // A merge patch: given fields replace, null resets to the default, absent ones stay.
    let r = app.patch_json(&path, &json!({"model": "yolov3_tiny_coco_416", "classes": ["car"], "name": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = r.json();
    let o = &s["options"];
    assert_eq!(
        (o["model"].as_str(), o["fps"].as_f64(), &o["classes"], &o["name"]),
        (Some("yolov3_tiny_coco_416"), Some(4.0), &json!(["car"]), &json!(null)),
        "{s}"
    );
    assert_eq!(s["options_revision"], 1);
    assert_eq!(app.scenario(id).await["options"], s["options"]);
    assert_eq!(updates().await, 1);
    // The same again changes nothing and writes nothing.
    let r = app.patch_json(&path, &json!({"classes": ["car"]})).await;
    assert_eq!((r.status, &r.json()["options_revision"]), (StatusCode::OK, &json!(1)), "{}", r.text);
    assert_eq!(updates().await, 1);

    // Bad patches: a 400 naming the field, nothing written.
    for (patch, field) in [
        (json!({"model": "ssdlite_person_300"}), "classes"), // car is not a class of the person model
        (json!({"fps": 0}), "fps"),
        (json!({"mask": [[[0, 0], [1, 1]]]}), "mask[0]"),
        (json!({"camera_url": "rtsp://cam/2"}), "camera_url"),
        (json!({"decode": "keyframes"}), "decode"),
        (json!({"speed": 1}), "speed"),
    ] {
        let r = app.patch_json(&path, &patch).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{patch}: {}", r.text);
        assert_eq!(r.json()["error"]["field"], field, "{patch}: {}", r.text);
    }
    let r = app.patch_json(&path, &json!([1])).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_body", "merge patch");
    let r = app.request(Method::PATCH, &path, &[("content-type", "text/plain")], "{}").await;
    assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "text/plain");
    let ghost = uuid::Uuid::new_v4();
    let r = app.patch_json(&format!("/api/v1/scenario/{ghost}"), &json!({"fps": 1})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "scenario_not_found", &ghost.to_string());
    assert_eq!(updates().await, 1);
    assert_eq!(app.scenario(id).await["options_revision"], 1);

    // A scenario on its way down, or at rest, keeps its options: 409 with the reason.
    app.shutdown_scenario(id).await;
    let r = app.patch_json(&path, &json!({"fps": 1})).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", "init_shutdown");
    let moved = format!("WITH u AS (UPDATE scenarios SET status = 'inactive' WHERE scenario_uuid = '{id}' RETURNING 1) SELECT count(*) FROM u");
    assert_eq!(app.scalar(&moved).await, 1);
    let r = app.patch_json(&path, &json!({"fps": 1})).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", "inactive");
    assert_eq!(updates().await, 1);
}

#[tokio::test]
async fn local_files_are_accepted_only_when_the_operator_enables_them() {
    let app = TestApp::spawn_with(|s| s.api.allow_file_urls = true).await;
    for url in ["/srv/video.mp4", "file:///srv/video.mp4"] {
        let r = app.post_json("/api/v1/scenario/init", &json!({"camera_url": url})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json()["camera_url"], url);
    }
}

#[tokio::test]
async fn camera_credentials_are_stored_but_never_shown() {
    let app = TestApp::spawn().await;
    let url = "rtsp://admin:s3cr3t-pw@10.1.2.3:554/Streaming/101?token=t0k3n&channel=1";
    let r = app.post_json("/api/v1/scenario/init", &json!({"camera_url": url})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.text.contains("s3cr3t-pw") && !r.text.contains("admin") && !r.text.contains("t0k3n"), "{}", r.text);
    assert_eq!(r.json()["camera_url"], "rtsp://***:***@10.1.2.3:554/Streaming/101?token=***&channel=1");
    let uuid = r.json()["scenario_uuid"].as_str().unwrap().to_string();
    for path in [format!("/api/v1/scenario/{uuid}"), "/api/v1/scenarios".to_string()] {
        let r = app.get(&path).await;
        assert!(!r.text.contains("s3cr3t-pw") && !r.text.contains("t0k3n"), "{path}: {}", r.text);
    }
    let r = app.request(Method::POST, &format!("/api/v1/scenario/{uuid}/shutdown"), &[], "").await;
    assert!(!r.text.contains("s3cr3t-pw") && !r.text.contains("t0k3n"), "{}", r.text);
    // The runner needs the real URL: it is stored as given.
    let client = app.pool.get().await.unwrap();
    let stored: String = client.query_one("SELECT camera_url FROM scenarios", &[]).await.unwrap().get(0);
    assert_eq!(stored, url);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_creates_nothing_new() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"camera_url": "rtsp://cam/idem"})).unwrap();
    let key = unique("key");
    let headers = [("content-type", "application/json"), ("idempotency-key", key.as_str())];
    let first = app.request(Method::POST, "/api/v1/scenario/init", &headers, body.clone()).await;
    assert_eq!(first.status, StatusCode::OK);
    // Concurrent retries with the same key.
    let retries = futures::future::join_all(
        (0..8).map(|_| app.request(Method::POST, "/api/v1/scenario/init", &headers, body.clone())),
    )
    .await;
    for r in &retries {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json(), first.json());
    }
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 1);
    assert_eq!(app.scalar("SELECT count(*) FROM outbox").await, 1);

    let other = serde_json::to_vec(&json!({"camera_url": "rtsp://cam/other"})).unwrap();
    let r = app.request(Method::POST, "/api/v1/scenario/init", &headers, other).await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "different request");
    let r = app
        .request(
            Method::POST,
            "/api/v1/scenario/init",
            &[("content-type", "application/json"), ("idempotency-key", "")],
            body,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_idempotency_key", "Idempotency-Key");
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 1);
}

#[tokio::test]
async fn concurrent_first_requests_with_one_key_create_one_scenario() {
    let app = TestApp::spawn().await;
    let body = serde_json::to_vec(&json!({"camera_url": "rtsp://cam/race"})).unwrap();
    let key = unique("race");
    let headers = [("content-type", "application/json"), ("idempotency-key", key.as_str())];
    let answers = futures::future::join_all(
        (0..16).map(|_| app.request(Method::POST, "/api/v1/scenario/init", &headers, body.clone())),
    )
    .await;
    let uuids: HashSet<String> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            r.json()["scenario_uuid"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(uuids.len(), 1);
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 1);
}

#[tokio::test]
async fn shutdown_moves_to_init_shutdown_once_and_refuses_finished_scenarios() {
    let app = TestApp::spawn().await;
    let uuid = app.create_scenario("rtsp://cam/stop").await;
    let path = format!("/api/v1/scenario/{uuid}/shutdown");
    let r = app.request(Method::POST, &path, &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "init_shutdown");
    let again = app.request(Method::POST, &path, &[], "").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["status"], "init_shutdown");
    assert_eq!(
        app.scalar(&format!(
            "SELECT count(*) FROM outbox WHERE scenario_uuid = '{uuid}' AND event_type = 'shutdown_scenario'"
        ))
        .await,
        1
    );
    // The orchestrator finishes it; a further shutdown is a conflict with a reason.
    app.pool.get().await.unwrap().execute("UPDATE scenarios SET status = 'inactive'", &[]).await.unwrap();
    let r = app.request(Method::POST, &path, &[], "").await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", "already inactive");
}

#[tokio::test]
async fn scenario_list_pages_with_a_keyset_cursor_and_filters_by_status() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..23 {
        created.push(app.create_scenario(&format!("rtsp://cam/{i}")).await);
    }
    let stop = created[5];
    app.request(Method::POST, &format!("/api/v1/scenario/{stop}/shutdown"), &[], "").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/scenarios?limit=10&cursor={c}"),
            None => "/api/v1/scenarios?limit=10".to_string(),
        };
        let page = app.get(&path).await.json();
        for s in page["scenarios"].as_array().unwrap() {
            seen.push(s["scenario_uuid"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    created.reverse(); // newest first
    assert_eq!(seen, created);

    let page = app.get("/api/v1/scenarios?status=init_shutdown").await.json();
    let list = page["scenarios"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["scenario_uuid"], stop.to_string());
}

#[tokio::test]
async fn tokens_have_scopes_and_probes_and_docs_stay_open() {
    let app = TestApp::spawn_with(|s| {
        s.api.auth_token = vap_core::config::Secret::new("op-t0ken");
        s.api.read_token = vap_core::config::Secret::new("read-t0ken");
    })
    .await;
    for open in ["/health", "/ready", "/metrics", "/openapi.json", "/docs"] {
        assert_eq!(app.get(open).await.status, StatusCode::OK, "{open}");
    }
    let list = "/api/v1/scenarios";
    let r = app.get(list).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    for wrong in ["Bearer wrong", "Basic b3AtdDBrZW4=", "op-t0ken", "Bearer op-t0ke", "Bearer op-t0kenX"] {
        let r = app.request(Method::GET, list, &[("authorization", wrong)], "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // The scheme word is case-insensitive; a read token reads.
    let r = app.request(Method::GET, list, &[("authorization", "bearer read-t0ken")], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = "{\"camera_url\": \"rtsp://cam/a\"}";
    let post = |token: &'static str| {
        let headers = [("authorization", token), ("content-type", "application/json")];
        let app = &app;
        async move { app.request(Method::POST, "/api/v1/scenario/init", &headers, body).await }
    };
    let r = post("Bearer read-t0ken").await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "POST needs an operate token");
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 0);
    let r = post("BEARER op-t0ken").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.json()["scenario_uuid"].as_str().unwrap().to_string();
    let patch = [("authorization", "Bearer read-t0ken"), ("content-type", "application/json")];
    let r = app.request(Method::PATCH, &format!("/api/v1/scenario/{id}"), &patch, "{\"fps\": 1}").await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden", "PATCH");
    let r =
        app.request(Method::GET, &format!("/api/v1/scenario/{id}"), &[("authorization", "Bearer op-t0ken")], "").await;
    assert_eq!(r.status, StatusCode::OK, "an operate token reads too");
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 1);

    let private = TestApp::spawn_with(|s| {
        s.api.read_token = vap_core::config::Secret::new("read-t0ken");
        s.api.metrics_public = false;
    })
    .await;
    assert_eq!(private.get("/metrics").await.status, StatusCode::UNAUTHORIZED);
    let r = private.request(Method::GET, "/metrics", &[("authorization", "Bearer read-t0ken")], "").await;
    assert_eq!(r.status, StatusCode::OK);
    // Only a read token: nobody may create scenarios.
    let r = private.post_json("/api/v1/scenario/init", &json!({"camera_url": "rtsp://cam/a"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ready_is_503_while_postgres_is_unreachable() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/ready").await.status, StatusCode::OK);
    let dead_port = vap_dev::devstack::free_port().unwrap();
    let down = TestApp::spawn_with(|s| {
        // Migrations run against the real database first; then point the API at nothing.
        s.database.connect_timeout_ms = 500;
    })
    .await;
    let mut settings = down.settings.clone();
    settings.database.port = dead_port;
    let pool = vap_core::db::pool(&settings.database).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let running = vap_api::serve(
        listener,
        pool,
        settings.api.clone(),
        settings.database.clone(),
        common::option_defaults(&settings),
        vap_core::destination::DestinationPolicy::default(),
        token.clone(),
    )
    .await
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let get = |path: &'static str| {
        let client = client.clone();
        let uri = format!("http://{}{path}", running.addr);
        async move {
            use http_body_util::BodyExt;
            let resp = client.get(uri.parse().unwrap()).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        }
    };
    let (status, body) = get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");
    let (status, body) = get("/api/v1/scenarios").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(get("/health").await.0, StatusCode::OK);
    token.cancel();
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_report_the_outbox_backlog() {
    let app = TestApp::spawn().await;
    app.create_scenario("rtsp://cam/m").await;
    app.get("/api/v1/scenario/nope").await;
    let text = app.get("/metrics").await.text;
    assert!(
        text.contains(r#"vap_http_requests_total{route="/api/v1/scenario/init",method="POST",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vap_http_requests_total{route="/api/v1/scenario/{uuid}",method="GET",status="400"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"vap_http_request_duration_seconds_bucket{route="/api/v1/scenario/init",method="POST",le="+Inf"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("vap_outbox_backlog 1"), "{text}");
    assert!(text.contains("vap_inbox_backlog_records 0"), "{text}");
    // Made-up methods share one label: requests can't mint metric series.
    for made_up in ["FROB", "XYZZY", "BREW"] {
        let r = app.request(Method::from_bytes(made_up.as_bytes()).unwrap(), "/api/v1/scenarios", &[], "").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = app.get("/metrics").await.text;
    assert!(
        text.contains(r#"vap_http_requests_total{route="/api/v1/scenarios",method="other",status="405"} 3"#),
        "{text}"
    );
    assert!(!text.contains("FROB") && !text.contains("XYZZY"), "{text}");
}

#[tokio::test]
async fn openapi_describes_every_route_and_docs_render_it() {
    let app = TestApp::spawn().await;
    let spec = app.get("/openapi.json").await.json();
    assert_eq!(spec["openapi"], "3.0.3");
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/api/v1/scenario/init",
        "/api/v1/scenarios",
        "/api/v1/models",
        "/api/v1/scenario/{uuid}",
        "/api/v1/scenario/{uuid}/shutdown",
        "/api/v1/prediction/{uuid}",
        "/api/v1/prediction/{uuid}/stream",
    ] {
        assert!(spec["paths"][path].is_object(), "openapi.json lacks {path}");
    }
    let init = &spec["paths"]["/api/v1/scenario/init"]["post"]["responses"];
    for code in ["200", "400", "405", "413", "415", "422", "503"] {
        assert!(init[code].is_object(), "init lacks {code}");
    }
    // This server has no token: the document guards nothing and promises no 401.
    assert_eq!(spec["security"], json!([]));
    assert!(init.get("401").is_none() && init.get("403").is_none(), "{init}");
    let guarded = TestApp::spawn_with(|s| s.api.auth_token = vap_core::config::Secret::new("t")).await;
    let spec = guarded.get("/openapi.json").await.json();
    assert_eq!(spec["security"], json!([{"bearer": []}]));
    let init = &spec["paths"]["/api/v1/scenario/init"]["post"]["responses"];
    assert!(init["401"].is_object() && init["403"].is_object(), "{init}");
    let patch = &spec["paths"]["/api/v1/scenario/{uuid}"]["patch"]["responses"];
    for code in ["200", "400", "404", "409", "415"] {
        assert!(patch[code].is_object(), "patch lacks {code}");
    }
    let docs = app.get("/docs").await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(docs.text.contains("openapi.json"));
}

/// Sends raw bytes on a new connection and returns what arrives within `wait` (the whole head
/// at least, when one comes), with the connection.
async fn raw(addr: &str, request: &[u8], wait: std::time::Duration) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    // The rest of a small body, if it is on its way.
    if let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(200), conn.read(&mut buf)).await {
        got.extend_from_slice(&buf[..n]);
    }
    (String::from_utf8_lossy(&got).into_owned(), conn)
}

#[tokio::test]
async fn connections_streams_and_slow_bodies_are_bounded() {
    use std::time::Duration;
    let app = TestApp::spawn_with(|s| {
        s.api.max_connections = 4;
        s.api.max_sse_streams = 2;
        s.api.body_read_timeout_ms = 500;
    })
    .await;
    let addr = app.api.base.trim_start_matches("http://").to_string();
    let id = app.create_scenario("rtsp://cam/bounded").await;
    let stream = format!("GET /api/v1/prediction/{id}/stream HTTP/1.1\r\nhost: localhost\r\n\r\n");

    // Two streams are open; a third is 429 with Retry-After; one closing frees its slot.
    let (head, first) = raw(&addr, stream.as_bytes(), Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _second) = raw(&addr, stream.as_bytes(), Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = raw(&addr, stream.as_bytes(), Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 429") && head.contains("too_many_streams"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    let metrics = app.get("/metrics").await.text;
    assert!(metrics.contains("vap_api_sse_streams 2"), "{metrics}");
    drop(first);
    let _third = common::eventually(Duration::from_secs(20), "the stream's slot back", || async {
        let (head, conn) = raw(&addr, stream.as_bytes(), Duration::from_secs(5)).await;
        head.starts_with("HTTP/1.1 200").then_some(conn)
    })
    .await;

    // A body that stops arriving: 408 after the timeout, and the connection closes.
    let slow = b"POST /api/v1/scenario/init HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"camera";
    // The server's 408, not the client's own 5 s limit, ends it.
    let (head, _) = raw(&addr, slow, Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 408") && head.contains("request_timeout"), "{head}");

    // Two streams hold two of four connections; two idle ones fill the rest: the next is 503.
    // (The 408's connection was closed by the server.)
    let _idle =
        [tokio::net::TcpStream::connect(&addr).await.unwrap(), tokio::net::TcpStream::connect(&addr).await.unwrap()];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (head, _) = raw(&addr, b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n", Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 503") && head.contains("too_many_connections"), "{head}");
    drop(_idle);
    common::eventually(Duration::from_secs(10), "a connection slot back", || async {
        let (head, _) = raw(&addr, b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n", Duration::from_secs(5)).await;
        head.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

/// schemathesis (PyPI; scripts/setup installs it) against the live API, open and with tokens:
/// every route, generated requests, every check: no 5xx, every answer as the served document
/// says. No runner is started here, so the camera URLs it makes up are only stored, never opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_against_the_live_api() {
    let bin = common::cache_dir().join("schemathesis-venv/bin/schemathesis");
    assert!(bin.exists(), "{} missing: scripts/test installs it (VAP_SETUP_TESTS=1 scripts/setup)", bin.display());
    let open = TestApp::spawn().await;
    let guarded = TestApp::spawn_with(|s| s.api.auth_token = vap_core::config::Secret::new("op-t0ken")).await;
    for (app, auth) in [(&open, None), (&guarded, Some("Authorization: Bearer op-t0ken"))] {
        let (bin, base) = (bin.clone(), app.api.base.clone());
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(bin);
            cmd.args(["run", &format!("{base}/openapi.json"), "--checks", "all", "--hypothesis-max-examples", "40"])
                .args(["--hypothesis-seed", "7", "--hypothesis-derandomize", "--no-color", "--base-url", &base])
                .env("SCHEMATHESIS_TELEMETRY", "false")
                // Its example database and caches go beside the build, not into the checkout.
                .current_dir(env!("CARGO_TARGET_TMPDIR"));
            if let Some(header) = auth {
                cmd.args(["-H", header]);
            }
            cmd.output().unwrap()
        })
        .await
        .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "schemathesis ({auth:?}):\n{said}");
    }
}

/// A flood of scrapes costs the database one read of the gauges per 5 s, not one per scrape:
/// 200 concurrent GET /metrics make a handful of transactions, and a POST meanwhile is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_metrics_scrapes_reads_the_database_once_per_interval() {
    let app = TestApp::spawn_with(|s| s.database.pool_size = 2).await;
    let commits = || async {
        // PostgreSQL publishes its counters within a second of a transaction's end.
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        let c = app.pool.get().await.unwrap();
        let n: i64 = c
            .query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    assert_eq!(app.get("/metrics").await.status, StatusCode::OK);
    let before = commits().await;
    let scrapes = (0..200).map(|_| app.get("/metrics"));
    let body = json!({"camera_url": "rtsp://cam/during-a-flood"});
    let (answers, post) =
        tokio::join!(futures::future::join_all(scrapes), app.post_json("/api/v1/scenario/init", &body));
    assert!(answers.iter().all(|r| r.status == StatusCode::OK && r.text.contains("vap_database_up 1")));
    assert_eq!(post.status, StatusCode::OK, "{}", post.text);
    let made = commits().await - before;
    // The POST and the reads of the counters themselves are a few; 200 uncached scrapes were 400.
    assert!(made < 30, "{made} transactions for 200 scrapes");
}

/// Prediction streams whose clients leave while PostgreSQL is down end with them: their slots
/// come back during the outage, not when the database returns; the clients that stay are told
/// the database is away, and get results again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_clients_leave_during_a_database_outage_end_with_them() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let mut pg = vap_dev::devstack::PostgresCluster::start(vap_dev::devstack::PostgresOptions::default()).unwrap();
    pg.create_database("outage").await.unwrap();
    let database = pg.settings("outage");
    let mut app = TestApp::spawn_with(move |s| {
        s.database = vap_core::config::DatabaseSettings { pool_size: 8, connect_timeout_ms: 1_000, ..database };
        s.api.max_sse_streams = 4;
    })
    .await;
    app.start_relay();
    let addr = app.api.base.trim_start_matches("http://").to_string();
    let id = app.create_scenario("rtsp://cam/outage").await;
    let stream = format!("GET /api/v1/prediction/{id}/stream HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (head, conn) = raw(&addr, stream.as_bytes(), Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        streams.push(conn);
    }
    let gauge = |metrics: &str| -> Option<i64> {
        metrics.lines().find_map(|l| l.strip_prefix("vap_api_sse_streams ")).and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(gauge(&app.get("/metrics").await.text), Some(4));

    pg.stop();
    // Every stream says the database is away.
    for conn in &mut streams {
        let mut said = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&said).contains("database unavailable") {
            match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => said.extend_from_slice(&buf[..n]),
                other => panic!("no word of the outage: {other:?} after {}", String::from_utf8_lossy(&said)),
            }
        }
    }
    // Three leave; their slots come back while the database is still down.
    let stays = streams.pop().unwrap();
    drop(streams);
    let left_at = std::time::Instant::now();
    common::eventually(Duration::from_secs(15), "the departed streams' slots back during the outage", || async {
        (gauge(&app.get("/metrics").await.text) == Some(1)).then_some(())
    })
    .await;
    eprintln!("departed streams ended {:?} after their clients left", left_at.elapsed());

    // The one that stayed gets results once the database is back.
    let pg = tokio::task::spawn_blocking(move || {
        pg.resume().unwrap();
        pg
    })
    .await
    .unwrap();
    common::eventually(Duration::from_secs(15), "/ready after the outage", || async {
        (app.get("/ready").await.status == StatusCode::OK).then_some(())
    })
    .await;
    app.produce_results(vec![(id, common::result_json(id, 1))]).await;
    let mut stays = stays;
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&said).contains("event: result") {
        match tokio::time::timeout_at(deadline, stays.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => said.extend_from_slice(&buf[..n]),
            other => panic!("no result after the outage: {other:?}"),
        }
    }
    drop(pg);
}

/// Cursors past any frame or event the inbox keeps are the client's mistake: a 400 naming the
/// parameter, never a 500, and a stream never blames the database for them.
#[tokio::test]
async fn cursors_beyond_what_is_stored_are_a_400_not_a_500() {
    let app = TestApp::spawn().await;
    let id = app.create_scenario("rtsp://127.0.0.1:9/cursor").await;
    let max = i64::MAX.to_string();
    let r = app.get(&format!("/api/v1/prediction/{id}?after_frame={max}")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_parameter", "after_frame");
    let r = app.get(&format!("/api/v1/prediction/{id}?after_frame=10000000000000")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["results"], json!([]));
    let stream = format!("/api/v1/prediction/{id}/stream");
    let r = app.api.request(Method::GET, &stream, &[("last-event-id", &max)], bytes::Bytes::new()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_parameter", "Last-Event-ID");
    let r = app.get(&format!("/api/v1/scenario/{id}/events?cursor={max}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// A webhook receiver's secret (its query; user-info is refused outright) is never shown to
/// readers, in a scenario or in the list; the relay still has it.
#[tokio::test]
async fn webhook_urls_are_redacted_for_every_reader() {
    let app = TestApp::spawn().await;
    let webhook = "http://127.0.0.1:9/h?token=SECRET&tenant=acme";
    let id = app.create_scenario_with("rtsp://127.0.0.1:9/hooked", json!({"webhook_url": webhook})).await;
    let one = app.get(&format!("/api/v1/scenario/{id}")).await;
    let list = app.get("/api/v1/scenarios").await;
    for r in [&one, &list] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(!r.text.contains("SECRET") && !r.text.contains("acme"), "{}", r.text);
    }
    assert_eq!(one.json()["options"]["webhook_url"], "http://127.0.0.1:9/h?token=***&tenant=***");
    let stored: String = app
        .pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT options->>'webhook_url' FROM scenarios WHERE scenario_uuid = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, webhook);
}

/// With no token set, a page elsewhere can neither reach the API through a rebound name nor
/// stop a camera with a cross-site form; curl and the console's own page still can.
#[tokio::test]
async fn foreign_host_names_and_cross_site_writes_are_refused() {
    let app = TestApp::spawn().await;
    let id = app.create_scenario("rtsp://127.0.0.1:9/guarded").await;
    let r = app.api.request(Method::GET, "/health", &[("host", "evil.example")], bytes::Bytes::new()).await;
    assert_error(&r, StatusCode::MISDIRECTED_REQUEST, "host_not_allowed", "evil.example");
    let r = app.api.request(Method::GET, "/health", &[("host", "localhost:8080")], bytes::Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);

    let shutdown = format!("/api/v1/scenario/{id}/shutdown");
    let form = [("origin", "http://attacker.example"), ("content-type", "application/x-www-form-urlencoded")];
    let r = app.api.request(Method::POST, &shutdown, &form, bytes::Bytes::new()).await;
    assert_error(&r, StatusCode::FORBIDDEN, "cross_origin", "another site");
    assert_eq!(app.scenario(id).await["status"], "init_startup");
    let own = app.api.base.trim_start_matches("http://").to_string();
    let same = [("origin", format!("http://{own}"))];
    let same: Vec<(&str, &str)> = same.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = app.api.request(Method::POST, &shutdown, &same, bytes::Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// Counts aggregate at most 10,000 buckets: a wider range is a 400 saying so, not years of
/// events on a pool connection.
#[tokio::test]
async fn counts_refuse_a_range_of_too_many_buckets() {
    let app = TestApp::spawn().await;
    let id = app.create_scenario("rtsp://127.0.0.1:9/counted").await;
    let counts = |q: &str| format!("/api/v1/scenario/{id}/counts?{q}");
    let r = app.get(&counts("bucket=1m&since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "range_too_large", "10000 buckets");
    for ok in ["bucket=1h&since=2025-01-01T00:00:00Z&until=2026-01-01T00:00:00Z", "bucket=1m", ""] {
        let r = app.get(&counts(ok)).await;
        assert_eq!(r.status, StatusCode::OK, "{ok}: {}", r.text);
    }
    let r = app.get(&counts("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_parameter", "since must be before until");
}
