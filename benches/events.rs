//! Events latency (docs/BENCHMARKS.md): `cargo bench --bench events`. POST a
//! scenario on the synthetic walker clip (tests/integration/media.rs) with a line its walker
//! crosses half a second in, and time until its first event is served by the API, 20 times,
//! beside the time until its first result in the same runs (the baseline: what every scenario
//! pays before any event can exist). Real API, relay, broker, PostgreSQL, orchestrator and runner.

#[path = "../tests/integration/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../tests/integration/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "../tests/integration/media.rs"]
#[allow(dead_code)]
mod media;

use std::time::{Duration, Instant};

use common::TestApp;

const RUNS: usize = 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("events benchmark: run with `cargo bench --bench events`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let app = TestApp::spawn_for_runners().await;
        let mut orchestrator = fleet::spawn_orchestrator(&app, 1);
        let clip = media::media().walker.to_str().unwrap().to_string();
        let options = serde_json::json!({"fps": 5, "lines": [{"name": "early", "points": [[0.2, 1], [0.2, 0]]}]});
        let (mut to_result, mut to_event) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let posted = Instant::now();
            let id = app.create_scenario_with(&clip, options.clone()).await;
            let (mut result_at, mut event_at) = (None, None);
            while event_at.is_none() {
                if result_at.is_none() && app.prediction(id).await["total_frames_processed"].as_i64() > Some(0) {
                    result_at = Some(posted.elapsed());
                }
                let events = app.get(&format!("/api/v1/scenario/{id}/events?limit=1")).await.json();
                if !events["events"].as_array().unwrap().is_empty() {
                    event_at = Some(posted.elapsed());
                }
                assert!(posted.elapsed() < Duration::from_secs(120), "no event in 2 minutes");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let event_at = event_at.unwrap();
            to_result.push(result_at.unwrap_or(event_at).as_secs_f64() * 1000.0);
            to_event.push(event_at.as_secs_f64() * 1000.0);
            app.wait_for_status(id, "inactive", Duration::from_secs(120)).await;
        }
        let _ = orchestrator.kill();
        let _ = orchestrator.wait();
        for v in [&mut to_result, &mut to_event] {
            v.sort_by(f64::total_cmp);
        }
        println!("POST -> first served, {RUNS} scenarios one after another (walker clip, 5 fps, a line at x 0.2 the walker crosses 0.5 s into the clip)");
        println!("| first | p50 | p99 |");
        println!("|---|---:|---:|");
        println!("| result (baseline) | {:.0} ms | {:.0} ms |", percentile(&to_result, 0.5), percentile(&to_result, 0.99));
        println!("| event | {:.0} ms | {:.0} ms |", percentile(&to_event, 0.5), percentile(&to_event, 0.99));
    });
}
