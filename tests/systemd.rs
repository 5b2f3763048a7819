//! The systemd backend against a real systemd (booted in a systemd-nspawn container), driven
//! over its D-Bus socket exactly as on a bare-metal host.

mod common;
#[path = "common/container.rs"]
mod container;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/media.rs"]
mod media;

use std::path::Path;
use std::time::Duration;

use common::{eventually, TestApp};
use fleet::{orchestrator_config, runner_env, spawn_orchestrator_with_config};
use container::Container;
use hyper::StatusCode;
use media::{free_port, media, RtspServer};
use serde_json::json;

/// vap-orchestrator with `backend = "systemd"`, driving the container's bus.
fn spawn_systemd_orchestrator(app: &TestApp, ct: &Container, dir: &Path) -> std::process::Child {
    let section = format!(
        "bus_address = \"{}\"\nnode_name = \"container\"\nrunner_bin = \"{}\"\nrunner_env = {}\nwatchdog_sec = 30\nprivate_tmp = {}\n",
        ct.bus_address(),
        env!("CARGO_BIN_EXE_vap-runner"),
        serde_json::to_string(&runner_env(app)).unwrap(),
        // A checkout under /tmp (CI clones there) would vanish behind a private /tmp.
        !env!("CARGO_MANIFEST_DIR").starts_with("/tmp"),
    );
    spawn_orchestrator_with_config(app, &orchestrator_config(dir, "systemd", 10, &section))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_backend_end_to_end_in_a_booted_container() {
    let ct = Container::boot();
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = spawn_systemd_orchestrator(&app, &ct, dir.path());

    // A live camera: a transient unit `vap-runner-<uuid>.service`, active, detections served.
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let live = app.create_scenario(&format!("rtsp://127.0.0.1:{port}/cam")).await;
    app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let unit = format!("vap-runner-{live}.service");
    let w = eventually(Duration::from_secs(10), "the worker row", || async {
        let s = app.scenario(live).await;
        (s["worker"]["status"] == "running").then_some(s["worker"].clone())
    })
    .await;
    assert_eq!((w["backend"].as_str(), w["backend_ref"].as_str(), w["node"].as_str()), (Some("systemd"), Some(unit.as_str()), Some("container")), "{w}");
    let units = ct.units("vap-runner-*");
    assert_eq!(units, vec![(unit.clone(), "active".to_string(), "running".to_string())], "systemd's own view");

    // Shutdown: StopUnit, the runner flushes, the scenario ends inactive, the unit is gone.
    let r = app.post_json(&format!("/api/v1/scenario/{live}/shutdown"), &json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    app.wait_for_status(live, "inactive", Duration::from_secs(90)).await;
    eventually(Duration::from_secs(20), "the unit unloaded", || async { ct.units("vap-runner-*").is_empty().then_some(()) }).await;

    // A file: analysed to its end (exit 0, not restarted), inactive, the unit cleaned up.
    let file = app.create_scenario(media().short.to_str().unwrap()).await;
    app.wait_for_status(file, "inactive", Duration::from_secs(90)).await;
    assert_eq!(app.get(&format!("/api/v1/prediction/{file}")).await.json()["total_frames_processed"], 10);
    eventually(Duration::from_secs(20), "the finished unit unloaded", || async { ct.units("vap-runner-*").is_empty().then_some(()) }).await;
    let _ = orchestrator.kill();
}
