//! The bare-metal path, proven on a booted host: a fresh Debian 12 root filesystem
//! (`scripts/systemd-rootfs fresh`) provisioned by ansible/site.yml through Ansible's chroot
//! connection, then booted with systemd-nspawn on the host's loopback and checked from outside
//! as an operator would: over its system bus and over HTTP.

mod common;
#[path = "common/container.rs"]
mod container;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/media.rs"]
mod media;

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
const HOST: &str = "deploy-host";
/// What vap.target brings up on an infra host that runs its own PostgreSQL and broker.
const PLATFORM_UNITS: [&str; 6] = ["postgresql.service", "vap-postgresql-setup.service", "nisshi.service", "vap-api.service", "vap-relay.service", "vap-orchestrator.service"];

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// ~/.cache/vap, where scripts/setup keeps what is slow to install.
fn cache_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap();
    std::env::var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|_| Path::new(&home).join(".cache")).join("vap")
}

fn ansible_bin(name: &str) -> PathBuf {
    let bin = cache_dir().join("ansible-venv/bin").join(name);
    assert!(bin.exists(), "{} missing: scripts/test installs Ansible (VAP_SETUP_TESTS=1 scripts/setup)", bin.display());
    bin
}

/// Apt's downloads are kept between runs here, so a run downloads each package once.
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
    relay_metrics: u16,
    orchestrator_metrics: u16,
}

/// The host as an operator's inventory would describe it, but reached through a chroot.
fn inventory(dir: &Path, root: &Path, ports: &Ports) -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vap-api")).parent().unwrap();
    let vars = json!({
        "ansible_connection": "community.general.chroot",
        "ansible_host": root,
        // Already root, and a fresh host has no sudo.
        "ansible_become": false,
        "vap_manage_service_state": false,
        "vap_install_postgresql": true,
        "vap_install_broker": true,
        "vap_bin_dir": bin_dir,
        "vap_database_password": "s3cret-for-the-test",
        "vap_database_port": ports.database,
        "vap_broker_listen": format!("127.0.0.1:{}", ports.broker),
        "vap_kafka_brokers": [format!("127.0.0.1:{}", ports.broker)],
        "vap_api_listen": format!("127.0.0.1:{}", ports.api),
        "vap_relay_metrics_listen": format!("127.0.0.1:{}", ports.relay_metrics),
        "vap_orchestrator_metrics_listen": format!("127.0.0.1:{}", ports.orchestrator_metrics),
        "vap_max_workers": 2,
    });
    let inventory = json!({
        "vap": { "children": {
            "vap_infra": { "hosts": { HOST: vars } },
            "vap_workers": { "hosts": { HOST: {} } },
        }},
    });
    let path = dir.join("inventory.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&inventory).unwrap()).unwrap();
    path
}

/// Runs the playbook; returns the host's recap counts (ok, changed, failed...).
fn run_playbook(inventory: &Path, root: &Path) -> std::collections::HashMap<String, u64> {
    let archives = root.join("var/cache/apt/archives");
    copy_debs(&apt_cache(), &archives);
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
    copy_debs(&archives, &apt_cache());
    assert!(out.status.success(), "the playbook failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let recap = stdout.lines().rev().find(|l| l.starts_with(HOST) && l.contains("changed=")).unwrap_or_else(|| panic!("no recap in:\n{stdout}"));
    recap
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

fn unit_state(host: &Container, unit: &str) -> String {
    host.unit_property(unit, UNIT, "ActiveState").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "not loaded".into())
}

async fn wait_for_platform(host: &Container, api: &ApiClient) {
    eventually(Duration::from_secs(120), "every vap unit active", || async {
        PLATFORM_UNITS.iter().all(|u| unit_state(host, u) == "active").then_some(())
    })
    .await;
    assert_eq!(unit_state(host, "vap.target"), "active");
    let health = eventually(Duration::from_secs(30), "/health", || async {
        let r = api.get("/health").await;
        (r.status == StatusCode::OK).then(|| r.json())
    })
    .await;
    assert_eq!(health, json!({"status": "healthy"}));
}

/// Frame numbers of `scenario` on the results topic: what the runners published.
async fn published_frames(broker: u16, scenario: uuid::Uuid) -> BTreeSet<i64> {
    let client = rskafka::client::ClientBuilder::new(vec![format!("127.0.0.1:{broker}")]).build().await.unwrap();
    let records = common::read_topic(&client, "results", 4).await;
    records
        .into_iter()
        .filter_map(|(_, _, r)| match vap::events::ResultsRecord::parse(&r.value?) {
            Ok(vap::events::ResultsRecord::Frame(f)) if f.scenario_uuid == scenario => Some(f.frame_number),
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
    let validate = Command::new("vagrant").args(["validate", "--ignore-provider"]).current_dir(project().join("vagrant")).env("VAGRANT_DOTFILE_PATH", tempfile::tempdir().unwrap().path()).output().expect("vagrant (scripts/setup installs it)");
    assert!(validate.status.success(), "vagrant validate:\n{}{}", String::from_utf8_lossy(&validate.stdout), String::from_utf8_lossy(&validate.stderr));

    // Lint first: the playbook must pass ansible-lint's production profile.
    let lint = Command::new(ansible_bin("ansible-lint")).current_dir(project().join("ansible")).env("NO_COLOR", "1").output().expect("ansible-lint");
    assert!(lint.status.success(), "ansible-lint:\n{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&lint.stderr));

    // A copy of the cached fresh host, so every run starts from the same fresh machine.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = work.path().join("root");
    let status = Command::new("cp").arg("-a").arg(container::rootfs(&["fresh"])).arg(&root).status().unwrap();
    assert!(status.success());
    let ports = Ports { api: free_port(), database: free_port(), broker: free_port(), relay_metrics: free_port(), orchestrator_metrics: free_port() };
    let inventory = inventory(work.path(), &root, &ports);

    let first = run_playbook(&inventory, &root);
    assert!(first["changed"] > 0 && first["failed"] == 0, "{first:?}");
    let second = run_playbook(&inventory, &root);
    assert_eq!((second["changed"], second["failed"]), (0, 0), "a second run must change nothing: {second:?}");

    // The units as installed, checked where they are: verify and the security rating.
    for unit in ["vap-api.service", "vap-relay.service", "vap-orchestrator.service", "nisshi.service"] {
        let path = root.join("etc/systemd/system").join(unit);
        let verify = Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", root.display())).arg(&path).output().unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && !said.lines().any(|l| l.contains(unit)), "systemd-analyze verify {unit}:\n{said}");
        let security = Command::new("systemd-analyze").args(["security", "--offline=true", "--threshold=20"]).arg(format!("--root={}", root.display())).arg(&path).output().unwrap();
        assert!(security.status.success(), "{unit} rates above 2.0:\n{}", String::from_utf8_lossy(&security.stdout));
    }

    // Boot it. The camera and the scenario's runner are real; the host shares the loopback.
    let mut host = Container::boot_host(&root, &[]);
    let api = ApiClient::new(&format!("http://127.0.0.1:{}", ports.api));
    wait_for_platform(&host, &api).await;

    let rtsp_port = free_port();
    let _camera = RtspServer::start(rtsp_port, &media().people);
    let id = api.create_scenario(&format!("rtsp://127.0.0.1:{rtsp_port}/cam")).await;
    api.wait_for_status(id, "active", Duration::from_secs(120)).await;
    let unit = format!("vap-runner-{id}.service");
    let w = eventually(Duration::from_secs(60), "the worker running", || async {
        let s = api.scenario(id).await;
        (s["worker"]["status"] == "running").then_some(s["worker"].clone())
    })
    .await;
    assert_eq!(host.units("vap-runner-*"), vec![(unit.clone(), "active".into(), "running".into())], "the runner as a transient unit");
    assert_eq!(host.unit_property(&unit, SERVICE, "User"), Some(json!("vap")));
    // The runner's unit is as hardened as the platform's own.
    let security = host.exec(&["systemd-analyze", "security", "--threshold=20", &unit]);
    let rating = String::from_utf8_lossy(&security.stdout).lines().last().unwrap_or_default().to_string();
    assert!(security.status.success(), "the runner's unit rates above 2.0: {rating}");
    eprintln!("{rating}");
    assert_eq!((w["backend"].as_str(), w["node"].as_str()), (Some("systemd"), Some(HOST)), "{w}");

    // kill -9 the relay while results flow: systemd restarts it, and nothing is lost.
    let before = api.prediction(id).await["total_frames_processed"].as_i64().unwrap();
    host.kill_unit("vap-relay.service", libc::SIGKILL);
    eventually(Duration::from_secs(30), "systemd restarting vap-relay", || async {
        (host.unit_property("vap-relay.service", SERVICE, "NRestarts") == Some(json!(1)) && unit_state(&host, "vap-relay.service") == "active").then_some(())
    })
    .await;
    eventually(Duration::from_secs(60), "results stored after the relay's restart", || async {
        (api.prediction(id).await["total_frames_processed"].as_i64().unwrap() > before + 4).then_some(())
    })
    .await;

    api.shutdown_scenario(id).await;
    api.wait_for_status(id, "inactive", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(30), "the runner's unit gone", || async { host.units("vap-runner-*").is_empty().then_some(()) }).await;
    let stored = api.prediction(id).await;
    let published = published_frames(ports.broker, id).await;
    assert!(!published.is_empty());
    assert_eq!(stored_frames(&stored), published, "every published frame stored, once");
    assert_eq!(stored["total_frames_processed"].as_u64(), Some(published.len() as u64));

    // Reboot: everything comes back by itself, with what was stored, and places runners again.
    let started = Instant::now();
    host.reboot();
    wait_for_platform(&host, &api).await;
    eprintln!("rebooted and serving again after {:?}", started.elapsed());
    assert_eq!(stored_frames(&api.prediction(id).await), published);
    // The operator's smoke test (the one vagrant/ documents) runs the next scenario.
    let smoke = tokio::task::spawn_blocking(move || {
        Command::new(project().join("scripts/smoke-test")).arg(format!("http://127.0.0.1:{}", ports.api)).arg(format!("rtsp://127.0.0.1:{rtsp_port}/cam")).output().unwrap()
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&smoke.stdout), String::from_utf8_lossy(&smoke.stderr));
    assert!(smoke.status.success() && said.contains("worker: systemd vap-runner-"), "scripts/smoke-test:\n{said}");
    eventually(Duration::from_secs(30), "no runner units left", || async { host.units("vap-runner-*").is_empty().then_some(()) }).await;
}
