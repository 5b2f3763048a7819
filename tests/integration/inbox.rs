//! The inbox (Kafka `results` -> PostgreSQL) and the prediction API that serves what it stores.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::{eventually, reqwest_text, result_json, TestApp};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;

async fn stored(app: &TestApp) -> i64 {
    app.scalar("SELECT count(*) FROM scenario_results").await
}

/// Waits until every partition's stored position is at its high watermark.
async fn caught_up(app: &TestApp) {
    eventually(Duration::from_secs(30), "inbox caught up", || async {
        (app.scalar("SELECT COALESCE(sum(high_watermark - next_offset), -1)::bigint FROM consumer_positions").await
            == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_result_produced_twice_is_stored_once_and_bad_records_are_skipped() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.metrics_listen = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap())
    })
    .await;
    let scenarios = [
        app.create_scenario("rtsp://cam/a").await,
        app.create_scenario("rtsp://cam/b").await,
        app.create_scenario("rtsp://cam/c").await,
    ];
    let ghost = uuid::Uuid::new_v4();
    let mut records = Vec::new();
    for frame in 0..300 {
        for s in &scenarios {
            records.push((*s, result_json(*s, frame)));
        }
    }
    let s0 = scenarios[0];
    let bad: Vec<(uuid::Uuid, Vec<u8>)> = vec![
        (s0, b"not json".to_vec()),
        (s0, br#"{"scenario_uuid": "x"}"#.to_vec()),
        (s0, format!(r#"{{"scenario_uuid":"{s0}","frame_number":-3,"timestamp":"2026-11-24T10:00:00Z","detections":[]}}"#).into_bytes()),
        (s0, format!(r#"{{"scenario_uuid":"{s0}","frame_number":9999,"timestamp":"2026-11-24T10:00:00Z","detections":[{{"class":"person","confidence":7,"bbox":[0,0,1,1]}}]}}"#).into_bytes()),
        (ghost, result_json(ghost, 1)),
    ];
    // Bad records in the middle, then every good record a second time.
    let (first_half, second_half) = records.split_at(records.len() / 2);
    let mut stream: Vec<(uuid::Uuid, Vec<u8>)> = first_half.to_vec();
    stream.extend(bad);
    stream.extend_from_slice(second_half);
    stream.extend(records.iter().cloned());
    app.produce_results(stream).await;

    app.start_relay();
    eventually(Duration::from_secs(60), "900 results stored", || async { (stored(&app).await == 900).then_some(()) })
        .await;
    // Give a wrong implementation time to store more (it must not).
    caught_up(&app).await;
    assert_eq!(stored(&app).await, 900);
    for s in &scenarios {
        let p = app.get(&format!("/api/v1/prediction/{s}?limit=1")).await.json();
        assert_eq!(p["status"], "active", "the first result activates the scenario");
        assert_eq!(p["total_frames_processed"], 300);
        let first = &p["results"][0];
        assert_eq!(first["frame_number"], 0);
        assert_eq!(first["detections"][0]["class"], "person");
        assert_eq!(first["detections"][0]["bbox"], serde_json::json!([10.0, 20.0, 110.0, 220.0]));
    }
    let metrics = reqwest_text(&format!("http://{}/metrics", app.settings.relay.metrics_listen)).await;
    assert!(metrics.contains(r#"vap_inbox_rejected_total{reason="malformed"} 4"#), "{metrics}");
    assert!(metrics.contains(r#"vap_inbox_rejected_total{reason="unknown_scenario"} 1"#), "{metrics}");
    assert!(metrics.contains("vap_inbox_results_stored_total 900"), "{metrics}");
    assert!(metrics.contains("vap_inbox_duplicates_total 900"), "{metrics}");
}

#[tokio::test]
async fn a_poisoned_record_is_set_aside_and_its_partition_goes_on() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.metrics_listen = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap())
    })
    .await;
    let (s0, s1) = (app.create_scenario("rtsp://cam/a").await, app.create_scenario("rtsp://cam/b").await);
    // A value PostgreSQL refuses that no check here foresees: this database refuses frame 777.
    let client = app.pool.get().await.unwrap();
    client
        .batch_execute("ALTER TABLE scenario_results ADD CONSTRAINT test_refuses_777 CHECK (frame_number <> 777)")
        .await
        .unwrap();
    let nul = format!(
        r#"{{"scenario_uuid":"{s0}","frame_number":100,"timestamp":"2026-11-24T10:00:00Z","detections":[{{"class":"per\u0000son","confidence":0.5,"bbox":[0,0,1,1]}}]}}"#
    );
    let mut stream: Vec<(uuid::Uuid, Vec<u8>)> = (0..10).map(|f| (s0, result_json(s0, f))).collect();
    stream.push((s0, nul.into_bytes()));
    stream.push((s1, result_json(s0, 101))); // keyed as another scenario
    stream.push((s0, result_json(s0, 777)));
    stream.extend((200..210).map(|f| (s0, result_json(s0, f))));
    app.produce_results(stream).await;

    app.start_relay();
    eventually(Duration::from_secs(60), "the good results stored", || async {
        (stored(&app).await == 20).then_some(())
    })
    .await;
    caught_up(&app).await;
    let rows = client
        .query("SELECT reason, record_value FROM dead_letters WHERE consumer = 'inbox' ORDER BY reason", &[])
        .await
        .unwrap();
    let reasons: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("key_mismatch"), "{reasons:?}");
    assert!(reasons[1].starts_with("malformed") && reasons[1].contains("NUL"), "{reasons:?}");
    assert!(reasons[2].starts_with("refused by PostgreSQL") && reasons[2].contains("test_refuses_777"), "{reasons:?}");
    assert!(rows.iter().all(|r| r.get::<_, Option<Vec<u8>>>(1).is_some_and(|v| !v.is_empty())), "the records are kept");
    assert_eq!(app.get(&format!("/api/v1/prediction/{s0}")).await.json()["total_frames_processed"], 20);
    let metrics = reqwest_text(&format!("http://{}/metrics", app.settings.relay.metrics_listen)).await;
    assert!(metrics.contains("vap_inbox_dead_letters_total 3"), "{metrics}");
}

#[tokio::test]
async fn kill_9_of_the_inbox_mid_stream_stores_each_result_exactly_once() {
    let app = TestApp::spawn().await;
    let s = app.create_scenario("rtsp://cam/k").await;
    let t = app.create_scenario("rtsp://cam/l").await;
    let records: Vec<_> = (0..4000).flat_map(|f| [(s, result_json(s, f)), (t, result_json(t, f))]).collect();
    app.produce_results(records).await;
    let mut relay = app.spawn_relay_process();
    eventually(Duration::from_secs(60), "some results stored", || async { (stored(&app).await > 0).then_some(()) })
        .await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    let at_kill = stored(&app).await;
    eprintln!("stored when the relay was killed: {at_kill} of 8000");
    let mut relay = app.spawn_relay_process();
    eventually(Duration::from_secs(60), "8000 results stored", || async { (stored(&app).await == 8000).then_some(()) })
        .await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    let p = app.get(&format!("/api/v1/prediction/{s}?limit=1")).await.json();
    assert_eq!(p["total_frames_processed"], 4000, "the counter agrees with the rows");
    assert_eq!(app.scalar("SELECT sum(frames_processed)::bigint FROM scenarios").await, 8000);
}

#[tokio::test]
async fn prediction_pages_deliver_every_result_once_in_frame_order() {
    let mut app = TestApp::spawn().await;
    let s = app.create_scenario("rtsp://cam/pages").await;
    // Frames out of order and with gaps, as a restarted runner might produce them.
    let frames: Vec<i64> = (0..250).map(|i| (i * 7919) % 250 * 3).collect();
    app.produce_results(frames.iter().map(|f| (s, result_json(s, *f))).collect()).await;
    app.start_relay();
    eventually(Duration::from_secs(60), "250 stored", || async { (stored(&app).await == 250).then_some(()) }).await;

    let mut got = Vec::new();
    let mut after = -1i64;
    loop {
        let r = app.get(&format!("/api/v1/prediction/{s}?after_frame={after}&limit=40")).await;
        assert_eq!(r.status, StatusCode::OK);
        let page = r.json();
        for res in page["results"].as_array().unwrap() {
            got.push(res["frame_number"].as_i64().unwrap());
        }
        match page["next_after_frame"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let mut want = frames.clone();
    want.sort();
    assert_eq!(got, want);
    // The default page is bounded, and the maximum is enforced.
    let r = app.get(&format!("/api/v1/prediction/{s}")).await.json();
    assert_eq!(r["results"].as_array().unwrap().len(), 100);
    assert_eq!(app.get(&format!("/api/v1/prediction/{s}?limit=1001")).await.status, StatusCode::BAD_REQUEST);
}

/// Reads `want` SSE `result` events (or fails after `timeout`), returning their ids.
async fn read_sse(app: &TestApp, path: &str, headers: &[(&str, &str)], want: usize, timeout: Duration) -> Vec<i64> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::get(format!("{}{path}", app.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buffer = String::new();
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while ids.len() < want {
        let frame =
            tokio::time::timeout_at(deadline, body.frame()).await.expect("SSE events in time").unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.contains("event: result") {
                continue;
            }
            let id: i64 = event.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().parse().unwrap();
            let data: serde_json::Value =
                serde_json::from_str(event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
            assert_eq!(data["frame_number"], id);
            ids.push(id);
        }
    }
    ids
}

#[tokio::test]
async fn sse_delivers_every_new_result_exactly_once_and_resumes_from_last_event_id() {
    let mut app = TestApp::spawn().await;
    let s = app.create_scenario("rtsp://cam/live").await;
    let other = app.create_scenario("rtsp://cam/other").await;
    app.start_relay();
    let path = format!("/api/v1/prediction/{s}/stream");
    let reader = read_sse(&app, &path, &[], 300, Duration::from_secs(60));
    let producer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for chunk in (0..300).collect::<Vec<i64>>().chunks(50) {
            // Each frame twice, interleaved with another scenario's results.
            let mut batch = Vec::new();
            for f in chunk {
                batch.push((s, result_json(s, *f)));
                batch.push((other, result_json(other, *f)));
                batch.push((s, result_json(s, *f)));
            }
            app.produce_results(batch).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (ids, ()) = tokio::join!(reader, producer);
    assert_eq!(ids, (0..300).collect::<Vec<i64>>(), "each frame once, in order");

    // A reconnecting EventSource sends Last-Event-ID and gets only what it missed.
    let resumed = read_sse(&app, &path, &[("last-event-id", "289")], 10, Duration::from_secs(10)).await;
    assert_eq!(resumed, (290..300).collect::<Vec<i64>>());
    let replay = read_sse(&app, &format!("{path}?after_frame=-1"), &[], 300, Duration::from_secs(10)).await;
    assert_eq!(replay.len(), 300);
}

/// Only the runner of a scenario can put results in it: records must carry a signature made
/// with the scenario's key, frames may not come from the future, and nothing is taken for a
/// scenario at rest. Each refusal is counted by reason and kept in dead_letters.
#[tokio::test]
async fn only_records_signed_with_the_scenarios_key_are_stored() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.metrics_listen = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap())
    })
    .await;
    let mine = app.create_scenario("rtsp://cam/mine").await;
    let theirs = app.create_scenario("rtsp://cam/theirs").await;
    let their_key = vap_core::signing::ResultsKey::from_hex(&app.results_key(theirs).await).unwrap();
    let my_key = vap_core::signing::ResultsKey::from_hex(&app.results_key(mine).await).unwrap();
    app.produce_results((0..5).map(|f| (mine, result_json(mine, f))).collect()).await;
    let forged = result_json(mine, 6);
    let future = result_json(mine, 1_000_000_000_000);
    app.produce_raw(vec![
        (mine, result_json(mine, 5), None),
        (mine, forged.clone(), Some(their_key.sign(&forged))),
        (mine, future.clone(), Some(my_key.sign(&future))),
        (mine, result_json(mine, 7), Some(b"0123abcd".to_vec())),
    ])
    .await;
    let end = serde_json::to_vec(&serde_json::json!({
        "scenario_uuid": mine, "timestamp": chrono::Utc::now(), "end_of_stream": "finished", "frames_analysed": 5,
    }))
    .unwrap();
    app.produce_results(vec![(mine, end.clone())]).await;
    app.start_relay();
    app.wait_for_status(mine, "inactive", Duration::from_secs(30)).await;
    caught_up(&app).await;
    assert_eq!(stored(&app).await, 5);
    // The end again (a replay, signed as the runner signed it): refused. A frame captured
    // before the rest that arrives after it (a runner's flush) is still stored.
    let late = result_json(mine, 8);
    app.produce_raw(vec![(mine, end.clone(), Some(my_key.sign(&end)))]).await;
    app.produce_raw(vec![(mine, late.clone(), Some(my_key.sign(&late)))]).await;
    eventually(Duration::from_secs(30), "five records set aside, the late frame stored", || async {
        (app.scalar("SELECT count(*) FROM dead_letters").await == 5 && stored(&app).await == 6).then_some(())
    })
    .await;
    let metrics = reqwest_text(&format!("http://{}/metrics", app.settings.relay.metrics_listen)).await;
    for (reason, n) in [("unsigned", 1), ("bad_signature", 2), ("frame_out_of_window", 1), ("not_running", 1)] {
        assert!(
            metrics.contains(&format!(r#"vap_inbox_rejected_total{{reason="{reason}"}} {n}"#)),
            "{reason}: {metrics}"
        );
    }
    let p = app.prediction(mine).await;
    let frames: Vec<i64> =
        p["results"].as_array().unwrap().iter().map(|r| r["frame_number"].as_i64().unwrap()).collect();
    assert_eq!(frames, vec![0, 1, 2, 3, 4, 8]);
    assert_eq!(p["status"], "inactive", "the replayed end changed nothing");
}

/// PostgreSQL restarted (fast shutdown, then up again) while results stream to an SSE client
/// and scenarios are being created: POSTs answer 200 or 503 (never 500) and every 200 is
/// stored; /ready is back within 10 s; the stream goes on with no frame missing or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_loses_nothing_and_streams_resume_without_gap_or_duplicate() {
    let pg = vap_dev::devstack::PostgresCluster::start(vap_dev::devstack::PostgresOptions::default()).unwrap();
    pg.create_database("restarted").await.unwrap();
    let database = pg.settings("restarted");
    let mut app = TestApp::spawn_with(move |s| {
        s.database = vap_core::config::DatabaseSettings { pool_size: 8, connect_timeout_ms: 1_000, ..database };
    })
    .await;
    app.start_relay();
    let s = app.create_scenario("rtsp://cam/restarted").await;
    let path = format!("/api/v1/prediction/{s}/stream");
    let reading = read_sse(&app, &path, &[], 20, Duration::from_secs(120));
    let posting = async {
        let mut statuses = Vec::new();
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = app
                .post_json(
                    "/api/v1/scenario/init",
                    &serde_json::json!({"camera_url": format!("rtsp://cam/during-{i}")}),
                )
                .await;
            statuses.push(r.status.as_u16());
        }
        statuses
    };
    let restarting = async {
        let mut pg = pg;
        tokio::time::sleep(Duration::from_millis(500)).await;
        app.produce_results((0..10).map(|f| (s, result_json(s, f))).collect()).await;
        eventually(Duration::from_secs(30), "10 stored", || async { (stored(&app).await == 10).then_some(()) }).await;
        // On its own thread: the POSTs and the stream go on meanwhile.
        let pg = tokio::task::spawn_blocking(move || {
            pg.restart().unwrap();
            pg
        })
        .await
        .unwrap();
        let restarted = std::time::Instant::now();
        eventually(Duration::from_secs(10), "/ready after the restart", || async {
            (app.get("/ready").await.status == StatusCode::OK).then_some(())
        })
        .await;
        let ready_after = restarted.elapsed();
        app.produce_results((10..20).map(|f| (s, result_json(s, f))).collect()).await;
        (ready_after, pg)
    };
    let (ids, statuses, (ready_after, _pg)) = tokio::join!(reading, posting, restarting);
    assert_eq!(ids, (0..20).collect::<Vec<i64>>(), "the stream skipped or repeated a frame");
    assert!(ready_after < Duration::from_secs(10), "{ready_after:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    let accepted = statuses.iter().filter(|s| **s == 200).count() as i64;
    assert_eq!(
        app.scalar("SELECT count(*) FROM scenarios WHERE camera_url LIKE 'rtsp://cam/during-%'").await,
        accepted
    );
    eprintln!("ready {ready_after:?} after the restart; POSTs: {statuses:?}");
}

/// Snapshots are stored once each and kept within their bounds (the latest periodic one, and
/// the newest `inbox.snapshots_per_scenario` taken for events); an unsigned one is set aside
/// without its picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_stored_once_within_their_bounds_and_unsigned_ones_set_aside() {
    let mut app = TestApp::spawn_with(|s| s.inbox.snapshots_per_scenario = 3).await;
    let id = app.create_scenario("rtsp://cam/snapshots").await;
    let snapshot = |frame: i64, for_event: bool| vap_core::events::Snapshot {
        version: vap_core::events::RECORD_VERSION,
        scenario_uuid: id,
        frame_number: frame,
        timestamp: chrono::Utc::now(),
        width: 320,
        height: 240,
        frame_width: 640,
        frame_height: 480,
        detections: Vec::new(),
        event_ids: if for_event { vec![uuid::Uuid::new_v4()] } else { Vec::new() },
        jpeg: vec![0xFF, 0xD8, 0xFF, 0xE0, b'\n', 0],
    };
    // Frames 0..900: events on the even hundreds, periodic ones on the odd; each sent twice.
    let sent: Vec<vap_core::events::Snapshot> = (0..10).map(|i| snapshot(i * 100, i % 2 == 0)).collect();
    let records: Vec<(uuid::Uuid, Vec<u8>)> =
        sent.iter().chain(sent.iter()).map(|s| (id, s.to_record_value())).collect();
    let topic = app.settings.kafka.topic_snapshots.clone();
    app.produce_signed(&topic, records).await;
    app.produce_raw_to(&topic, vec![(id, snapshot(5_000, false).to_record_value(), None)]).await;
    app.start_relay();
    caught_up(&app).await;
    let client = app.pool.get().await.unwrap();
    let kept: Vec<(i64, bool)> = client
        .query("SELECT frame_number, cardinality(event_ids) > 0 FROM scenario_snapshots ORDER BY frame_number", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kept, vec![(400, true), (600, true), (800, true), (900, false)]);
    let latest = app.get(&format!("/api/v1/scenario/{id}/snapshot")).await.json();
    assert_eq!(latest["frame_number"], 900, "{latest}");
    let set_aside = client
        .query_one("SELECT reason, record_value IS NULL FROM dead_letters WHERE topic = $1", &[&topic])
        .await
        .unwrap();
    let (reason, without_picture): (String, bool) = (set_aside.get(0), set_aside.get(1));
    assert!(reason.starts_with("unsigned") && without_picture, "{reason}");
}

/// A finished scenario is deleted with everything stored of it (results, events, snapshots,
/// records set aside), only by an operate token and only once it is at rest; its runner's late
/// records are then refused as of an unknown scenario, and the other scenario is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_scenario_is_deleted_with_everything_stored_of_it() {
    let mut app = TestApp::spawn_with(|s| {
        s.api.auth_token = vap_core::config::Secret::new("operate");
        s.api.read_token = vap_core::config::Secret::new("read");
    })
    .await;
    let (operator, reader) =
        (common::ApiClient::with_token(&app.base, "operate"), common::ApiClient::with_token(&app.base, "read"));
    let create = |name: &'static str| {
        let operator = &operator;
        async move {
            let r = operator.post_json("/api/v1/scenario/init", &serde_json::json!({"camera_url": name})).await;
            r.json()["scenario_uuid"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()
        }
    };
    let (gone, kept) = (create("rtsp://cam/gone").await, create("rtsp://cam/kept").await);
    async fn delete(client: &common::ApiClient, id: uuid::Uuid) -> common::Response {
        client.request(hyper::Method::DELETE, &format!("/api/v1/scenario/{id}"), &[], Bytes::new()).await
    }
    let running = delete(&operator, gone).await;
    assert_eq!(running.status, StatusCode::CONFLICT, "{}", running.text);
    assert!(running.text.contains("shut it down first"), "{}", running.text);

    let snapshot = |id: uuid::Uuid| vap_core::events::Snapshot {
        version: vap_core::events::RECORD_VERSION,
        scenario_uuid: id,
        frame_number: 3,
        timestamp: chrono::Utc::now(),
        width: 32,
        height: 24,
        frame_width: 32,
        frame_height: 24,
        detections: Vec::new(),
        event_ids: Vec::new(),
        jpeg: vec![0xFF, 0xD8, 0xFF, 0xE0],
    };
    let end = |id: uuid::Uuid| {
        serde_json::to_vec(&serde_json::json!({
            "scenario_uuid": id, "timestamp": chrono::Utc::now(), "end_of_stream": "finished", "frames_analysed": 3,
        }))
        .unwrap()
    };
    for id in [gone, kept] {
        app.produce_results((0..3).map(|f| (id, result_json(id, f))).chain([(id, end(id))]).collect()).await;
        app.produce_signed(&app.settings.kafka.topic_events.clone(), vec![(id, common::camera_offline_json(id, 1))])
            .await;
        app.produce_signed(&app.settings.kafka.topic_snapshots.clone(), vec![(id, snapshot(id).to_record_value())])
            .await;
    }
    // One record of each set aside (unsigned).
    app.produce_raw(vec![(gone, result_json(gone, 9), None), (kept, result_json(kept, 9), None)]).await;
    app.start_relay();
    for id in [gone, kept] {
        operator.wait_for_status(id, "inactive", Duration::from_secs(30)).await;
    }
    caught_up(&app).await;
    let held = |id: uuid::Uuid| {
        let app = &app;
        async move {
            let count = |table: &str| format!("SELECT count(*) FROM {table} WHERE scenario_uuid = '{id}'");
            [
                app.scalar(&count("scenario_results")).await,
                app.scalar(&count("scenario_events")).await,
                app.scalar(&count("scenario_snapshots")).await,
                app.scalar(&format!("SELECT count(*) FROM dead_letters WHERE record_key = convert_to('{id}', 'UTF8')"))
                    .await,
            ]
        }
    };
    // Each topic's consumer keeps its own position, and one that has not fetched yet has none:
    // "caught up" can come before the events are in. Wait for what was produced.
    for id in [gone, kept] {
        eventually(Duration::from_secs(30), "everything of both scenarios stored", || async {
            (held(id).await == [3, 1, 1, 1]).then_some(())
        })
        .await;
    }

    assert_eq!(delete(&reader, gone).await.status, StatusCode::FORBIDDEN);
    let deleted = delete(&operator, gone).await;
    assert_eq!((deleted.status, deleted.text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_eq!(held(gone).await, [0, 0, 0, 0]);
    assert_eq!(held(kept).await, [3, 1, 1, 1], "the other scenario keeps everything");
    for path in [format!("/api/v1/scenario/{gone}"), format!("/api/v1/prediction/{gone}")] {
        assert_eq!(operator.get(&path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(delete(&operator, gone).await.status, StatusCode::NOT_FOUND);
    // Its runner's late record: refused as of a scenario this database does not know.
    app.produce_raw(vec![(gone, result_json(gone, 10), None)]).await;
    caught_up(&app).await;
    assert_eq!(held(gone).await[0], 0);
    assert_eq!(app.scalar(&format!("SELECT count(*) FROM scenarios WHERE scenario_uuid = '{gone}'")).await, 0);
}

/// Predictions by capture time: `since` (inclusive) and `until` (exclusive), paged on with
/// `after_frame` like the rest; bad or empty ranges are a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_are_served_by_capture_time_range_page_by_page() {
    let mut app = TestApp::spawn().await;
    let id = app.create_scenario("rtsp://cam/by-time").await;
    let at = |i: i64| format!("2026-06-01T00:00:{i:02}Z");
    let records = (0..10)
        .map(|i| {
            let v = serde_json::json!({"scenario_uuid": id, "frame_number": i * 1000, "timestamp": at(i), "detections": []});
            (id, serde_json::to_vec(&v).unwrap())
        })
        .collect();
    app.produce_results(records).await;
    app.start_relay();
    caught_up(&app).await;
    let mut frames = Vec::new();
    let mut after = -1;
    loop {
        let page = app
            .get(&format!("/api/v1/prediction/{id}?since={}&until={}&limit=2&after_frame={after}", at(3), at(7)))
            .await
            .json();
        frames.extend(page["results"].as_array().unwrap().iter().map(|r| r["frame_number"].as_i64().unwrap()));
        match page["next_after_frame"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(frames, vec![3000, 4000, 5000, 6000]);
    let open_ended = app.get(&format!("/api/v1/prediction/{id}?since={}", at(8))).await.json();
    assert_eq!(open_ended["results"].as_array().unwrap().len(), 2);
    let before = app.get(&format!("/api/v1/prediction/{id}?until={}", at(1))).await.json();
    assert_eq!(before["results"][0]["frame_number"], 0);
    assert_eq!(before["results"].as_array().unwrap().len(), 1);
    for query in [format!("since={}&until={}", at(5), at(5)), "since=yesterday".to_string()] {
        let r = app.get(&format!("/api/v1/prediction/{id}?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text);
    }
}

/// The inbox's share of `topic` a relay reports on its /metrics.
async fn partitions_held(metrics_listen: &str, topic: &str) -> Option<u64> {
    let held = common::metric(metrics_listen, &format!("vap_inbox_partitions_held{{topic=\"{topic}\"}}")).await?;
    Some(held as u64)
}

/// Two relays divide the 4 partitions of `results` 2 and 2 (each says so on /metrics, and
/// PostgreSQL shows two sessions holding two each); one killed with SIGKILL loses its share to
/// the other within seconds, and every result is stored exactly once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_divide_the_partitions_and_a_killed_ones_share_is_taken_over() {
    let app = TestApp::spawn().await;
    let topic = app.settings.kafka.topic_results.clone();
    let partitions = app.settings.kafka.partitions;
    // Scenarios until their keys fall on every partition.
    let (mut scenarios, mut spread) = (Vec::new(), std::collections::HashSet::new());
    while spread.len() < 4 || scenarios.len() < 8 {
        let s = app.create_scenario(&format!("rtsp://127.0.0.1:9/share{}", scenarios.len())).await;
        spread.insert(vap_core::kafka::partition_for_key(s.to_string().as_bytes(), partitions));
        scenarios.push(s);
    }
    let relay = |listen: &str| {
        let mut env = app.env();
        env.push(("VAP_RELAY__METRICS_LISTEN".into(), listen.to_string()));
        common::spawn_binary(env!("CARGO_BIN_EXE_vap-relay"), &env, &[])
    };
    let (listen_a, listen_b) = (
        format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap()),
        format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap()),
    );
    let mut a = relay(&listen_a);
    let mut b = relay(&listen_b);
    eventually(Duration::from_secs(30), "the partitions split 2 and 2", || async {
        let held = (partitions_held(&listen_a, &topic).await, partitions_held(&listen_b, &topic).await);
        (held == (Some(2), Some(2))).then_some(())
    })
    .await;
    let group = format!("{}/{topic}", vap_relay::inbox::CONSUMER);
    let session = app.pool.get().await.unwrap();
    let holders = vap_core::db::partition_locks::holders(&session, &group).await.unwrap();
    let mut all: Vec<i32> = holders.iter().flat_map(|(_, p)| p.clone()).collect();
    all.sort_unstable();
    assert_eq!((holders.len(), all), (2, vec![0, 1, 2, 3]), "two sessions, each partition once: {holders:?}");

    let frames = 1_000;
    let produce = |range: std::ops::Range<i64>| {
        let records: Vec<_> =
            range.flat_map(|f| scenarios.iter().map(move |s| (*s, result_json(*s, f))).collect::<Vec<_>>()).collect();
        app.produce_results(records)
    };
    produce(0..frames / 2).await;
    eventually(Duration::from_secs(60), "some results stored", || async { (stored(&app).await > 0).then_some(()) })
        .await;
    a.kill().unwrap();
    a.wait().unwrap();
    let killed = std::time::Instant::now();
    produce(frames / 2..frames).await;
    eventually(Duration::from_secs(15), "the survivor holding all 4 partitions", || async {
        (partitions_held(&listen_b, &topic).await == Some(4)).then_some(())
    })
    .await;
    eprintln!("the killed relay's partitions taken over in {:?}", killed.elapsed());
    let total = frames * scenarios.len() as i64;
    eventually(Duration::from_secs(60), "every result stored", || async {
        (stored(&app).await == total).then_some(())
    })
    .await;
    caught_up(&app).await;
    assert_eq!(stored(&app).await, total, "none twice");
    assert_eq!(app.scalar("SELECT sum(frames_processed)::bigint FROM scenarios").await, total, "counted once each");
    assert_eq!(app.scalar("SELECT count(*) FROM dead_letters").await, 0);
    b.kill().unwrap();
    b.wait().unwrap();
}
