//! The backend chosen in configuration, behind one interface: where runners run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

use super::backend::{BackendError, HostView, WorkerInfo};
use super::local::LocalBackend;
use super::nomad::NomadBackend;
use super::systemd::{Detection, SystemdBackend};
use vap_core::config::OrchestratorSettings;
use vap_core::job::RunnerJob;

/// The backends vap can place runners on, chosen in configuration.
pub enum Backend {
    /// In an `Arc`: its calls read /proc and wait on processes, so they run off the runtime.
    Local(Arc<LocalBackend>),
    Nomad(NomadBackend),
    Systemd(SystemdBackend),
}

impl Backend {
    pub fn from_settings(
        settings: &OrchestratorSettings,
        destinations: &vap_core::destination::DestinationPolicy,
    ) -> Result<Self, super::OrchestratorError> {
        Ok(match settings.backend.as_str() {
            "nomad" => Backend::Nomad(NomadBackend::new(
                settings.nomad.clone(),
                Duration::from_secs(settings.host_down_after_secs),
            )?),
            "systemd" => {
                let detection = Detection {
                    down_after: Duration::from_secs(settings.host_down_after_secs),
                    up_after: Duration::from_secs(settings.host_up_after_secs),
                };
                Backend::Systemd(SystemdBackend::new(settings.systemd.clone(), detection, destinations)?)
            }
            // Config validation admits only the three names.
            _ => Backend::Local(Arc::new(LocalBackend::new(settings.local.clone()))),
        })
    }

    /// Leadership begins: what the backend judged while standing by starts afresh.
    pub fn begin_leading(&self) {
        if let Backend::Systemd(b) = self {
            b.begin_leading();
        }
    }

    /// Leadership lost: drops what watches runners on the leader's behalf.
    pub fn release(&self) {
        if let Backend::Nomad(b) = self {
            b.release();
        }
    }

    /// The orchestrator exits: local runners stop with it when configured so (the embedded
    /// default); runners elsewhere carry on and are adopted by the next leader.
    pub async fn on_exit(&self, stop_local_runners: bool) {
        if let (Backend::Local(b), true) = (self, stop_local_runners) {
            let b = Arc::clone(b);
            let _ = tokio::task::spawn_blocking(move || b.stop_all(Duration::from_secs(15))).await;
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::Nomad(_) => "nomad",
            Backend::Systemd(_) => "systemd",
        }
    }

    /// Woken when the backend sees a runner change by itself (blocking queries), so the
    /// orchestrator reconciles at once instead of at its next tick.
    pub fn changes(&self) -> Option<Arc<Notify>> {
        match self {
            Backend::Local(_) | Backend::Systemd(_) => None,
            Backend::Nomad(b) => Some(Arc::clone(&b.changed)),
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

    /// The hosts whose failure the orchestrator detects itself (systemd nodes; Nomad detects
    /// its clients' and reports their allocations lost).
    pub fn hosts(&self) -> Vec<HostView> {
        match self {
            Backend::Local(_) | Backend::Nomad(_) => Vec::new(),
            Backend::Systemd(b) => b.hosts(),
        }
    }

    /// Stops and removes a superseded placement's runner on `node`. Nomad stops the
    /// allocations of a job's earlier versions itself.
    pub async fn retire(&self, scenario: Uuid, node: Option<&str>) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => off_runtime(b, move |b| b.stop(scenario)).await,
            Backend::Nomad(_) => Ok(()),
            Backend::Systemd(b) => b.retire(scenario, node).await,
        }
    }

    /// Every vap runner the backend knows, alive or recently ended.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, BackendError> {
        match self {
            Backend::Local(b) => Ok(off_runtime(b, |b| b.list()).await?),
            Backend::Nomad(b) => b.list().await,
            Backend::Systemd(b) => b.list().await,
        }
    }

    /// Starts the scenario's runner; a no-op when it runs already.
    pub async fn start(&self, spec: &RunnerJob) -> Result<WorkerInfo, BackendError> {
        match self {
            Backend::Local(b) => {
                let spec = spec.clone();
                off_runtime(b, move |b| b.start(&spec)).await?
            }
            Backend::Nomad(b) => b.start(spec).await,
            Backend::Systemd(b) => b.start(spec).await,
        }
    }

    /// Asks the runner to stop (SIGTERM: it flushes); returns at once.
    pub async fn stop(&self, scenario: Uuid) -> Result<(), BackendError> {
        match self {
            Backend::Local(b) => off_runtime(b, move |b| b.stop(scenario)).await,
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

/// Runs a local backend call on the blocking pool (it scans /proc, spawns and signals).
async fn off_runtime<T: Send + 'static>(
    b: &Arc<LocalBackend>,
    call: impl FnOnce(&LocalBackend) -> T + Send + 'static,
) -> Result<T, BackendError> {
    let b = Arc::clone(b);
    tokio::task::spawn_blocking(move || call(&b))
        .await
        .map_err(|e| BackendError::Unavailable { backend: "local", message: e.to_string() })
}
