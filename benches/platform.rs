//! Platform benchmarks, each beside its baseline in the same run. Run:
//!
//!     cargo bench --bench platform            # all
//!     cargo bench --bench platform -- api     # one of: api, relay, inbox, relays, events, snapshots, codecs
//!
//! Needs `wrk` (Debian package) for the HTTP load. Figures go to docs/BENCHMARKS.md.

#[path = "../tests/integration/common.rs"]
#[allow(dead_code)]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, result_json, TestApp};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;

const CONNECTIONS: usize = 64;
const WRK_SECONDS: u32 = 15;

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: building them is the
    // check there; measuring takes minutes and belongs to `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("platform benchmarks: run with `cargo bench --bench platform`");
        return;
    }
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    std::env::set_var("VAP_TEST_PG_DURABLE", "1");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!(
            "machine: {} cores; PostgreSQL 15 with fsync and synchronous_commit on",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        if want("api") {
            api().await;
        }
        if want("relay") {
            relay().await;
        }
        if want("inbox") {
            inbox().await;
        }
        if want("relays") {
            relays().await;
        }
        if want("events") {
            events().await;
        }
        if want("snapshots") {
            snapshots().await;
        }
        if want("codecs") {
            codecs().await;
        }
    });
}

/// A result as a runner sends it on a busy street: six tracked people and cars, moving a
/// little each frame, with the confidences and coordinates a detector gives (many digits).
fn busy_result(scenario: uuid::Uuid, frame: i64) -> Vec<u8> {
    let detections: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            let x = 40.0 + 130.0 * f64::from(i) + 3.1 * (frame % 97) as f64 + fastrand::f64() * 4.0;
            let y = 210.0 + f64::from(i) * 7.0 + fastrand::f64() * 4.0;
            serde_json::json!({"class": if i % 3 == 0 { "car" } else { "person" },
                               "confidence": 0.4 + 0.6 * fastrand::f32(),
                               "bbox": [x as f32, y as f32, (x + 64.0 + fastrand::f64() * 3.0) as f32, (y + 180.0) as f32],
                               "track_id": 1000 + frame / 300 * 6 + i64::from(i)})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "scenario_uuid": scenario, "frame_number": frame * 500, "timestamp": chrono::Utc::now(),
        "detections": detections, "model": "yolov4_tiny_coco_416", "model_sha256": "9a3b0c0d7e1f",
        "runner": "worker-3/41234/8f0e1a2b", "inference_ms": 30.0 + fastrand::f64() * 20.0,
        "frame_width": 1280, "frame_height": 720, "options_revision": 0, "motion": "moving"
    }))
    .unwrap()
}

/// CPU seconds the broker (every process named nisshi) has used so far.
fn broker_cpu_s() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with("nisshi") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        total += fields[11..13].iter().map(|v| v.parse::<f64>().unwrap_or(0.0)).sum::<f64>() / 100.0;
    }
    total
}

/// Counts the bytes a client sends to the broker, forwarding both ways.
async fn counting_proxy(
    front: tokio::net::TcpListener,
    target: String,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((client, _)) = front.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else { continue };
            let (_, _) = (client.set_nodelay(true), upstream.set_nodelay(true));
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let counter = std::sync::Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            });
        }
    });
    sent
}

/// Results produced with each codec rskafka offers, one per request (a camera at 2 fps whose
/// publisher keeps up) and 100 per request (a publisher catching up), and read back: produce
/// and fetch rates, the broker's CPU, and the bytes on the wire per result. No compression is
/// the baseline.
async fn codecs() {
    const RESULTS: usize = 10_000;
    println!("\n== codecs: {RESULTS} results of six detections, one partition");
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = front.local_addr().unwrap().port();
    let broker =
        vap_dev::devstack::Broker::start_advertising(vap_dev::devstack::BrokerStorage::Memory, Some(port)).unwrap();
    let sent = counting_proxy(front, broker.addr()).await;
    let app = TestApp::spawn_with_broker(broker, move |s| {
        s.log.level = "warn".into();
        s.kafka.brokers = vec![format!("127.0.0.1:{port}")];
    })
    .await;
    let client = app.kafka().await;
    let scenario = uuid::Uuid::new_v4();
    let values: Vec<Vec<u8>> = (0..RESULTS as i64).map(|f| busy_result(scenario, f)).collect();
    let raw: usize = values.iter().map(Vec::len).sum();
    println!("  JSON per result: {} bytes", raw / values.len());
    for batch in [1, 100] {
        for (name, codec) in [
            ("none", Compression::NoCompression),
            ("gzip", Compression::Gzip),
            ("snappy", Compression::Snappy),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
        ] {
            let topic = common::unique("codec");
            client.controller_client().unwrap().create_topic(&topic, 1, 1, 5_000).await.unwrap();
            let pc = client.partition_client(topic.clone(), 0, UnknownTopicHandling::Retry).await.unwrap();
            vap_core::kafka::set_nodelay_on_tcp_sockets();
            let (before, cpu_before) = (sent.load(std::sync::atomic::Ordering::Relaxed), broker_cpu_s());
            let started = Instant::now();
            for chunk in values.chunks(batch) {
                let records: Vec<Record> = chunk
                    .iter()
                    .map(|v| Record {
                        key: Some(scenario.to_string().into_bytes()),
                        value: Some(v.clone()),
                        headers: std::collections::BTreeMap::from([("vap-signature".to_string(), vec![b'a'; 64])]),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                pc.produce(records, codec).await.unwrap();
            }
            let produce_rps = RESULTS as f64 / started.elapsed().as_secs_f64();
            let broker_ms = (broker_cpu_s() - cpu_before) * 1000.0 / (RESULTS as f64 / 1000.0);
            let wire = (sent.load(std::sync::atomic::Ordering::Relaxed) - before) as f64 / RESULTS as f64;
            let started = Instant::now();
            let mut offset = 0;
            while offset < RESULTS as i64 {
                let (records, _) = pc.fetch_records(offset, 1..4_194_304, 200).await.unwrap();
                offset = records.last().map_or(offset, |r| r.offset + 1);
            }
            let fetch_rps = RESULTS as f64 / started.elapsed().as_secs_f64();
            println!(
                "  {batch:>3}/request {name:<6}: produce {produce_rps:>7.0}/s, broker CPU {broker_ms:>5.0} ms per 1000, \
                 fetch {fetch_rps:>7.0}/s, {wire:>6.1} bytes/result sent"
            );
        }
    }
}

/// Runs wrk and returns (requests/s, p50, p99) from its --latency report.
fn wrk(url: &str, script: Option<&str>) -> (f64, String, String) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{WRK_SECONDS}s"), "--latency"]);
    let script_file;
    if let Some(body) = script {
        script_file = tempfile::Builder::new().suffix(".lua").tempfile().unwrap();
        std::fs::write(script_file.path(), body).unwrap();
        cmd.arg("-s").arg(script_file.path());
    }
    let out = cmd.arg(url).output().expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap_or(0.0))
        .unwrap_or(0.0);
    let pct =
        |p: &str| text.lines().find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_string())).unwrap_or_default();
    let non2xx = text.lines().find(|l| l.contains("Non-2xx")).unwrap_or("").trim().to_string();
    if !non2xx.is_empty() {
        println!("    wrk reported: {non2xx}");
    }
    (rps, pct("50%"), pct("99%"))
}

async fn api() {
    let mut app = TestApp::spawn_with(|s| {
        s.database.pool_size = 32;
        s.log.level = "warn".into();
    })
    .await;
    let s = app.create_scenario("rtsp://cam/bench").await;
    app.produce_results((0..100).map(|f| (s, result_json(s, f))).collect()).await;
    app.start_relay();
    eventually(Duration::from_secs(30), "100 results", || async {
        (app.scalar("SELECT count(*) FROM scenario_results").await == 100).then_some(())
    })
    .await;
    println!("\n== api: {CONNECTIONS} connections, {WRK_SECONDS} s each, wrk -t2 on the same 2 cores");
    println!("{:<44} {:>10} {:>10} {:>10}", "route", "req/s", "p50", "p99");
    let health = wrk(&format!("{}/health", app.base), None);
    println!("{:<44} {:>10.0} {:>10} {:>10}", "GET /health (baseline: no database)", health.0, health.1, health.2);
    let before = app.scalar("SELECT count(*) FROM scenarios").await;
    let post = wrk(
        &format!("{}/api/v1/scenario/init", app.base),
        Some("wrk.method = \"POST\"\nwrk.body = '{\"camera_url\": \"rtsp://127.0.0.1:9/stream\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"),
    );
    let created = app.scalar("SELECT count(*) FROM scenarios").await - before;
    println!("{:<44} {:>10.0} {:>10} {:>10}", "POST /api/v1/scenario/init (row + outbox)", post.0, post.1, post.2);
    let tps = pgbench_insert(&app);
    println!(
        "{:<44} {:>10.0}   (the API: {:.0}% of it)",
        "  baseline: pgbench, the API's statement",
        tps,
        100.0 * post.0 / tps
    );
    // The design this replaced: NOTIFY inside each insert's transaction (a trigger). A
    // notifying commit holds a database-wide lock through its WAL flush.
    app.pool
        .get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_notify('vap_outbox', ''); RETURN NULL; END $$;
             CREATE TRIGGER bench_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();",
        )
        .await
        .unwrap();
    let in_tx = wrk(
        &format!("{}/api/v1/scenario/init", app.base),
        Some("wrk.method = \"POST\"\nwrk.body = '{\"camera_url\": \"rtsp://127.0.0.1:9/stream\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"),
    );
    app.pool
        .get()
        .await
        .unwrap()
        .batch_execute("DROP TRIGGER bench_notify ON outbox; DROP FUNCTION bench_notify()")
        .await
        .unwrap();
    println!("{:<44} {:>10.0} {:>10} {:>10}", "  baseline: NOTIFY inside each transaction", in_tx.0, in_tx.1, in_tx.2);
    let get = wrk(&format!("{}/api/v1/prediction/{s}", app.base), None);
    println!("{:<44} {:>10.0} {:>10} {:>10}", "GET /api/v1/prediction/{uuid} (100 frames)", get.0, get.1, get.2);
    println!("    scenarios created by the POST run: {created} (each with one outbox event)");
}

/// pgbench running the API's own insert (a scenario and its outbox event) with as many
/// connections as wrk, for as long: what PostgreSQL alone does on these cores. Transactions/s.
fn pgbench_insert(app: &TestApp) -> f64 {
    let statement = vap_core::db::scenarios::INSERT_SCENARIO_WITH_EVENT
        .replace("$1", "gen_random_uuid()")
        .replace("$2", "'rtsp://127.0.0.1:9/stream'")
        .replace("$3", "'{}'::jsonb");
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), format!("{};\n", statement.trim().replace('\n', " "))).unwrap();
    let db = &app.settings.database;
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-n", "-M", "prepared", "-j", "2", &format!("-c{CONNECTIONS}"), &format!("-T{WRK_SECONDS}")])
        .arg("-f")
        .arg(script.path())
        .args(["-h", &db.host, "-p", &db.port.to_string(), "-U", &db.user, &db.dbname])
        .env("PGPASSWORD", db.password.expose())
        .output()
        .expect("pgbench (PostgreSQL 15's)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench: {text}{}", String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no tps in pgbench's report: {text}"))
}

/// Inserts `n` scenarios with their outbox events directly (the API's rows, without HTTP).
async fn seed_outbox(app: &TestApp, n: i64) {
    let client = app.pool.get().await.unwrap();
    client
        .batch_execute(&format!(
            "WITH s AS (
                 INSERT INTO scenarios (scenario_uuid, camera_url, status)
                 SELECT gen_random_uuid(), 'rtsp://cam/' || g, 'init_startup' FROM generate_series(1, {n}) g
                 RETURNING scenario_uuid, camera_url, created_at)
             INSERT INTO outbox (scenario_uuid, event_type, payload)
             SELECT scenario_uuid, 'init_scenario',
                    jsonb_build_object('event_type', 'init_scenario', 'scenario_uuid', scenario_uuid,
                                       'occurred_at', created_at)
               FROM s"
        ))
        .await
        .unwrap();
}

async fn relay() {
    const N: i64 = 20_000;
    println!("\n== relay: {N} outbox events, commit -> broker ack (vap-relay as its own process)");
    for batch in [100i64, 500, 2000] {
        let app = TestApp::spawn_with(|s| {
            s.relay.batch_size = batch;
            s.inbox.enabled = false;
            s.log.level = "warn".into();
        })
        .await;
        seed_outbox(&app, N).await;
        let started = Instant::now();
        let mut relay = app.spawn_relay_process();
        eventually(Duration::from_secs(300), "outbox drained", || async {
            (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0).then_some(())
        })
        .await;
        let relay_rate = N as f64 / started.elapsed().as_secs_f64();
        relay.kill().unwrap();
        relay.wait().unwrap();

        // Baselines: the same records straight to the broker, one request per partition of
        // batch/4 records (as the relay sends them), no database; stock rskafka, then with the
        // relay's TCP_NODELAY sweep applied to this process's sockets.
        let stock = raw_produce(&app, batch as usize / 4, N, false).await;
        let nodelay = raw_produce(&app, batch as usize / 4, N, true).await;
        println!(
            "  batch {batch:>5}: relay {relay_rate:>8.0} events/s | raw produce: stock rskafka {stock:>8.0}/s, with nodelay {nodelay:>8.0}/s | relay/raw-nodelay {:.2}",
            relay_rate / nodelay
        );
    }

    // Latency of one event: commit -> visible on the topic (NOTIFY wake-up, not polling).
    let app = TestApp::spawn_with(|s| {
        s.relay.poll_interval_ms = 60_000;
        s.inbox.enabled = false;
        s.log.level = "warn".into();
    })
    .await;
    let mut relay = app.spawn_relay_process();
    app.create_scenario("rtsp://cam/warm").await;
    eventually(Duration::from_secs(20), "warm-up", || async {
        (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0).then_some(())
    })
    .await;
    let mut lat = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let uuid = app.create_scenario("rtsp://cam/lat").await;
        let q = format!("SELECT count(*) FROM outbox WHERE scenario_uuid = '{uuid}' AND published_at IS NOT NULL");
        loop {
            if app.scalar(&q).await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lat.push(started.elapsed());
    }
    lat.sort();
    println!(
        "  one event, POST -> broker ack (poll interval 60 s, so NOTIFY wakes it): p50 {:?} p99 {:?} (50 samples)",
        lat[24], lat[49]
    );
    relay.kill().unwrap();
    relay.wait().unwrap();
}

/// Produces `total` records, `per_request` per request to each of 4 partitions in parallel.
async fn raw_produce(app: &TestApp, per_request: usize, total: i64, nodelay: bool) -> f64 {
    let client = app.kafka().await;
    let topic = common::unique("baseline");
    client.controller_client().unwrap().create_topic(&topic, 4, 1, 5_000).await.unwrap();
    let pcs: Vec<_> = futures::future::join_all(
        (0..4).map(|p| client.partition_client(topic.clone(), p, UnknownTopicHandling::Retry)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    if nodelay {
        vap_core::kafka::set_nodelay_on_tcp_sockets();
    }
    let value = br#"{"event_id":1,"event_type":"init_scenario","scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","occurred_at":"2026-11-24T10:00:00Z"}"#;
    let per_request = per_request.max(1);
    let started = Instant::now();
    let mut sent = 0i64;
    while sent < total {
        let sends = pcs.iter().map(|pc| {
            let records: Vec<Record> = (0..per_request)
                .map(|_| Record {
                    key: Some(b"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10".to_vec()),
                    value: Some(value.to_vec()),
                    headers: Default::default(),
                    timestamp: chrono::Utc::now(),
                })
                .collect();
            pc.produce(records, Compression::NoCompression)
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        sent += (per_request * 4) as i64;
    }
    sent as f64 / started.elapsed().as_secs_f64()
}

async fn inbox() {
    const FRAMES: i64 = 12_500;
    const SCENARIOS: usize = 4;
    let total = FRAMES * SCENARIOS as i64;
    println!("\n== inbox: {total} results (pre-produced), Kafka -> PostgreSQL");
    let mut app = TestApp::spawn_with(|s| s.log.level = "warn".into()).await;
    let mut scenarios = Vec::new();
    for i in 0..SCENARIOS {
        scenarios.push(app.create_scenario(&format!("rtsp://cam/{i}")).await);
    }
    let records: Vec<_> = (0..FRAMES).flat_map(|f| scenarios.iter().map(move |s| (*s, result_json(*s, f)))).collect();
    app.produce_results(records.clone()).await;

    // Baseline 1: fetch everything from the broker, no database.
    let started = Instant::now();
    let fetched = app.read_topic(&app.settings.kafka.topic_results).await.len();
    let fetch_rps = fetched as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    app.start_relay();
    eventually(Duration::from_secs(300), "all results stored", || async {
        (app.scalar("SELECT count(*) FROM scenario_results").await == total).then_some(())
    })
    .await;
    let inbox_rps = total as f64 / started.elapsed().as_secs_f64();

    // Baseline 2: the same rows inserted with one unnest INSERT per 2000, no Kafka, no positions.
    let client = app.pool.get().await.unwrap();
    client.batch_execute("CREATE TABLE raw_results (LIKE scenario_results INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)").await.unwrap();
    let parsed: Vec<vap_core::events::FrameResult> =
        records.iter().map(|(_, v)| vap_core::events::FrameResult::parse(v).unwrap()).collect();
    let started = Instant::now();
    for chunk in parsed.chunks(2000) {
        let uuids: Vec<uuid::Uuid> = chunk.iter().map(|r| r.scenario_uuid).collect();
        let frames: Vec<i64> = chunk.iter().map(|r| r.frame_number).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = chunk.iter().map(|r| r.timestamp).collect();
        let dets: Vec<serde_json::Value> = chunk.iter().map(|r| serde_json::to_value(&r.detections).unwrap()).collect();
        let extras: Vec<serde_json::Value> = chunk.iter().map(|r| serde_json::to_value(&r.details).unwrap()).collect();
        client
            .execute(
                "INSERT INTO raw_results (scenario_uuid, frame_number, frame_time, captured_at, detections, extra)
                 SELECT u, f, t, t, d, e FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::jsonb[], $5::jsonb[])
                                           AS x(u, f, t, d, e)",
                &[&uuids, &frames, &times, &dets, &extras],
            )
            .await
            .unwrap();
    }
    let raw_rps = total as f64 / started.elapsed().as_secs_f64();
    println!("  inbox (fetch + parse + store + position, one tx per batch): {inbox_rps:>8.0} results/s");
    println!("  baseline: broker fetch only                               : {fetch_rps:>8.0} records/s");
    println!("  baseline: PostgreSQL unnest INSERT only                   : {raw_rps:>8.0} rows/s");
}

/// The inbox with its partitions shared: one relay, then (a fresh database) two that have
/// divided the partitions between them, each storing the same results, timed from the first
/// record produced to the last stored.
async fn relays() {
    const FRAMES: i64 = 40_000;
    println!("\n== inbox shared by relays: results on every partition, Kafka -> PostgreSQL");
    let mut rates = [Vec::new(), Vec::new()];
    for (round, relays) in [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)] {
        let mut app = TestApp::spawn_with(|s| s.log.level = "warn".into()).await;
        // Two scenarios per partition, so every partition carries the same load.
        let partitions = app.settings.kafka.partitions;
        let mut per_partition = std::collections::HashMap::<i32, usize>::new();
        let mut scenarios = Vec::new();
        while scenarios.len() < 2 * partitions as usize {
            let s = app.create_scenario(&format!("rtsp://127.0.0.1:9/cam{}", scenarios.len())).await;
            let n = per_partition
                .entry(vap_core::kafka::partition_for_key(s.to_string().as_bytes(), partitions))
                .or_default();
            if *n < 2 {
                *n += 1;
                scenarios.push(s);
            }
        }
        for _ in 0..relays {
            app.start_relay();
        }
        let group = format!("{}/{}", vap_relay::inbox::CONSUMER, app.settings.kafka.topic_results);
        eventually(Duration::from_secs(30), "the partitions divided", || async {
            let session = app.pool.get().await.unwrap();
            let holders = vap_core::db::partition_locks::holders(&session, &group).await.unwrap();
            (holders.len() == relays && holders.iter().all(|(_, p)| p.len() == partitions as usize / relays))
                .then_some(())
        })
        .await;
        let total = FRAMES * scenarios.len() as i64;
        let records: Vec<_> =
            (0..FRAMES).flat_map(|f| scenarios.iter().map(move |s| (*s, result_json(*s, f)))).collect();
        let (cpu_before, self_before) = (machine_cpu(), process_cpu_s());
        let started = Instant::now();
        app.produce_results(records).await;
        let produced = started.elapsed().as_secs_f64();
        eventually(Duration::from_secs(600), "all results stored", || async {
            (app.scalar("SELECT count(*) FROM scenario_results").await == total).then_some(())
        })
        .await;
        let took = started.elapsed().as_secs_f64();
        let (cpu_after, self_after) = (machine_cpu(), process_cpu_s());
        let busy = (cpu_after.0 - cpu_before.0) as f64 / (cpu_after.1 - cpu_before.1).max(1) as f64;
        let rate = total as f64 / took;
        println!(
            "  {relays} relay(s): {total} results in {took:.1} s (produced in {produced:.1} s): {rate:>8.0} results/s; \
             machine {:.0}% busy, this process (relays, producer) {:.1} CPU-s",
            busy * 100.0,
            self_after - self_before
        );
        rates[relays - 1].push(rate);
        if relays == 1 && round == 0 {
            // What a stored result costs on disk (table, TOAST and indexes), at one detection each.
            let bytes = app
                .scalar("SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('scenario_results')")
                .await;
            let per = bytes as f64 / total as f64;
            println!(
                "  storage: {per:.0} bytes per result (one detection); {:.1} MB per camera-hour at 2 fps",
                per * 7_200.0 / 1e6
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (one, two) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("  medians of 3: one relay {one:.0}/s, two relays {two:.0}/s: {:.2}x", two / one);
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    (fields.iter().sum::<u64>() - idle, fields.iter().sum())
}

/// CPU seconds (user + system) this process has used.
fn process_cpu_s() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Scene events, Kafka `events` -> `scenario_events` (checked, stored once, the position in the
/// same transaction), beside the same rows inserted straight into PostgreSQL.
async fn events() {
    const PER_SCENARIO: i64 = 5_000;
    const SCENARIOS: usize = 4;
    let total = PER_SCENARIO * SCENARIOS as i64;
    println!("\n== inbox: {total} scene events (pre-produced), Kafka -> PostgreSQL");
    let mut app = TestApp::spawn_with(|s| s.log.level = "warn".into()).await;
    let mut scenarios = Vec::new();
    for i in 0..SCENARIOS {
        scenarios.push(app.create_scenario(&format!("rtsp://cam/{i}")).await);
    }
    let event = |scenario: uuid::Uuid, n: i64| {
        let kind = vap_core::events::SceneEventKind::LineCrossed;
        vap_core::events::SceneEvent {
            version: vap_core::events::RECORD_VERSION,
            event_id: vap_core::events::SceneEvent::id_for(scenario, kind, "gate", Some(n / 2), n),
            scenario_uuid: scenario,
            kind,
            frame_number: n,
            timestamp: chrono::Utc::now(),
            zone: None,
            line: Some("gate".into()),
            direction: Some(if n % 2 == 0 {
                vap_core::events::Direction::In
            } else {
                vap_core::events::Direction::Out
            }),
            track_id: Some(n / 2),
            class: Some("person".into()),
            dwell_seconds: None,
            detail: None,
        }
    };
    let all: Vec<vap_core::events::SceneEvent> =
        (0..PER_SCENARIO).flat_map(|n| scenarios.iter().map(move |s| event(*s, n))).collect();
    let records = all.iter().map(|e| (e.scenario_uuid, serde_json::to_vec(e).unwrap())).collect();
    app.produce_signed(&app.settings.kafka.topic_events.clone(), records).await;

    let started = Instant::now();
    app.start_relay();
    eventually(Duration::from_secs(300), "all events stored", || async {
        (app.scalar("SELECT count(*) FROM scenario_events").await == total).then_some(())
    })
    .await;
    let inbox_eps = total as f64 / started.elapsed().as_secs_f64();

    // Baseline: the same rows, one unnest INSERT per 2000, no Kafka, no checks, no positions.
    let client = app.pool.get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE raw_events (LIKE scenario_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
        )
        .await
        .unwrap();
    let started = Instant::now();
    for chunk in all.chunks(2000) {
        let ids: Vec<uuid::Uuid> = chunk.iter().map(|e| e.event_id).collect();
        let scenarios: Vec<uuid::Uuid> = chunk.iter().map(|e| e.scenario_uuid).collect();
        let frames: Vec<i64> = chunk.iter().map(|e| e.frame_number).collect();
        let times: Vec<chrono::DateTime<chrono::Utc>> = chunk.iter().map(|e| e.timestamp).collect();
        let tracks: Vec<Option<i64>> = chunk.iter().map(|e| e.track_id).collect();
        client
            .execute(
                "INSERT INTO raw_events (event_id, scenario_uuid, kind, frame_number, frame_time, occurred_at, line, direction, track_id, class)
                 SELECT id, s, 'line_crossed', f, t, t, 'gate', 'in', k, 'person'
                   FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::timestamptz[], $5::bigint[]) AS u(id, s, f, t, k)",
                &[&ids, &scenarios, &frames, &times, &tracks],
            )
            .await
            .unwrap();
    }
    let raw_eps = total as f64 / started.elapsed().as_secs_f64();
    println!("  inbox (fetch + parse + verify + store + position): {inbox_eps:>8.0} events/s");
    println!("  baseline: PostgreSQL unnest INSERT only           : {raw_eps:>8.0} rows/s");
}

/// A 640x480 JPEG of a real scene (the first frame of opencv-doc's vtest.avi), made by ffmpeg.
fn scene_jpeg() -> Vec<u8> {
    let out = tempfile::Builder::new().suffix(".jpg").tempfile().unwrap();
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i", "/usr/share/doc/opencv-doc/examples/data/vtest.avi"])
        .args(["-frames:v", "1", "-vf", "scale=640:480", "-q:v", "5"])
        .arg(out.path())
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    std::fs::read(out.path()).unwrap()
}

/// Snapshots: the inbox storing them from Kafka (with pruning), and the API serving the
/// latest plain, with boxes drawn, revalidated (304), and as JSON.
async fn snapshots() {
    const PER_SCENARIO: i64 = 250;
    const SCENARIOS: usize = 4;
    let jpeg = scene_jpeg();
    let mut app = TestApp::spawn_with(|s| {
        s.database.pool_size = 32;
        s.log.level = "warn".into();
    })
    .await;
    let mut scenarios = Vec::new();
    for i in 0..SCENARIOS {
        scenarios.push(app.create_scenario(&format!("rtsp://cam/{i}")).await);
    }
    let detections: Vec<vap_core::events::Detection> = (0..3)
        .map(|i| vap_core::events::Detection {
            class: "person".into(),
            confidence: 0.9,
            bbox: [40.0 + 200.0 * i as f32, 100.0, 120.0 + 200.0 * i as f32, 400.0],
            track_id: Some(1000 + i),
        })
        .collect();
    let snapshot = |scenario: uuid::Uuid, n: i64| vap_core::events::Snapshot {
        version: vap_core::events::RECORD_VERSION,
        scenario_uuid: scenario,
        frame_number: n * 500,
        timestamp: chrono::Utc::now(),
        width: 640,
        height: 480,
        frame_width: 640,
        frame_height: 480,
        detections: detections.clone(),
        // Every fifth for an event: kept (up to the bound); the others replace each other.
        event_ids: if n % 5 == 0 { vec![uuid::Uuid::new_v4()] } else { Vec::new() },
        jpeg: jpeg.clone(),
    };
    let total = PER_SCENARIO * SCENARIOS as i64;
    println!("\n== snapshots: {total} of {} KB each (pre-produced), Kafka -> PostgreSQL", jpeg.len() / 1024);
    let records: Vec<(uuid::Uuid, Vec<u8>)> = (0..PER_SCENARIO)
        .flat_map(|n| scenarios.iter().map(move |s| (*s, n)))
        .map(|(s, n)| (s, snapshot(s, n).to_record_value()))
        .collect();
    // A few to a produce request: each is tens of KB and a request has the broker's size limit.
    for chunk in records.chunks(10) {
        app.produce_signed(&app.settings.kafka.topic_snapshots.clone(), chunk.to_vec()).await;
    }
    let started = Instant::now();
    app.start_relay();
    let kept = SCENARIOS as i64 * (1 + PER_SCENARIO / 5);
    eventually(Duration::from_secs(300), "snapshots stored", || async {
        let stored = app.scalar("SELECT coalesce(sum(pos.next_offset), 0)::bigint FROM consumer_positions pos WHERE topic = 'snapshots'").await;
        (stored >= total).then_some(())
    })
    .await;
    let took = started.elapsed();
    let rows = app.scalar("SELECT count(*) FROM scenario_snapshots").await;
    println!(
        "stored {total} in {:.2} s: {:.0} snapshots/s ({:.1} MB/s); {rows} rows kept (bound: {kept})",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        (total as f64 * jpeg.len() as f64) / took.as_secs_f64() / 1e6
    );

    let s = scenarios[0];
    println!("\n== api, the latest snapshot: {CONNECTIONS} connections, {WRK_SECONDS} s each");
    println!("{:<52} {:>10} {:>10} {:>10}", "route", "req/s", "p50", "p99");
    let health = wrk(&format!("{}/health", app.base), None);
    println!("{:<52} {:>10.0} {:>10} {:>10}", "GET /health (baseline: no database)", health.0, health.1, health.2);
    let base = format!("{}/api/v1/scenario/{s}/snapshot", app.base);
    let json = wrk(&base, None);
    println!("{:<52} {:>10.0} {:>10} {:>10}", "GET .../snapshot (JSON: what it shows)", json.0, json.1, json.2);
    let plain = wrk(&format!("{base}.jpg"), None);
    println!("{:<52} {:>10.0} {:>10} {:>10}", "GET .../snapshot.jpg (stored JPEG)", plain.0, plain.1, plain.2);
    let etag = format!("\"{}-plain\"", (PER_SCENARIO - 1) * 500);
    let revalidated = wrk(&format!("{base}.jpg"), Some(&format!("wrk.headers[\"If-None-Match\"] = '{etag}'\n")));
    println!(
        "{:<52} {:>10.0} {:>10} {:>10}",
        "GET .../snapshot.jpg with If-None-Match (304)", revalidated.0, revalidated.1, revalidated.2
    );
    let boxes = wrk(&format!("{base}.jpg?boxes=1"), None);
    println!(
        "{:<52} {:>10.0} {:>10} {:>10}",
        "GET .../snapshot.jpg?boxes=1 (decode, draw 3, encode)", boxes.0, boxes.1, boxes.2
    );
}
