//! The reconcile decision: what should run (PostgreSQL) against what runs (the backend), turned
//! into actions. Pure, so every case is a unit test; the orchestrator applies the actions.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::backend::{HostHealth, Observed, RunnerState};
use vap_core::db::scenarios::ScenarioStatus;
use vap_core::job::exit;
use vap_core::signing::PlacementEpoch;

/// A scenario that is not at rest, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub scenario: Uuid,
    pub status: ScenarioStatus,
    /// Its current placement: runners of any other are superseded.
    pub placement: PlacementEpoch,
    /// The host its worker was last recorded on.
    pub last_node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Place a runner for the scenario, in a new placement; `moved_from`: the host it leaves,
    /// which is down.
    Start { scenario: Uuid, moved_from: Option<String> },
    /// The scenario should run but the cap is reached: it waits its turn.
    Wait(Uuid),
    /// Record that the backend runs it (worker row, `in_startup_processing`).
    Running { scenario: Uuid, starting: bool },
    /// Its runner's host does not answer, not yet for long: show it, leave the runner and
    /// its slot alone.
    Unreachable { scenario: Uuid, node: String },
    /// Stop the scenario's runner (shutdown requested, or it should not run at all).
    Stop(Uuid),
    /// Stop and remove a runner of a superseded placement (on `node`), whose records are
    /// refused already: its host came back, or its start raced a newer one.
    Retire { scenario: Uuid, node: Option<String> },
    /// The scenario is done: its source ended, or its shutdown completed. `inactive`; the
    /// backend's leftovers (a dead job, a failed unit) are cleaned up.
    Finish(Uuid),
    /// A shutdown while the runner is on a host that is down: `inactive` in a new placement, so
    /// nothing that runner still sends is stored; it is stopped if its host comes back.
    Abandon(Uuid),
    /// The runner failed for good: the scenario becomes `failed` with the reason.
    Fail { scenario: Uuid, reason: String },
    /// A dead runner of a scenario already at rest (the inbox ended it): record how the worker
    /// ended (`error` None: stopped) and remove what the backend keeps of it.
    Forget { scenario: Uuid, error: Option<String> },
}

impl Action {
    /// A label for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Start { .. } => "start",
            Action::Wait(_) => "wait",
            Action::Running { .. } => "running",
            Action::Unreachable { .. } => "unreachable",
            Action::Stop(_) => "stop",
            Action::Retire { .. } => "retire",
            Action::Finish(_) => "finish",
            Action::Abandon(_) => "abandon",
            Action::Fail { .. } => "fail",
            Action::Forget { .. } => "forget",
        }
    }
}

/// Decides the actions for one round. `wanted` is in creation order, so scenarios over the cap
/// start in the order they were created as slots free. `hosts` says which hosts are down or
/// silent (systemd nodes); a host not named there is up.
pub fn plan(
    wanted: &[Wanted],
    observed: &[Observed],
    hosts: &HashMap<String, HostHealth>,
    max_workers: usize,
) -> Vec<Action> {
    let health = |node: &str| hosts.get(node).copied().unwrap_or(HostHealth::Up);
    // A move fences the runner it replaces: only worth it where the new one can go.
    let placeable = hosts.is_empty() || hosts.values().any(|h| *h == HostHealth::Up);
    let current = current_placement(wanted);
    let mut actions = Vec::new();
    for o in observed.iter().filter(|o| !current(o)) {
        // One being stopped is left to finish; one on a host that does not answer, to it.
        if !matches!(o.state, RunnerState::Stopping | RunnerState::Unreachable { .. } | RunnerState::Lost { .. }) {
            actions.push(Action::Retire { scenario: o.scenario, node: o.node.clone() });
        }
    }
    let observed: Vec<&Observed> = observed.iter().filter(|o| current(o)).collect();
    let by_scenario: HashMap<Uuid, &RunnerState> = observed.iter().map(|o| (o.scenario, &o.state)).collect();
    let mut slots_used = observed.iter().filter(|o| o.state.holds_slot()).count();
    let mut known = HashSet::with_capacity(wanted.len());
    for w in wanted {
        known.insert(w.scenario);
        let shutting_down = matches!(w.status, ScenarioStatus::InitShutdown | ScenarioStatus::InShutdownProcessing);
        // Not seen: it may still run on its last host, if that host is only silent.
        let state = match by_scenario.get(&w.scenario).copied() {
            Some(state) => Some(state.clone()),
            None => match w.last_node.as_deref().map(|n| (n, health(n))) {
                Some((node, HostHealth::Silent)) => {
                    slots_used += 1;
                    Some(RunnerState::Unreachable { node: node.to_string() })
                }
                Some((node, HostHealth::Down)) => Some(RunnerState::Lost { node: node.to_string() }),
                _ => None,
            },
        };
        match (shutting_down, state) {
            (false, Some(RunnerState::Starting)) => {
                actions.push(Action::Running { scenario: w.scenario, starting: true })
            }
            (false, Some(RunnerState::Running)) => {
                actions.push(Action::Running { scenario: w.scenario, starting: false })
            }
            (_, Some(RunnerState::Stopping)) => {}
            (_, Some(RunnerState::Unreachable { node })) => {
                actions.push(Action::Unreachable { scenario: w.scenario, node })
            }
            (false, Some(RunnerState::Exited { code: 0 })) => actions.push(Action::Finish(w.scenario)),
            (false, Some(RunnerState::Exited { code })) => {
                actions.push(Action::Fail { scenario: w.scenario, reason: exit_reason(code) })
            }
            (false, Some(RunnerState::Failed { reason })) => {
                actions.push(Action::Fail { scenario: w.scenario, reason })
            }
            (false, lost @ (None | Some(RunnerState::Lost { .. }))) => {
                if placeable && slots_used < max_workers {
                    slots_used += 1;
                    let moved_from = match lost {
                        Some(RunnerState::Lost { node }) => Some(node),
                        _ => None,
                    };
                    actions.push(Action::Start { scenario: w.scenario, moved_from });
                } else {
                    actions.push(Action::Wait(w.scenario));
                }
            }
            (true, Some(RunnerState::Starting | RunnerState::Running)) => actions.push(Action::Stop(w.scenario)),
            (true, Some(RunnerState::Lost { .. })) => actions.push(Action::Abandon(w.scenario)),
            (true, Some(RunnerState::Exited { .. } | RunnerState::Failed { .. }) | None) => {
                actions.push(Action::Finish(w.scenario))
            }
        }
    }
    // Runners of scenarios at rest, or unknown: nothing should run for them.
    for o in observed.iter().filter(|o| !known.contains(&o.scenario)) {
        match o.state {
            RunnerState::Starting | RunnerState::Running => actions.push(Action::Stop(o.scenario)),
            RunnerState::Exited { code: 0 } => actions.push(Action::Forget { scenario: o.scenario, error: None }),
            RunnerState::Exited { code } => {
                actions.push(Action::Forget { scenario: o.scenario, error: Some(exit_reason(code)) })
            }
            RunnerState::Failed { ref reason } => {
                actions.push(Action::Forget { scenario: o.scenario, error: Some(reason.clone()) })
            }
            RunnerState::Stopping | RunnerState::Unreachable { .. } | RunnerState::Lost { .. } => {}
        }
    }
    actions
}

/// Whether a runner is of its scenario's current placement. One that is not is superseded:
/// retired where its host answers, never counted against the cap.
fn current_placement(wanted: &[Wanted]) -> impl Fn(&Observed) -> bool {
    let placements: HashMap<Uuid, PlacementEpoch> = wanted.iter().map(|w| (w.scenario, w.placement)).collect();
    move |o: &Observed| match (o.placement, placements.get(&o.scenario)) {
        (Some(p), Some(&now)) => p == now,
        _ => true,
    }
}

/// The runners that hold a slot under the cap, as [`plan`] counts them.
pub fn holding_slots(wanted: &[Wanted], observed: &[Observed]) -> usize {
    let current = current_placement(wanted);
    observed.iter().filter(|o| current(o) && o.state.holds_slot()).count()
}

/// Why a runner's exit code ends its scenario (the codes: `job::exit`).
pub fn exit_reason(code: i32) -> String {
    match u8::try_from(code) {
        Ok(exit::SOURCE_UNAVAILABLE) => "camera unavailable: the source never opened".into(),
        Ok(exit::MODEL) => "model could not be loaded".into(),
        Ok(exit::USAGE) => "runner configuration rejected".into(),
        _ => format!("runner exited with code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScenarioStatus::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|i| Uuid::from_u128(i as u128 + 1)).collect()
    }

    fn wanted(ids: &[Uuid], status: ScenarioStatus) -> Vec<Wanted> {
        ids.iter().map(|&scenario| Wanted { scenario, status, placement: PlacementEpoch(1), last_node: None }).collect()
    }

    fn seen(scenario: Uuid, state: RunnerState) -> Observed {
        Observed { scenario, state, placement: None, node: None }
    }

    fn start(scenario: Uuid) -> Action {
        Action::Start { scenario, moved_from: None }
    }

    fn up() -> HashMap<String, HostHealth> {
        HashMap::new()
    }

    #[test]
    fn places_up_to_the_cap_in_creation_order_and_the_rest_wait() {
        let s = ids(5);
        let actions = plan(&wanted(&s, InitStartup), &[], &up(), 3);
        assert_eq!(actions, vec![start(s[0]), start(s[1]), start(s[2]), Action::Wait(s[3]), Action::Wait(s[4])]);
    }

    #[test]
    fn a_stopping_runner_still_holds_its_slot() {
        let s = ids(3);
        let mut w = wanted(&s[1..], InitStartup);
        w.insert(
            0,
            Wanted { scenario: s[0], status: InShutdownProcessing, placement: PlacementEpoch(1), last_node: None },
        );
        let observed = vec![seen(s[0], RunnerState::Stopping)];
        assert_eq!(plan(&w, &observed, &up(), 2), vec![start(s[1]), Action::Wait(s[2])]);
    }

    /// Scenarios last placed on `node`.
    fn on(mut w: Vec<Wanted>, node: &str) -> Vec<Wanted> {
        for w in &mut w {
            w.last_node = Some(node.into());
        }
        w
    }

    #[test]
    fn a_runner_on_a_host_that_is_only_silent_is_left_alone_and_keeps_its_slot() {
        let s = ids(4);
        let hosts =
            HashMap::from([("worker-1".to_string(), HostHealth::Up), ("worker-2".to_string(), HostHealth::Silent)]);
        let mut w = on(wanted(&s[..1], Active), "worker-2");
        w.extend(on(wanted(&s[1..2], InitShutdown), "worker-2"));
        w.extend(wanted(&s[2..], InitStartup));
        // Neither started elsewhere, nor stopped, nor finished; the cap counts both.
        let unreachable = |i: usize| Action::Unreachable { scenario: s[i], node: "worker-2".into() };
        assert_eq!(plan(&w, &[], &hosts, 3), vec![unreachable(0), unreachable(1), start(s[2]), Action::Wait(s[3])]);
        // The backend may say so itself (a Nomad client disconnected): the same.
        let observed = vec![seen(s[0], RunnerState::Unreachable { node: "worker-2".into() })];
        assert_eq!(plan(&w[..1], &observed, &up(), 3), vec![unreachable(0)]);
    }

    #[test]
    fn a_host_that_is_down_has_its_cameras_placed_again_elsewhere_within_the_cap() {
        let s = ids(4);
        let hosts =
            HashMap::from([("worker-1".to_string(), HostHealth::Up), ("worker-2".to_string(), HostHealth::Down)]);
        let mut w = on(wanted(&s[..2], Active), "worker-2");
        w.push(on(wanted(&s[2..3], InShutdownProcessing), "worker-2").remove(0));
        w.extend(on(wanted(&s[3..], Active), "worker-1"));
        let observed = vec![seen(s[3], RunnerState::Running)];
        let moved = |i: usize| Action::Start { scenario: s[i], moved_from: Some("worker-2".into()) };
        assert_eq!(
            plan(&w, &observed, &hosts, 2),
            vec![
                moved(0),
                Action::Wait(s[1]),
                Action::Abandon(s[2]),
                Action::Running { scenario: s[3], starting: false }
            ],
            "one slot is free: one moves, one waits; a shutdown completes without the host, fenced"
        );
        // No host up to move to: nothing moves (a move would fence the old runner for nothing).
        let all_down =
            HashMap::from([("worker-1".to_string(), HostHealth::Down), ("worker-2".to_string(), HostHealth::Down)]);
        assert_eq!(plan(&w[..1], &[], &all_down, 2), vec![Action::Wait(s[0])]);
        // A Nomad allocation lost with its client: the same move.
        let observed = vec![seen(s[0], RunnerState::Lost { node: "worker-2".into() })];
        assert_eq!(plan(&wanted(&s[..1], Active), &observed, &up(), 2), vec![moved(0)]);
    }

    #[test]
    fn superseded_runners_are_retired_and_do_not_count() {
        let s = ids(2);
        let w = wanted(&s, Active);
        let stale = |i: usize, node: &str| Observed {
            scenario: s[i],
            state: RunnerState::Running,
            placement: Some(PlacementEpoch(0)),
            node: Some(node.into()),
        };
        let current = Observed { placement: Some(PlacementEpoch(1)), node: Some("worker-1".into()), ..stale(0, "") };
        let observed = vec![stale(0, "worker-2"), current, stale(1, "worker-2")];
        assert_eq!(
            plan(&w, &observed, &up(), 2),
            vec![
                Action::Retire { scenario: s[0], node: Some("worker-2".into()) },
                Action::Retire { scenario: s[1], node: Some("worker-2".into()) },
                Action::Running { scenario: s[0], starting: false },
                start(s[1]),
            ]
        );
    }

    #[test]
    fn adopts_what_runs_and_never_starts_twice() {
        let s = ids(2);
        let observed = vec![seen(s[0], RunnerState::Running), seen(s[1], RunnerState::Starting)];
        assert_eq!(
            plan(&wanted(&s, Active), &observed, &up(), 2),
            vec![
                Action::Running { scenario: s[0], starting: false },
                Action::Running { scenario: s[1], starting: true }
            ]
        );
    }

    #[test]
    fn shutdown_stops_then_finishes() {
        let s = ids(2);
        let w = wanted(&s, InShutdownProcessing);
        let observed = vec![seen(s[0], RunnerState::Running)];
        assert_eq!(plan(&w, &observed, &up(), 5), vec![Action::Stop(s[0]), Action::Finish(s[1])]);
    }

    #[test]
    fn exits_and_failures_end_the_scenario_without_a_restart() {
        let s = ids(3);
        let observed = vec![
            seen(s[0], RunnerState::Exited { code: 0 }),
            seen(s[1], RunnerState::Exited { code: 3 }),
            seen(s[2], RunnerState::Failed { reason: "watchdog".into() }),
        ];
        let actions = plan(&wanted(&s, Active), &observed, &up(), 5);
        assert_eq!(actions[0], Action::Finish(s[0]));
        assert!(matches!(&actions[1], Action::Fail { reason, .. } if reason.contains("camera unavailable")));
        assert_eq!(actions[2], Action::Fail { scenario: s[2], reason: "watchdog".into() });
    }

    #[test]
    fn runners_of_scenarios_at_rest_are_stopped() {
        let s = ids(2);
        let observed = vec![seen(s[0], RunnerState::Running), seen(s[1], RunnerState::Exited { code: 0 })];
        assert_eq!(
            plan(&[], &observed, &up(), 5),
            vec![Action::Stop(s[0]), Action::Forget { scenario: s[1], error: None }]
        );
        // Exited runners don't count against the cap.
        let fresh = ids(4)[2..].to_vec();
        assert_eq!(
            plan(&wanted(&fresh, InitStartup), &observed[1..], &up(), 2),
            vec![start(fresh[0]), start(fresh[1]), Action::Forget { scenario: s[1], error: None }]
        );
    }
}
