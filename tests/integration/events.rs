//! From boxes to events, end to end: a clip the test makes (one person walking across a line
//! into a zone and back), the real API, relay, broker, PostgreSQL, orchestrator and runner; the
//! events the API serves are checked against the clip's truth.

use crate::common;
use crate::fleet;
use crate::media;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::TestApp;
use fleet::{spawn_orchestrator, RunnerReaper};
use media::{media, walker_x};
use serde_json::{json, Value};

/// A vertical line in the middle, drawn upwards (walking right to left is `in`), and a zone on
/// the right from x 0.65.
fn regions() -> Value {
    json!({
        "fps": 5,
        "lines": [{"name": "middle", "points": [[0.5, 1], [0.5, 0]]}],
        "zones": [{"name": "right", "polygon": [[0.65, 0], [1, 0], [1, 1], [0.65, 1]], "classes": ["person"]}],
    })
}

/// Every event of a scenario, read page by page (`limit` per page).
async fn all_events(app: &TestApp, id: uuid::Uuid, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = app.get(&format!("/api/v1/scenario/{id}/events?limit={limit}&cursor={cursor}")).await;
        assert_eq!(r.status, hyper::StatusCode::OK, "{}", r.text);
        let page = r.json();
        let events = page["events"].as_array().unwrap().clone();
        assert!(events.len() <= limit);
        out.extend(events);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

/// When, in the clip, the walker's foot (the bottom centre of its box) is at `x` (0..1) on the
/// way out (`first`) or back.
fn when_at(x: f64, first: bool) -> f64 {
    let foot = |t: f64| (walker_x(t) + 50.0) / 640.0;
    let range: Vec<f64> = if first {
        (0..400).map(|i| i as f64 / 100.0).collect()
    } else {
        (500..900).map(|i| i as f64 / 100.0).collect()
    };
    range.into_iter().find(|&t| if first { foot(t) >= x } else { foot(t) <= x }).unwrap()
}

/// Reads `want` `scene_event`s from the scenario's event stream: each `(id, kind)`.
async fn read_event_stream(
    app: &TestApp,
    id: uuid::Uuid,
    last_event_id: Option<&str>,
    want: usize,
) -> Vec<(String, String)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::get(format!("{}/api/v1/scenario/{id}/events/stream", app.base));
    if let Some(last) = last_event_id {
        req = req.header("last-event-id", last);
    }
    let resp = client.request(req.body(Full::new(bytes::Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(resp.status(), hyper::StatusCode::OK);
    let mut body = resp.into_body();
    let (mut buffer, mut got) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while got.len() < want {
        let frame = tokio::time::timeout_at(deadline, body.frame()).await.expect("events in time").unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.contains("event: scene_event") {
                continue;
            }
            let id = event.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().to_string();
            let data: Value =
                serde_json::from_str(event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
            got.push((id, data["kind"].as_str().unwrap().to_string()));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_across_a_line_into_a_zone_and_back_gives_the_true_events_once_each() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let path = media().walker.to_str().unwrap().to_string();
    let first = app.create_scenario_with(&path, regions()).await;
    let again = app.create_scenario_with(&path, regions()).await;
    let _reaper = RunnerReaper(HashSet::from([first, again]));
    // A client follows the first scenario's events live, from before there are any.
    let both_done = async {
        for id in [first, again] {
            app.wait_for_status(id, "inactive", Duration::from_secs(120)).await;
        }
    };
    let (live, ()) = tokio::join!(read_event_stream(&app, first, None, 4), both_done);
    let scenario = app.scenario(first).await;
    assert_eq!(scenario["options"]["lines"][0]["name"], "middle", "{scenario}");

    // Every stored person has a track; the walker is one track from start to end.
    let prediction = app.prediction(first).await;
    let results = prediction["results"].as_array().unwrap();
    let tracks: BTreeSet<i64> = results
        .iter()
        .flat_map(|r| r["detections"].as_array().unwrap().iter().map(|d| d["track_id"].as_i64().expect("a track id")))
        .collect();
    let with_person = results.iter().filter(|r| !r["detections"].as_array().unwrap().is_empty()).count();
    assert!(with_person >= results.len() * 9 / 10, "the walker is found in {with_person} of {} frames", results.len());
    assert_eq!(tracks.len(), 1, "one walker, one track: {tracks:?}");
    let track = *tracks.iter().next().unwrap();

    // The truth: out across the line, into the zone, out of the zone, back across the line.
    let events = all_events(&app, first, 2).await;
    let seen: Vec<(&str, Option<&str>)> =
        events.iter().map(|e| (e["kind"].as_str().unwrap(), e["direction"].as_str())).collect();
    assert_eq!(
        seen,
        vec![
            ("line_crossed", Some("out")),
            ("object_entered", None),
            ("object_left", None),
            ("line_crossed", Some("in"))
        ],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e["track_id"] == track && e["class"] == "person"), "{events:#?}");
    assert_eq!((events[1]["zone"].as_str(), events[0]["line"].as_str()), (Some("right"), Some("middle")));
    // Each at the right time of the clip: within a frame at 5 fps, and a little for the box.
    let media_s = |e: &Value| {
        let frame = e["frame_number"].as_i64().unwrap();
        let r = results.iter().find(|r| r["frame_number"] == frame).expect("the event's frame is stored");
        r["media_ms"].as_f64().unwrap() / 1000.0
    };
    let truth = [when_at(0.5, true), when_at(0.65, true), when_at(0.65, false), when_at(0.5, false)];
    for (e, want) in events.iter().zip(truth) {
        let got = media_s(e);
        assert!((got - want).abs() <= 0.45, "{} at {got} s, truly at {want} s", e["kind"]);
    }
    let stayed = events[2]["dwell_seconds"].as_f64().unwrap();
    assert!((stayed - (truth[2] - truth[1])).abs() <= 0.6, "in the zone {stayed} s");

    // The same clip again: the same events (ids differ only by scenario).
    let twice: Vec<(String, Option<String>)> = all_events(&app, again, 100)
        .await
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_string(), e["direction"].as_str().map(String::from)))
        .collect();
    let once: Vec<(String, Option<String>)> = seen.iter().map(|(k, d)| (k.to_string(), d.map(String::from))).collect();
    assert_eq!(twice, once);

    // The stream sent the same events, in the same order; resumed after the second, the rest.
    let kinds: Vec<&str> = live.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, seen.iter().map(|(k, _)| *k).collect::<Vec<_>>());
    let resumed = read_event_stream(&app, first, Some(&live[1].0), 2).await;
    assert_eq!(resumed, live[2..].to_vec());

    // Counts, computed by PostgreSQL: summed over buckets (the clip may straddle one).
    let counts = app.get(&format!("/api/v1/scenario/{first}/counts?bucket=1m")).await.json();
    let rows = counts["counts"].as_array().unwrap();
    let total = |region: &str, name: &str, field: &str| -> i64 {
        rows.iter().filter(|r| r[region] == name && r["class"] == "person").map(|r| r[field].as_i64().unwrap()).sum()
    };
    assert_eq!([total("zone", "right", "entered"), total("zone", "right", "left")], [1, 1], "{counts}");
    assert_eq!([total("line", "middle", "crossed_in"), total("line", "middle", "crossed_out")], [1, 1], "{counts}");
    let peak = rows.iter().filter_map(|r| r["peak_occupancy"].as_i64()).max();
    assert_eq!(peak, Some(1), "{counts}");
    let r = app.get(&format!("/api/v1/scenario/{first}/counts?bucket=1d")).await;
    assert_eq!(r.status, hyper::StatusCode::BAD_REQUEST, "{}", r.text);

    // Filters and bad parameters.
    let crossed = app.get(&format!("/api/v1/scenario/{first}/events?kind=line_crossed")).await.json();
    assert_eq!(crossed["events"].as_array().unwrap().len(), 2);
    for (query, mentions) in [
        ("kind=exploded", "kind must be one of"),
        ("since=yesterday", "since must be an RFC 3339 time"),
        ("cursor=zzz", "cursor"),
        ("limit=0", "limit"),
    ] {
        let r = app.get(&format!("/api/v1/scenario/{first}/events?{query}")).await;
        assert_eq!(r.status, hyper::StatusCode::BAD_REQUEST, "{query}: {}", r.text);
        assert!(r.text.contains(mentions), "{query}: {}", r.text);
    }
    let ghost = uuid::Uuid::new_v4();
    assert_eq!(app.get(&format!("/api/v1/scenario/{ghost}/events")).await.status, hyper::StatusCode::NOT_FOUND);
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}
