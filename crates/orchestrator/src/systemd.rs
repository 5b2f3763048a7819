//! The systemd backend: one transient service per scenario, `vap-runner-<uuid>.service`,
//! started through systemd's D-Bus API (`org.freedesktop.systemd1.Manager`) with zbus, on the
//! host's system bus or on the bus socket of a remote or containerised host.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::backend::{runner_name, runner_scenario, BackendError, RunnerState, WorkerInfo, RUNNER_PREFIX};
use vap_core::config::SystemdBackendSettings;
use vap_core::job::{exit, RunnerJob};

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
    /// Where each scenario's unit is, and how many runners each node has, as of the last list
    /// and the starts since.
    placement: std::sync::Mutex<Placement>,
}

struct Placement {
    node_of: std::collections::HashMap<Uuid, usize>,
    load: Vec<usize>,
    /// Nodes that answered the last list; new runners go only to these.
    answered: Vec<bool>,
    /// Every node has answered one list since start: where each runner is, is known.
    complete: bool,
}

impl Placement {
    fn empty(nodes: usize) -> Self {
        Self { node_of: Default::default(), load: vec![0; nodes], answered: vec![true; nodes], complete: false }
    }
}

impl SystemdBackend {
    pub fn new(
        settings: SystemdBackendSettings,
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
        let placement = std::sync::Mutex::new(Placement::empty(nodes.len()));
        Ok(Self { settings, runner_key, ip_deny, nodes, placement })
    }

    /// Every node's runner units. The runners last seen on a node that does not answer are
    /// reported `Unreachable`, so the others carry on without starting them twice. Until every
    /// node has answered once, where runners are is unknown, and one silent node fails the list.
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

    /// One view of all nodes. A node that does not answer keeps the runners it was last seen
    /// with, as unreachable (their slots held), unless no complete view was ever had.
    fn merge(&self, lists: Vec<Result<Vec<WorkerInfo>, BackendError>>) -> Result<Vec<WorkerInfo>, BackendError> {
        let mut last = vap_core::sys::lock(&self.placement);
        let mut placement = Placement::empty(self.nodes.len());
        let mut out = Vec::new();
        let mut silent = None;
        for (i, list) in lists.into_iter().enumerate() {
            match list {
                Ok(list) => {
                    for w in list {
                        placement.node_of.insert(w.scenario, i);
                        if !matches!(w.state, RunnerState::Exited { .. } | RunnerState::Failed { .. }) {
                            placement.load[i] += 1;
                        }
                        out.push(w);
                    }
                }
                Err(e) => {
                    placement.answered[i] = false;
                    if last.answered[i] {
                        tracing::warn!(node = self.nodes[i].name, error = %e, "a systemd node stopped answering; its runners are left as they are");
                    }
                    silent.get_or_insert(e);
                }
            }
            if placement.answered[i] && !last.answered[i] {
                tracing::info!(node = self.nodes[i].name, "a systemd node answers again");
            }
        }
        if let Some(e) = silent {
            if !last.complete || !placement.answered.contains(&true) {
                last.answered = placement.answered;
                return Err(e);
            }
            for (&scenario, &i) in last.node_of.iter().filter(|(_, &i)| !placement.answered[i]) {
                placement.node_of.insert(scenario, i);
                placement.load[i] += 1;
                let node = &self.nodes[i];
                let state = RunnerState::Unreachable { node: node.name.clone() };
                out.push(WorkerInfo {
                    scenario,
                    state,
                    backend_ref: unit_name(scenario),
                    node: node.node(),
                    restarts: 0,
                    started_at: None,
                });
            }
        }
        placement.complete = true;
        *last = placement;
        Ok(out)
    }

    pub fn nodes_answering(&self) -> Vec<(String, bool)> {
        let p = vap_core::sys::lock(&self.placement);
        self.nodes.iter().zip(&p.answered).map(|(n, &up)| (n.node().unwrap_or_else(|| "local".into()), up)).collect()
    }

    /// The node for a new runner: the one with the fewest, the first of equals.
    fn choose(&self, scenario: Uuid) -> usize {
        let mut p = vap_core::sys::lock(&self.placement);
        if let Some(&i) = p.node_of.get(&scenario) {
            return i;
        }
        let i = (0..self.nodes.len()).filter(|&i| p.answered[i]).min_by_key(|&i| p.load[i]).unwrap_or(0);
        p.load[i] += 1;
        p.node_of.insert(scenario, i);
        i
    }

    /// The nodes a scenario's unit may be on: the one it was seen on, or all that answer.
    fn nodes_of(&self, scenario: Uuid) -> Vec<&Node> {
        let p = vap_core::sys::lock(&self.placement);
        match p.node_of.get(&scenario) {
            Some(&i) => vec![&self.nodes[i]],
            None => self.nodes.iter().enumerate().filter(|(i, _)| p.answered[*i]).map(|(_, n)| n).collect(),
        }
    }

    pub async fn start(&self, spec: &RunnerJob) -> Result<WorkerInfo, BackendError> {
        let name = unit_name(spec.scenario);
        let node = &self.nodes[self.choose(spec.scenario)];
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
        })
    }

    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        let name = unit_name(scenario);
        for node in self.nodes_of(scenario) {
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
        self.stop(scenario).await?;
        for node in self.nodes_of(scenario) {
            let _: Result<(), _> =
                node.manager().await?.call("ResetFailedUnit", &(unit_name(scenario).as_str(),)).await;
        }
        let mut p = vap_core::sys::lock(&self.placement);
        if let Some(i) = p.node_of.remove(&scenario) {
            p.load[i] = p.load[i].saturating_sub(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
