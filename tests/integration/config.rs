//! Configuration layering and the binaries' process behaviour (errors, secrets, SIGTERM).

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, TestApp};
use vap_core::config::Settings;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn write_toml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

#[test]
fn the_documented_example_file_loads_and_runner_job_variables_are_not_settings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("units/vap.toml");
    // The job variables a runner gets must not trip the unknown-key check.
    let job = env(&[
        ("VAP_SCENARIO_UUID", "6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10"),
        ("VAP_CAMERA_URL", "rtsp://cam/1"),
        ("VAP_SCENARIO_EPOCH", "2026-01-01T00:00:00Z"),
    ]);
    let s = Settings::load_from(Some(&path), job).expect("units/vap.toml is valid");
    assert_eq!(s.runner.sample_fps, 2.0);
    assert_eq!(s.runner.models_dir, std::path::PathBuf::from("/usr/share/vap/models"));
    assert_eq!(s.runner.default_model, "yolov4_tiny_coco_416");
    let e = Settings::load_from(None, env(&[("VAP_RUNNER__SAMPLE_FPS", "-1")])).unwrap_err().to_string();
    assert!(e.contains("runner.sample_fps"), "{e}");
}

#[test]
fn defaults_then_file_then_environment() {
    let file = write_toml("[database]\nport = 6000\nuser = \"fromfile\"\n[kafka]\npartitions = 8\n");
    let s = Settings::load_from(
        Some(file.path()),
        env(&[("VAP_DATABASE__PORT", "7000"), ("VAP_KAFKA__BROKERS", "a:1,b:2")]),
    )
    .unwrap();
    assert_eq!(s.database.port, 7000, "environment beats the file");
    assert_eq!(s.database.user, "fromfile", "the file beats the defaults");
    assert_eq!(s.kafka.partitions, 8);
    assert_eq!(s.kafka.brokers, vec!["a:1", "b:2"]);
    assert_eq!(s.database.dbname, "vap", "defaults fill the rest");
}

#[test]
fn broker_logins_are_named_as_kafka_clients_name_them() {
    use vap_core::config::SaslMechanism;
    for (name, want) in [
        ("none", SaslMechanism::None),
        ("plain", SaslMechanism::Plain),
        ("scram-sha-256", SaslMechanism::ScramSha256),
        ("scram-sha-512", SaslMechanism::ScramSha512),
    ] {
        let file = write_toml(&format!(
            "[kafka]\nsasl_mechanism = \"{name}\"\nsasl_username = \"vap\"\ntls_ca_file = \"/etc/vap/kafka-ca.pem\"\n"
        ));
        let s = Settings::load_from(Some(file.path()), env(&[("VAP_KAFKA__SASL_PASSWORD", "pw")])).unwrap();
        assert_eq!((s.kafka.sasl_mechanism, s.kafka.sasl_password.expose()), (want, "pw"), "{name}");
    }
    let e = Settings::load_from(None, env(&[("VAP_KAFKA__SASL_MECHANISM", "scram-sha-512")])).unwrap_err().to_string();
    assert!(e.contains("kafka.sasl_username"), "a login without a user: {e}");
    let plain = env(&[("VAP_KAFKA__SASL_MECHANISM", "plain"), ("VAP_KAFKA__SASL_USERNAME", "vap")]);
    let e = Settings::load_from(None, plain).unwrap_err().to_string();
    assert!(e.contains("tls_ca_file"), "a password in clear: {e}");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_name() {
    let file = write_toml("[database]\nprot = 5\n");
    let e = Settings::load_from(Some(file.path()), env(&[])).unwrap_err().to_string();
    assert!(e.contains("prot") && e.contains("database"), "{e}");
    let e = Settings::load_from(None, env(&[("VAP_DATABASE__PORT", "abc")])).unwrap_err().to_string();
    assert!(e.contains("database.port"), "{e}");
    let e = Settings::load_from(None, env(&[("VAP_TYPO", "1")])).unwrap_err().to_string();
    assert!(e.contains("typo"), "{e}");
    let e = Settings::load_from(None, env(&[("VAP_RELAY__BATCH_SIZE", "0")])).unwrap_err().to_string();
    assert!(e.contains("relay.batch_size"), "{e}");
    // Several hosts: the orchestrator's own needs no bus address, but every one a name of its own.
    let nodes = "[[orchestrator.systemd.nodes]]\nname = \"infra\"\n[[orchestrator.systemd.nodes]]\nname = \"worker-1\"\nbus_address = \"unixexec:path=ssh,argv1=worker-1\"\n";
    let file = write_toml(nodes);
    let s = Settings::load_from(Some(file.path()), env(&[])).unwrap();
    assert_eq!(
        s.orchestrator
            .systemd
            .effective_nodes()
            .iter()
            .map(|n| (n.name.as_str(), n.bus_address.as_str()))
            .collect::<Vec<_>>(),
        [("infra", ""), ("worker-1", "unixexec:path=ssh,argv1=worker-1")]
    );
    let file = write_toml(&nodes.replace("worker-1\"\n", "infra\"\n"));
    let e = Settings::load_from(Some(file.path()), env(&[])).unwrap_err().to_string();
    assert!(e.contains("orchestrator.systemd.nodes"), "{e}");
    let file = write_toml("[orchestrator.systemd]\nrunner_env = [\"RUST_LOG=info\", \"NO_VALUE\"]\n");
    let e = Settings::load_from(Some(file.path()), env(&[])).unwrap_err().to_string();
    assert!(e.contains("orchestrator.systemd.runner_env") && e.contains("NO_VALUE"), "{e}");
    let e = Settings::load_from(Some(std::path::Path::new("/nonexistent/vap.toml")), env(&[])).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/vap.toml"), "{e}");
}

#[test]
fn secrets_never_print() {
    let s =
        Settings::load_from(None, env(&[("VAP_DATABASE__PASSWORD", "hunter2"), ("VAP_API__AUTH_TOKEN", "tok-123")]))
            .unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("tok-123"), "{shown}");
    assert_eq!(s.database.password.expose(), "hunter2");
}

#[test]
fn a_binary_with_a_bad_key_stops_with_a_message_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_vap-api"))
        .arg("check-config")
        .env("VAP_API__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.listen"), "{stderr}");
    assert!(stderr.lines().count() <= 2, "one clean line, not a backtrace: {stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_vap-relay"))
        .args(["check-config"])
        .env("VAP_DATABASE__PASSWORD", "hunter2")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("password: \"***\"") && !stdout.contains("hunter2"), "{stdout}");
}

#[tokio::test]
async fn postgresql_cancels_long_statements_and_ends_sessions_idle_in_a_transaction() {
    let app = TestApp::spawn_with(|s| {
        s.database.statement_timeout_ms = 300;
        s.database.idle_in_transaction_timeout_ms = 500;
    })
    .await;
    let client = app.pool.get().await.unwrap();
    let err = client.query_one("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err}");
    drop(client);
    // A transaction left open (its process stuck elsewhere) loses its session, and its locks.
    let mut client = vap_core::db::dedicated_connection(&app.settings.database).await.unwrap();
    let tx = client.transaction().await.unwrap();
    let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    common::eventually(Duration::from_secs(15), "PostgreSQL to end the idle transaction's session", || async {
        let sessions = app.scalar(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).await;
        (sessions == 0).then_some(())
    })
    .await;
    assert!(tx.query_one("SELECT 1", &[]).await.is_err(), "the idle transaction's session was ended");
}

#[test]
fn the_api_refuses_to_start_on_a_bad_model_catalogue_naming_the_manifest() {
    // A copy of the shipped catalogue whose COCO manifest states another file's digest.
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["ssdlite_person_300", "yolov3_tiny_coco_416"] {
        let text = std::fs::read_to_string(shipped.join(format!("{name}.toml"))).unwrap();
        let onnx = shipped.join(format!("{name}.onnx"));
        let mut text =
            text.replace(&format!("onnx = \"{name}.onnx\""), &format!("onnx = {:?}", onnx.display().to_string()));
        if name == "yolov3_tiny_coco_416" {
            text = text.replace("sha256 = \"b239", "sha256 = \"0000");
        }
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vap-api"))
        .env("VAP_RUNNER__MODELS_DIR", dir.path())
        .env("VAP_API__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("yolov3_tiny_coco_416.toml") && stderr.contains("sha256"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_vap-api"))
        .env("VAP_RUNNER__DEFAULT_MODEL", "nonexistent_model")
        .env("VAP_API__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("default model 'nonexistent_model'"), "{stderr}");
}

#[test]
fn the_api_refuses_to_listen_beyond_loopback_without_a_token() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vap-api")).env("VAP_API__LISTEN", listen).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{listen}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("api.auth_token") && stderr.contains("allow_anonymous"), "{stderr}");
    }
}

fn sigterm(child: &std::process::Child) {
    vap_core::sys::signal(child.id(), vap_core::sys::SIGTERM);
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_api_binary_drains_on_sigterm_exits_0_and_never_logs_secrets() {
    let app = TestApp::spawn().await;
    let port = vap_dev::devstack::free_port().unwrap();
    let mut env = app.env();
    env.push(("VAP_API__LISTEN".into(), format!("127.0.0.1:{port}")));
    env.push(("VAP_DATABASE__PASSWORD".into(), "pg-secret-77".into()));
    env.push(("VAP_API__AUTH_TOKEN".into(), "api-secret-88".into()));
    env.push(("VAP_LOG__LEVEL".into(), "debug".into()));
    env.push(("VAP_LOG__SECRET_QUERY_PARAMS".into(), "sessionid,sig2".into()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vap-api"));
    cmd.env_clear().envs(env).stderr(Stdio::piped()).stdout(Stdio::null());
    let mut api = cmd.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    eventually(Duration::from_secs(20), "vap-api to listen", || {
        let client = client.clone();
        let uri = format!("{base}/health");
        async move { client.get(uri.parse().unwrap()).await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
    let req = hyper::Request::post(format!("{base}/api/v1/scenario/init"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer api-secret-88")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"camera_url":"rtsp://u:camera-secret-99@cam/x?sessionid=sess-secret-66&ch=1"}"#,
        )))
        .unwrap();
    let answer = client.request(req).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer = http_body_util::BodyExt::collect(answer.into_body()).await.unwrap().to_bytes();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("sessionid=***&ch=1") && !answer.contains("sess-secret-66"), "{answer}");
    // A long-lived SSE stream is in flight when SIGTERM arrives; the drain must still end.
    let uuid: String = {
        let c = app.pool.get().await.unwrap();
        c.query_one("SELECT scenario_uuid::text FROM scenarios", &[]).await.unwrap().get(0)
    };
    let sse = hyper::Request::get(format!("{base}/api/v1/prediction/{uuid}/stream"))
        .header("authorization", "Bearer api-secret-88")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let stream = client.request(sse).await.unwrap();
    assert_eq!(stream.status(), 200);

    sigterm(&api);
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut api, Duration::from_secs(5));
        let mut log = String::new();
        api.stderr.take().unwrap().read_to_string(&mut log).unwrap();
        (s, log)
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(log.contains("api listening") && log.contains("SIGTERM"), "{log}");
    for secret in ["pg-secret-77", "api-secret-88", "camera-secret-99", "sess-secret-66"] {
        assert!(!log.contains(secret), "{secret} leaked into the log:\n{log}");
    }
    drop(stream);
}

#[tokio::test]
async fn the_relay_binary_exits_0_on_sigterm() {
    let app = TestApp::spawn().await;
    let mut relay = app.spawn_relay_process();
    // Once it has published, it is in its main loop.
    app.create_scenario("rtsp://cam/t").await;
    eventually(Duration::from_secs(20), "the relay to publish", || async {
        (app.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").await == 0).then_some(())
    })
    .await;
    sigterm(&relay);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut relay, Duration::from_secs(5))).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// Reads datagrams from a NOTIFY_SOCKET (as systemd does) until `want` has been seen.
fn read_notifications(socket: &std::os::unix::net::UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; got {seen:?}");
}

#[tokio::test]
async fn the_services_speak_the_sd_notify_protocol() {
    let app = TestApp::spawn().await;
    let orchestrator_env = [
        ("VAP_ORCHESTRATOR__METRICS_LISTEN", ""),
        ("VAP_ORCHESTRATOR__LOCAL__RUNNER_BIN", "/bin/true"),
        ("VAP_ORCHESTRATOR__LEADER_POLL_MS", "300"),
    ];
    let mut env = app.env();
    env.extend(orchestrator_env.map(|(k, v)| (k.to_string(), v.to_string())));
    // This one leads, so the orchestrator checked below is a standby, which must feed the
    // watchdog too or systemd kills it.
    let mut leader = common::spawn_binary(env!("CARGO_BIN_EXE_vap-orchestrator"), &env, &[]);
    for bin in [env!("CARGO_BIN_EXE_vap-api"), env!("CARGO_BIN_EXE_vap-relay"), env!("CARGO_BIN_EXE_vap-orchestrator")]
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut env = env.clone();
        env.push(("VAP_API__LISTEN".into(), format!("127.0.0.1:{}", vap_dev::devstack::free_port().unwrap())));
        env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
        env.push(("WATCHDOG_USEC".into(), "1000000".into()));
        env.push(("SERVICE_BIN".into(), bin.into()));
        // systemd sets WATCHDOG_PID to the service's pid; $$ is that pid once sh execs the binary.
        let mut child = common::spawn_binary("/bin/sh", &env, &["-c", "WATCHDOG_PID=$$ exec \"$SERVICE_BIN\""]);
        let socket = tokio::task::spawn_blocking(move || {
            read_notifications(&socket, "READY=1", Duration::from_secs(20));
            // Pinged at half the period, and still pinged a few periods on.
            for _ in 0..5 {
                read_notifications(&socket, "WATCHDOG=1", Duration::from_millis(1500));
            }
            socket
        })
        .await
        .unwrap();
        sigterm(&child);
        let socket = tokio::task::spawn_blocking(move || {
            read_notifications(&socket, "STOPPING=1", Duration::from_secs(5));
            socket
        })
        .await
        .unwrap();
        drop(socket);
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(8))).await.unwrap();
        assert!(status.success(), "{bin}: {status:?}");
    }
    let _ = leader.kill();
    let _ = leader.wait();
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let pg = common::cluster();
    let db = common::unique("mig");
    pg.create_database(&db).await.unwrap();
    let settings = pg.settings(&db);
    let runs = futures::future::join_all((0..6).map(|_| vap_core::db::migrate::run_with(&settings))).await;
    let applied: Vec<Vec<i32>> = runs.into_iter().map(Result::unwrap).collect();
    let total: usize = applied.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        vap_core::db::migrate::MIGRATIONS.len(),
        "each migration applied by exactly one starter: {applied:?}"
    );
}

/// The alert rules shipped in units/vap-alerts.yml pass `promtool check rules` (Debian's
/// prometheus package, unpacked by scripts/setup) and name only metrics a vap process serves.
#[test]
fn alert_rules_pass_promtool_and_name_only_metrics_vap_serves() {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/units/vap-alerts.yml");
    let promtool = common::cache_dir().join("prometheus/root/usr/bin/promtool");
    assert!(promtool.exists(), "{} is missing: run VAP_SETUP_TESTS=1 scripts/setup", promtool.display());
    let out = std::process::Command::new(&promtool).args(["check", "rules", rules]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let served: std::collections::HashSet<&str> = vap_api::metrics::FAMILIES
        .iter()
        .chain(&vap_relay::metrics::FAMILIES)
        .chain(&vap_orchestrator::metrics::FAMILIES)
        .map(|f| f.name)
        .collect();
    let text = std::fs::read_to_string(rules).unwrap();
    let named: std::collections::BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("vap_") && !w.starts_with("vap_alerts"))
        .collect();
    assert!(named.len() >= 10, "{named:?}");
    // A histogram is served as its `_bucket`, `_sum` and `_count` series.
    let is_served = |n: &str| {
        served.contains(n)
            || ["_bucket", "_sum", "_count"].iter().any(|s| n.strip_suffix(s).is_some_and(|base| served.contains(base)))
    };
    let unknown: Vec<&&str> = named.iter().filter(|n| !is_served(n)).collect();
    assert!(unknown.is_empty(), "rules name metrics no process serves: {unknown:?}");
}
