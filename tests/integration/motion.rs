//! Motion gating end to end: the same clips analysed with and without it by real runners;
//! what the API serves is compared frame by frame.

use crate::common;
use crate::fleet;
use crate::media;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::TestApp;
use fleet::{spawn_orchestrator, RunnerReaper};
use media::{media, still_heavy};
use serde_json::{json, Value};
use uuid::Uuid;
use vap_core::detection::{iou, Bbox};

/// Every stored frame of a scenario, page by page, by frame number.
async fn all_results(app: &TestApp, id: Uuid) -> BTreeMap<i64, Value> {
    let mut out = BTreeMap::new();
    let mut after = -1;
    loop {
        let page = app.get(&format!("/api/v1/prediction/{id}?limit=1000&after_frame={after}")).await.json();
        for r in page["results"].as_array().unwrap() {
            out.insert(r["frame_number"].as_i64().unwrap(), r.clone());
        }
        match page["next_after_frame"].as_i64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

fn boxes(r: &Value) -> Vec<Bbox> {
    r["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b = &d["bbox"];
            [0, 1, 2, 3].map(|i| b[i].as_f64().unwrap() as f32)
        })
        .collect()
}

/// Of the ungated run's boxes, the share the gated run has in the same frame (IoU >= 0.5).
fn recall(ungated: &BTreeMap<i64, Value>, gated: &BTreeMap<i64, Value>) -> (usize, usize) {
    let (mut found, mut all) = (0, 0);
    for (frame, r) in ungated {
        let theirs = gated.get(frame).map(boxes).unwrap_or_default();
        for b in boxes(r) {
            all += 1;
            found += usize::from(theirs.iter().any(|g| iou(&b, g) >= 0.5));
        }
    }
    (found, all)
}

/// A scenario's events once there are 4 (the walker's; events may be stored just after the
/// scenario came to rest).
async fn four_events(app: &TestApp, id: Uuid) -> Vec<Value> {
    common::eventually(Duration::from_secs(30), "4 events", || async {
        let page = app.get(&format!("/api/v1/scenario/{id}/events?limit=100")).await.json();
        let events = page["events"].as_array().unwrap().clone();
        (events.len() >= 4).then_some(events)
    })
    .await
}

fn events_seen(events: &[Value]) -> Vec<(String, Value, Value, Value, i64)> {
    events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["zone"].clone(),
                e["line"].clone(),
                e["direction"].clone(),
                e["frame_number"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_analysis_skips_still_frames_and_finds_what_ungated_analysis_finds() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let clip = still_heavy().to_str().unwrap().to_string();
    let gated = app.create_scenario(&clip).await;
    let ungated = app.create_scenario_with(&clip, json!({"motion_gating": false})).await;
    // The events clip, with a line and a zone: the same events either way.
    let walker = media().walker.to_str().unwrap().to_string();
    let regions = |gating: bool| {
        json!({
            "fps": 5, "motion_gating": gating,
            "lines": [{"name": "middle", "points": [[0.5, 1], [0.5, 0]]}],
            "zones": [{"name": "right", "polygon": [[0.65, 0], [1, 0], [1, 1], [0.65, 1]], "classes": ["person"]}],
        })
    };
    let walk_gated = app.create_scenario_with(&walker, regions(true)).await;
    let walk_ungated = app.create_scenario_with(&walker, regions(false)).await;
    let all = [gated, ungated, walk_gated, walk_ungated];
    let _reaper = RunnerReaper(HashSet::from(all));
    for id in all {
        app.wait_for_status(id, "inactive", Duration::from_secs(300)).await;
    }
    assert_eq!(app.scenario(ungated).await["options"]["motion_gating"], false);

    let (g, u) = (all_results(&app, gated).await, all_results(&app, ungated).await);
    // 70 s at 2 fps, every sampled frame stored either way.
    assert!((135..=142).contains(&u.len()), "{} frames", u.len());
    assert_eq!(g.keys().collect::<Vec<_>>(), u.keys().collect::<Vec<_>>());
    assert!(u.values().all(|r| r["analysed"] == true && r["motion"].is_null()));
    let analysed = g.values().filter(|r| r["analysed"] == true).count();
    // Still: 20 s of grey (40 frames) and the held frame (60) less a run each 10 s, and the
    // walker's standing still.
    assert!(analysed * 2 <= g.len(), "the detector ran on {analysed} of {} frames", g.len());
    assert!(g.values().all(|r| r["motion"].is_number() || r["analysed"] == true), "a frame without motion measure");
    // Not analysed is not "nothing found": the held frame's people are still reported.
    let held = g.values().filter(|r| r["analysed"] == false && !boxes(r).is_empty()).count();
    assert!(held >= 40, "{held} frames not analysed carry the still people");
    let (found, of) = recall(&u, &g);
    assert!(of > 300, "{of} boxes ungated");
    assert!(found as f64 >= 0.98 * of as f64, "gated analysis found {found} of the {of} boxes ungated analysis found");
    println!("motion gating: detector on {analysed} of {} frames; recall {found}/{of}", g.len());

    let (eg, eu) = (four_events(&app, walk_gated).await, four_events(&app, walk_ungated).await);
    assert_eq!(events_seen(&eg), events_seen(&eu), "gated {eg:#?}\nungated {eu:#?}");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}
