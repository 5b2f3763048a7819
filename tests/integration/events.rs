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

/// A scenario's events once there are at least `n` (events travel on their own topic and may
/// be stored just after the scenario came to rest).
async fn at_least(app: &TestApp, id: uuid::Uuid, n: usize, page: usize) -> Vec<Value> {
    common::eventually(Duration::from_secs(30), &format!("{n} events stored"), || async {
        let events = all_events(app, id, page).await;
        (events.len() >= n).then_some(events)
    })
    .await
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
    (last_event_id, query): (Option<&str>, &str),
    want: usize,
) -> Vec<(String, String)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::get(format!("{}/api/v1/scenario/{id}/events/stream{query}", app.base));
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
    // No picture before its runner sends one: a 404 that says so.
    let none = app.get(&format!("/api/v1/scenario/{again}/snapshot.jpg")).await;
    assert_eq!(
        (none.status, none.json()["error"]["code"].as_str()),
        (hyper::StatusCode::NOT_FOUND, Some("no_snapshot"))
    );
    let _reaper = RunnerReaper(HashSet::from([first, again]));
    // A client follows the first scenario's events live, from before there are any.
    let both_done = async {
        for id in [first, again] {
            app.wait_for_status(id, "inactive", Duration::from_secs(120)).await;
        }
    };
    let (live, ()) = tokio::join!(read_event_stream(&app, first, (None, ""), 4), both_done);
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
    let events = at_least(&app, first, 4, 2).await;
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
    let twice: Vec<(String, Option<String>)> = at_least(&app, again, 4, 100)
        .await
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_string(), e["direction"].as_str().map(String::from)))
        .collect();
    let once: Vec<(String, Option<String>)> = seen.iter().map(|(k, d)| (k.to_string(), d.map(String::from))).collect();
    assert_eq!(twice, once);

    // The stream sent the same events, in the same order; resumed after the second, the rest.
    let kinds: Vec<&str> = live.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, seen.iter().map(|(k, _)| *k).collect::<Vec<_>>());
    let resumed = read_event_stream(&app, first, (Some(&live[1].0), "?tail=4"), 2).await;
    assert_eq!(resumed, live[2..].to_vec(), "a resume wins over tail");
    // A new client asking for the last one gets it first (the console starts so).
    let last = read_event_stream(&app, first, (None, "?tail=1"), 1).await;
    assert_eq!(last, live[3..].to_vec());

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

    // Snapshots: the latest, revalidated by its ETag, and one of each crossing with its boxes.
    let info = app.get(&format!("/api/v1/scenario/{first}/snapshot")).await.json();
    assert_eq!((info["width"].as_i64(), info["frame_width"].as_i64()), (Some(640), Some(640)), "{info}");
    let latest = format!("/api/v1/scenario/{first}/snapshot.jpg");
    let picture = app.get(&latest).await;
    let header = |r: &common::Response, name: &str| r.headers[name].to_str().unwrap().to_string();
    assert_eq!(picture.status, hyper::StatusCode::OK);
    assert_eq!(
        (header(&picture, "content-type"), header(&picture, "cache-control")),
        ("image/jpeg".to_string(), "private, no-cache".to_string())
    );
    let etag = header(&picture, "etag");
    assert_eq!(info["etag"], etag.as_str());
    let unchanged = app.request(hyper::Method::GET, &latest, &[("if-none-match", &etag)], bytes::Bytes::new()).await;
    assert_eq!(unchanged.status, hyper::StatusCode::NOT_MODIFIED);
    for e in events.iter().filter(|e| e["kind"] == "line_crossed") {
        let id = e["event_id"].as_str().unwrap();
        let r = app.get(&format!("/api/v1/scenario/{first}/events/{id}/snapshot.jpg?boxes=1")).await;
        assert_eq!(r.status, hyper::StatusCode::OK, "{}", r.text.len());
        assert_eq!(header(&r, "content-type"), "image/jpeg");
        assert!(header(&r, "etag").ends_with("-boxes\""), "{:?}", r.headers);
    }
    for (path, status, code) in [
        (format!("{latest}?boxes=2"), 400, "invalid_parameter"),
        (format!("/api/v1/scenario/{first}/events/{ghost}/snapshot.jpg"), 404, "no_snapshot"),
        (format!("/api/v1/scenario/{ghost}/snapshot.jpg"), 404, "scenario_not_found"),
        (format!("/api/v1/scenario/{first}/events/nope/snapshot.jpg"), 400, "invalid_uuid"),
    ] {
        let r = app.get(&path).await;
        assert_eq!((r.status.as_u16(), r.json()["error"]["code"].as_str()), (status, Some(code)), "{path}");
    }
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// What a webhook receiver got: each request's headers of interest and body.
#[derive(Debug, Clone)]
struct Received {
    event_id: String,
    signature: String,
    body: bytes::Bytes,
}

/// A receiver on loopback that answers 500 to its first `fail_first` requests, then 204.
async fn webhook_receiver(fail_first: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Received>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/vap?token=abc", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
    let seen = std::sync::Arc::clone(&got);
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, tries) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&tries));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (seen, tries) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&tries));
                    async move {
                        let header = |name: &str| {
                            req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
                        };
                        let (event_id, signature) = (header("vap-event-id"), header("vap-signature"));
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let status = if n < fail_first {
                            500
                        } else {
                            vap_core::sys::lock(&seen).push(Received { event_id, signature, body });
                            204
                        };
                        let answer = hyper::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, got)
}

/// Every event reaches the scenario's webhook, at least once and in event order, signed with
/// the configured secret, although the receiver fails its first two tries; the API shows each
/// delivered. A receiver the destination policy refuses is never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_every_event_signed_in_order_through_failures() {
    const SECRET: &str = "whsec-test-0123456789";
    let (url, got) = webhook_receiver(2).await;
    let mut app = TestApp::spawn_with(|s| {
        s.api.allow_file_urls = true;
        s.webhooks.secret = vap_core::config::Secret::new(SECRET);
        s.webhooks.poll_interval_ms = 100;
        s.webhooks.retry_max_ms = 1_000;
    })
    .await;
    app.start_relay();
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let mut options = regions();
    options["webhook_url"] = url.clone().into();
    let id = app.create_scenario_with(media().walker.to_str().unwrap(), options).await;
    let _reaper = RunnerReaper(HashSet::from([id]));
    app.wait_for_status(id, "inactive", Duration::from_secs(120)).await;
    let stored: Vec<String> =
        at_least(&app, id, 4, 100).await.iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored.len(), 4);
    let received = common::eventually(Duration::from_secs(60), "every event delivered", || async {
        let got = vap_core::sys::lock(&got).clone();
        let ids: BTreeSet<String> = got.iter().map(|r| r.event_id.clone()).collect();
        (ids.len() == stored.len()).then_some(got)
    })
    .await;
    let key = vap_core::signing::ResultsKey::new(SECRET.as_bytes().to_vec());
    let mut first_seen: Vec<String> = Vec::new();
    for r in &received {
        let hex = r.signature.strip_prefix("sha256=").expect("sha256=<hex>");
        assert!(key.verify(&r.body, hex.as_bytes()), "a body its signature does not sign: {r:?}");
        let event: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(event["event_id"].as_str(), Some(r.event_id.as_str()));
        assert_eq!(event["scenario_uuid"], id.to_string());
        if !first_seen.contains(&r.event_id) {
            first_seen.push(r.event_id.clone());
        }
    }
    assert_eq!(first_seen, stored, "in event order, and exactly the stored set");
    let shown = common::eventually(Duration::from_secs(10), "deliveries recorded", || async {
        let events = all_events(&app, id, 100).await;
        events.iter().all(|e| !e["webhooks"][0]["delivered_at"].is_null()).then_some(events)
    })
    .await;
    assert!(shown[0]["webhooks"][0]["attempts"].as_i64().unwrap() >= 2, "the first one was retried: {shown:#?}");
    assert!(shown[0]["webhooks"][0]["url"].as_str().unwrap().contains("token=***"), "{shown:#?}");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// The destination policy holds for webhooks: the API refuses an address it refuses (400
/// naming webhook_url), and the sender never connects to one (the global webhook, which no
/// request checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receivers_the_policy_refuses_are_never_contacted() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let hook = format!("http://localhost:{port}/hook");
    let global = hook.clone();
    let mut app = TestApp::spawn_with(move |s| {
        // The default policy: loopback refused. The clip is a file: the runner needs no network.
        s.destinations.allow = Vec::new();
        s.api.allow_file_urls = true;
        s.webhooks.secret = vap_core::config::Secret::new("whsec");
        s.webhooks.url = global;
        s.webhooks.poll_interval_ms = 100;
    })
    .await;
    let mut body = regions();
    body["camera_url"] = media().walker.to_str().unwrap().into();
    body["webhook_url"] = format!("http://127.0.0.1:{port}/hook").into();
    let r = app.post_json("/api/v1/scenario/init", &body).await;
    assert_eq!(r.status, hyper::StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.json()["error"]["field"], "webhook_url", "{}", r.text);

    app.start_relay();
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let id = app.create_scenario_with(media().walker.to_str().unwrap(), regions()).await;
    let _reaper = RunnerReaper(HashSet::from([id]));
    app.wait_for_status(id, "inactive", Duration::from_secs(120)).await;
    let events = common::eventually(Duration::from_secs(30), "a refused delivery recorded", || async {
        let events = all_events(&app, id, 100).await;
        (events.len() == 4 && events[0]["webhooks"][0]["attempts"].as_i64() >= Some(1)).then_some(events)
    })
    .await;
    let error = events[0]["webhooks"][0]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("loopback") || error.contains("refused"), "{error}");
    assert!(events.iter().all(|e| e["webhooks"][0]["delivered_at"].is_null()));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "the refused receiver was contacted");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// The runner killed with SIGKILL mid-clip and started again by its backend: the clip is
/// analysed again from its start, numbered by media time as before, and the tracker, given the
/// same frames, makes the same tracks and events: none stored twice, none lost, one track id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_clip_and_restarted_stores_each_event_once() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = fleet::spawn_orchestrator(&app, 2);
    let mut options = regions();
    // Every frame, so the clip lasts long enough to be killed in.
    options["fps"] = 10.into();
    let id = app.create_scenario_with(media().walker.to_str().unwrap(), options).await;
    let set = HashSet::from([id]);
    let _reaper = RunnerReaper(set.clone());
    // Killed once its first event is stored (the walker crosses the line at 2 s of 10).
    let pid = common::eventually(Duration::from_secs(120), "the first event stored", || async {
        let first = !all_events(&app, id, 10).await.is_empty();
        first.then(|| fleet::runner_processes(&set).get(&id).map(|p| p[0])).flatten()
    })
    .await;
    vap_core::sys::signal(pid, vap_core::sys::SIGKILL);
    let again = common::eventually(Duration::from_secs(60), "the runner started again", || async {
        fleet::runner_processes(&set).get(&id).map(|p| p[0]).filter(|p| *p != pid)
    })
    .await;
    assert_ne!(again, pid);
    app.wait_for_status(id, "inactive", Duration::from_secs(120)).await;
    let events = at_least(&app, id, 4, 100).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["line_crossed", "object_entered", "object_left", "line_crossed"], "{events:#?}");
    let tracks: BTreeSet<i64> = events.iter().map(|e| e["track_id"].as_i64().unwrap()).collect();
    assert_eq!(tracks.len(), 1, "{events:#?}");
    // A file's frames are numbered by media time: the frames analysed twice are stored once.
    let frames = app.prediction(id).await["total_frames_processed"].as_i64().unwrap();
    assert!((95..=100).contains(&frames), "10 s at 10 fps, each once: {frames}");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// Real pedestrians (opencv-doc's vtest.avi, 20 s) with a line across the pavement: two runs of
/// the same clip count the same crossings, and something is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pedestrians_crossing_a_line_are_counted_the_same_on_two_runs() {
    let app = TestApp::spawn_for_runners().await;
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let options = json!({
        "fps": 5,
        "lines": [{"name": "pavement", "points": [[0.5, 1], [0.5, 0]]}],
        "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}],
    });
    let path = media().people.to_str().unwrap().to_string();
    let runs = [app.create_scenario_with(&path, options.clone()).await, app.create_scenario_with(&path, options).await];
    let _reaper = RunnerReaper(HashSet::from(runs));
    for id in runs {
        app.wait_for_status(id, "inactive", Duration::from_secs(240)).await;
    }
    let mut counted = Vec::new();
    for id in runs {
        // Events travel on their own topic: the last (every visit closes when the clip ends,
        // so as many left as entered) may be stored just after the scenario came to rest.
        let row = common::eventually(Duration::from_secs(30), "every visit closed", || async {
            let counts = app.get(&format!("/api/v1/scenario/{id}/counts?bucket=1h")).await.json();
            let sum = |field: &str| -> i64 {
                counts["counts"].as_array().unwrap().iter().filter_map(|r| r[field].as_i64()).sum()
            };
            let row = [sum("crossed_in"), sum("crossed_out"), sum("entered"), sum("left")];
            (row[2] == row[3]).then_some(row)
        })
        .await;
        counted.push(row);
    }
    eprintln!("vtest.avi, 20 s at 5 fps: crossed in, out, entered, left = {:?}", counted[0]);
    assert_eq!(counted[0], counted[1], "two runs of one clip");
    assert!(counted[0][0] + counted[0][1] > 0, "nobody crossed: {counted:?}");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}
