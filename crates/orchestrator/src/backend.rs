//! What every backend shares: its errors, what it reports of a runner, and the runner's name.
//! Every backend names a scenario's runner `vap-runner-<uuid>` so a restarted orchestrator
//! finds and adopts what already runs, and starting twice is a no-op. A leaf: the backends
//! import it, it imports none of them.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use vap_core::signing::PlacementEpoch;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend}: {message}")]
    Unavailable { backend: &'static str, message: String },
    #[error("{backend}: rejected: {message}")]
    Rejected { backend: &'static str, message: String },
}

/// What the backend reports for one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerState {
    /// Placed, not yet running (pending allocation, unit activating, process just spawned).
    Starting,
    Running,
    /// Being stopped: still holds its slot.
    Stopping,
    /// Exited and will not be restarted by the backend; `code` 0 is a finished source.
    Exited {
        code: i32,
    },
    /// The backend gave up on it (restart limit, watchdog, placement failure).
    Failed {
        reason: String,
    },
    /// On a host that does not answer now, not yet long enough to count as down: left alone,
    /// its slot kept (a short silence is not worth moving a camera for).
    Unreachable {
        node: String,
    },
    /// On a host that is down (a Nomad client lost): placed again elsewhere, in a new
    /// placement that fences this one.
    Lost {
        node: String,
    },
}

impl RunnerState {
    /// Whether the runner holds one of the MAX_WORKERS slots.
    pub fn holds_slot(&self) -> bool {
        matches!(
            self,
            RunnerState::Starting | RunnerState::Running | RunnerState::Stopping | RunnerState::Unreachable { .. }
        )
        // Not `Lost`: its replacement takes the slot.
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub scenario: Uuid,
    pub state: RunnerState,
    /// Which placement it is; `None`: the backend cannot tell (Nomad keeps only the job's
    /// current one; a unit from before epochs), taken as the current one.
    pub placement: Option<PlacementEpoch>,
    pub node: Option<String>,
}

/// Whether a host runs runners, as failure detection sees it (systemd nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHealth {
    /// Answers, and takes new runners.
    Up,
    /// Has not answered lately, not yet for `host_down_after_secs`: its runners are left alone.
    Silent,
    /// Did not answer for `host_down_after_secs` (or answers again, not yet for
    /// `host_up_after_secs`): its runners are placed elsewhere, nothing new goes there.
    Down,
}

/// One host as failure detection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub name: String,
    pub health: HostHealth,
    /// When it last answered (`None`: not since this orchestrator started).
    pub last_answer: Option<DateTime<Utc>>,
}

/// What every runner's name starts with, on every backend.
pub const RUNNER_PREFIX: &str = "vap-runner-";

/// How long the inbox has to store a finished source's end before the orchestrator ends the
/// scenario itself (or, for a runner whose exit it could not see, starts it again).
pub const FINISH_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// Which placement it is, when the backend can tell.
    pub placement: Option<PlacementEpoch>,
}

impl WorkerInfo {
    pub fn observed(&self) -> Observed {
        Observed {
            scenario: self.scenario,
            state: self.state.clone(),
            placement: self.placement,
            node: self.node.clone(),
        }
    }
}

/// The job the backends' golden files are made from.
#[cfg(test)]
pub(crate) fn example_job() -> vap_core::job::RunnerJob {
    vap_core::job::RunnerJob {
        scenario: Uuid::parse_str("6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10").unwrap(),
        camera_url: vap_core::camera_url::CameraUrl::trusted("rtsp://user:pass@camera-7.local/stream".into()),
        epoch: "2026-11-24T10:00:00Z".parse().unwrap(),
        options: vap_core::options::ScenarioOptions {
            // User text with Nomad's interpolation syntax: the job must carry it as text.
            name: Some("lobby ${NOMAD_TOKEN}".into()),
            model: Some("yolov3_tiny_coco_416".into()),
            fps: Some(2.0),
            ..Default::default()
        },
        options_revision: 3,
        placement: vap_core::signing::PlacementEpoch(2),
        moved: None,
        results_key: vap_core::signing::ResultsKey::new(vec![0x5a; 32]),
        kafka_password: Some(vap_core::config::Secret::new("broker-login-secret")),
    }
}
