//! The web console in a real browser: Debian's chromium driven by playwright-core
//! (tests/browser/console.mjs), against the real API (with a token), relay, broker,
//! PostgreSQL, orchestrator and runner, on a camera served over RTSP. What the person sees is
//! asserted in the page (the boxes the overlay draws, the count in the table); the test then
//! checks the same facts through the API.

use crate::common;
use crate::fleet;
use crate::media;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ApiClient, TestApp};
use fleet::{spawn_orchestrator, RunnerReaper};
use media::{free_port, media, RtspServer};
use serde_json::Value;

const TOKEN: &str = "console-operator-token";

/// Where scripts/setup installs playwright-core.
fn browser_tests_dir() -> PathBuf {
    common::cache_dir().join("browser-tests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_adds_a_camera_sees_boxes_draws_a_line_sees_it_count_and_stops_it() {
    let playwright = browser_tests_dir();
    assert!(
        playwright.join("node_modules/playwright-core/package.json").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "playwright-core under {} and /usr/bin/chromium (VAP_SETUP_TESTS=1 scripts/setup installs both)",
        playwright.display()
    );
    let _turn = common::analysis_turn().await;
    let mut app = TestApp::spawn_with(|s| s.api.auth_token = vap_core::config::Secret::new(TOKEN)).await;
    app.start_relay();
    let mut orchestrator = spawn_orchestrator(&app, 2);
    let port = free_port();
    let _camera = RtspServer::start(port, &media().walker_loop);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", &app.base)
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CAMERA_URL", format!("rtsp://127.0.0.1:{port}/cam"))
        .env("PLAYWRIGHT_DIR", &playwright)
        .env("SCREENSHOTS", &shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run).await.expect("the browser run ends").unwrap();
    let api = ApiClient::with_token(&app.base, TOKEN);
    let listed = api.get("/api/v1/scenarios").await.json();
    let ids: HashSet<uuid::Uuid> = listed["scenarios"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| s["scenario_uuid"].as_str().unwrap().parse().unwrap())
        .collect();
    let _reaper = RunnerReaper(ids.clone());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed (screenshots in {}):\n{stdout}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the run's report");

    // What the page showed is what the API holds.
    let id: uuid::Uuid = report["scenario_uuid"].as_str().unwrap().parse().unwrap();
    assert_eq!(ids, HashSet::from([id]), "one scenario, added through the form");
    let scenario = api.scenario(id).await;
    assert_eq!(scenario["options"]["name"], "Walker", "{scenario}");
    assert_eq!(scenario["options"]["lines"][0]["name"], "middle", "the line drawn was saved: {scenario}");
    assert_ne!(scenario["status"], "active", "stopped from the console: {scenario}");
    let seen_boxes = report["boxes"].as_u64().unwrap();
    assert!(seen_boxes >= 1, "{report}");
    let counts = api.get(&format!("/api/v1/scenario/{id}/counts?bucket=1m")).await.json();
    let crossed: i64 = counts["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["line"] == "middle")
        .map(|r| r["crossed_in"].as_i64().unwrap() + r["crossed_out"].as_i64().unwrap())
        .sum();
    assert!(crossed >= report["crossings_shown"].as_i64().unwrap() && crossed >= 1, "{counts} vs {report}");
    let snapshot = api.get(&format!("/api/v1/scenario/{id}/snapshot.jpg?boxes=1")).await;
    assert_eq!(snapshot.status, hyper::StatusCode::OK);

    // The screenshots the docs show come from this run.
    if std::env::var_os("CONSOLE_SCREENSHOTS_TO_DOCS").is_some() {
        for name in ["console-scenarios.png", "console-scenario.png"] {
            std::fs::copy(shots.join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name)).unwrap();
        }
    }
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}
