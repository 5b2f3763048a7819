//! Where runners run: one small interface, one implementation per placement system. Every
//! backend names a scenario's runner `vap-runner-<uuid>` so a restarted orchestrator finds and
//! adopts what already runs, and starting twice is a no-op.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::local::LocalBackend;
use super::reconcile::{Observed, RunnerState};

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

/// The name of a scenario's runner on every backend.
pub fn runner_name(scenario: Uuid) -> String {
    format!("vap-runner-{scenario}")
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
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
        }
    }

    /// Every vap runner the backend knows, alive or recently ended.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        match self {
            Backend::Local(b) => Ok(b.list()),
        }
    }

    /// Starts the scenario's runner; a no-op when it runs already.
    pub async fn start(&self, spec: &RunnerSpec) -> Result<WorkerInfo, BackendError> {
        match self {
            Backend::Local(b) => b.start(spec),
        }
    }

    /// Asks the runner to stop (SIGTERM: it flushes); returns at once.
    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => {
                b.stop(scenario);
                Ok(())
            }
        }
    }

    /// Drops what the backend keeps of an ended runner.
    pub async fn forget(&self, scenario: Uuid) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => {
                b.forget(scenario);
                Ok(())
            }
        }
    }
}
