//! Where runners run: one small interface, one implementation per placement system. Every
//! backend names a scenario's runner `vap-runner-<uuid>` so a restarted orchestrator finds and
//! adopts what already runs, and starting twice is a no-op.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::local::LocalBackend;
use super::nomad::NomadBackend;
use super::reconcile::{Observed, RunnerState};
use super::systemd::SystemdBackend;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend}: {message}")]
    Unavailable { backend: &'static str, message: String },
    #[error("{backend}: rejected: {message}")]
    Rejected { backend: &'static str, message: String },
}

/// What a runner needs to be started.
#[derive(Debug, Clone)]
pub struct RunnerSpec {
    pub scenario: Uuid,
    /// Passed in the environment only (it may hold credentials).
    pub camera_url: String,
    /// The scenario's creation time: the runner's frame numbers count from it.
    pub epoch: DateTime<Utc>,
}

impl RunnerSpec {
    /// The environment a runner gets on any backend (see `runner::cli`).
    pub fn job_env(&self) -> Vec<(String, String)> {
        vec![
            ("VAP_SCENARIO_UUID".into(), self.scenario.to_string()),
            ("VAP_SCENARIO_EPOCH".into(), self.epoch.to_rfc3339()),
            ("VAP_CAMERA_URL".into(), self.camera_url.clone()),
        ]
    }
}

/// What every runner's name starts with, on every backend.
pub const RUNNER_PREFIX: &str = "vap-runner-";

/// The name of a scenario's runner on every backend.
pub fn runner_name(scenario: Uuid) -> String {
    format!("{RUNNER_PREFIX}{scenario}")
}

/// The scenario a runner's name belongs to (`runner_name`'s inverse).
pub fn runner_scenario(name: &str) -> Option<Uuid> {
    name.strip_prefix(RUNNER_PREFIX).and_then(|s| Uuid::parse_str(s).ok())
}

/// A runner as the backend reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub scenario: Uuid,
    pub state: RunnerState,
    /// Job id, unit name or process id.
    pub backend_ref: String,
    pub node: Option<String>,
    pub restarts: u32,
    pub started_at: Option<DateTime<Utc>>,
}

impl WorkerInfo {
    pub fn observed(&self) -> Observed {
        Observed { scenario: self.scenario, state: self.state.clone() }
    }
}

/// The backends vap can place runners on, chosen in configuration.
pub enum Backend {
    Local(LocalBackend),
    Nomad(NomadBackend),
    Systemd(SystemdBackend),
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Nomad(_) => "nomad",
            Backend::Systemd(_) => "systemd",
        }
    }

    /// Woken when the backend sees a runner change by itself (blocking queries), so the
    /// orchestrator reconciles at once instead of at its next tick.
    pub fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        match self {
            Backend::Local(_) | Backend::Systemd(_) => None,
            Backend::Nomad(b) => Some(std::sync::Arc::clone(&b.changed)),
        }
    }

    /// Each host the backend places on itself, and whether it answered the last list (systemd
    /// nodes; Nomad keeps its own clients' health).
    pub fn nodes_answering(&self) -> Vec<(String, bool)> {
        match self {
            Backend::Local(_) | Backend::Nomad(_) => Vec::new(),
            Backend::Systemd(b) => b.nodes_answering(),
        }
    }

    /// Every vap runner the backend knows, alive or recently ended.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        match self {
            Backend::Local(b) => Ok(b.list()),
            Backend::Nomad(b) => b.list().await,
            Backend::Systemd(b) => b.list().await,
        }
    }

    /// Starts the scenario's runner; a no-op when it runs already.
    pub async fn start(&self, spec: &RunnerSpec) -> Result<WorkerInfo, BackendError> {
        match self {
            Backend::Local(b) => b.start(spec),
            Backend::Nomad(b) => b.start(spec).await,
            Backend::Systemd(b) => b.start(spec).await,
        }
    }

    /// Asks the runner to stop (SIGTERM: it flushes); returns at once.
    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => {
                b.stop(scenario);
                Ok(())
            }
            Backend::Nomad(b) => b.stop(scenario).await,
            Backend::Systemd(b) => b.stop(scenario).await,
        }
    }

    /// Drops what the backend keeps of an ended runner.
    pub async fn forget(&self, scenario: Uuid) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => {
                b.forget(scenario);
                Ok(())
            }
            Backend::Nomad(b) => b.forget(scenario).await,
            Backend::Systemd(b) => b.forget(scenario).await,
        }
    }
}
