//! What each camera looks for, end to end: scenarios posted with options to the real API, run
//! by the local backend's runner processes on opencv-doc's pedestrian video, and what the API
//! then serves.

use crate::common;
use crate::fleet;
use crate::media;

use std::collections::HashSet;
use std::time::Duration;

use common::TestApp;
use fleet::{spawn_orchestrator, RunnerReaper};
use media::{free_port, media, models_dir, RtspServer};
use serde_json::{json, Value};
use uuid::Uuid;

const COCO: &str = "yolov3_tiny_coco_416";

/// Every stored frame of a finished scenario.
async fn results(app: &TestApp, id: Uuid) -> Vec<Value> {
    let p = app.prediction(id).await;
    p["results"].as_array().unwrap().clone()
}

fn classes(results: &[Value]) -> HashSet<String> {
    results
        .iter()
        .flat_map(|r| r["detections"].as_array().unwrap().iter().map(|d| d["class"].as_str().unwrap().to_string()))
        .collect()
}

/// Box centres, as fractions of the 640 px width of the test video.
fn centres_x(results: &[Value]) -> Vec<f64> {
    results
        .iter()
        .flat_map(|r| r["detections"].as_array().unwrap().iter())
        .map(|d| (d["bbox"][0].as_f64().unwrap() + d["bbox"][2].as_f64().unwrap()) / 2.0 / 640.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_and_mask_decide_what_is_stored_and_each_result_says_what_produced_it() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 3);
    let video = media().short.to_str().unwrap().to_string();
    let left_half = json!([[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]]);
    let vehicles = app.create_scenario_with(&video, json!({"model": COCO, "classes": ["car", "truck"]})).await;
    let masked =
        app.create_scenario_with(&video, json!({"model": COCO, "classes": ["person"], "mask": left_half})).await;
    let people = app.create_scenario_with(&video, json!({"model": COCO, "classes": ["person"]})).await;
    let _reaper = RunnerReaper(HashSet::from([vehicles, masked, people]));
    for id in [vehicles, masked, people] {
        app.wait_for_status(id, "inactive", Duration::from_secs(240)).await;
    }

    // 5 s at the default 2 fps.
    let vehicles = results(&app, vehicles).await;
    assert_eq!(vehicles.len(), 10, "{vehicles:?}");
    let found = classes(&vehicles);
    assert!(!found.is_empty() && found.is_subset(&HashSet::from(["car".into(), "truck".into()])), "{found:?}");
    let with_vehicle = vehicles.iter().filter(|r| !r["detections"].as_array().unwrap().is_empty()).count();
    assert!(with_vehicle >= 6, "the parked car and van in most frames: {with_vehicle} of 10");

    let people = results(&app, people).await;
    let masked = results(&app, masked).await;
    assert_eq!(classes(&people), HashSet::from(["person".to_string()]));
    assert_eq!(classes(&masked), HashSet::from(["person".to_string()]));
    let (all, right) = (centres_x(&people), centres_x(&masked));
    assert!(all.iter().any(|x| *x < 0.5), "without the mask some people are on the left: {all:?}");
    assert!(right.iter().all(|x| *x >= 0.5), "no stored box centre under the mask: {right:?}");
    assert!(!right.is_empty(), "people on the right are still found");

    // Provenance: the model, its file's digest, one runner instance, and where in the file.
    let manifest = vap_core::models::Manifest::load(&models_dir().join(format!("{COCO}.toml"))).unwrap();
    for stored in [&vehicles, &people, &masked] {
        let runners: HashSet<&str> = stored.iter().map(|r| r["runner"].as_str().unwrap()).collect();
        assert_eq!(runners.len(), 1, "{runners:?}");
        let mut last_ms = -1.0;
        for r in stored.iter() {
            assert_eq!(r["model"], COCO, "{r}");
            assert_eq!(r["model_sha256"].as_str(), manifest.sha256.as_deref(), "{r}");
            let ms = r["media_ms"].as_f64().unwrap_or_else(|| panic!("a file's result has its media position: {r}"));
            assert!(ms > last_ms && ms <= 5_000.0, "media positions increase within the 5 s file: {r}");
            last_ms = ms;
        }
    }
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_switches_a_live_camera_to_another_model_without_losing_or_repeating_a_frame() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let body = json!({"fps": 2, "model": "ssdlite_person_300"});
    let id = app.create_scenario_with(&format!("rtsp://127.0.0.1:{port}/cam"), body).await;
    let _reaper = RunnerReaper(HashSet::from([id]));
    // Anyone with the broker's login may write control records: unsigned, or signed with
    // another key, with options no request could set and the highest revision. The runner
    // refuses both (no switch, no crash), and the real change below still applies.
    let forged = serde_json::to_vec(&json!({
        "scenario_uuid": id, "revision": i64::MAX,
        "options": {"model": COCO, "fps": 2, "snapshot_interval_s": -1}
    }))
    .unwrap();
    let wrong_key = vap_core::signing::ResultsKey::new(vec![7; 32]).sign(&forged);
    let control = app.settings.kafka.topic_runner_control.clone();
    app.produce_raw_to(&control, vec![(id, forged.clone(), None), (id, forged, Some(wrong_key))]).await;
    let count = |model: &'static str| {
        let app = &app;
        async move { results(app, id).await.iter().filter(|r| r["model"] == model).count() }
    };
    common::eventually(Duration::from_secs(90), "results of the person model", || async {
        (count("ssdlite_person_300").await >= 4).then_some(())
    })
    .await;

    let r =
        app.patch_json(&format!("/api/v1/scenario/{id}"), &json!({"model": COCO, "classes": ["person", "car"]})).await;
    assert_eq!(r.status, hyper::StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["options_revision"], 1);
    common::eventually(Duration::from_secs(30), "results of the COCO model", || async {
        (count(COCO).await >= 6).then_some(())
    })
    .await;
    app.shutdown_scenario(id).await;
    app.wait_for_status(id, "inactive", Duration::from_secs(30)).await;

    let stored = results(&app, id).await;
    let models: Vec<&str> = stored.iter().map(|r| r["model"].as_str().unwrap()).collect();
    let switch = models.iter().position(|m| *m == COCO).unwrap();
    assert!(models[..switch].iter().all(|m| *m == "ssdlite_person_300"), "one switch, in frame order: {models:?}");
    assert!(models[switch..].iter().all(|m| *m == COCO), "one switch, in frame order: {models:?}");
    assert!(classes(&stored[switch..]).is_subset(&HashSet::from(["person".into(), "car".into()])));
    let revisions: HashSet<(i64, &str)> =
        stored.iter().map(|r| (r["options_revision"].as_i64().unwrap(), r["model"].as_str().unwrap())).collect();
    assert_eq!(revisions, HashSet::from([(0, "ssdlite_person_300"), (1, COCO)]));
    // The same runner process throughout: switched in place, not restarted.
    let runners: HashSet<&str> = stored.iter().map(|r| r["runner"].as_str().unwrap()).collect();
    assert_eq!(runners.len(), 1, "{runners:?}");
    // Frame numbers are milliseconds of capture time: none twice (the key), and the last frame
    // of the old model and the first of the new 1/fps apart, give or take one 100 ms source
    // frame: the new model was loaded beside the old one, so the switch skips nothing.
    let frames: Vec<i64> = stored.iter().map(|r| r["frame_number"].as_i64().unwrap()).collect();
    let gaps: Vec<i64> = frames.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g > 0), "{frames:?}");
    let at_switch = gaps[switch - 1];
    eprintln!("gap at the switch (ms): {at_switch}; all: {gaps:?}");
    assert!(at_switch <= 500 + 150, "no analysed frame lost at the switch: {at_switch} ms in {gaps:?}");
    // After it, the heavier model (debug-built here) sets the pace a live camera is analysed
    // at on a loaded 2-core machine: seen 1-1.5 s, which says nothing about the switch.
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}
