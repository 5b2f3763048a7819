//! vap-orchestrator's metrics, each declared once.

use vap_core::metrics::{Counter, Family, Gauge, Histogram};

pub const LEADER: Gauge = Gauge::new("vap_orchestrator_leader", "1 while this orchestrator leads.", &[]);
pub const RECONCILE_SECONDS: Histogram =
    Histogram::new("vap_orchestrator_reconcile_seconds", "One reconcile round.", &[]);
pub const ACTION_FAILURES: Counter = Counter::new(
    "vap_orchestrator_action_failures_total",
    "Reconcile actions that failed (retried the next round).",
    &["action"],
);
pub const NODE_UP: Gauge =
    Gauge::new("vap_orchestrator_node_up", "1 when the host answered the last list of runners.", &["node"]);
pub const RUNNERS: Gauge =
    Gauge::new("vap_orchestrator_runners", "Runners holding a slot, as the backend reports.", &[]);
pub const WAITING: Gauge =
    Gauge::new("vap_orchestrator_waiting", "Scenarios waiting for a slot under MAX_WORKERS.", &[]);
pub const UNREACHABLE: Gauge =
    Gauge::new("vap_orchestrator_unreachable", "Scenarios whose runner's host does not answer.", &[]);
pub const PLACEMENTS: Counter = Counter::new("vap_orchestrator_placements_total", "Runners placed.", &["backend"]);
pub const OPTION_CHANGES: Counter =
    Counter::new("vap_orchestrator_option_changes_total", "Control records sent to runners.", &[]);
pub const REJECTED_EVENTS: Counter =
    Counter::new("vap_orchestrator_rejected_events_total", "Event records that are not scenario events.", &[]);
pub const EVENTS: Counter = Counter::new("vap_orchestrator_events_total", "Scenario events consumed.", &[]);
pub const RUNNER_RESTARTS: Counter = Counter::new(
    "vap_orchestrator_runner_restarts_total",
    "Restarts of runners by their backend (Nomad, systemd), as seen in reconcile rounds.",
    &["backend"],
);
pub const SCENARIOS_FAILED: Counter =
    Counter::new("vap_orchestrator_scenarios_failed_total", "Scenarios whose runner was given up on.", &["backend"]);

pub const HOST_DOWN: Gauge = Gauge::new(
    "vap_orchestrator_host_down",
    "1 while a host counts as down (silent for orchestrator.host_down_after_secs): its cameras are placed elsewhere.",
    &["node"],
);
pub const FAILOVERS: Counter = Counter::new(
    "vap_orchestrator_failovers_total",
    "Cameras placed again elsewhere because their host was down, by the host they left.",
    &["from_node"],
);
pub const FAILOVER_RECOVERY_SECONDS: Histogram = Histogram::slow(
    "vap_orchestrator_failover_recovery_seconds",
    "From a moved camera's old host's last answer to the capture time of its first result stored after the move.",
    &[],
);
pub const RETIRED: Counter = Counter::new(
    "vap_orchestrator_superseded_runners_stopped_total",
    "Stop-and-remove calls for runners of a superseded placement (their host came back), repeated until they are gone.",
    &[],
);

/// Every metric of vap-orchestrator.
pub const FAMILIES: [Family; 17] = [
    LEADER.0,
    RECONCILE_SECONDS.0,
    ACTION_FAILURES.0,
    NODE_UP.0,
    RUNNERS.0,
    WAITING.0,
    UNREACHABLE.0,
    PLACEMENTS.0,
    OPTION_CHANGES.0,
    REJECTED_EVENTS.0,
    EVENTS.0,
    RUNNER_RESTARTS.0,
    SCENARIOS_FAILED.0,
    HOST_DOWN.0,
    FAILOVERS.0,
    FAILOVER_RECOVERY_SECONDS.0,
    RETIRED.0,
];
