//! The local backend: runners as supervised processes on the orchestrator's host, the
//! embedded default. A runner that crashes is restarted with back-off until it fails
//! `restart_limit` times within `restart_window_secs`; exit codes the runner uses for permanent
//! ends (0 finished, 2 configuration, 3 camera unavailable, 4 model) are not restarted.
//!
//! Runners run in their own process group (a Ctrl-C in the orchestrator's terminal is not
//! theirs) and outlive an orchestrator restart: the next one finds them in /proc by their
//! `--scenario` argument and adopts them.

use std::collections::{HashMap, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use super::backend::{BackendError, RunnerState, WorkerInfo, FINISH_GRACE};
use vap_core::backoff::Backoff;
use vap_core::config::LocalBackendSettings;
use vap_core::job::{exit, RunnerJob};

struct Supervised {
    /// Which placement it is (restarts keep it).
    placement: vap_core::signing::PlacementEpoch,
    pid: Option<u32>,
    state: RunnerState,
    restarts: u32,
    started_at: chrono::DateTime<Utc>,
    stop_requested: bool,
}

pub struct LocalBackend {
    settings: LocalBackendSettings,
    /// The orchestrator's own runner settings (broker, runner, log), passed on so runners reach
    /// the same broker; nothing else of its environment (the database password, the API token).
    inherited_env: Vec<(String, String)>,
    runners: Arc<Mutex<HashMap<Uuid, Supervised>>>,
    /// Runners an earlier orchestrator started, and when each was first seen gone. Not our
    /// children, so how they ended is unknown: one gone counts as stopping for FINISH_GRACE,
    /// time for the inbox to store its end if it finished; a scenario still not at rest after
    /// that (a crash) is started again.
    adopted: Mutex<HashMap<Uuid, Adopted>>,
}

#[derive(Default)]
struct Adopted {
    gone_at: Option<Instant>,
    /// Stopped by us: gone means stopped, no grace.
    stop_asked: bool,
}

fn orphan(scenario: Uuid, state: RunnerState, backend_ref: String) -> WorkerInfo {
    WorkerInfo {
        scenario,
        state,
        backend_ref,
        node: Some(vap_core::sys::hostname()),
        restarts: 0,
        started_at: None,
        placement: None,
    }
}

impl LocalBackend {
    pub fn new(settings: LocalBackendSettings) -> Self {
        let inherited_env = vap_core::job::runner_settings_env(std::env::vars());
        Self {
            settings,
            inherited_env,
            runners: Arc::new(Mutex::new(HashMap::new())),
            adopted: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Supervised>> {
        vap_core::sys::lock(&self.runners)
    }

    pub fn list(&self) -> Vec<WorkerInfo> {
        let mut out: Vec<WorkerInfo> = self
            .lock()
            .iter()
            .map(|(&scenario, s)| WorkerInfo {
                scenario,
                state: s.state.clone(),
                backend_ref: s.pid.map(|p| format!("pid {p}")).unwrap_or_default(),
                node: Some(vap_core::sys::hostname()),
                restarts: s.restarts,
                started_at: Some(s.started_at),
                placement: Some(s.placement),
            })
            .collect();
        // Runners left by an earlier orchestrator: alive, not ours to wait for.
        let ours: std::collections::HashSet<Uuid> = out.iter().map(|w| w.scenario).collect();
        let mut adopted = vap_core::sys::lock(&self.adopted);
        for (scenario, pid) in find_runner_processes(&self.settings.runner_bin) {
            if !out.iter().any(|w| w.scenario == scenario) {
                adopted.entry(scenario).or_default().gone_at = None;
                out.push(orphan(scenario, RunnerState::Running, format!("pid {pid}")));
            }
        }
        let now = Instant::now();
        adopted.retain(|&scenario, a| {
            if ours.contains(&scenario) {
                return false;
            }
            if out.iter().any(|w| w.scenario == scenario) {
                return true;
            }
            let waiting = !a.stop_asked && now.duration_since(*a.gone_at.get_or_insert(now)) < FINISH_GRACE;
            if waiting {
                out.push(orphan(scenario, RunnerState::Stopping, String::new()));
            }
            waiting
        });
        out
    }

    pub fn start(&self, spec: &RunnerJob) -> Result<WorkerInfo, BackendError> {
        // One of an earlier placement (missed by the last list) is fenced by this one: it must
        // go, and this placement starts in a later round, not beside it.
        if let Some(w) = self.list().into_iter().find(|w| w.scenario == spec.scenario && w.state.holds_slot()) {
            if w.placement != Some(spec.placement) {
                self.stop(spec.scenario);
                return Err(BackendError::Unavailable {
                    backend: "local",
                    message: format!(
                        "an earlier runner of {} still ran ({}); stopped it",
                        spec.scenario, w.backend_ref
                    ),
                });
            }
            return Ok(w);
        }
        let started_at = Utc::now();
        self.lock().insert(
            spec.scenario,
            Supervised {
                placement: spec.placement,
                pid: None,
                state: RunnerState::Starting,
                restarts: 0,
                started_at,
                stop_requested: false,
            },
        );
        let (settings, env, runners, job) =
            (self.settings.clone(), self.inherited_env.clone(), Arc::clone(&self.runners), spec.clone());
        std::thread::Builder::new()
            .name(format!("vap-supervise-{}", &spec.scenario.to_string()[..8]))
            .spawn(move || supervise(&settings, &env, &runners, &job))
            .map_err(|e| BackendError::Unavailable { backend: "local", message: e.to_string() })?;
        Ok(WorkerInfo {
            scenario: spec.scenario,
            state: RunnerState::Starting,
            backend_ref: String::new(),
            node: Some(vap_core::sys::hostname()),
            restarts: 0,
            started_at: Some(started_at),
            placement: Some(spec.placement),
        })
    }

    pub fn stop(&self, scenario: Uuid) {
        let pid = {
            let mut runners = self.lock();
            match runners.get_mut(&scenario) {
                Some(s) => {
                    s.stop_requested = true;
                    if s.state.holds_slot() {
                        s.state = RunnerState::Stopping;
                    }
                    s.pid
                }
                None => {
                    if let Some(a) = vap_core::sys::lock(&self.adopted).get_mut(&scenario) {
                        a.stop_asked = true;
                    }
                    find_runner_processes(&self.settings.runner_bin)
                        .into_iter()
                        .find(|(s, _)| *s == scenario)
                        .map(|(_, p)| p)
                }
            }
        };
        if let Some(pid) = pid {
            vap_core::sys::signal(pid, vap_core::sys::SIGTERM);
        }
    }

    pub fn forget(&self, scenario: Uuid) {
        let mut runners = self.lock();
        if runners.get(&scenario).is_some_and(|s| !s.state.holds_slot()) {
            runners.remove(&scenario);
        }
    }

    /// Stops every runner and waits for them (the embedded default stops its runners with it).
    pub fn stop_all(&self, timeout: Duration) {
        let scenarios: Vec<Uuid> =
            self.list().into_iter().filter(|w| w.state.holds_slot()).map(|w| w.scenario).collect();
        for s in &scenarios {
            self.stop(*s);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.list().iter().any(|w| w.state.holds_slot()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs a scenario's runner, restarting it after crashes (with back-off) until it ends for
/// good, a stop is asked for, or it fails `restart_limit` times within the window.
fn supervise(
    settings: &LocalBackendSettings,
    env: &[(String, String)],
    runners: &Mutex<HashMap<Uuid, Supervised>>,
    spec: &RunnerJob,
) {
    let scenario = spec.scenario;
    let update = |f: &mut dyn FnMut(&mut Supervised)| {
        if let Some(s) = vap_core::sys::lock(runners).get_mut(&scenario) {
            f(s);
        }
    };
    let stop_requested = || vap_core::sys::lock(runners).get(&scenario).is_none_or(|s| s.stop_requested);
    let window = Duration::from_secs(settings.restart_window_secs);
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.restart_delay_min_ms),
        Duration::from_millis(settings.restart_delay_max_ms),
    );
    loop {
        let code = match run_once(settings, env, spec, &update) {
            Ok(code) => code,
            Err(reason) => {
                tracing::error!(scenario = %scenario, reason, "runner not started");
                update(&mut |s| s.state = RunnerState::Failed { reason: reason.clone() });
                return;
            }
        };
        if stop_requested() || exit::is_permanent(code) {
            tracing::info!(scenario = %scenario, code, "runner exited");
            update(&mut |s| s.state = RunnerState::Exited { code });
            return;
        }
        if crashes_in_window(&mut recent, window) > settings.restart_limit {
            let reason =
                format!("runner failed {} times in {} s (last exit code {code})", recent.len(), window.as_secs());
            tracing::error!(scenario = %scenario, reason, "giving up on runner");
            update(&mut |s| s.state = RunnerState::Failed { reason: reason.clone() });
            return;
        }
        update(&mut |s| {
            s.restarts += 1;
            s.state = RunnerState::Starting;
        });
        let delay = backoff.next_delay().unwrap_or(window);
        tracing::warn!(scenario = %scenario, code, restart_in_ms = delay.as_millis() as u64, "runner crashed; restarting");
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if stop_requested() {
                update(&mut |s| s.state = RunnerState::Exited { code });
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        }
    }
}

/// Counts a crash now; returns how many fell within the last `window`.
fn crashes_in_window(recent: &mut VecDeque<Instant>, window: Duration) -> u32 {
    let now = Instant::now();
    recent.push_back(now);
    while recent.front().is_some_and(|t| now.duration_since(*t) > window) {
        recent.pop_front();
    }
    recent.len() as u32
}

/// Changes a supervised runner's entry, if it still has one.
type Update<'a> = &'a dyn Fn(&mut dyn FnMut(&mut Supervised));

/// Starts the runner once and waits for it; its exit code (128 + signal when killed).
fn run_once(
    settings: &LocalBackendSettings,
    env: &[(String, String)],
    spec: &RunnerJob,
    update: Update<'_>,
) -> Result<i32, String> {
    let mut cmd = Command::new(&settings.runner_bin);
    cmd.args(spec.args(settings.runner_config.as_deref()));
    // An allow-list, not the orchestrator's environment: no database password, no API token,
    // and not its systemd notifications either.
    cmd.env_clear().envs(std::env::vars().filter(|(k, _)| vap_core::job::is_process_env(k)));
    // The secrets go through a pipe: not in the runner's environment or arguments, which
    // /proc shows to its user and `ps` to everyone.
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).envs(spec.env_with(&[], "stdin"));
    cmd.stdin(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", settings.runner_bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let secrets = serde_json::to_vec(&spec.secrets()).unwrap_or_default();
        // A runner that died at once closed the pipe: its exit code says why.
        let _ = std::io::Write::write_all(&mut stdin, &secrets);
    }
    let pid = child.id();
    update(&mut |s| {
        s.pid = Some(pid);
        if !s.stop_requested {
            s.state = RunnerState::Running;
        }
    });
    tracing::info!(scenario = %spec.scenario, pid, "runner started");
    let code = match child.wait() {
        Ok(s) => s.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
        Err(_) => -1,
    };
    update(&mut |s| s.pid = None);
    Ok(code)
}

/// Running vap-runner processes started as `<runner_bin> --scenario <uuid>`, by scenario.
fn find_runner_processes(runner_bin: &std::path::Path) -> Vec<(Uuid, u32)> {
    let Some(name) = runner_bin.file_name() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_runner = args
            .first()
            .is_some_and(|a| std::path::Path::new(std::ffi::OsStr::from_bytes(a)).file_name() == Some(name));
        if !is_runner || is_zombie(pid) {
            continue;
        }
        if let Some(i) = args.iter().position(|a| *a == b"--scenario") {
            if let Some(id) =
                args.get(i + 1).and_then(|a| std::str::from_utf8(a).ok()).and_then(|s| Uuid::parse_str(s).ok())
            {
                found.push((id, pid));
            }
        }
    }
    found
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}
