//! Soak (docs/BENCHMARKS.md): N simulated cameras, each the runner's own `Publisher` and
//! `ResultBuffer` sending a signed result every 1/fps to the real broker, for T minutes, while
//! the relays (in this process) store them and API clients read pages, time ranges, scenarios
//! and hold SSE streams. Every window: inbox lag (stored_at - captured_at, p50/p99, over a
//! sample of cameras), API p99 per route, CPU and memory (PSS) of PostgreSQL, the broker, the
//! orchestrator and this process, the database's size.
//!
//! With `nomad`, the scenarios are also placed, as they are created, by a vap-orchestrator
//! through the Nomad API double with MAX_WORKERS = cameras: each job's task is a stand-in that
//! sleeps (the simulated cameras publish in its place), and the orchestrator's CPU is counted.
//!
//!     cargo bench --bench soak -- [cameras] [minutes] [relays] [nomad]   # 1000 10 1

#[path = "../tests/integration/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/integration/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "../tests/integration/media.rs"]
#[allow(dead_code)]
mod media;
#[path = "../tests/integration/nomad_double.rs"]
#[allow(dead_code)]
mod nomad_double;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestApp;
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;
use vap_runner::publisher::{result_record, Publisher, ResultBuffer};

const FPS: f64 = 2.0;
const WINDOW: Duration = Duration::from_secs(30);
const LAG_SAMPLE: usize = 50;
const READERS: usize = 4;
const SSE_STREAMS: usize = 20;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: run with `cargo bench --bench soak`");
        return;
    }
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let cameras = numbers.first().copied().unwrap_or(1_000) as usize;
    let minutes = numbers.get(1).copied().unwrap_or(10);
    let relays = numbers.get(2).copied().unwrap_or(1) as usize;
    let nomad = std::env::args().any(|a| a == "nomad");
    std::env::set_var("VAP_TEST_PG_DURABLE", "1");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(soak(cameras, Duration::from_secs(minutes * 60), relays, nomad));
}

type Latencies = Arc<Mutex<HashMap<&'static str, Vec<f64>>>>;

async fn soak(cameras: usize, duration: Duration, relays: usize, nomad: bool) {
    println!(
        "soak: {cameras} cameras at {FPS} fps for {} min, {relays} relay(s), {READERS} API readers, {SSE_STREAMS} SSE streams{}; \
         {} cores; PostgreSQL with fsync on",
        duration.as_secs() / 60,
        if nomad { ", placed through the Nomad double" } else { "" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let mut app = TestApp::spawn_with(|s| {
        s.log.level = "warn".into();
        s.database.pool_size = 16;
    })
    .await;
    // The relays first: the outbox carries the scenarios to the orchestrator.
    for _ in 0..relays {
        app.start_relay();
    }
    let dir = tempfile::tempdir().unwrap();
    let placing = match nomad {
        true => {
            let double = nomad_double::NomadDouble::start(None).await;
            let stand_in = dir.path().join("sleeping-runner");
            std::fs::write(&stand_in, "#!/bin/sh\nexec sleep 100000\n").unwrap();
            std::fs::set_permissions(&stand_in, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let config = fleet::nomad_config(dir.path(), &app, &double.address(), stand_in.to_str().unwrap(), cameras);
            Some((Arc::new(double), fleet::spawn_orchestrator_with_config(&app, &config)))
        }
        false => None,
    };
    let created = Instant::now();
    let mut scenarios = Vec::with_capacity(cameras);
    for i in 0..cameras {
        scenarios.push(app.create_scenario(&format!("rtsp://127.0.0.1:9/cam{i}")).await);
    }
    let keys: HashMap<uuid::Uuid, Vec<u8>> = {
        let client = app.pool.get().await.unwrap();
        client
            .query("SELECT scenario_uuid, results_key FROM scenarios", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let stop = CancellationToken::new();
    let kafka = Arc::new(vap_core::kafka::KafkaLink::new(app.settings.kafka.clone()));
    let sent = Arc::new(AtomicU64::new(0));
    let mut buffers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in scenarios.iter().enumerate() {
        let buffer = Arc::new(ResultBuffer::new(1_000));
        buffers.push(Arc::clone(&buffer));
        let publisher = Publisher {
            kafka: Arc::clone(&kafka),
            topic: app.settings.kafka.topic_results.clone(),
            scenario: *id,
            batch: 200,
            signer: vap_core::signing::RecordSigner {
                key: vap_core::signing::ResultsKey::new(keys[id].clone()),
                placement: vap_core::signing::PlacementEpoch(0),
            },
        };
        let (abandon, camera_stop) = (stop.clone(), stop.clone());
        tasks.spawn(async move {
            publisher.run(buffer, abandon).await;
        });
        let (buffer, id, sent) = (Arc::clone(buffers.last().unwrap()), *id, Arc::clone(&sent));
        // Cameras start spread over one period, as real ones would not start in step.
        let phase = Duration::from_secs_f64(i as f64 / cameras as f64 / FPS);
        tasks.spawn(async move {
            tokio::time::sleep(phase).await;
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / FPS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = camera_stop.cancelled() => { buffer.close(); return; }
                }
                let now = chrono::Utc::now();
                let frame = started.elapsed().as_millis() as i64;
                let value = serde_json::to_vec(&serde_json::json!({
                    "scenario_uuid": id,
                    "frame_number": frame,
                    "timestamp": now,
                    "detections": [{"class": "person", "confidence": 0.87, "bbox": [10.0, 20.0, 110.0, 220.0]}],
                    "model": "ssdlite_person_300",
                }))
                .unwrap();
                buffer.push(result_record(id, value, now));
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let latencies: Latencies = Arc::default();
    for r in 0..READERS {
        let (api, ids, lat, stop) = (app.api.base.clone(), scenarios.clone(), Arc::clone(&latencies), stop.clone());
        tasks.spawn(async move { read_api(api, ids, lat, stop, r).await });
    }
    let sse_events = Arc::new(AtomicU64::new(0));
    for id in scenarios.iter().take(SSE_STREAMS) {
        let url = format!("{}/api/v1/prediction/{id}/stream", app.api.base);
        let (events, stop) = (Arc::clone(&sse_events), stop.clone());
        tasks.spawn(async move { hold_sse(url, events, stop).await });
    }

    let sample: Vec<uuid::Uuid> = scenarios.iter().step_by((cameras / LAG_SAMPLE).max(1)).copied().collect();
    let started = Instant::now();
    let db_start = app.scalar("SELECT pg_database_size(current_database())").await;
    let mut cpu = cpu_by_process();
    let mut stored_before = 0;
    let mut window_start = chrono::Utc::now();
    println!(
        "\n| t | sent/s | stored/s | lag p50 | lag p99 | buffered | SSE events | API p99 page / range / scenario | CPU cores postgres / broker / vap / orchestrator | memory MB (PSS) postgres / broker / vap / orchestrator | database | placed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|");
    let mut sent_before = 0;
    let mut worst = (0.0f64, String::new());
    let all_placed: Arc<Mutex<Option<Duration>>> = Arc::default();
    if let Some((double, _)) = &placing {
        let (double, all_placed, stop) = (Arc::clone(double), Arc::clone(&all_placed), stop.clone());
        tasks.spawn(async move {
            while !stop.is_cancelled() && (double.placements() as usize) < cameras {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            *vap_core::sys::lock(&all_placed) = Some(created.elapsed());
        });
    }
    while started.elapsed() < duration {
        tokio::time::sleep(WINDOW).await;
        let now = chrono::Utc::now();
        let client = app.pool.get().await.unwrap();
        let lag = client
            .query_one(
                "SELECT COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - captured_at)), -1),
                        COALESCE(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - captured_at)), -1)
                   FROM scenario_results WHERE scenario_uuid = ANY($1) AND captured_at >= $2 AND captured_at < $3",
                &[&sample, &window_start, &now],
            )
            .await
            .unwrap();
        let (p50, p99): (f64, f64) = (lag.get(0), lag.get(1));
        let stored = app.scalar("SELECT sum(frames_processed)::bigint FROM scenarios").await;
        let db = app.scalar("SELECT pg_database_size(current_database())").await;
        let total_sent = sent.load(Ordering::Relaxed);
        let buffered: usize = buffers.iter().map(|b| b.len()).sum();
        let secs = WINDOW.as_secs_f64();
        let api: Vec<String> = ["page", "range", "scenario"]
            .iter()
            .map(|route| {
                let mut v = vap_core::sys::lock(&latencies).remove(route).unwrap_or_default();
                v.sort_by(f64::total_cmp);
                v.get(v.len() * 99 / 100).map_or("-".into(), |ms| format!("{ms:.0} ms"))
            })
            .collect();
        let now_cpu = cpu_by_process();
        let used = |name: &str| (now_cpu.get(name).map_or(0.0, |u| u.0) - cpu.get(name).map_or(0.0, |u| u.0)) / secs;
        let memory: Vec<String> = ["postgres", "nisshi", "vap", "orchestrator"]
            .iter()
            .map(|name| format!("{:.0}", now_cpu.get(*name).map_or(0.0, |u| u.1) / 1e6))
            .collect();
        let busiest = [
            ("postgres", used("postgres")),
            ("broker", used("nisshi")),
            ("vap", used("vap")),
            ("orchestrator", used("orchestrator")),
        ];
        if let Some((name, cores)) = busiest.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
            if *cores > worst.0 {
                worst = (*cores, name.to_string());
            }
        }
        let placed = placing.as_ref().map_or("-".into(), |(double, _)| double.placements().to_string());
        println!(
            "| {:.0} s | {:.0} | {:.0} | {:.2} s | {:.2} s | {buffered} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} | {} | {} MB | {placed} |",
            started.elapsed().as_secs_f64(),
            (total_sent - sent_before) as f64 / secs,
            (stored - stored_before) as f64 / secs,
            p50,
            p99,
            sse_events.load(Ordering::Relaxed),
            api.join(" / "),
            busiest[0].1,
            busiest[1].1,
            busiest[2].1,
            busiest[3].1,
            memory.join(" / "),
            db / 1_000_000
        );
        (stored_before, sent_before, cpu, window_start) = (stored, total_sent, now_cpu, now);
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    if let Some((double, mut orchestrator)) = placing {
        let _ = orchestrator.kill();
        let _ = orchestrator.wait();
        double.kill_all();
        match *vap_core::sys::lock(&all_placed) {
            Some(t) if double.placements() as usize >= cameras => println!(
                "placement: all {cameras} scenarios placed through the Nomad double {:.1} s after the first POST (MAX_WORKERS {cameras})",
                t.as_secs_f64()
            ),
            _ => println!("placement: only {} of {cameras} scenarios placed", double.placements()),
        }
    }
    let hours = started.elapsed().as_secs_f64() / 3600.0;
    let db_end = app.scalar("SELECT pg_database_size(current_database())").await;
    // Deleting one camera's soak (its results among everyone's, in every partition).
    let gone = scenarios[1];
    let rows = app.scalar(&format!("SELECT count(*) FROM scenario_results WHERE scenario_uuid = '{gone}'")).await;
    let stopped = format!(
        "WITH u AS (UPDATE scenarios SET status = 'inactive' WHERE scenario_uuid = '{gone}' RETURNING 1) SELECT count(*) FROM u"
    );
    app.scalar(&stopped).await;
    let t = Instant::now();
    let r = app.api.request(hyper::Method::DELETE, &format!("/api/v1/scenario/{gone}"), &[], Bytes::new()).await;
    println!(
        "DELETE /api/v1/scenario/{{uuid}} of a camera with {rows} results among {} stored: {} in {:.0} ms",
        app.scalar("SELECT count(*) FROM scenario_results").await,
        r.status,
        t.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "\ndatabase growth: {:.1} MB per camera-hour; busiest process: {} at {:.2} cores",
        (db_end - db_start) as f64 / 1e6 / (cameras as f64 * hours),
        worst.1,
        worst.0
    );
}

/// Reads like a dashboard: a page of predictions, the last minute by time, a scenario.
async fn read_api(base: String, ids: Vec<uuid::Uuid>, latencies: Latencies, stop: CancellationToken, seed: usize) {
    let api = common::ApiClient::new(&base);
    let mut i = seed;
    while !stop.is_cancelled() {
        i = (i * 7919 + 13) % ids.len();
        let id = ids[i];
        let since =
            (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for (route, path) in [
            ("page", format!("/api/v1/prediction/{id}?limit=50")),
            ("range", format!("/api/v1/prediction/{id}?since={since}&limit=200")),
            ("scenario", format!("/api/v1/scenario/{id}")),
        ] {
            let t = Instant::now();
            let r = api.get(&path).await;
            assert!(r.status.is_success(), "{path}: {} {}", r.status, r.text);
            vap_core::sys::lock(&latencies).entry(route).or_default().push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
}

/// Holds one SSE stream open, counting its result events.
async fn hold_sse(url: String, events: Arc<AtomicU64>, stop: CancellationToken) {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let Ok(resp) = client.request(req).await else { return };
    let mut body = resp.into_body();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.cancelled() => return,
        };
        match frame {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    let n = data.windows(13).filter(|w| *w == b"event: result").count();
                    events.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            _ => return,
        }
    }
}

/// CPU seconds used so far, and memory now (proportional set size: PostgreSQL's shared buffers
/// counted once, not per backend), by the processes named postgres, nisshi, vap-orchestrator,
/// and this one ("vap").
fn cpu_by_process() -> HashMap<String, (f64, f64)> {
    let tick = 100.0; // USER_HZ on Linux
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) else { continue };
        let secs = (u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0)) / tick;
        let name = if pid == me {
            "vap"
        } else if comm.starts_with("postgres") {
            "postgres"
        } else if comm.starts_with("nisshi") {
            "nisshi"
        } else if comm.starts_with("vap-orchestrat") {
            "orchestrator"
        } else {
            continue;
        };
        let pss_kb = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| t.lines().find(|l| l.starts_with("Pss:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let usage = out.entry(name.to_string()).or_default();
        usage.0 += secs;
        usage.1 += pss_kb * 1024.0;
    }
    out
}
