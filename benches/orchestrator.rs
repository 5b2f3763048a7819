//! Orchestrator benchmark (docs/BENCHMARKS.md):
//! `cargo bench --bench orchestrator`.
//!
//! Per backend: time from POST /scenario/init to the runner process existing, and to the first
//! stored detection, p50/p99 over 50 scenarios run one after another (a 5 s file each). The
//! baseline beside it is the same runner started by hand, without API, relay or orchestrator.
//! Backends: local processes, transient units in a systemd booted with systemd-nspawn (driven
//! over its D-Bus socket), the Nomad API double. Then placements/s through the Nomad double for
//! 1,000 scenarios, beside the double's own register rate from a bare client.

#[path = "../tests/integration/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/integration/container.rs"]
#[allow(dead_code)]
mod container;
#[path = "../tests/integration/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "../tests/integration/media.rs"]
#[allow(dead_code)]
mod media;
#[path = "../tests/integration/nomad_double.rs"]
#[allow(dead_code)]
mod nomad_double;

use std::collections::HashSet;

use futures::StreamExt;
use std::time::{Duration, Instant};

use common::TestApp;
use fleet::{runner_processes, spawn_orchestrator, RUNNER_BIN};
use media::{media, models_dir};

const SCENARIOS: usize = 50;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("orchestrator benchmark: run with `cargo bench --bench orchestrator`");
        return;
    }
    std::env::set_var("VAP_TEST_PG_DURABLE", "1");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    rt.block_on(async {
        println!(
            "machine: {} cores; {SCENARIOS} scenarios one after another, each a 5 s 640x480 H.264 file at 2 fps",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        let mut app = TestApp::spawn_for_runners().await;
        let video = media().short.to_str().unwrap().to_string();
        if want("local") {
            local_latency(&app, &video).await;
        }
        if want("systemd") {
            systemd_latency(&app, &video).await;
        }
        if want("nomad") {
            let (mut placed, mut first) = nomad_latency(&mut app, &video).await;
            println!("{:<46} {:>10} {:>10}", "nomad backend (API double)", "p50", "p99");
            row("POST -> runner task started", &mut placed);
            row("POST -> first detection stored", &mut first);
        }
        if want("placements") {
            nomad_placements(&mut app).await;
        }
    });
}

async fn local_latency(app: &TestApp, video: &str) {
    let mut orchestrator = spawn_orchestrator(app, 4);
    let video = video.to_string();
    // Each file ends by itself; the next scenario starts after the last one is inactive.
    let (mut placed, mut first) =
        one_after_another(app, &video, |id| !runner_processes(&HashSet::from([id])).is_empty()).await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();

    // Baseline: the runner by hand on a scenario that exists, no orchestrator in the way.
    let mut by_hand = Vec::new();
    for _ in 0..SCENARIOS {
        let id = app.create_scenario(&video).await;
        let started = Instant::now();
        let mut env = app.env();
        env.extend([
            ("VAP_RUNNER__MODELS_DIR".to_string(), models_dir().to_str().unwrap().to_string()),
            ("VAP_SCENARIO_UUID".to_string(), id.to_string()),
            ("VAP_CAMERA_URL".to_string(), video.clone()),
            ("VAP_RESULTS_KEY".to_string(), app.results_key(id).await),
            ("VAP_SCENARIO_EPOCH".to_string(), app.epoch(id).await),
        ]);
        let mut runner = common::spawn_binary(RUNNER_BIN, &env, &[]);
        while app.get(&format!("/api/v1/prediction/{id}?limit=1")).await.json()["total_frames_processed"]
            .as_i64()
            .unwrap_or(0)
            < 1
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        by_hand.push(started.elapsed());
        let _ = runner.wait();
    }
    println!("{:<46} {:>10} {:>10}", "local backend", "p50", "p99");
    row("POST -> runner process started", &mut placed);
    row("POST -> first detection stored", &mut first);
    row("baseline: runner by hand -> first detection", &mut by_hand);
}

/// The same 50 scenarios as transient units in a real systemd booted with systemd-nspawn.
async fn systemd_latency(app: &TestApp, video: &str) {
    let ct = container::Container::boot();
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = container::spawn_systemd_orchestrator(app, &ct, dir.path(), 4, "watchdog_sec = 30\n", &[]);
    // Started: systemd has forked the unit's main process (activating until the runner's READY).
    let (mut placed, mut first) = one_after_another(app, video, |id| {
        ct.units(&format!("vap-runner-{id}.service"))
            .first()
            .is_some_and(|(_, active, _)| active == "activating" || active == "active")
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
    println!("{:<46} {:>10} {:>10}", "systemd backend (nspawn container)", "p50", "p99");
    row("POST -> unit's runner started", &mut placed);
    row("POST -> first detection stored", &mut first);
}

/// The same 50 scenarios through the Nomad backend and the double, which runs the real runner.
async fn nomad_latency(app: &mut TestApp, video: &str) -> (Vec<Duration>, Vec<Duration>) {
    let double = nomad_double::NomadDouble::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = fleet::spawn_orchestrator_with_config(
        app,
        &fleet::nomad_config(dir.path(), app, &double.address(), RUNNER_BIN, 4),
    );
    let timings =
        one_after_another(app, video, |id| double.running_tasks().contains_key(&format!("vap-runner-{id}"))).await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
    timings
}

/// POSTs `SCENARIOS` scenarios on `video` one at a time; for each, the time until `started`
/// says its runner exists and until its first detection is served. Waits for each to end.
async fn one_after_another(
    app: &TestApp,
    video: &str,
    started: impl Fn(uuid::Uuid) -> bool,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut placed, mut first) = (Vec::new(), Vec::new());
    for _ in 0..SCENARIOS {
        let posted = Instant::now();
        let id = app.create_scenario(video).await;
        while !started(id) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        placed.push(posted.elapsed());
        while app.get(&format!("/api/v1/prediction/{id}?limit=1")).await.json()["total_frames_processed"]
            .as_i64()
            .unwrap_or(0)
            < 1
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first.push(posted.elapsed());
        while app.get(&format!("/api/v1/scenario/{id}")).await.json()["status"] != "inactive" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (placed, first)
}

/// 1,000 scenarios at once (MAX_WORKERS 1,000); the task is a stand-in that sleeps, so the
/// figure is the orchestrator's and the API's, not the runners'.
async fn nomad_placements(app: &mut TestApp) {
    const N: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("sleeping-runner");
    std::fs::write(&stand_in, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&stand_in, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // Baseline: the double's register rate from a bare client, 8 at a time.
    let baseline_double = nomad_double::NomadDouble::start(None).await;
    let settings = vap_core::config::NomadBackendSettings {
        address: baseline_double.address(),
        command: stand_in.display().to_string(),
        ..Default::default()
    };
    let client = std::sync::Arc::new(vap_orchestrator::nomad::NomadClient::new(&settings).unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let (client, settings) = (std::sync::Arc::clone(&client), settings.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..N / 8 {
                let spec = vap_core::job::RunnerJob {
                    scenario: uuid::Uuid::new_v4(),
                    camera_url: vap_core::camera_url::CameraUrl::trusted("rtsp://cam/1".into()),
                    epoch: chrono::Utc::now(),
                    options: Default::default(),
                    options_revision: 0,
                    placement: vap_core::signing::PlacementEpoch(1),
                    moved: None,
                    results_key: vap_core::signing::ResultsKey::new(vec![1; 32]),
                    kafka_password: None,
                };
                client
                    .register_job(&vap_orchestrator::nomad::job_spec(
                        &settings,
                        &spec,
                        std::time::Duration::from_secs(30),
                    ))
                    .await
                    .unwrap();
            }
            chunk
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let baseline = N as f64 / started.elapsed().as_secs_f64();
    baseline_double.kill_all();
    drop(baseline_double);

    let double = nomad_double::NomadDouble::start(None).await;
    let mut orchestrator = fleet::spawn_orchestrator_with_config(
        app,
        &fleet::nomad_config(dir.path(), app, &double.address(), stand_in.to_str().unwrap(), N),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 16 clients POST at once, so the API is not what limits the placement rate.
    let started = Instant::now();
    let app_ref = &*app;
    futures::stream::iter(0..N)
        .map(|_| async move { app_ref.create_scenario("rtsp://camera.invalid/stream").await })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let posted = started.elapsed();
    while (double.placements() as usize) < N {
        assert!(started.elapsed() < Duration::from_secs(600), "only {} placements", double.placements());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_placed = started.elapsed();
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
    double.kill_all();
    println!("placements through the Nomad double, {N} scenarios POSTed by 16 clients (MAX_WORKERS {N})");
    println!(
        "  POST x{N}: {:.1} s; all {N} jobs registered and running after {:.1} s: {:.0} placements/s",
        posted.as_secs_f64(),
        all_placed.as_secs_f64(),
        N as f64 / all_placed.as_secs_f64()
    );
    println!("  baseline: bare client registering {N} jobs on the double, 8 at a time: {baseline:.0} registrations/s");
}

fn row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!("{name:<46} {:>8.0}ms {:>8.0}ms", pick(0.5).as_secs_f64() * 1000.0, pick(0.99).as_secs_f64() * 1000.0);
}
