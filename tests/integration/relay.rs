//! The outbox relay against a real PostgreSQL and a real Kafka-protocol broker.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, TestApp};
use hyper::{Method, StatusCode};
use vap_core::events::ScenarioEvent;

async fn published(app: &TestApp) -> i64 {
    app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL").await
}

async fn wait_outbox_empty(app: &TestApp, timeout: Duration) {
    eventually(timeout, "the outbox to drain", || async {
        (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0).then_some(())
    })
    .await;
}

fn events(records: &[(i32, i64, rskafka::record::Record)]) -> Vec<ScenarioEvent> {
    records
        .iter()
        .map(|(_, _, r)| {
            let e: ScenarioEvent = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(r.key.as_deref(), Some(e.scenario_uuid.to_string().as_bytes()), "keyed by scenario uuid");
            e
        })
        .collect()
}

/// POSTs `n` scenarios, 32 at a time; every tenth also gets a shutdown right after.
async fn burst(app: &TestApp, n: usize) -> (Vec<uuid::Uuid>, Vec<uuid::Uuid>) {
    use futures::StreamExt;
    let results: Vec<(uuid::Uuid, bool)> = futures::stream::iter(0..n)
        .map(|i| async move {
            let uuid = app.create_scenario(&format!("rtsp://user:pw@cam-{i}/live")).await;
            if i % 10 == 0 {
                let r = app.request(Method::POST, &format!("/api/v1/scenario/{uuid}/shutdown"), &[], "").await;
                assert_eq!(r.status, StatusCode::OK);
            }
            (uuid, i % 10 == 0)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let all = results.iter().map(|(u, _)| *u).collect();
    let stopped = results.iter().filter(|(_, s)| *s).map(|(u, _)| *u).collect();
    (all, stopped)
}

#[tokio::test]
async fn post_while_the_broker_is_down_succeeds_and_is_published_when_it_returns() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.metrics_listen = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap())
    })
    .await;
    app.broker.stop();
    app.start_relay();
    let mut created = Vec::new();
    for i in 0..3 {
        created.push(app.create_scenario(&format!("rtsp://cam/{i}")).await);
    }
    // The relay has tried and failed: what it tried is still unpublished.
    eventually(Duration::from_secs(60), "a publish attempt to fail", || async {
        common::metric(&app.settings.relay.metrics_listen, "vap_relay_publish_failures_total")
            .await
            .filter(|n| *n >= 1.0)
    })
    .await;
    assert_eq!(published(&app).await, 0, "nothing can be published without a broker");

    app.broker.resume().unwrap();
    wait_outbox_empty(&app, Duration::from_secs(30)).await;
    let events = events(&app.read_topic(&app.settings.kafka.topic_init_scenario).await);
    let got: Vec<uuid::Uuid> = events.iter().map(|e| e.scenario_uuid).collect();
    assert_eq!(got.len(), 3, "each event exactly once: {got:?}");
    assert_eq!(got.iter().collect::<HashSet<_>>(), created.iter().collect::<HashSet<_>>());
    // The events name scenarios only: camera URLs and their credentials stay in PostgreSQL.
    for (_, _, r) in app.read_topic(&app.settings.kafka.topic_init_scenario).await {
        let text = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
        assert!(!text.contains("rtsp") && !text.contains("camera_url"), "{text}");
    }
}

#[tokio::test]
async fn the_relay_wakes_on_notify_rather_than_polling() {
    let mut app = TestApp::spawn_with(|s| s.relay.poll_interval_ms = 120_000).await;
    app.start_relay();
    // The first event also waits for the relay's Kafka connection.
    app.create_scenario("rtsp://cam/warmup").await;
    wait_outbox_empty(&app, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.create_scenario("rtsp://cam/next").await;
    // Far below the 120 s poll: only the NOTIFY can have woken it.
    wait_outbox_empty(&app, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn kill_9_mid_burst_loses_no_event_and_keeps_each_scenarios_order() {
    let app = TestApp::spawn().await;
    let mut relay = app.spawn_relay_process();
    let burst = burst(&app, 1000);
    let killer = async {
        eventually(Duration::from_secs(60), "some events published", || async {
            (published(&app).await >= 150).then_some(())
        })
        .await;
        relay.kill().unwrap(); // SIGKILL
        relay.wait().unwrap();
    };
    let ((all, stopped), ()) = tokio::join!(burst, killer);
    let at_kill = published(&app).await;
    eprintln!("published when the relay was killed: {at_kill} of 1100");
    assert!(at_kill < 1100, "the kill should land mid-burst (published {at_kill})");

    let mut relay = app.spawn_relay_process();
    wait_outbox_empty(&app, Duration::from_secs(120)).await;
    relay.kill().unwrap();
    relay.wait().unwrap();

    let inits = events(&app.read_topic(&app.settings.kafka.topic_init_scenario).await);
    let shutdowns = events(&app.read_topic(&app.settings.kafka.topic_shutdown_scenario).await);
    let init_set: HashSet<_> = inits.iter().map(|e| e.scenario_uuid).collect();
    let shutdown_set: HashSet<_> = shutdowns.iter().map(|e| e.scenario_uuid).collect();
    assert_eq!(init_set, all.iter().copied().collect::<HashSet<_>>(), "every init event reached Kafka");
    assert_eq!(shutdown_set, stopped.iter().copied().collect::<HashSet<_>>(), "every shutdown event reached Kafka");
    eprintln!(
        "init records {} for {} events; shutdown records {} for {}",
        inits.len(),
        all.len(),
        shutdowns.len(),
        stopped.len()
    );

    // Order: a scenario's shutdown was published only after its init was acknowledged.
    let client = app.pool.get().await.unwrap();
    let out_of_order: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox i JOIN outbox s USING (scenario_uuid)
              WHERE i.event_type = 'init_scenario' AND s.event_type = 'shutdown_scenario'
                AND NOT (i.published_at < s.published_at)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(out_of_order, 0);
    // On the wire, all of a scenario's records sit in the one partition its key maps to, so a
    // consumer reading that partition sees them in publication order.
    let partitions = app.settings.kafka.partitions;
    for topic in [&app.settings.kafka.topic_init_scenario, &app.settings.kafka.topic_shutdown_scenario] {
        for (partition, _, record) in app.read_topic(topic).await {
            let key = record.key.unwrap();
            assert_eq!(
                partition,
                vap_core::kafka::partition_for_key(&key, partitions),
                "{topic}: key on the wrong partition"
            );
        }
    }
}

#[tokio::test]
async fn two_relays_at_once_never_publish_the_same_row() {
    let app = TestApp::spawn().await;
    let mut a = app.spawn_relay_process();
    let mut b = app.spawn_relay_process();
    let (all, stopped) = burst(&app, 1000).await;
    wait_outbox_empty(&app, Duration::from_secs(120)).await;
    for r in [&mut a, &mut b] {
        r.kill().unwrap();
        r.wait().unwrap();
    }
    let inits = events(&app.read_topic(&app.settings.kafka.topic_init_scenario).await);
    let shutdowns = events(&app.read_topic(&app.settings.kafka.topic_shutdown_scenario).await);
    let ids: Vec<i64> = inits.iter().chain(&shutdowns).map(|e| e.event_id).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    // No crash happened, so any repeat would be two relays publishing one row.
    assert_eq!(ids.len(), unique.len(), "a row was published twice");
    assert_eq!(unique.len(), all.len() + stopped.len());
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_their_retention() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.idempotency_key_retention_secs = 2;
        s.relay.prune_interval_secs = 1;
    })
    .await;
    app.start_relay();
    let post = |key: &'static str| {
        let app = &app;
        async move {
            let body = serde_json::to_vec(&serde_json::json!({"camera_url": "rtsp://cam/k"})).unwrap();
            let headers = [("content-type", "application/json"), ("idempotency-key", key)];
            app.request(hyper::Method::POST, "/api/v1/scenario/init", &headers, body).await.json()["scenario_uuid"]
                .clone()
        }
    };
    let first = post("retry-me").await;
    assert_eq!(post("retry-me").await, first, "within its retention a key replays");
    eventually(Duration::from_secs(30), "the key pruned", || async {
        (app.scalar("SELECT count(*) FROM idempotency_keys").await == 0).then_some(())
    })
    .await;
    assert_ne!(post("retry-me").await, first, "after it, the key is free again");
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 2);
}

#[tokio::test]
async fn published_rows_are_pruned_after_the_retention() {
    let mut app = TestApp::spawn_with(|s| {
        s.relay.retention_secs = 0;
        s.relay.prune_interval_secs = 1;
    })
    .await;
    app.start_relay();
    app.create_scenario("rtsp://cam/p").await;
    eventually(Duration::from_secs(30), "published rows pruned", || async {
        (app.scalar("SELECT count(*) FROM outbox").await == 0).then_some(())
    })
    .await;
    assert_eq!(app.scalar("SELECT count(*) FROM scenarios").await, 1);
    let body = app.get("/metrics").await.text;
    assert!(body.contains("vap_outbox_backlog 0"), "{body}");
}

/// A row this version can't read (a newer vap's event type, after a rollback) would hold back
/// every later event of its scenario: it is dead-lettered and the scenario's next event flows.
#[tokio::test]
async fn an_unreadable_outbox_row_is_dead_lettered_and_does_not_block_its_scenario() {
    let mut app = TestApp::spawn().await;
    let id = app.create_scenario("rtsp://cam/rollback").await;
    let client = app.pool.get().await.unwrap();
    client.batch_execute("ALTER TABLE outbox DROP CONSTRAINT outbox_event_type_check").await.unwrap();
    client
        .execute(
            "INSERT INTO outbox (scenario_uuid, event_type, payload) VALUES ($1, 'pause_scenario', '{\"v\": 9}')",
            &[&id],
        )
        .await
        .unwrap();
    app.shutdown_scenario(id).await;
    app.start_relay();
    wait_outbox_empty(&app, Duration::from_secs(30)).await;
    let shutdowns = events(&app.read_topic(&app.settings.kafka.topic_shutdown_scenario).await);
    assert_eq!(shutdowns.iter().map(|e| e.scenario_uuid).collect::<Vec<_>>(), vec![id]);
    let (consumer, reason): (String, String) =
        client.query_one("SELECT consumer, reason FROM dead_letters", &[]).await.map(|r| (r.get(0), r.get(1))).unwrap();
    assert_eq!(consumer, "outbox_relay");
    assert!(reason.contains("pause_scenario"), "{reason}");
}

/// A topic made elsewhere with another partition count than vap's setting: events still go
/// where Kafka's partitioner puts their key for the topic as it is.
#[tokio::test]
async fn events_go_to_the_partition_of_the_topics_real_partition_count() {
    let mut app = TestApp::spawn_with(|s| s.kafka.partitions = 4).await;
    let kafka = app.kafka().await;
    let topic = app.settings.kafka.topic_init_scenario.clone();
    kafka.controller_client().unwrap().create_topic(&topic, 3, 1, 5_000).await.unwrap();
    let mut created = HashSet::new();
    for i in 0..12 {
        created.insert(app.create_scenario(&format!("rtsp://cam/{i}")).await);
    }
    app.start_relay();
    wait_outbox_empty(&app, Duration::from_secs(30)).await;
    let records = common::read_topic(&kafka, &topic, 3).await;
    let mut seen = HashSet::new();
    for (partition, _, record) in &records {
        let key = record.key.as_deref().unwrap();
        assert_eq!(*partition, vap_core::kafka::partition_for_key(key, 3), "{}", String::from_utf8_lossy(key));
        seen.insert(uuid::Uuid::parse_str(std::str::from_utf8(key).unwrap()).unwrap());
    }
    assert_eq!((records.len(), seen), (12, created));
}

/// The broker stops answering (a proxy in front of it stops forwarding, nothing is closed) for
/// two minutes while scenarios are created and results flow: the API stays ready, the relay
/// live, no transaction stays open past the request timeout, and afterwards every event is
/// published (once per outbox id) and every result stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_for_two_minutes_holds_no_transaction_and_loses_nothing() {
    const HOLE: Duration = Duration::from_secs(120);
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let broker =
        vap_dev::devstack::Broker::start_advertising(vap_dev::devstack::BrokerStorage::Memory, Some(front_port))
            .unwrap();
    let proxy = common::BlackHoleProxy::start(front, broker.addr());
    let relay_metrics = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap());
    let metrics = relay_metrics.clone();
    let mut app = TestApp::spawn_with_broker(broker, move |s| {
        s.kafka.brokers = vec![format!("127.0.0.1:{front_port}")];
        s.kafka.request_timeout_ms = 2_000;
        s.relay.metrics_listen = metrics;
    })
    .await;
    app.start_relay();
    let before = [app.create_scenario("rtsp://cam/a").await, app.create_scenario("rtsp://cam/b").await];
    wait_outbox_empty(&app, Duration::from_secs(30)).await;
    app.produce_results((0..10).map(|f| (before[0], common::result_json(before[0], f))).collect()).await;

    proxy.hole(true);
    let holed_at = std::time::Instant::now();
    let mut during = Vec::new();
    let mut longest_transaction = 0.0f64;
    while holed_at.elapsed() < HOLE {
        if during.len() < 4 {
            during.push(app.create_scenario(&format!("rtsp://cam/during-{}", during.len())).await);
        }
        assert_eq!(app.get("/ready").await.status, StatusCode::OK, "the API stopped being ready");
        let relay = reqwest_status(&format!("http://{relay_metrics}/health")).await;
        assert_eq!(relay, 200, "the relay stopped being live");
        let open: f64 = app
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT COALESCE(max(extract(epoch FROM now() - xact_start)), 0)::float8 FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
                    AND backend_type = 'client backend'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        longest_transaction = longest_transaction.max(open);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The request timeout is 2 s: a transaction open much longer waits on the broker.
    assert!(longest_transaction < 5.0, "a transaction stayed open {longest_transaction:.1} s");
    assert_eq!(app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await, during.len() as i64);

    proxy.hole(false);
    wait_outbox_empty(&app, Duration::from_secs(60)).await;
    app.produce_results((10..20).map(|f| (before[0], common::result_json(before[0], f))).collect()).await;
    eventually(Duration::from_secs(60), "20 results stored", || async {
        (app.scalar("SELECT count(*) FROM scenario_results").await == 20).then_some(())
    })
    .await;
    // A produce the relay gave up on may still reach the broker when the hole closes, and is
    // sent again: Kafka holds events at least once, each with its outbox id, by which the
    // orchestrator drops repeats. Every event is there, and no id names two scenarios.
    let events = events(&app.read_topic(&app.settings.kafka.topic_init_scenario).await);
    let by_id: std::collections::HashMap<i64, uuid::Uuid> =
        events.iter().map(|e| (e.event_id, e.scenario_uuid)).collect();
    assert!(events.iter().all(|e| by_id[&e.event_id] == e.scenario_uuid));
    let mut ids: Vec<uuid::Uuid> = by_id.into_values().collect();
    ids.sort();
    let mut wanted: Vec<uuid::Uuid> = before.iter().chain(&during).copied().collect();
    wanted.sort();
    assert_eq!(ids, wanted, "each init event, once per outbox id");
    let p = app.prediction(before[0]).await;
    let frames: Vec<i64> =
        p["results"].as_array().unwrap().iter().map(|r| r["frame_number"].as_i64().unwrap()).collect();
    assert_eq!(frames, (0..20).collect::<Vec<_>>());
}

async fn reqwest_status(url: &str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    match tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap())).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}
