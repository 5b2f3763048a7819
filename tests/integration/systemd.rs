//! The systemd backend against a real systemd (booted in a systemd-nspawn container), driven
//! over its D-Bus socket exactly as on a bare-metal host.

use crate::common;
use crate::container;
use crate::fleet;
use crate::media;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{eventually, TestApp};
use container::{spawn_systemd_orchestrator, systemd_orchestrator_config, Container};
use media::{free_port, media, serve_then_stall, RtspServer};
use serde_json::json;

const SERVICE: &str = "org.freedesktop.systemd1.Service";

/// What any local user can read of a runner's unit holds no secret: the URL's password
/// (`S3cret-pw` in these tests' camera URLs) and the results key are sealed; the key that opens
/// them is a credential; the runner has a user of its own, no way to the system bus, and no
/// way to link-local networks (cloud metadata).
async fn assert_unit_shows_no_secret(ct: &Container, app: &TestApp, live: uuid::Uuid, unit: &str) {
    let key = app.results_key(live).await;
    let mut shown = String::new();
    for property in ["Environment", "ExecStart", "SetCredential", "LoadCredential", "StandardInputData"] {
        shown += &ct.unit_property(unit, SERVICE, property).map(|v| v.to_string()).unwrap_or_default();
    }
    assert!(!shown.contains("S3cret-pw") && !shown.contains(&key), "{shown}");
    assert!(shown.contains("VAP_JOB_SECRETS=sealed:") && shown.contains("vap-runner-key"), "{shown}");
    if !env!("CARGO_MANIFEST_DIR").starts_with("/tmp") {
        assert_eq!(ct.unit_property(unit, SERVICE, "DynamicUser"), Some(json!(true)));
    }
    let hidden = ct.unit_property(unit, SERVICE, "InaccessiblePaths").map(|v| v.to_string()).unwrap_or_default();
    assert!(hidden.contains("/run/dbus/system_bus_socket"), "{hidden}");
    // [family, address bytes, prefix].
    let denied = ct.unit_property(unit, SERVICE, "IPAddressDeny").unwrap_or_default();
    assert!(denied.to_string().contains("[169,254,0,0],16"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_backend_end_to_end_in_a_booted_container() {
    let ct = Container::boot();
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = spawn_systemd_orchestrator(&app, &ct, dir.path(), 10, "watchdog_sec = 30\n", &[]);

    // A live camera: a transient unit `vap-runner-<uuid>.service`, active, detections served.
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let live = app.create_scenario(&format!("rtsp://viewer:S3cret-pw@127.0.0.1:{port}/cam")).await;
    app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let unit = format!("vap-runner-{live}.service");
    assert_unit_shows_no_secret(&ct, &app, live, &unit).await;
    let w = eventually(Duration::from_secs(10), "the worker row", || async {
        let s = app.scenario(live).await;
        (s["worker"]["status"] == "running").then_some(s["worker"].clone())
    })
    .await;
    assert_eq!(
        (w["backend"].as_str(), w["backend_ref"].as_str(), w["node"].as_str()),
        (Some("systemd"), Some(unit.as_str()), Some("container")),
        "{w}"
    );
    let units = ct.units("vap-runner-*");
    assert_eq!(units, vec![(unit.clone(), "active".to_string(), "running".to_string())], "systemd's own view");

    // Shutdown: StopUnit, the runner flushes, the scenario ends inactive, the unit is gone.
    app.shutdown_scenario(live).await;
    app.wait_for_status(live, "inactive", Duration::from_secs(90)).await;
    eventually(Duration::from_secs(20), "the unit unloaded", || async {
        ct.units("vap-runner-*").is_empty().then_some(())
    })
    .await;

    // A file: analysed to its end (exit 0, not restarted), inactive, the unit cleaned up.
    let file = app.create_scenario(media().short.to_str().unwrap()).await;
    app.wait_for_status(file, "inactive", Duration::from_secs(90)).await;
    assert_eq!(app.get(&format!("/api/v1/prediction/{file}")).await.json()["total_frames_processed"], 10);
    eventually(Duration::from_secs(20), "the finished unit unloaded", || async {
        ct.units("vap-runner-*").is_empty().then_some(())
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_restarts_a_killed_runner_and_the_scenario_carries_on() {
    let ct = Container::boot();
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator =
        spawn_systemd_orchestrator(&app, &ct, dir.path(), 10, "watchdog_sec = 30\nrestart_sec = 1\n", &[]);
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let live = app.create_scenario(&format!("rtsp://viewer:S3cret-pw@127.0.0.1:{port}/cam")).await;
    app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let unit = format!("vap-runner-{live}.service");
    assert_unit_shows_no_secret(&ct, &app, live, &unit).await;
    let first_pid = ct.unit_property(&unit, SERVICE, "ExecMainPID").expect("the unit");

    // `systemctl kill -s KILL`: an unclean end, so Restart=on-failure brings it back.
    ct.kill_unit(&unit, libc::SIGKILL);
    eventually(Duration::from_secs(30), "systemd restarting the runner", || async {
        let restarted = ct.unit_property(&unit, SERVICE, "NRestarts") == Some(json!(1));
        let pid = ct.unit_property(&unit, SERVICE, "ExecMainPID");
        let running = ct.units(&unit).first().is_some_and(|u| u.1 == "active" && u.2 == "running");
        (restarted && running && pid.is_some() && pid != Some(first_pid.clone())).then_some(())
    })
    .await;
    // The scenario carries on: new detections after the restart, the restart shown on the worker.
    let frames = app.prediction(live).await["total_frames_processed"].as_i64().unwrap();
    eventually(Duration::from_secs(60), "detections after the restart", || async {
        (app.prediction(live).await["total_frames_processed"].as_i64().unwrap() > frames).then_some(())
    })
    .await;
    let s = eventually(Duration::from_secs(30), "the restarted worker running", || async {
        let s = app.scenario(live).await;
        (s["worker"]["restarts"] == 1 && s["worker"]["status"] == "running").then_some(s)
    })
    .await;
    assert_eq!(s["status"], "active", "{s}");

    app.shutdown_scenario(live).await;
    app.wait_for_status(live, "inactive", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(20), "the unit unloaded", || async {
        ct.units("vap-runner-*").is_empty().then_some(())
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_runner_is_killed_by_the_watchdog_until_the_start_limit_fails_the_scenario() {
    let ct = Container::boot();
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    // Two starts in two minutes; a read timeout far longer than the 2 s watchdog.
    let section = "watchdog_sec = 2\nrestart_sec = 1\nstart_limit_burst = 2\nstart_limit_interval_secs = 120\n";
    let mut orchestrator = spawn_systemd_orchestrator(
        &app,
        &ct,
        dir.path(),
        10,
        section,
        &["VAP_RUNNER__READ_TIMEOUT_MS=600000", "VAP_RUNNER__SAMPLE_FPS=0"],
    );
    let url = format!("http://{}/people.mp4", serve_then_stall(media().people.clone()).await);
    let id = app.create_scenario(&url).await;
    let unit = format!("vap-runner-{id}.service");

    // systemd's own verdicts on the unit, sampled until the scenario fails.
    let mut results = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let failed = loop {
        if let Some(r) = ct.unit_property(&unit, SERVICE, "Result").and_then(|r| r.as_str().map(str::to_string)) {
            results.insert(r);
        }
        let s = app.scenario(id).await;
        if s["status"] == "failed" {
            break s;
        }
        assert!(Instant::now() < deadline, "not failed: {s}, systemd said {results:?}\n{}", ct.journal(&unit));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        results.contains("watchdog"),
        "systemd never reported a watchdog timeout: {results:?}; scenario {failed}\n{}",
        ct.journal(&unit)
    );
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains(&unit) && error.contains("result watchdog"), "{failed}");
    let w = &failed["worker"];
    assert_eq!((w["backend"].as_str(), w["status"].as_str()), (Some("systemd"), Some("failed")), "{failed}");
    assert!(w["restarts"].as_i64() >= Some(1), "{failed}");
    // Failed stays failed: the unit is collected and nothing starts it again.
    eventually(Duration::from_secs(20), "the failed unit collected", || async {
        ct.units("vap-runner-*").is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ct.units("vap-runner-*").is_empty());
    assert_eq!(app.scenario(id).await["status"], "failed");
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_orchestrator_adopts_running_units_and_keeps_the_cap() {
    let ct = Container::boot();
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    const CAP: usize = 2;
    let mut orchestrator = spawn_systemd_orchestrator(&app, &ct, dir.path(), CAP, "watchdog_sec = 30\n", &[]);
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let live = app.create_scenario(&format!("rtsp://viewer:S3cret-pw@127.0.0.1:{port}/cam")).await;
    app.wait_for_status(live, "active", Duration::from_secs(90)).await;
    let unit = format!("vap-runner-{live}.service");
    assert_unit_shows_no_secret(&ct, &app, live, &unit).await;
    let pid = ct.unit_property(&unit, SERVICE, "ExecMainPID").expect("the unit");

    // kill -9, and a new orchestrator in its place.
    vap_core::sys::signal(orchestrator.id(), vap_core::sys::SIGKILL);
    let _ = orchestrator.wait();
    let mut orchestrator = spawn_systemd_orchestrator(&app, &ct, dir.path(), CAP, "watchdog_sec = 30\n", &[]);

    // Five files behind the live camera: with the cap at 2 they go one at a time.
    let mut files = Vec::new();
    for _ in 0..5 {
        files.push(app.create_scenario(media().short.to_str().unwrap()).await);
    }
    let (mut most, mut waiting_seen) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        // systemd's count, not vap's: units with a runner process starting, running or stopping.
        let busy = ct
            .units("vap-runner-*")
            .iter()
            .filter(|(_, active, sub)| {
                (active == "active" && sub == "running") || active == "activating" || active == "deactivating"
            })
            .count();
        assert!(busy <= CAP, "{busy} runner units at once with MAX_WORKERS {CAP}: {:?}", ct.units("vap-runner-*"));
        most = most.max(busy);
        let mut done = 0;
        for f in &files {
            let s = app.scenario(*f).await;
            waiting_seen |= s["worker"]["status"] == "waiting";
            done += (s["status"] == "inactive") as usize;
        }
        if done == files.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {} files done", files.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, CAP, "the cap was never used in full");
    assert!(waiting_seen, "no scenario was shown waiting");
    for f in &files {
        assert_eq!(app.prediction(*f).await["total_frames_processed"], 10);
    }
    // The live runner was adopted: the same process all along, never restarted, never doubled.
    assert_eq!(ct.unit_property(&unit, SERVICE, "ExecMainPID"), Some(pid));
    assert_eq!(ct.unit_property(&unit, SERVICE, "NRestarts"), Some(json!(0)));
    assert_eq!(app.scenario(live).await["status"], "active");

    app.shutdown_scenario(live).await;
    app.wait_for_status(live, "inactive", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(20), "every unit unloaded", || async {
        ct.units("vap-runner-*").is_empty().then_some(())
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// An orchestrator placing on host-a (`a`, over its bus socket) and host-b (at `b_address`),
/// serving its metrics on `metrics_port` when given.
fn spawn_two_host_orchestrator(
    app: &TestApp,
    a: &Container,
    b_address: &str,
    dir: &std::path::Path,
    metrics_port: Option<u16>,
) -> std::process::Child {
    let section = format!(
        "watchdog_sec = 30\nnodes = [{{ name = \"host-a\", bus_address = \"{}\" }}, {{ name = \"host-b\", bus_address = \"{b_address}\" }}]\n",
        a.bus_address()
    );
    let config = systemd_orchestrator_config(app, a, dir, 4, &section, &[]);
    let env: Vec<(String, String)> = metrics_port
        .map(|p| ("VAP_ORCHESTRATOR__METRICS_LISTEN".to_string(), format!("127.0.0.1:{p}")))
        .into_iter()
        .collect();
    fleet::spawn_orchestrator_with_env(app, &config, &env)
}

/// The orchestrator's gauge `name{node="..."}`, as served on its metrics port.
async fn node_gauge(metrics_port: u16, node: &str) -> Option<f64> {
    let text = common::ApiClient::new(&format!("http://127.0.0.1:{metrics_port}")).get("/metrics").await.text;
    let series = format!("vap_orchestrator_node_up{{node=\"{node}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_spread_over_several_hosts() {
    let (a, b) = (Container::boot(), Container::boot());
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    // host-b is reached as a remote host would be: systemd-stdio-bridge over a pipe (nsenter
    // standing in for ssh).
    let mut orchestrator = spawn_two_host_orchestrator(&app, &a, &b.stdio_bridge_address(), dir.path(), None);
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.create_scenario(&format!("rtsp://127.0.0.1:{port}/cam")).await);
    }
    for id in &ids {
        app.wait_for_status(*id, "active", Duration::from_secs(120)).await;
    }
    // Two on each host, as each host's own systemd reports, and each worker names its host.
    let running =
        |ct: &Container| ct.units("vap-runner-*").into_iter().filter(|u| u.1 == "active" && u.2 == "running").count();
    eventually(Duration::from_secs(30), "two runners on each host", || async {
        (running(&a) == 2 && running(&b) == 2).then_some(())
    })
    .await;
    for id in &ids {
        let s = app.scenario(*id).await;
        let host = match s["worker"]["node"].as_str() {
            Some("host-a") => &a,
            Some("host-b") => &b,
            other => panic!("worker node {other:?}: {s}"),
        };
        assert_eq!(host.units(&format!("vap-runner-{id}.service")).len(), 1, "{s}");
    }
    for id in &ids {
        app.shutdown_scenario(*id).await;
    }
    for id in &ids {
        app.wait_for_status(*id, "inactive", Duration::from_secs(60)).await;
    }
    eventually(Duration::from_secs(20), "no units on either host", || async {
        (a.units("vap-runner-*").is_empty() && b.units("vap-runner-*").is_empty()).then_some(())
    })
    .await;
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_answer_keeps_its_runners_and_the_others_carry_on() {
    let (a, b) = (Container::boot(), Container::boot());
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    // host-b through a bridge the test can cut, as a network would: while `<bridge>.down`
    // exists no connection opens, and the open one is killed below.
    let bridge = dir.path().join("bridge");
    let nsenter = format!("nsenter -t {} -a systemd-stdio-bridge", b.init_pid());
    std::fs::write(
        &bridge,
        format!(
            "#!/bin/sh\n[ -e \"$0.down\" ] && {{ echo 'host-b: no route to host' >&2; exit 1; }}\nexec {nsenter}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bridge, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let metrics = free_port();
    let mut orchestrator = spawn_two_host_orchestrator(
        &app,
        &a,
        &format!("unixexec:path={}", bridge.display()),
        dir.path(),
        Some(metrics),
    );
    let port = free_port();
    let _rtsp = RtspServer::start(port, &media().people);
    let camera = format!("rtsp://127.0.0.1:{port}/cam");
    let node = |s: &serde_json::Value| s["worker"]["node"].as_str().unwrap_or_default().to_string();
    let first = [app.create_scenario(&camera).await, app.create_scenario(&camera).await];
    let mut on_b = None;
    for id in first {
        app.wait_for_status(id, "active", Duration::from_secs(120)).await;
        if node(&app.scenario(id).await) == "host-b" {
            on_b = Some(id);
        }
    }
    let on_b = on_b.expect("one of two runners on host-b");
    let on_a = first.into_iter().find(|&id| id != on_b).unwrap();
    let b_unit = format!("vap-runner-{on_b}.service");
    let b_pid = b.unit_property(&b_unit, SERVICE, "MainPID");

    // Cut host-b off: no new connection, and the open one's bridge killed at both ends.
    std::fs::write(dir.path().join("bridge.down"), "").unwrap();
    let bridges = std::process::Command::new("pgrep")
        .args(["-f", "^systemd-stdio-bridge", "--nslist", "pid", "--ns", &b.init_pid()])
        .output()
        .unwrap();
    let bridges = String::from_utf8_lossy(&bridges.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert!(!bridges.is_empty(), "no bridge into host-b");
    assert!(std::process::Command::new("pkill").args(["-f", &nsenter]).status().unwrap().success());
    assert!(std::process::Command::new("kill").args(&bridges).status().unwrap().success());
    let s = eventually(Duration::from_secs(30), "host-b's runner shown unreachable", || async {
        let s = app.scenario(on_b).await;
        (s["worker"]["status"] == "unreachable").then_some(s)
    })
    .await;
    assert_eq!((s["status"].as_str(), s["worker"]["node"].as_str()), (Some("active"), Some("host-b")), "{s}");
    assert!(s["worker"]["last_error"].as_str().unwrap_or_default().contains("host-b does not answer"), "{s}");
    assert_eq!(
        (node_gauge(metrics, "host-a").await, node_gauge(metrics, "host-b").await),
        (Some(1.0), Some(0.0)),
        "vap_orchestrator_node_up"
    );

    // New scenarios go to host-a, and a shutdown there completes...
    let later = [app.create_scenario(&camera).await, app.create_scenario(&camera).await];
    for id in later {
        app.wait_for_status(id, "active", Duration::from_secs(120)).await;
        assert_eq!(node(&app.scenario(id).await), "host-a");
    }
    app.shutdown_scenario(on_a).await;
    app.wait_for_status(on_a, "inactive", Duration::from_secs(60)).await;
    // ...while host-b's runner is left as it is: not started elsewhere, not given up, and its
    // shutdown waits for the host.
    app.shutdown_scenario(on_b).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = app.scenario(on_b).await;
    assert!(["init_shutdown", "in_shutdown_processing"].contains(&s["status"].as_str().unwrap()), "{s}");
    assert_eq!(b.unit_property(&b_unit, SERVICE, "MainPID"), b_pid, "host-b's runner untouched");
    assert!(a.units(&b_unit).is_empty(), "host-b's scenario started on host-a");
    assert_eq!(a.units("vap-runner-*").len(), 2);

    // host-b answers again: its shutdown completes, and nothing ran twice.
    std::fs::remove_file(dir.path().join("bridge.down")).unwrap();
    app.wait_for_status(on_b, "inactive", Duration::from_secs(60)).await;
    assert_eq!(node_gauge(metrics, "host-b").await, Some(1.0));
    eventually(Duration::from_secs(20), "host-b's unit gone", || async {
        b.units("vap-runner-*").is_empty().then_some(())
    })
    .await;
    assert!(a.units(&b_unit).is_empty());
    for id in later {
        app.shutdown_scenario(id).await;
    }
    for id in later {
        app.wait_for_status(id, "inactive", Duration::from_secs(60)).await;
    }
    let _ = orchestrator.kill();
    let _ = orchestrator.wait();
}

/// A host whose bus accepts connections and never answers (an ssh link that hangs): the
/// orchestrator's rounds wait on it, but SIGTERM does not. Exit within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_by_a_host_whose_bus_never_answers() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent-bus");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&held);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            vap_core::sys::lock(&keep).push(conn);
        }
    });
    let section = format!(
        "nodes = [{{ name = \"silent\", bus_address = \"unix:path={}\" }}]\nrunner_key_file = \"{}\"\n",
        socket.display(),
        container::runner_key_file().display()
    );
    let config = fleet::orchestrator_config(dir.path(), "systemd", 4, &section);
    let metrics = format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap());
    let mut orchestrator = fleet::spawn_orchestrator_with_env(
        &app,
        &config,
        &[("VAP_ORCHESTRATOR__METRICS_LISTEN".into(), metrics.clone())],
    );
    // Never opened (no runner starts here); loopback all the same.
    app.create_scenario("rtsp://127.0.0.1:9/stream").await;
    eventually(Duration::from_secs(20), "the orchestrator to be waiting on the host", || async {
        (!vap_core::sys::lock(&held).is_empty()).then_some(())
    })
    .await;
    // The list times out (10 s; each call 20 s): the host is reported down, nothing hangs on it.
    let scraper = common::ApiClient::new(&format!("http://{metrics}"));
    eventually(Duration::from_secs(45), "the silent host reported down", || async {
        let text = scraper.get("/metrics").await.text;
        text.lines()
            .any(|l| l.starts_with("vap_orchestrator_node_up") && l.contains("silent") && l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    let (status, took) = fleet::terminate(&mut orchestrator).await;
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
