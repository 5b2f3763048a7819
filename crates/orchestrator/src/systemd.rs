//! The systemd backend: one transient service per scenario, `vap-runner-<uuid>.service`,
//! started through systemd's D-Bus API (`org.freedesktop.systemd1.Manager`) with zbus, on the
//! host's system bus or on the bus socket of a remote or containerised host.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::backend::{
    runner_name, runner_scenario, BackendError, HostHealth, HostView, RunnerState, WorkerInfo, RUNNER_PREFIX,
};
use vap_core::config::SystemdBackendSettings;
use vap_core::job::{exit, RunnerJob, ENV_PLACEMENT_EPOCH};
use vap_core::signing::PlacementEpoch;

const BACKEND: &str = "systemd";
const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable { backend: BACKEND, message: e.to_string() }
}

fn unit_name(scenario: Uuid) -> String {
    format!("{}.service", runner_name(scenario))
}

/// Every property of a runner's transient unit, as StartTransientUnit gets them (a golden file
/// holds them). `sealed` is the runner's secrets sealed for it; `ip_deny` the networks the unit
/// refuses (address family, address, prefix).
fn unit_properties(
    s: &SystemdBackendSettings,
    spec: &RunnerJob,
    sealed: &str,
    ip_deny: &[(i32, Vec<u8>, u32)],
) -> Vec<(&'static str, Value<'static>)> {
    let bin = s.runner_bin.display().to_string();
    let argv: Vec<String> = std::iter::once(bin.clone()).chain(spec.args(s.runner_config.as_deref())).collect();
    let env: Vec<String> = spec
        .env_with(&s.runner_env, &format!("sealed:{sealed}"))
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let credential = (vap_core::sealed::CREDENTIAL.to_string(), s.runner_key_file.display().to_string());
    let sec = |n: u64| n * 1_000_000;
    let mut props: Vec<(&'static str, Value<'static>)> = vec![
        ("Description", Value::from(format!("vap runner for scenario {}", spec.scenario))),
        ("ExecStart", Value::from(vec![(bin, argv, false)])),
        ("Environment", Value::from(env)),
        ("LoadCredential", Value::from(vec![credential])),
        // No way to the system bus (other units' properties, systemd itself).
        ("InaccessiblePaths", Value::from(vec!["-/run/dbus/system_bus_socket", "-/var/run/dbus/system_bus_socket"])),
        ("Type", Value::from("notify")),
        ("NotifyAccess", Value::from("main")),
        ("WatchdogUSec", Value::from(sec(s.watchdog_sec))),
        ("Restart", Value::from("on-failure")),
        ("RestartUSec", Value::from(sec(s.restart_sec))),
        // The runner's permanent ends: configuration, camera unavailable, model.
        ("RestartPreventExitStatus", Value::from((exit::NOT_RESTARTED.map(i32::from).to_vec(), Vec::<i32>::new()))),
        ("StartLimitBurst", Value::from(s.start_limit_burst)),
        ("StartLimitIntervalUSec", Value::from(sec(s.start_limit_interval_secs))),
        ("RemainAfterExit", Value::from(true)),
        ("KillSignal", Value::from(libc::SIGTERM)),
        ("TimeoutStopUSec", Value::from(sec(s.stop_timeout_secs))),
        ("Slice", Value::from(s.slice.clone())),
        ("TasksMax", Value::from(s.tasks_max)),
        // The same hardening as the platform's own units (units/*.service).
        ("UMask", Value::from(0o077u32)),
        ("NoNewPrivileges", Value::from(true)),
        ("CapabilityBoundingSet", Value::from(0u64)),
        ("AmbientCapabilities", Value::from(0u64)),
        ("ProtectSystem", Value::from("strict")),
        ("ProtectHome", Value::from("yes")),
        ("PrivateTmp", Value::from(s.private_tmp)),
        ("PrivateDevices", Value::from(true)),
        ("DevicePolicy", Value::from("closed")),
        ("PrivateMounts", Value::from(true)),
        ("ProtectHostname", Value::from(true)),
        ("ProtectClock", Value::from(true)),
        ("ProtectKernelTunables", Value::from(true)),
        ("ProtectKernelModules", Value::from(true)),
        ("ProtectKernelLogs", Value::from(true)),
        ("ProtectControlGroups", Value::from(true)),
        ("ProtectProc", Value::from("invisible")),
        ("ProcSubset", Value::from("pid")),
        ("RestrictAddressFamilies", Value::from((true, vec!["AF_INET", "AF_INET6", "AF_UNIX"]))),
        ("RestrictNamespaces", Value::from(0u64)),
        ("RestrictRealtime", Value::from(true)),
        ("RestrictSUIDSGID", Value::from(true)),
        ("RemoveIPC", Value::from(true)),
        ("LockPersonality", Value::from(true)),
        ("MemoryDenyWriteExecute", Value::from(true)),
        ("SystemCallArchitectures", Value::from(vec!["native"])),
        ("SystemCallFilter", Value::from((true, vec!["@system-service"]))),
        ("SystemCallFilter", Value::from((false, vec!["@privileged", "@resources"]))),
        ("SystemCallErrorNumber", Value::from(libc::EPERM)),
    ];
    if s.memory_max_mb > 0 {
        props.push(("MemoryMax", Value::from(s.memory_max_mb * 1024 * 1024)));
    }
    if s.cpu_quota_percent > 0 {
        props.push(("CPUQuotaPerSecUSec", Value::from(s.cpu_quota_percent * 10_000)));
    }
    if !ip_deny.is_empty() {
        props.push(("IPAddressDeny", Value::from(ip_deny.to_vec())));
    }
    if s.user.is_empty() {
        props.push(("DynamicUser", Value::from(true)));
    } else {
        props.push(("User", Value::from(s.user.clone())));
    }
    props
}

type UnitRow = (String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath);

/// How long one node may take to list its units before it counts as not answering: a silent
/// host must not hold up placements on the others.
/// A D-Bus call (or connecting) that takes longer fails.
const METHOD_TIMEOUT: Duration = Duration::from_secs(20);
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnects to a node that did not answer back off between these.
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// One host's systemd, reached over its system bus.
struct Node {
    name: String,
    address: String,
    connection: tokio::sync::Mutex<Option<zbus::Connection>>,
    /// After a failed connect: no new attempt before `.0`; `.1` is the next delay.
    retry: std::sync::Mutex<(Option<Instant>, Duration)>,
}

impl Node {
    fn new(name: String, address: String) -> Self {
        Self {
            name,
            address,
            connection: tokio::sync::Mutex::new(None),
            retry: std::sync::Mutex::new((None, RECONNECT_MIN)),
        }
    }

    /// The bus connection, made on first use and again after it broke (backing off while the
    /// host does not answer: each attempt may be an ssh connect timing out).
    async fn bus(&self) -> Result<zbus::Connection, BackendError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        if let (Some(after), _) = *vap_core::sys::lock(&self.retry) {
            if Instant::now() < after {
                return Err(self.unavailable(format!(
                    "did not answer; next try in {} s",
                    after.duration_since(Instant::now()).as_secs() + 1
                )));
            }
        }
        // Every call answers within METHOD_TIMEOUT or fails: a host whose bus stops answering
        // (an ssh link that hangs) must not hold a reconcile round; connecting is bounded too.
        let builder = if self.address.is_empty() {
            zbus::connection::Builder::system()
        } else {
            zbus::connection::Builder::address(self.address.as_str())
        };
        let connected = match builder {
            Ok(b) => match tokio::time::timeout(METHOD_TIMEOUT, b.method_timeout(METHOD_TIMEOUT).build()).await {
                Ok(c) => c,
                Err(_) => Err(zbus::Error::Failure(format!("no connection within {METHOD_TIMEOUT:?}"))),
            },
            Err(e) => Err(e),
        };
        match connected {
            Ok(c) => {
                *vap_core::sys::lock(&self.retry) = (None, RECONNECT_MIN);
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.back_off();
                Err(self.unavailable(e))
            }
        }
    }

    fn back_off(&self) {
        let mut retry = vap_core::sys::lock(&self.retry);
        *retry = (Some(Instant::now() + retry.1), (retry.1 * 2).min(RECONNECT_MAX));
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BackendError {
        if self.name.is_empty() {
            unavailable(e)
        } else {
            unavailable(format!("{}: {e}", self.name))
        }
    }

    /// Drops the connection so the next call reconnects.
    fn disconnect(&self) {
        if let Ok(mut slot) = self.connection.try_lock() {
            *slot = None;
        }
    }

    /// A call failed: drop the connection so the next one reconnects.
    fn broken(&self, e: zbus::Error) -> BackendError {
        self.disconnect();
        self.unavailable(e)
    }

    async fn manager(&self) -> Result<zbus::Proxy<'static>, BackendError> {
        let bus = self.bus().await?;
        zbus::Proxy::new(&bus, DEST, MANAGER_PATH, MANAGER).await.map_err(|e| self.broken(e))
    }

    /// Every property of a unit's `org.freedesktop.systemd1.Service` interface, in one call.
    async fn service_properties(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<std::collections::HashMap<String, OwnedValue>, BackendError> {
        let bus = self.bus().await?;
        let props = zbus::Proxy::new(&bus, DEST, path.as_str(), "org.freedesktop.DBus.Properties")
            .await
            .map_err(|e| self.broken(e))?;
        props.call("GetAll", &("org.freedesktop.systemd1.Service",)).await.map_err(|e| self.broken(e))
    }

    fn node(&self) -> Option<String> {
        Some(self.name.clone()).filter(|n| !n.is_empty())
    }

    async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let manager = self.manager().await?;
        let states: Vec<&str> = Vec::new();
        let rows: Vec<UnitRow> = manager
            .call("ListUnitsByPatterns", &(states, vec![format!("{RUNNER_PREFIX}*.service")]))
            .await
            .map_err(|e| self.broken(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, _, load, active, sub, _, path, _, _, _) in rows {
            let Some(scenario) = name.strip_suffix(".service").and_then(runner_scenario) else { continue };
            if load != "loaded" {
                continue;
            }
            let props = self.service_properties(&path).await?;
            let get = |key: &str| props.get(key).and_then(|v| v.try_clone().ok());
            let restarts = get("NRestarts").and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
            let code = get("ExecMainStatus").and_then(|v| i32::try_from(v).ok()).unwrap_or(0);
            let started_us = get("ExecMainStartTimestamp").and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
            // A unit without it is from before placements had epochs: placement 0.
            let placement = get("Environment").and_then(|v| Vec::<String>::try_from(v).ok()).map(|env| {
                let prefix = format!("{ENV_PLACEMENT_EPOCH}=");
                let epoch = env.iter().find_map(|kv| kv.strip_prefix(&prefix).and_then(|n| n.parse().ok()));
                PlacementEpoch(epoch.unwrap_or(0))
            });
            let state = match (active.as_str(), sub.as_str()) {
                ("active", "running") => RunnerState::Running,
                // RemainAfterExit keeps a unit whose runner exited 0 (a file that ended).
                ("active", "exited") => RunnerState::Exited { code },
                ("activating", _) | ("reloading", _) => RunnerState::Starting,
                ("deactivating", _) => RunnerState::Stopping,
                ("failed", _) => {
                    let result = get("Result").and_then(|v| String::try_from(v).ok()).unwrap_or_default();
                    RunnerState::Failed {
                        reason: format!(
                            "systemd gave up on {name}: result {result}, last exit code {code}, {restarts} restarts"
                        ),
                    }
                }
                _ => RunnerState::Exited { code },
            };
            out.push(WorkerInfo {
                scenario,
                state,
                backend_ref: name.clone(),
                node: self.node(),
                restarts,
                started_at: (started_us > 0)
                    .then(|| DateTime::<Utc>::from_timestamp_micros(started_us as i64))
                    .flatten(),
                placement,
            });
        }
        Ok(out)
    }
}

pub struct SystemdBackend {
    settings: SystemdBackendSettings,
    /// Seals each runner's secrets (crates/core/src/sealed.rs).
    runner_key: Box<vap_core::sealed::RunnerKey>,
    /// Link-local networks (cloud metadata) the policy refuses: the unit refuses them too, for
    /// what FFmpeg reaches without the runner's check (an RTSP redirect).
    ip_deny: Vec<(i32, Vec<u8>, u32)>,
    nodes: Vec<Node>,
    /// Where each scenario's units are, and how many runners each node has, as of the last list
    /// and the starts since; and each node's health.
    placement: std::sync::Mutex<Placement>,
    /// When a silent host counts as down, and a host that was down as up again.
    detection: Detection,
}

/// The bounds of failure detection (`orchestrator.host_down_after_secs`, `host_up_after_secs`).
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    pub down_after: Duration,
    pub up_after: Duration,
}

/// One node's answers over time.
#[derive(Debug, Clone)]
struct NodeHealth {
    /// Since when it has not answered (from this orchestrator's start until its first answer).
    silent_since: Option<Instant>,
    /// Since when it has answered without a gap, while it is down.
    answering_since: Option<Instant>,
    down: bool,
    last_answer: Option<DateTime<Utc>>,
}

impl NodeHealth {
    fn new(now: Instant) -> Self {
        Self { silent_since: Some(now), answering_since: None, down: false, last_answer: None }
    }

    /// Takes in one list's outcome; says whether the host just went down or came back up.
    /// Down only after `down_after` of silence without an answer; up again only after
    /// `up_after` of answers without a silence (hysteresis: a flapping host stays as it was).
    fn saw(&mut self, answered: bool, now: Instant, d: Detection) -> Option<HostHealth> {
        if answered {
            self.silent_since = None;
            self.last_answer = Some(Utc::now());
            if self.down && now.duration_since(*self.answering_since.get_or_insert(now)) >= d.up_after {
                self.down = false;
                self.answering_since = None;
                return Some(HostHealth::Up);
            }
        } else {
            self.answering_since = None;
            if !self.down && now.duration_since(*self.silent_since.get_or_insert(now)) >= d.down_after {
                self.down = true;
                return Some(HostHealth::Down);
            }
        }
        None
    }

    fn health(&self) -> HostHealth {
        match (self.down, self.silent_since) {
            (true, _) => HostHealth::Down,
            (false, Some(_)) => HostHealth::Silent,
            (false, None) => HostHealth::Up,
        }
    }
}

struct Placement {
    /// The nodes each scenario's units were listed on (a superseded one can be beside the
    /// current one after its host came back).
    nodes_of: std::collections::HashMap<Uuid, Vec<usize>>,
    load: Vec<usize>,
    /// Nodes that answered the last list.
    answered: Vec<bool>,
    health: Vec<NodeHealth>,
}

impl SystemdBackend {
    pub fn new(
        settings: SystemdBackendSettings,
        detection: Detection,
        destinations: &vap_core::destination::DestinationPolicy,
    ) -> Result<Self, vap_core::sealed::SealError> {
        let runner_key = Box::new(vap_core::sealed::RunnerKey::load(&settings.runner_key_file)?);
        let ip_deny = [("169.254.0.0", 16), ("fe80::", 10)]
            .into_iter()
            .filter_map(|(net, prefix)| Some((net.parse::<std::net::IpAddr>().ok()?, prefix)))
            .filter(|(net, _)| destinations.check_ip(*net).is_err())
            .map(|(net, prefix)| match net {
                std::net::IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec(), prefix),
                std::net::IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec(), prefix),
            })
            .collect();
        let nodes: Vec<Node> =
            settings.effective_nodes().into_iter().map(|n| Node::new(n.name, n.bus_address)).collect();
        let now = Instant::now();
        let placement = std::sync::Mutex::new(Placement {
            nodes_of: Default::default(),
            load: vec![0; nodes.len()],
            answered: vec![false; nodes.len()],
            health: vec![NodeHealth::new(now); nodes.len()],
        });
        Ok(Self { settings, runner_key, ip_deny, nodes, placement, detection })
    }

    /// Every runner unit of the nodes that answer. A node that does not answer reports none:
    /// the orchestrator knows from PostgreSQL which runners were last there, and leaves them
    /// while the node is silent, or places them again once it is down. Fails only when no
    /// node answers.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let lists = self.list_each_node().await;
        self.merge(lists)
    }

    /// Every node's runners (or why it did not answer), asked all at once.
    async fn list_each_node(&self) -> Vec<Result<Vec<WorkerInfo>, BackendError>> {
        futures::future::join_all(self.nodes.iter().map(|node| async move {
            match tokio::time::timeout(NODE_LIST_TIMEOUT, node.list()).await {
                Ok(list) => list,
                Err(_) => {
                    // The timed-out list was dropped, and its lock with it.
                    node.disconnect();
                    node.back_off();
                    Err(node.unavailable(format!("no answer within {} s", NODE_LIST_TIMEOUT.as_secs())))
                }
            }
        }))
        .await
    }

    /// One view of the nodes that answered, and each node's health brought up to date.
    fn merge(&self, lists: Vec<Result<Vec<WorkerInfo>, BackendError>>) -> Result<Vec<WorkerInfo>, BackendError> {
        let now = Instant::now();
        let mut p = vap_core::sys::lock(&self.placement);
        let mut nodes_of: std::collections::HashMap<Uuid, Vec<usize>> = Default::default();
        let mut load = vec![0; self.nodes.len()];
        let mut out = Vec::new();
        let mut silent = None;
        for (i, list) in lists.into_iter().enumerate() {
            let name = &self.nodes[i].name;
            let answered = list.is_ok();
            match list {
                Ok(list) => {
                    for w in list {
                        nodes_of.entry(w.scenario).or_default().push(i);
                        if !matches!(w.state, RunnerState::Exited { .. } | RunnerState::Failed { .. }) {
                            load[i] += 1;
                        }
                        out.push(w);
                    }
                }
                Err(e) => {
                    if p.answered[i] {
                        tracing::warn!(node = name, error = %e, "a systemd node stopped answering; its runners are left as they are for now");
                    }
                    silent.get_or_insert(e);
                }
            }
            if answered && !p.answered[i] && p.health[i].last_answer.is_some() {
                tracing::info!(node = name, "a systemd node answers again");
            }
            p.answered[i] = answered;
            match p.health[i].saw(answered, now, self.detection) {
                Some(HostHealth::Down) => tracing::warn!(
                    node = name,
                    after_secs = self.detection.down_after.as_secs(),
                    "a systemd node is down: its runners are placed again elsewhere"
                ),
                Some(_) => tracing::info!(node = name, "a systemd node that was down takes runners again"),
                None => {}
            }
        }
        p.nodes_of = nodes_of;
        p.load = load;
        match silent {
            Some(e) if !p.answered.contains(&true) => Err(e),
            _ => Ok(out),
        }
    }

    /// Leading begins: every host's silence counts from now, not from this process's start
    /// (a standby that took the lead has not been listening).
    pub fn begin_leading(&self) {
        let now = Instant::now();
        let mut p = vap_core::sys::lock(&self.placement);
        for h in &mut p.health {
            let last_answer = h.last_answer;
            *h = NodeHealth { last_answer, ..NodeHealth::new(now) };
        }
    }

    pub fn nodes_answering(&self) -> Vec<(String, bool)> {
        let p = vap_core::sys::lock(&self.placement);
        self.nodes.iter().zip(&p.answered).map(|(n, &up)| (n.node().unwrap_or_else(|| "local".into()), up)).collect()
    }

    /// Every node as failure detection sees it.
    pub fn hosts(&self) -> Vec<HostView> {
        let p = vap_core::sys::lock(&self.placement);
        self.nodes
            .iter()
            .zip(&p.health)
            .map(|(n, h)| HostView {
                name: n.node().unwrap_or_else(|| "local".into()),
                health: h.health(),
                last_answer: h.last_answer,
            })
            .collect()
    }

    /// The node for a new runner: of the nodes that are up and hold no unit of the scenario
    /// (a unit's name is the scenario's), the one with the fewest, the first of equals.
    fn choose(&self, scenario: Uuid) -> Option<usize> {
        let mut p = vap_core::sys::lock(&self.placement);
        let taken = p.nodes_of.get(&scenario).cloned().unwrap_or_default();
        let i = (0..self.nodes.len())
            .filter(|&i| p.health[i].health() == HostHealth::Up && !taken.contains(&i))
            .min_by_key(|&i| p.load[i])?;
        p.load[i] += 1;
        p.nodes_of.entry(scenario).or_default().push(i);
        Some(i)
    }

    /// The nodes a scenario's units may be on: those it was listed on (or placed on since), or
    /// all that answer.
    fn nodes_of(&self, scenario: Uuid) -> Vec<&Node> {
        let p = vap_core::sys::lock(&self.placement);
        match p.nodes_of.get(&scenario) {
            Some(on) => on.iter().map(|&i| &self.nodes[i]).collect(),
            None => self.nodes.iter().enumerate().filter(|(i, _)| p.answered[*i]).map(|(_, n)| n).collect(),
        }
    }

    pub async fn start(&self, spec: &RunnerJob) -> Result<WorkerInfo, BackendError> {
        let name = unit_name(spec.scenario);
        let Some(i) = self.choose(spec.scenario) else {
            return Err(unavailable("no node is up to place a runner on"));
        };
        let node = &self.nodes[i];
        let manager = node.manager().await?;
        // A unit left from an earlier run (failed, or exited and kept) must go first.
        let _: Result<(), _> = manager.call("ResetFailedUnit", &(name.as_str(),)).await;
        // Every property is readable by any local user (`systemctl show`): the secrets go sealed,
        // and the key that opens them as a credential only this unit's user reads.
        let sealed =
            self.runner_key.seal(spec.scenario, &spec.secrets()).map_err(|e| node.unavailable(e.to_string()))?;
        let props = unit_properties(&self.settings, spec, &sealed, &self.ip_deny);
        let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
        let _job: OwnedObjectPath =
            manager.call("StartTransientUnit", &(name.as_str(), "fail", props, aux)).await.map_err(|e| match e {
                zbus::Error::MethodError(ref n, ..) if n.as_str().ends_with("UnitExists") => {
                    node.unavailable(format!("{name} exists already"))
                }
                e => node.broken(e),
            })?;
        Ok(WorkerInfo {
            scenario: spec.scenario,
            state: RunnerState::Starting,
            backend_ref: name,
            node: node.node(),
            restarts: 0,
            started_at: None,
            placement: Some(spec.placement),
        })
    }

    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        self.stop_on(scenario, &self.nodes_of(scenario)).await
    }

    async fn stop_on(&self, scenario: Uuid, nodes: &[&Node]) -> Result<(), BackendError> {
        let name = unit_name(scenario);
        for node in nodes {
            let stopped: Result<OwnedObjectPath, _> =
                node.manager().await?.call("StopUnit", &(name.as_str(), "replace")).await;
            match stopped {
                Ok(_) => {}
                // Not loaded there: nothing to stop.
                Err(zbus::Error::MethodError(n, ..)) if n.as_str().ends_with("NoSuchUnit") => {}
                Err(e) => return Err(node.broken(e)),
            }
        }
        Ok(())
    }

    /// Unloads an ended unit (a kept exit, or a failure) so its name is free again.
    pub async fn forget(&self, scenario: Uuid) -> Result<(), BackendError> {
        let nodes = self.nodes_of(scenario);
        self.unload(scenario, &nodes).await?;
        let mut p = vap_core::sys::lock(&self.placement);
        for i in p.nodes_of.remove(&scenario).unwrap_or_default() {
            p.load[i] = p.load[i].saturating_sub(1);
        }
        Ok(())
    }

    /// Stops and unloads the scenario's unit on `node` only: a superseded placement's, beside
    /// the current one elsewhere.
    pub async fn retire(&self, scenario: Uuid, node: Option<&str>) -> Result<(), BackendError> {
        let Some(i) = self.nodes.iter().position(|n| n.node().as_deref() == node) else { return Ok(()) };
        self.unload(scenario, &[&self.nodes[i]]).await?;
        let mut p = vap_core::sys::lock(&self.placement);
        if let Some(on) = p.nodes_of.get_mut(&scenario) {
            on.retain(|&n| n != i);
        }
        Ok(())
    }

    async fn unload(&self, scenario: Uuid, nodes: &[&Node]) -> Result<(), BackendError> {
        self.stop_on(scenario, nodes).await?;
        for node in nodes {
            let _: Result<(), _> =
                node.manager().await?.call("ResetFailedUnit", &(unit_name(scenario).as_str(),)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_down_only_after_a_whole_bound_of_silence_and_up_after_a_whole_bound_of_answers() {
        let d = Detection { down_after: Duration::from_secs(30), up_after: Duration::from_secs(30) };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = NodeHealth::new(t0);
        assert_eq!(h.health(), HostHealth::Silent, "not answered yet");
        assert_eq!(h.saw(true, at(1), d), None);
        assert_eq!(h.health(), HostHealth::Up);
        // Flapping every 5 s for two minutes: never down.
        for i in 0..24 {
            assert_eq!(h.saw(i % 2 == 1, at(5 + 5 * i), d), None);
            assert_ne!(h.health(), HostHealth::Down);
        }
        assert_eq!(h.saw(true, at(130), d), None);
        assert_eq!(h.saw(false, at(131), d), None);
        assert_eq!(h.health(), HostHealth::Silent);
        assert_eq!(h.saw(false, at(160), d), None, "29 s of silence");
        assert_eq!(h.saw(false, at(161), d), Some(HostHealth::Down));
        assert!(h.last_answer.is_some());
        // Back, but one silence restarts the count: up only after 30 s of answers in a row.
        assert_eq!(h.saw(true, at(170), d), None);
        assert_eq!(h.health(), HostHealth::Down);
        assert_eq!(h.saw(false, at(175), d), None);
        assert_eq!(h.saw(true, at(180), d), None);
        assert_eq!(h.saw(true, at(209), d), None);
        assert_eq!(h.health(), HostHealth::Down);
        assert_eq!(h.saw(true, at(210), d), Some(HostHealth::Up));
        assert_eq!(h.health(), HostHealth::Up);
        // An orchestrator that starts while a host is dead: down after the bound, never answered.
        let mut dead = NodeHealth::new(t0);
        assert_eq!(dead.saw(false, at(29), d), None);
        assert_eq!(dead.saw(false, at(30), d), Some(HostHealth::Down));
        assert_eq!(dead.last_answer, None);
    }

    /// `VAP_WRITE_GOLDEN=1` writes the file anew after a deliberate change.
    #[test]
    fn unit_matches_the_golden_file() {
        let settings = SystemdBackendSettings {
            runner_env: vec!["VAP_KAFKA__BROKERS=kafka-1:9092".into(), "VAP_LOG__JSON=true".into()],
            memory_max_mb: 512,
            cpu_quota_percent: 50,
            ..SystemdBackendSettings::default()
        };
        let ip_deny = [(libc::AF_INET, vec![169, 254, 0, 0], 16)];
        let unit: String = unit_properties(&settings, &crate::backend::example_job(), "SEALED", &ip_deny)
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect();
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/systemd_unit.txt");
        if std::env::var("VAP_WRITE_GOLDEN").is_ok_and(|v| v == "1") {
            std::fs::write(&golden, &unit).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(unit, expected, "the unit differs from {}", golden.display());
    }
}
