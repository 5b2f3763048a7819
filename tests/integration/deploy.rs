//! The bare-metal path, proven on a booted host: a fresh Debian 12 root filesystem
//! (`scripts/systemd-rootfs fresh`) provisioned by ansible/site.yml through Ansible's chroot
//! connection, then booted with systemd-nspawn on the host's loopback and checked from outside
//! as an operator would: over its system bus and over HTTP. A second fresh host, provisioned as a
//! worker only, takes runners from the first host's orchestrator over ssh, as a fleet's workers do.

use crate::common;
use crate::container;
use crate::media;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, ApiClient};
use container::Container;
use hyper::StatusCode;
use media::{free_port, media, RtspServer};
use serde_json::{json, Value};

const SERVICE: &str = "org.freedesktop.systemd1.Service";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
/// Infra and worker: PostgreSQL, the broker, the platform, and runners through its own bus.
const HOST: &str = "deploy-host";
/// A worker only: runners started by HOST's orchestrator through ssh and systemd-stdio-bridge.
const WORKER: &str = "deploy-worker";
/// What vap.target brings up on an infra host that runs its own PostgreSQL and broker.
const PLATFORM_UNITS: [&str; 6] = [
    "postgresql.service",
    "vap-postgresql-setup.service",
    "nisshi.service",
    "vap-api.service",
    "vap-relay.service",
    "vap-orchestrator.service",
];

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// ~/.cache/vap, where scripts/setup keeps what is slow to install.
use common::cache_dir;

fn ansible_bin(name: &str) -> PathBuf {
    let bin = cache_dir().join("ansible-venv/bin").join(name);
    assert!(bin.exists(), "{} missing: scripts/test installs Ansible (VAP_SETUP_TESTS=1 scripts/setup)", bin.display());
    bin
}

/// Apt's downloads are kept between runs here, so a run downloads each package once.
/// Where the worker finds onnxruntime's wheel.
const WHEELS: &str = "/var/cache/vap-wheels";

/// PyPI's onnxruntime wheel for this machine, downloaded once by the pip of scripts/setup's venv.
fn onnxruntime_wheel() -> PathBuf {
    let dir = cache_dir().join("wheels");
    let find = || {
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("onnxruntime-1.32.0-")))
    };
    if let Some(wheel) = find() {
        return wheel;
    }
    let pip = crate::engines::onnxruntime_library().parent().unwrap().join("bin/pip");
    let ok = Command::new(pip)
        .args(["download", "--quiet", "--no-deps", "onnxruntime==1.32.0", "-d"])
        .arg(&dir)
        .status()
        .expect("pip download")
        .success();
    assert!(ok, "pip download onnxruntime==1.32.0");
    find().expect("the wheel pip downloaded")
}

fn apt_cache() -> PathBuf {
    let dir = cache_dir().join("apt-archives");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_debs(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") && !to.join(e.file_name()).exists() {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

struct Ports {
    api: u16,
    database: u16,
    broker: u16,
    broker_login: u16,
    relay_metrics: u16,
    orchestrator_metrics: u16,
    worker_ssh: u16,
}

/// The hosts as an operator's inventory would describe them, but reached through chroots. They
/// share the machine's loopback, so the worker's sshd gets a port of its own.
fn inventory(dir: &Path, host_root: &Path, worker_root: &Path, ports: &Ports) -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vap-api")).parent().unwrap();
    let chroot = |root: &Path| {
        json!({
            "ansible_connection": "community.general.chroot",
            "ansible_host": root,
            // Already root, and a fresh host has no sudo.
            "ansible_become": false,
        })
    };
    let mut worker = chroot(worker_root);
    worker["vap_ssh_port"] = json!(ports.worker_ssh);
    // The worker runs its models on onnxruntime, which the playbook installs from PyPI's wheel
    // (put on the worker, as for a host without PyPI); the infra host keeps tract.
    worker["vap_runner_engine"] = json!("onnxruntime");
    worker["vap_onnxruntime_wheels"] = json!(WHEELS);
    // The broker as the roles deploy it with TLS: a login (the default) and the operator's
    // certificate for the address clients use.
    let certs = common::test_certificates(dir);
    let vars = json!({
        "vap_manage_service_state": false,
        "vap_address": "127.0.0.1",
        "vap_install_postgresql": true,
        "vap_install_broker": true,
        "vap_bin_dir": bin_dir,
        "vap_database_password": "s3cret-for-the-test",
        "vap_database_port": ports.database,
        "vap_broker_listen": format!("127.0.0.1:{}", ports.broker),
        "vap_kafka_brokers": [format!("127.0.0.1:{}", ports.broker)],
        "vap_broker_login_listen": format!("127.0.0.1:{}", ports.broker_login),
        "vap_kafka_tls_ca": certs.ca,
        "vap_broker_tls_cert": certs.cert,
        "vap_broker_tls_key": certs.key,
        "vap_api_listen": format!("127.0.0.1:{}", ports.api),
        "vap_relay_metrics_listen": format!("127.0.0.1:{}", ports.relay_metrics),
        "vap_orchestrator_metrics_listen": format!("127.0.0.1:{}", ports.orchestrator_metrics),
        "vap_max_workers": 2,
        // The test's camera is a loopback RTSP server.
        "vap_destinations_allow": ["127.0.0.0/8"],
    });
    let inventory = json!({
        "vap": {
            "vars": vars,
            "children": {
                "vap_infra": { "hosts": { HOST: chroot(host_root) } },
                "vap_workers": { "hosts": { HOST: {}, WORKER: worker } },
            },
        },
    });
    let path = dir.join("inventory.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    path
}

type Recap = std::collections::HashMap<String, u64>;

/// Runs the playbook; returns each host's recap counts (ok, changed, failed...).
fn run_playbook(inventory: &Path, roots: &[&Path]) -> [Recap; 2] {
    for root in roots {
        copy_debs(&apt_cache(), &root.join("var/cache/apt/archives"));
    }
    let out = Command::new(ansible_bin("ansible-playbook"))
        .arg("-i")
        .arg(inventory)
        .arg("site.yml")
        .current_dir(project().join("ansible"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_HOST_KEY_CHECKING", "0")
        .output()
        .expect("ansible-playbook");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for root in roots {
        copy_debs(&root.join("var/cache/apt/archives"), &apt_cache());
    }
    assert!(out.status.success(), "the playbook failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    [HOST, WORKER].map(|host| {
        let recap = stdout
            .lines()
            .rev()
            .find(|l| l.split_whitespace().next() == Some(host) && l.contains("changed="))
            .unwrap_or_else(|| panic!("no recap for {host} in:\n{stdout}"));
        recap
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect()
    })
}

fn unit_state(host: &Container, unit: &str) -> String {
    host.unit_property(unit, UNIT, "ActiveState")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "not loaded".into())
}

async fn wait_for_platform(host: &Container, api: &ApiClient) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !PLATFORM_UNITS.iter().all(|u| unit_state(host, u) == "active") {
        if Instant::now() > deadline {
            let mut said = String::new();
            for u in PLATFORM_UNITS.iter().filter(|u| unit_state(host, u) != "active") {
                let journal = host.exec(&["journalctl", "--no-pager", "-n", "30", "-u", u]);
                said += &format!("{u}: {}\n{}\n", unit_state(host, u), String::from_utf8_lossy(&journal.stdout));
            }
            panic!("not every vap unit is active after 120 s:\n{said}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(unit_state(host, "vap.target"), "active");
    let health = eventually(Duration::from_secs(30), "/health", || async {
        let r = api.get("/health").await;
        (r.status == StatusCode::OK).then(|| r.json())
    })
    .await;
    assert_eq!(health, json!({"status": "healthy"}));
}

/// The broker's settings as the playbook made them: its login (password beside the inventory)
/// and the CA; `None` for the password connects without a login.
fn broker_client_settings(dir: &Path, broker: u16, password: Option<String>) -> vap_core::config::KafkaSettings {
    let mut k = vap_core::config::KafkaSettings { brokers: vec![format!("127.0.0.1:{broker}")], ..Default::default() };
    if let Some(password) = password {
        k.sasl_mechanism = vap_core::config::SaslMechanism::ScramSha512;
        k.sasl_username = "vap".into();
        k.sasl_password = vap_core::config::Secret::new(password);
    }
    k.tls_ca_file = Some(dir.join("ca.pem"));
    k.request_deadline_ms = 2_000;
    k
}

fn generated_broker_password(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("vap-credentials/kafka_password")).expect("the generated password");
    text.split_whitespace().next().unwrap_or_default().to_string()
}

/// Frame numbers of `scenario` on the results topic: what the runners published.
async fn published_frames(dir: &Path, broker: u16, scenario: uuid::Uuid) -> BTreeSet<i64> {
    let settings = broker_client_settings(dir, broker, Some(generated_broker_password(dir)));
    let client = vap_core::kafka::builder(&settings).unwrap().build().await.unwrap();
    let records = common::read_topic(&client, "results", 4).await;
    records
        .into_iter()
        .filter_map(|(_, _, r)| match vap_core::events::ResultsRecord::parse(&r.value?) {
            Ok(vap_core::events::ResultsRecord::Frame(f)) if f.scenario_uuid == scenario => Some(f.frame_number),
            _ => None,
        })
        .collect()
}

fn stored_frames(prediction: &Value) -> BTreeSet<i64> {
    prediction["results"].as_array().unwrap().iter().map(|r| r["frame_number"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_provisions_a_fresh_debian_host_that_runs_vap_under_systemd() {
    // The VM layout uses the same playbook; VMs cannot boot here (no KVM, no provider), so it is
    // validated only, without the providers' own settings.
    let validate = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(project().join("vagrant"))
        .env("VAGRANT_DOTFILE_PATH", tempfile::tempdir().unwrap().path())
        .output()
        .expect("vagrant (scripts/setup installs it)");
    assert!(
        validate.status.success(),
        "vagrant validate:\n{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );

    // Lint first: the playbook must pass ansible-lint's production profile.
    let lint = Command::new(ansible_bin("ansible-lint"))
        .current_dir(project().join("ansible"))
        .env("NO_COLOR", "1")
        .output()
        .expect("ansible-lint");
    assert!(
        lint.status.success(),
        "ansible-lint:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // Copies of the cached fresh host, so every run starts from the same fresh machines.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path().join("host");
    let worker_root = work.path().join("worker");
    for to in [&root, &worker_root] {
        let status = Command::new("cp").arg("-a").arg(container::rootfs(&["fresh"])).arg(to).status().unwrap();
        assert!(status.success());
    }
    let ports = Ports {
        api: free_port(),
        database: free_port(),
        broker: free_port(),
        broker_login: free_port(),
        relay_metrics: free_port(),
        orchestrator_metrics: free_port(),
        worker_ssh: free_port(),
    };
    let inventory = inventory(work.path(), &root, &worker_root, &ports);
    let wheels = worker_root.join(&WHEELS[1..]);
    std::fs::create_dir_all(&wheels).unwrap();
    let wheel = onnxruntime_wheel();
    std::fs::copy(&wheel, wheels.join(wheel.file_name().unwrap())).unwrap();

    let first = run_playbook(&inventory, &[&root, &worker_root]);
    for recap in &first {
        assert!(recap["changed"] > 0 && recap["failed"] == 0, "{first:?}");
    }
    let second = run_playbook(&inventory, &[&root, &worker_root]);
    for recap in &second {
        assert_eq!((recap["changed"], recap["failed"]), (0, 0), "a second run must change nothing: {second:?}");
    }
    // The worker's runners are set up for onnxruntime, and its library is where they look.
    let worker_config = std::fs::read_to_string(worker_root.join("etc/vap/vap.toml")).unwrap();
    let library = "/usr/local/lib/vap/onnxruntime/libonnxruntime.so";
    assert!(worker_config.contains("engine = \"onnxruntime\"") && worker_config.contains(library), "{worker_config}");
    let target = std::fs::read_link(worker_root.join(&library[1..])).expect("the library's link");
    assert!(worker_root.join(target.strip_prefix("/").unwrap()).is_file(), "{}", target.display());
    assert!(!std::fs::read_to_string(root.join("etc/vap/vap.toml")).unwrap().contains("onnxruntime"));

    // The units as installed, checked where they are: verify and the security rating.
    for unit in ["vap-api.service", "vap-relay.service", "vap-orchestrator.service", "nisshi.service"] {
        let path = root.join("etc/systemd/system").join(unit);
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && !said.lines().any(|l| l.contains(unit)),
            "systemd-analyze verify {unit}:\n{said}"
        );
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(format!("--root={}", root.display()))
            .arg(&path)
            .output()
            .unwrap();
        assert!(security.status.success(), "{unit} rates above 2.0:\n{}", String::from_utf8_lossy(&security.stdout));
    }
    // A worker holds no secrets: runners use neither the database nor the API's token.
    assert!(root.join("etc/vap/secrets.env").exists() && !worker_root.join("etc/vap/secrets.env").exists());

    // Boot them. The camera and the scenarios' runners are real; the hosts share the loopback.
    let mut host = Container::boot_host(&root, &[]);
    let mut worker = Container::boot_host(&worker_root, &[]);
    // No token in the inventory: the playbook made one beside it, which the API now requires.
    let token =
        std::fs::read_to_string(work.path().join("vap-credentials/api_token")).expect("the generated API token");
    let token = token.split_whitespace().next().unwrap_or_default().to_string();
    assert!(token.len() >= 32, "{token}");
    let api = ApiClient::with_token(&format!("http://127.0.0.1:{}", ports.api), &token);
    wait_for_platform(&host, &api).await;
    let rules =
        std::fs::read_to_string(root.join("etc/vap/prometheus/vap-alerts.yml")).expect("the alert rules installed");
    assert_eq!(rules, include_str!("../../units/vap-alerts.yml"));
    let anonymous = ApiClient::new(&api.base);
    let r = anonymous.get("/api/v1/scenarios").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // The broker wants the login: without it a client (over TLS) gets no topic list.
    let stranger = broker_client_settings(work.path(), ports.broker, None);
    let attempt = async { vap_core::kafka::builder(&stranger).unwrap().build().await?.list_topics().await };
    assert!(
        !matches!(tokio::time::timeout(Duration::from_secs(20), attempt).await, Ok(Ok(_))),
        "the deployed broker let a client in without a login"
    );
    eventually(Duration::from_secs(60), "sshd active on the worker", || async {
        (unit_state(&worker, "ssh.service") == "active").then_some(())
    })
    .await;

    // The orchestrator's key opens the worker's system bus and nothing else, from the infra
    // host's address only (the hosts share the loopback: 127.0.0.2 stands for another machine).
    let ssh = |extra: &[&str]| {
        let port = ports.worker_ssh.to_string();
        let mut argv = vec![
            "ssh",
            "-Fnone",
            "-i/etc/vap/ssh/id_ed25519",
            "-oBatchMode=yes",
            "-oStrictHostKeyChecking=yes",
            "-oUserKnownHostsFile=/etc/vap/ssh/known_hosts",
            "-p",
            &port,
            "-lroot",
        ];
        argv.extend(extra);
        let out = host.exec(&argv);
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let said = ssh(&["127.0.0.1", "id"]);
    assert!(
        !said.contains("uid=") && !said.contains("denied") && !said.contains("verification failed"),
        "ssh to the worker: {said}"
    );
    let said = ssh(&["-b127.0.0.2", "127.0.0.1", "id"]);
    assert!(said.contains("Permission denied"), "the key from another address: {said}");

    // Two live scenarios: the orchestrator puts one on each host, the fewest runners first.
    let rtsp_port = free_port();
    let _camera = RtspServer::start(rtsp_port, &media().people);
    let camera = format!("rtsp://127.0.0.1:{rtsp_port}/cam");
    let ids = [api.create_scenario(&camera).await, api.create_scenario(&camera).await];
    let mut placed = Vec::new();
    for id in ids {
        api.wait_for_status(id, "active", Duration::from_secs(120)).await;
        let w = eventually(Duration::from_secs(60), "the worker running", || async {
            let s = api.scenario(id).await;
            (s["worker"]["status"] == "running").then_some(s["worker"].clone())
        })
        .await;
        assert_eq!(w["backend"].as_str(), Some("systemd"), "{w}");
        placed.push((id, w["node"].as_str().unwrap_or_default().to_string()));
    }
    let nodes: BTreeSet<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from([HOST, WORKER]), "one runner on each host: {placed:?}");
    for (id, node) in &placed {
        let on = if node == HOST { &host } else { &worker };
        let unit = format!("vap-runner-{id}.service");
        assert_eq!(
            on.units("vap-runner-*"),
            vec![(unit.clone(), "active".into(), "running".into())],
            "the runner as a transient unit on {node}"
        );
        // A user of its own (not vap's, whose services hold the database password), and its
        // secrets sealed: the key that opens them is a credential from /etc/vap/runner.key.
        assert_eq!(on.unit_property(&unit, SERVICE, "DynamicUser"), Some(json!(true)));
        let env = on.unit_property(&unit, SERVICE, "Environment").map(|v| v.to_string()).unwrap_or_default();
        assert!(env.contains("VAP_JOB_SECRETS=sealed:") && !env.contains("rtsp://"), "{env}");
        // The runner's unit is as hardened as the platform's own.
        let security = on.exec(&["systemd-analyze", "security", "--threshold=20", &unit]);
        let rating = String::from_utf8_lossy(&security.stdout).lines().last().unwrap_or_default().to_string();
        assert!(security.status.success(), "the runner's unit on {node} rates above 2.0: {rating}");
        eprintln!("{node}: {rating}");
        // Each host's runner on its engine, under the unit's hardening.
        let engine = if node == WORKER { "onnxruntime" } else { "tract" };
        let journal = on.journal(&unit);
        assert!(
            journal.lines().any(|l| l.contains("model loaded") && l.contains(&format!("\"engine\":\"{engine}\""))),
            "{node}'s runner on {engine}:\n{journal}"
        );
    }

    // kill -9 the relay while results flow: systemd restarts it, and nothing is lost.
    let mut before = Vec::new();
    for id in ids {
        before.push(api.prediction(id).await["total_frames_processed"].as_i64().unwrap());
    }
    host.kill_unit("vap-relay.service", libc::SIGKILL);
    eventually(Duration::from_secs(30), "systemd restarting vap-relay", || async {
        (host.unit_property("vap-relay.service", SERVICE, "NRestarts") == Some(json!(1))
            && unit_state(&host, "vap-relay.service") == "active")
            .then_some(())
    })
    .await;
    for (id, before) in ids.into_iter().zip(before) {
        eventually(Duration::from_secs(60), "results stored after the relay's restart", || async {
            (api.prediction(id).await["total_frames_processed"].as_i64().unwrap() > before + 4).then_some(())
        })
        .await;
    }

    let mut published = Vec::new();
    for id in ids {
        api.shutdown_scenario(id).await;
    }
    for id in ids {
        api.wait_for_status(id, "inactive", Duration::from_secs(60)).await;
    }
    eventually(Duration::from_secs(30), "the runners' units gone", || async {
        (host.units("vap-runner-*").is_empty() && worker.units("vap-runner-*").is_empty()).then_some(())
    })
    .await;
    for id in ids {
        let stored = api.prediction(id).await;
        let frames = published_frames(work.path(), ports.broker, id).await;
        assert!(!frames.is_empty());
        assert_eq!(stored_frames(&stored), frames, "every published frame stored, once");
        assert_eq!(stored["total_frames_processed"].as_u64(), Some(frames.len() as u64));
        published.push(frames);
    }

    // Reboot both: everything comes back by itself, with what was stored, and places runners on
    // both hosts again.
    let started = Instant::now();
    host.ask_reboot();
    worker.ask_reboot();
    host.wait_rebooted();
    worker.wait_rebooted();
    wait_for_platform(&host, &api).await;
    eprintln!("rebooted and serving again after {:?}", started.elapsed());
    for (id, frames) in ids.iter().zip(&published) {
        assert_eq!(&stored_frames(&api.prediction(*id).await), frames);
    }
    // The operator's fleet check (the one vagrant/e2e-test runs): a scenario per host at once.
    let fleet_token = token.clone();
    let fleet = tokio::task::spawn_blocking(move || {
        Command::new(project().join("scripts/fleet-test"))
            .env("VAP_API_TOKEN", fleet_token)
            .arg(format!("http://127.0.0.1:{}", ports.api))
            .arg(format!("rtsp://127.0.0.1:{rtsp_port}/cam"))
            .args([HOST, WORKER])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&fleet.stdout), String::from_utf8_lossy(&fleet.stderr));
    assert!(fleet.status.success() && said.contains("worker: systemd vap-runner-"), "scripts/fleet-test:\n{said}");
    eventually(Duration::from_secs(30), "no runner units left", || async {
        (host.units("vap-runner-*").is_empty() && worker.units("vap-runner-*").is_empty()).then_some(())
    })
    .await;
}
