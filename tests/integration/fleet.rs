//! Orchestrator processes and the runner processes they place, seen from outside (/proc).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;

use uuid::Uuid;

use super::common::{spawn_binary, TestApp};
use super::media::models_dir;

pub const RUNNER_BIN: &str = env!("CARGO_BIN_EXE_vap-runner");

/// Runner processes of `scenarios` on this machine right now: scenario -> pids.
pub fn runner_processes(scenarios: &HashSet<Uuid>) -> HashMap<Uuid, Vec<u32>> {
    let mut found: HashMap<Uuid, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.first().map(String::as_str) != Some(RUNNER_BIN) {
            continue;
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if zombie {
            continue;
        }
        let id = args
            .iter()
            .position(|a| a == "--scenario")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| Uuid::parse_str(s).ok());
        if let Some(id) = id.filter(|id| scenarios.contains(id)) {
            found.entry(id).or_default().push(pid);
        }
    }
    found
}

/// Kills the runners of a test's scenarios when the test ends, passed or not: they live in
/// their own process groups by design, so nothing else would.
pub struct RunnerReaper(pub HashSet<Uuid>);

impl Drop for RunnerReaper {
    fn drop(&mut self) {
        for pids in runner_processes(&self.0).values() {
            for pid in pids {
                vap_core::sys::signal(*pid, vap_core::sys::SIGKILL);
            }
        }
    }
}

pub fn spawn_orchestrator(app: &TestApp, max_workers: usize) -> Child {
    spawn_orchestrator_with(app, max_workers, &[])
}

/// Same, with settings overridden (later entries win).
pub fn spawn_orchestrator_with(app: &TestApp, max_workers: usize, overrides: &[(&str, &str)]) -> Child {
    let mut env = app.env();
    env.extend(
        [
            ("VAP_ORCHESTRATOR__BACKEND", "local".to_string()),
            ("VAP_ORCHESTRATOR__MAX_WORKERS", max_workers.to_string()),
            ("VAP_ORCHESTRATOR__RECONCILE_INTERVAL_MS", "300".into()),
            ("VAP_ORCHESTRATOR__LEADER_POLL_MS", "300".into()),
            ("VAP_ORCHESTRATOR__METRICS_LISTEN", String::new()),
            ("VAP_ORCHESTRATOR__LOCAL__RUNNER_BIN", RUNNER_BIN.into()),
            ("VAP_ORCHESTRATOR__LOCAL__RESTART_DELAY_MIN_MS", "200".into()),
            // Runners get the orchestrator's VAP_* settings.
            ("VAP_RUNNER__MODELS_DIR", models_dir().to_str().unwrap().into()),
            ("VAP_RUNNER__RECONNECT_MIN_MS", "300".into()),
            ("VAP_LOG__LEVEL", "info".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spawn_binary(env!("CARGO_BIN_EXE_vap-orchestrator"), &env, &[])
}

/// The runner settings every backend passes on here: this app's broker and results topic, and
/// the shipped model.
pub fn runner_env(app: &TestApp) -> Vec<String> {
    vec![
        format!("VAP_KAFKA__BROKERS={}", app.settings.kafka.brokers.join(",")),
        format!("VAP_KAFKA__TOPIC_RESULTS={}", app.settings.kafka.topic_results),
        format!("VAP_KAFKA__TOPIC_RUNNER_CONTROL={}", app.settings.kafka.topic_runner_control),
        format!("VAP_RUNNER__MODELS_DIR={}", models_dir().display()),
        "VAP_RUNNER__RECONNECT_MIN_MS=300".into(),
        format!("VAP_DESTINATIONS__ALLOW={}", app.settings.destinations.allow.join(",")),
    ]
}

/// Writes an operator's TOML for `backend` into `dir`: `[orchestrator]` and the backend's own
/// `[orchestrator.<backend>]` keys from `section` (which should set `runner_env`).
pub fn orchestrator_config(dir: &Path, backend: &str, max_workers: usize, section: &str) -> PathBuf {
    let toml = format!(
        "[orchestrator]\nbackend = \"{backend}\"\nmax_workers = {max_workers}\nreconcile_interval_ms = 300\nleader_poll_ms = 300\nmetrics_listen = \"\"\n\n[orchestrator.{backend}]\n{section}"
    );
    let path = dir.join("orchestrator.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// The same for the Nomad backend at `address` (the API double's), running `command`.
pub fn nomad_config(dir: &Path, app: &TestApp, address: &str, command: &str, max_workers: usize) -> PathBuf {
    let section = format!(
        "address = \"{address}\"\ncommand = \"{command}\"\nrunner_env = {}\nrestart_delay_secs = 1\n",
        serde_json::to_string(&runner_env(app)).unwrap()
    );
    orchestrator_config(dir, "nomad", max_workers, &section)
}

/// vap-orchestrator started with `--config` as an operator would.
pub fn spawn_orchestrator_with_config(app: &TestApp, config: &Path) -> Child {
    spawn_orchestrator_with_env(app, config, &[])
}

/// SIGTERM, then waits for the exit: its status and how long it took. Fails after 30 s.
pub async fn terminate(child: &mut Child) -> (std::process::ExitStatus, std::time::Duration) {
    let asked = std::time::Instant::now();
    vap_core::sys::signal(child.id(), vap_core::sys::SIGTERM);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, asked.elapsed());
        }
        if asked.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("still running 30 s after SIGTERM");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The same, with `env` (`VAP_*` settings) on top of the test app's.
pub fn spawn_orchestrator_with_env(app: &TestApp, config: &Path, env: &[(String, String)]) -> Child {
    let mut all = app.env();
    all.extend(env.iter().cloned());
    spawn_binary(env!("CARGO_BIN_EXE_vap-orchestrator"), &all, &["--config", config.to_str().unwrap()])
}
