//! The systemd backend: one transient service per scenario, `vap-runner-<uuid>.service`,
//! started through systemd's D-Bus API (`org.freedesktop.systemd1.Manager`) with zbus, on the
//! host's system bus or on the bus socket of a remote or containerised host.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::backend::{runner_name, runner_scenario, BackendError, RunnerSpec, WorkerInfo, RUNNER_PREFIX};
use super::reconcile::RunnerState;
use crate::config::SystemdBackendSettings;

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

type UnitRow = (String, String, String, String, String, String, OwnedObjectPath, u32, String, OwnedObjectPath);

/// One host's systemd, reached over its system bus.
struct Node {
    name: String,
    address: String,
    connection: tokio::sync::Mutex<Option<zbus::Connection>>,
}

impl Node {
    /// The bus connection, made on first use and again after it broke.
    async fn bus(&self) -> Result<zbus::Connection, BackendError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = if self.address.is_empty() {
            zbus::Connection::system().await.map_err(|e| self.unavailable(e))?
        } else {
            zbus::connection::Builder::address(self.address.as_str()).map_err(|e| self.unavailable(e))?.build().await.map_err(|e| self.unavailable(e))?
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BackendError {
        if self.name.is_empty() {
            unavailable(e)
        } else {
            unavailable(format!("{}: {e}", self.name))
        }
    }

    /// A call failed: drop the connection so the next one reconnects.
    fn broken(&self, e: zbus::Error) -> BackendError {
        if let Ok(mut slot) = self.connection.try_lock() {
            *slot = None;
        }
        self.unavailable(e)
    }

    async fn manager(&self) -> Result<zbus::Proxy<'static>, BackendError> {
        let bus = self.bus().await?;
        match zbus::Proxy::new(&bus, DEST, MANAGER_PATH, MANAGER).await {
            Ok(p) => Ok(p),
            Err(e) => {
                *self.connection.lock().await = None;
                Err(self.unavailable(e))
            }
        }
    }

    /// Every property of a unit's `org.freedesktop.systemd1.Service` interface, in one call.
    async fn service_properties(&self, path: &OwnedObjectPath) -> Result<std::collections::HashMap<String, OwnedValue>, BackendError> {
        let bus = self.bus().await?;
        let props = zbus::Proxy::new(&bus, DEST, path.as_str(), "org.freedesktop.DBus.Properties").await.map_err(|e| self.broken(e))?;
        props.call("GetAll", &("org.freedesktop.systemd1.Service",)).await.map_err(|e| self.broken(e))
    }

    fn node(&self) -> Option<String> {
        Some(self.name.clone()).filter(|n| !n.is_empty())
    }

    async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let manager = self.manager().await?;
        let states: Vec<&str> = Vec::new();
        let rows: Vec<UnitRow> = manager.call("ListUnitsByPatterns", &(states, vec![format!("{RUNNER_PREFIX}*.service")])).await.map_err(|e| self.broken(e))?;
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
                    RunnerState::Failed { reason: format!("systemd gave up on {name}: result {result}, last exit code {code}, {restarts} restarts") }
                }
                _ => RunnerState::Exited { code },
            };
            out.push(WorkerInfo {
                scenario,
                state,
                backend_ref: name.clone(),
                node: self.node(),
                restarts,
                started_at: (started_us > 0).then(|| DateTime::<Utc>::from_timestamp_micros(started_us as i64)).flatten(),
            });
        }
        Ok(out)
    }
}

pub struct SystemdBackend {
    settings: SystemdBackendSettings,
    nodes: Vec<Node>,
    /// Where each scenario's unit is, and how many runners each node has, as of the last list
    /// and the starts since.
    placement: std::sync::Mutex<Placement>,
}

struct Placement {
    node_of: std::collections::HashMap<Uuid, usize>,
    load: Vec<usize>,
}

impl Placement {
    fn empty(nodes: usize) -> Self {
        Self { node_of: Default::default(), load: vec![0; nodes] }
    }
}

impl SystemdBackend {
    pub fn new(settings: SystemdBackendSettings) -> Self {
        let nodes: Vec<Node> = settings
            .effective_nodes()
            .into_iter()
            .map(|n| Node { name: n.name, address: n.bus_address, connection: tokio::sync::Mutex::new(None) })
            .collect();
        let placement = std::sync::Mutex::new(Placement::empty(nodes.len()));
        Self { settings, nodes, placement }
    }

    /// Every node's runner units. One node that does not answer fails the whole list: its
    /// runners' state is unknown, and starting them elsewhere could run a scenario twice.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        let lists = futures::future::join_all(self.nodes.iter().map(Node::list)).await;
        let mut placement = Placement::empty(self.nodes.len());
        let mut out = Vec::new();
        for (i, list) in lists.into_iter().enumerate() {
            for w in list? {
                placement.node_of.insert(w.scenario, i);
                if !matches!(w.state, RunnerState::Exited { .. } | RunnerState::Failed { .. }) {
                    placement.load[i] += 1;
                }
                out.push(w);
            }
        }
        *self.placement.lock().unwrap() = placement;
        Ok(out)
    }

    /// The node for a new runner: the one with the fewest, the first of equals.
    fn choose(&self, scenario: Uuid) -> usize {
        let mut p = self.placement.lock().unwrap();
        if let Some(&i) = p.node_of.get(&scenario) {
            return i;
        }
        let i = (0..self.nodes.len()).min_by_key(|&i| p.load[i]).unwrap_or(0);
        p.load[i] += 1;
        p.node_of.insert(scenario, i);
        i
    }

    /// The nodes a scenario's unit may be on: the one it was seen on, or all.
    fn nodes_of(&self, scenario: Uuid) -> Vec<&Node> {
        match self.placement.lock().unwrap().node_of.get(&scenario) {
            Some(&i) => vec![&self.nodes[i]],
            None => self.nodes.iter().collect(),
        }
    }

    pub async fn start(&self, spec: &RunnerSpec) -> Result<WorkerInfo, BackendError> {
        let name = unit_name(spec.scenario);
        let node = &self.nodes[self.choose(spec.scenario)];
        let manager = node.manager().await?;
        // A unit left from an earlier run (failed, or exited and kept) must go first.
        let _: Result<(), _> = manager.call("ResetFailedUnit", &(name.as_str(),)).await;
        let s = &self.settings;
        let bin = s.runner_bin.display().to_string();
        let mut argv = vec![bin.clone(), "--scenario".to_string(), spec.scenario.to_string()];
        if let Some(config) = &s.runner_config {
            argv.push("--config".into());
            argv.push(config.display().to_string());
        }
        let mut env: Vec<String> = s.runner_env.clone();
        env.extend(spec.job_env().into_iter().map(|(k, v)| format!("{k}={v}")));
        let sec = |n: u64| n * 1_000_000;
        let mut props: Vec<(&str, Value)> = vec![
            ("Description", Value::from(format!("vap runner for scenario {}", spec.scenario))),
            ("ExecStart", Value::from(vec![(bin, argv, false)])),
            ("Environment", Value::from(env)),
            ("Type", Value::from("notify")),
            ("NotifyAccess", Value::from("main")),
            ("WatchdogUSec", Value::from(sec(s.watchdog_sec))),
            ("Restart", Value::from("on-failure")),
            ("RestartUSec", Value::from(sec(s.restart_sec))),
            // The runner's permanent ends: configuration, camera unavailable, model.
            ("RestartPreventExitStatus", Value::from((vec![2i32, 3, 4], Vec::<i32>::new()))),
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
        if !s.user.is_empty() {
            props.push(("User", Value::from(s.user.clone())));
        }
        let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
        let _job: OwnedObjectPath = manager.call("StartTransientUnit", &(name.as_str(), "fail", props, aux)).await.map_err(|e| match e {
            zbus::Error::MethodError(ref n, ..) if n.as_str().ends_with("UnitExists") => node.unavailable(format!("{name} exists already")),
            e => node.broken(e),
        })?;
        Ok(WorkerInfo { scenario: spec.scenario, state: RunnerState::Starting, backend_ref: name, node: node.node(), restarts: 0, started_at: None })
    }

    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        let name = unit_name(scenario);
        for node in self.nodes_of(scenario) {
            let stopped: Result<OwnedObjectPath, _> = node.manager().await?.call("StopUnit", &(name.as_str(), "replace")).await;
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
            let _: Result<(), _> = node.manager().await?.call("ResetFailedUnit", &(unit_name(scenario).as_str(),)).await;
        }
        let mut p = self.placement.lock().unwrap();
        if let Some(i) = p.node_of.remove(&scenario) {
            p.load[i] = p.load[i].saturating_sub(1);
        }
        Ok(())
    }
}
