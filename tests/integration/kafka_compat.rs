//! vap's topics against an independent Kafka client: librdkafka (PyPI `confluent-kafka`,
//! installed by `scripts/setup`) produces what other producers may, onto the partition of a
//! running scenario, and the inbox stores every valid record, sets aside or steps over every
//! other one, and keeps storing the scenario's results.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, eventually, TestApp};

fn python() -> std::path::PathBuf {
    let bin = common::cache_dir().join("kafka-client-venv/bin/python");
    assert!(bin.exists(), "{} is missing: run VAP_SETUP_TESTS=1 scripts/setup", bin.display());
    bin
}

/// Runs one of tests/kafka_client/*.py with `plan` on its stdin; returns what it printed.
async fn kafka_client(script: &str, plan: Value) -> Value {
    let script = format!("{}/tests/kafka_client/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(plan.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs tests/kafka_client/produce.py with `batches`; returns the offsets each got.
async fn produce_with_librdkafka(app: &TestApp, batches: Value) -> Vec<Vec<i64>> {
    produce_answers(app, batches)
        .await
        .iter()
        .map(|b| {
            assert_eq!(b["errors"], json!([]), "librdkafka refused a batch: {b}");
            b["offsets"].as_array().unwrap().iter().map(|o| o.as_i64().unwrap()).collect()
        })
        .collect()
}

/// The same, with each batch's answer as the script gives it (offsets and errors).
async fn produce_answers(app: &TestApp, batches: Value) -> Vec<Value> {
    let plan = json!({"brokers": app.settings.kafka.brokers.join(","), "batches": batches});
    serde_json::from_value(kafka_client("produce.py", plan).await).unwrap()
}

struct Signed {
    key: vap_core::signing::ResultsKey,
    scenario: uuid::Uuid,
    topic: String,
    partition: i32,
}

impl Signed {
    async fn new(app: &TestApp, scenario: uuid::Uuid) -> Self {
        let hex = app.results_key(scenario).await;
        let partition =
            vap_core::kafka::partition_for_key(scenario.to_string().as_bytes(), app.settings.kafka.partitions);
        Self {
            key: vap_core::signing::ResultsKey::new(hex::decode(hex).unwrap()),
            scenario,
            topic: app.settings.kafka.topic_results.clone(),
            partition,
        }
    }

    /// A valid, signed result of `frame`, as a plan record.
    fn result(&self, frame: i64) -> Value {
        let value = common::result_json(self.scenario, frame);
        json!({
            "topic": self.topic, "partition": self.partition,
            "key": hex::encode(self.scenario.to_string()),
            "value": hex::encode(&value),
            "headers": [[vap_core::signing::SIGNATURE_HEADER, hex::encode(self.key.sign(&value))]],
        })
    }
}

async fn stored_frames(app: &TestApp, scenario: uuid::Uuid) -> Vec<i64> {
    let client = app.pool.get().await.unwrap();
    client
        .query("SELECT frame_number FROM scenario_results WHERE scenario_uuid = $1 ORDER BY frame_number", &[&scenario])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn dead_letters(app: &TestApp) -> Vec<(i64, String)> {
    let client = app.pool.get().await.unwrap();
    let rows =
        client.query("SELECT record_offset, reason FROM dead_letters ORDER BY record_offset", &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// librdkafka writes each codec, a null key, a tombstone, foreign headers, old and far-future
/// timestamps, a 900 KB record and transactions onto a scenario's partition. Every valid
/// record is stored once, the others are set aside with a reason (or refused by the broker
/// before vap sees them), and the scenario's results keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_and_record_shape_librdkafka_writes_is_stored_or_set_aside() {
    let mut app = TestApp::spawn().await;
    app.start_relay();
    let scenario = app.create_scenario("rtsp://127.0.0.1:9/compat").await;
    let s = Signed::new(&app, scenario).await;

    // Valid results, one record batch per codec a Kafka producer may choose.
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    let batches: Vec<Value> = codecs
        .iter()
        .enumerate()
        .map(|(i, codec)| {
            let records: Vec<Value> = (0..3).map(|f| s.result(i as i64 * 3 + f)).collect();
            json!({"compression": codec, "records": records})
        })
        .collect();
    let offsets = produce_with_librdkafka(&app, json!(batches)).await;
    assert!(offsets.iter().all(|o| o.len() == 3), "{offsets:?}");
    eventually(Duration::from_secs(30), "15 results from five codecs stored", || async {
        (stored_frames(&app, scenario).await == (0..15).collect::<Vec<_>>()).then_some(())
    })
    .await;

    let with = |frame: i64, change: &dyn Fn(&mut Value)| {
        let mut r = s.result(frame);
        change(&mut r);
        r
    };
    let large = {
        let mut v: Value = serde_json::from_slice(&common::result_json(scenario, 20)).unwrap();
        v["padding"] = json!("x".repeat(900_000));
        let value = serde_json::to_vec(&v).unwrap();
        with(20, &|r| {
            r["value"] = json!(hex::encode(&value));
            r["headers"] = json!([[vap_core::signing::SIGNATURE_HEADER, hex::encode(s.key.sign(&value))]]);
        })
    };
    let answers = produce_answers(
        &app,
        json!([
            {"records": [with(15, &|r| r["key"] = Value::Null)]},
            {"records": [with(16, &|r| { r["value"] = Value::Null; r["headers"] = json!([]); })]},
            {"records": [with(17, &|r| r["headers"].as_array_mut().unwrap().push(json!(["traceparent", "00ff"])))]},
            {"records": [with(18, &|r| r["timestamp_ms"] = json!(1))]},
            {"records": [with(19, &|r| r["timestamp_ms"] = json!(8_300_000_000_000_000i64))]},
            {"compression": "zstd", "records": [large]},
            {"transactional": "commit", "records": [s.result(21)]},
            {"transactional": "abort", "records": [s.result(22)]},
            {"compression": "gzip", "records": [s.result(23)]},
        ]),
    )
    .await;
    let refused = |i: usize, code: &str| {
        let errors = answers[i]["errors"].to_string();
        assert!(errors.contains(code), "batch {i}: expected the broker to refuse with {code}: {}", answers[i]);
    };
    // The broker, not vap, refuses a timestamp past its limit (Kafka 4's one hour ahead) and,
    // as nisshi runs here, transactional producers; vap never sees those records.
    refused(4, "INVALID_TIMESTAMP");
    refused(6, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED");
    refused(7, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED");
    let accepted: Vec<usize> = (0..answers.len()).filter(|i| answers[*i]["errors"] == json!([])).collect();
    assert_eq!(accepted, [0, 1, 2, 3, 5, 8], "{answers:?}");

    eventually(Duration::from_secs(30), "the valid records stored", || async {
        (stored_frames(&app, scenario).await.contains(&23)).then_some(())
    })
    .await;
    let wanted: Vec<i64> = (0..15).chain([17, 18, 20, 23]).collect();
    assert_eq!(stored_frames(&app, scenario).await, wanted);
    let offset_of = |i: usize| answers[i]["offsets"][0].as_i64().unwrap();
    let set_aside = dead_letters(&app).await;
    assert_eq!(set_aside.len(), 2, "{set_aside:?}");
    assert_eq!(set_aside[0].0, offset_of(0));
    assert!(set_aside[0].1.starts_with("key_mismatch"), "{set_aside:?}");
    assert_eq!(set_aside[1], (offset_of(1), "empty: record has no value".to_string()));

    // And the scenario's own results keep flowing afterwards.
    app.produce_results((24..27).map(|f| (scenario, common::result_json(scenario, f))).collect()).await;
    eventually(Duration::from_secs(30), "later results stored", || async {
        stored_frames(&app, scenario).await.ends_with(&[23, 24, 25, 26]).then_some(())
    })
    .await;
}

/// A broker whose log (PostgreSQL storage) the test can damage, the app on it, and a
/// connection to that log.
async fn app_on_a_broker_with_a_log_we_can_damage() -> (TestApp, tokio_postgres::Client, String) {
    let storage = common::unique("nisshi");
    common::cluster().create_database(&storage).await.unwrap();
    let pg = common::cluster().settings(&storage);
    let url = format!("postgres://{}@{}:{}/{}", pg.user, pg.host, pg.port, pg.dbname);
    let broker = vap_dev::devstack::Broker::start(vap_dev::devstack::BrokerStorage::Postgres(url)).unwrap();
    let relay_metrics = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap());
    let metrics = relay_metrics.clone();
    let app = TestApp::spawn_with_broker(broker, move |s| {
        s.relay.metrics_listen = metrics;
        s.inbox.stall_after_secs = 1;
    })
    .await;
    let (log, connection) = tokio_postgres::connect(
        &format!("host={} port={} user={} dbname={}", pg.host, pg.port, pg.user, pg.dbname),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    (app, log, relay_metrics)
}

/// A scenario with six results on the broker, one record batch each, none read yet.
async fn six_results(app: &TestApp, camera_url: &str) -> uuid::Uuid {
    let scenario = app.create_scenario(camera_url).await;
    for f in 0..6 {
        app.produce_results(vec![(scenario, common::result_json(scenario, f))]).await;
    }
    scenario
}

/// Sets the stored batch attributes of one record of `scenario`'s results partition.
async fn damage(app: &TestApp, log: &tokio_postgres::Client, scenario: uuid::Uuid, offset: i64, attributes: i16) {
    let partition = vap_core::kafka::partition_for_key(scenario.to_string().as_bytes(), app.settings.kafka.partitions);
    let changed = log
        .execute(
            "UPDATE record r SET attributes = $4 FROM topition tp JOIN topic t ON t.id = tp.topic
              WHERE r.topition = tp.id AND t.name = $1 AND tp.partition = $2 AND r.offset_id = $3",
            &[&app.settings.kafka.topic_results, &partition, &offset, &attributes],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
}

/// One record of six comes back from the broker in a batch no Kafka client can decode (the
/// control bit set on a data record, as a damaged log serves it). The inbox stores the records
/// before it, steps over that batch after a few tries, sets the range aside in dead_letters
/// with the decoder's error, counts it, and stores everything after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_no_client_can_decode_is_stepped_over_set_aside_and_counted() {
    let (mut app, log, relay_metrics) = app_on_a_broker_with_a_log_we_can_damage().await;
    let scenario = six_results(&app, "rtsp://127.0.0.1:9/damaged").await;
    damage(&app, &log, scenario, 2, 0x20).await;
    app.start_relay();
    eventually(Duration::from_secs(60), "the records around the bad batch stored", || async {
        (stored_frames(&app, scenario).await == [0, 1, 3, 4, 5]).then_some(())
    })
    .await;
    let set_aside = dead_letters(&app).await;
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!(set_aside[0].0, 2);
    assert!(set_aside[0].1.starts_with("undecodable batch, offsets 2..2: "), "{set_aside:?}");
    let skipped = format!("vap_inbox_skipped_records_total{{topic=\"{}\"}}", app.settings.kafka.topic_results);
    assert_eq!(common::metric(&relay_metrics, &skipped).await, Some(1.0));
    app.produce_results(vec![(scenario, common::result_json(scenario, 6))]).await;
    eventually(Duration::from_secs(30), "a later result stored", || async {
        stored_frames(&app, scenario).await.contains(&6).then_some(())
    })
    .await;
}

/// The broker cannot serve one partition at all (a stored batch with a codec no one defines:
/// it drops the connection). The consumer cannot know what lies there, so it does not skip:
/// the partition reads stalled on /metrics with its true lag, vap-relay's /ready says degraded
/// and names it, and all of it is stored once the log is repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_broker_cannot_serve_reads_stalled_with_its_lag_and_the_relay_degraded() {
    let (mut app, log, relay_metrics) = app_on_a_broker_with_a_log_we_can_damage().await;
    let scenario = six_results(&app, "rtsp://127.0.0.1:9/halted").await;
    damage(&app, &log, scenario, 0, 7).await;
    app.start_relay();
    let partition = vap_core::kafka::partition_for_key(scenario.to_string().as_bytes(), app.settings.kafka.partitions);
    let topic = app.settings.kafka.topic_results.clone();
    let ready = eventually(Duration::from_secs(60), "/ready degraded", || async {
        let text = common::try_text(&format!("http://{relay_metrics}/ready")).await?;
        let body: Value = serde_json::from_str(&text).ok()?;
        (body["status"] == "degraded").then_some(body)
    })
    .await;
    let stalled = &ready["stalled_partitions"];
    assert_eq!(stalled.as_array().unwrap().len(), 1, "{ready}");
    assert_eq!(
        (&stalled[0]["topic"], &stalled[0]["partition"], &stalled[0]["lag"]),
        (&json!(topic), &json!(partition), &json!(6))
    );
    assert!(stalled[0]["error"].is_string(), "{ready}");
    let series = |name: &str| format!("{name}{{topic=\"{topic}\",partition=\"{partition}\"}}");
    assert_eq!(common::metric(&relay_metrics, &series("vap_inbox_lag_records")).await, Some(6.0));
    assert!(common::metric(&relay_metrics, &series("vap_inbox_partition_stalled_seconds")).await.unwrap() > 1.0);
    assert!(stored_frames(&app, scenario).await.is_empty());

    damage(&app, &log, scenario, 0, 0).await;
    eventually(Duration::from_secs(60), "all six stored once repaired", || async {
        (stored_frames(&app, scenario).await == [0, 1, 2, 3, 4, 5]).then_some(())
    })
    .await;
    let text = common::try_text(&format!("http://{relay_metrics}/ready")).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"status": "ready"}));
    assert_eq!(common::metric(&relay_metrics, &series("vap_inbox_lag_records")).await, Some(0.0));
}

/// What vap produces (snappy-compressed by default) another Kafka client reads: librdkafka
/// consumes the `init_scenario` events the outbox relay published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_reads_the_events_vap_produces() {
    let mut app = TestApp::spawn().await;
    assert_eq!(app.settings.kafka.compression, vap_core::config::KafkaCompression::Snappy);
    app.start_relay();
    let created =
        [app.create_scenario("rtsp://127.0.0.1:9/a").await, app.create_scenario("rtsp://127.0.0.1:9/b").await];
    let plan = json!({"brokers": app.settings.kafka.brokers.join(","), "topic": app.settings.kafka.topic_init_scenario,
                      "count": 2, "timeout_s": 60});
    let read = kafka_client("consume.py", plan).await;
    let mut seen: Vec<uuid::Uuid> = read
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let value = hex::decode(r["value"].as_str().unwrap()).unwrap();
            let event = vap_core::events::ScenarioEvent::parse(&value).unwrap();
            assert_eq!(hex::decode(r["key"].as_str().unwrap()).unwrap(), event.scenario_uuid.to_string().as_bytes());
            event.scenario_uuid
        })
        .collect();
    seen.sort();
    let mut wanted = created.to_vec();
    wanted.sort();
    assert_eq!(seen, wanted);
}
