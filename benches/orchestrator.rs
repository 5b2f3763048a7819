//! Orchestrator benchmark (docs/BENCHMARKS.md):
//! `cargo bench --features runner --bench orchestrator`.
//!
//! Per backend: time from POST /scenario/init to the runner process existing, and to the first
//! stored detection, p50/p99 over 50 scenarios run one after another (a 5 s file each). The
//! baseline beside it is the same runner started by hand, without API, relay or orchestrator.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/fleet.rs"]
mod fleet;
#[path = "../tests/common/media.rs"]
mod media;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::TestApp;
use fleet::{runner_processes, spawn_orchestrator, RunnerReaper, RUNNER_BIN};
use media::{manifest, media};

const SCENARIOS: usize = 50;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("orchestrator benchmark: run with `cargo bench --features runner --bench orchestrator`");
        return;
    }
    std::env::set_var("VAP_TEST_PG_DURABLE", "1");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("machine: {} cores; {SCENARIOS} scenarios one after another, each a 5 s 640x480 H.264 file at 2 fps", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        let mut app = TestApp::spawn_with(|s| s.api.allow_file_urls = true).await;
        app.start_relay();
        let mut orchestrator = spawn_orchestrator(&app, 4);
        let video = media().short.to_str().unwrap().to_string();
        let (mut placed, mut first) = (Vec::new(), Vec::new());
        for _ in 0..SCENARIOS {
            let posted = Instant::now();
            let id = app.create_scenario(&video).await;
            let _reaper = RunnerReaper(HashSet::from([id]));
            let ids = HashSet::from([id]);
            while runner_processes(&ids).is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            placed.push(posted.elapsed());
            while app.get(&format!("/api/v1/prediction/{id}?limit=1")).await.json()["total_frames_processed"].as_i64().unwrap_or(0) < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            first.push(posted.elapsed());
            while app.get(&format!("/api/v1/scenario/{id}")).await.json()["status"] != "inactive" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = orchestrator.kill();

        // Baseline: the runner by hand on a scenario that exists, no orchestrator in the way.
        let mut by_hand = Vec::new();
        for _ in 0..SCENARIOS {
            let id = app.create_scenario(&video).await;
            let started = Instant::now();
            let mut env = app.env();
            env.extend([
                ("VAP_RUNNER__MODEL_MANIFEST".to_string(), manifest().to_str().unwrap().to_string()),
                ("VAP_SCENARIO_UUID".to_string(), id.to_string()),
                ("VAP_CAMERA_URL".to_string(), video.clone()),
            ]);
            let mut runner = common::spawn_binary(RUNNER_BIN, &env, &[]);
            while app.get(&format!("/api/v1/prediction/{id}?limit=1")).await.json()["total_frames_processed"].as_i64().unwrap_or(0) < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            by_hand.push(started.elapsed());
            let _ = runner.wait();
        }
        println!("{:<46} {:>10} {:>10}", "local backend", "p50", "p99");
        row("POST -> runner process started", &mut placed);
        row("POST -> first detection stored", &mut first);
        row("baseline: runner by hand -> first detection", &mut by_hand);
    });
}

fn row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!("{name:<46} {:>8.0}ms {:>8.0}ms", pick(0.5).as_secs_f64() * 1000.0, pick(0.99).as_secs_f64() * 1000.0);
}
