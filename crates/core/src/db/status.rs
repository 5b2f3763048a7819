//! The statuses stored for scenarios and their workers (both CHECK-constrained in
//! `migrations/`). A leaf: the query modules import it.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioStatus {
    InitStartup,
    InStartupProcessing,
    Active,
    InitShutdown,
    InShutdownProcessing,
    Inactive,
    Failed,
}

impl ScenarioStatus {
    pub const ALL: [ScenarioStatus; 7] = [
        Self::InitStartup,
        Self::InStartupProcessing,
        Self::Active,
        Self::InitShutdown,
        Self::InShutdownProcessing,
        Self::Inactive,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InitStartup => "init_startup",
            Self::InStartupProcessing => "in_startup_processing",
            Self::Active => "active",
            Self::InitShutdown => "init_shutdown",
            Self::InShutdownProcessing => "in_shutdown_processing",
            Self::Inactive => "inactive",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Inactive | Self::Failed)
    }

    pub fn is_shutting_down(self) -> bool {
        matches!(self, Self::InitShutdown | Self::InShutdownProcessing)
    }
}

/// Where a scenario's runner stands, as its worker row (and the API) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Over MAX_WORKERS: waiting for a slot.
    Waiting,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Its host does not answer.
    Unreachable,
}

impl WorkerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Waiting => "waiting",
            WorkerStatus::Starting => "starting",
            WorkerStatus::Running => "running",
            WorkerStatus::Stopping => "stopping",
            WorkerStatus::Stopped => "stopped",
            WorkerStatus::Failed => "failed",
            WorkerStatus::Unreachable => "unreachable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            WorkerStatus::Waiting,
            WorkerStatus::Starting,
            WorkerStatus::Running,
            WorkerStatus::Stopping,
            WorkerStatus::Stopped,
            WorkerStatus::Failed,
            WorkerStatus::Unreachable,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
    }
}
