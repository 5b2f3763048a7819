//! The reconcile decision: what should run (PostgreSQL) against what runs (the backend), turned
//! into actions. Pure, so every case is a unit test; the orchestrator applies the actions.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::backend::{Observed, RunnerState};
use vap_core::db::scenarios::ScenarioStatus;
use vap_core::job::exit;

/// A scenario that is not at rest, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub scenario: Uuid,
    pub status: ScenarioStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Place a runner for the scenario.
    Start(Uuid),
    /// The scenario should run but the cap is reached: it waits its turn.
    Wait(Uuid),
    /// Record that the backend runs it (worker row, `in_startup_processing`).
    Running { scenario: Uuid, starting: bool },
    /// Its runner's host does not answer: show it, and leave the runner and its slot alone.
    Unreachable { scenario: Uuid, node: String },
    /// Stop the scenario's runner (shutdown requested, or it should not run at all).
    Stop(Uuid),
    /// The scenario is done: its source ended, or its shutdown completed. `inactive`; the
    /// backend's leftovers (a dead job, a failed unit) are cleaned up.
    Finish(Uuid),
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
            Action::Start(_) => "start",
            Action::Wait(_) => "wait",
            Action::Running { .. } => "running",
            Action::Unreachable { .. } => "unreachable",
            Action::Stop(_) => "stop",
            Action::Finish(_) => "finish",
            Action::Fail { .. } => "fail",
            Action::Forget { .. } => "forget",
        }
    }
}

/// Decides the actions for one round. `wanted` is in creation order, so scenarios over the cap
/// start in the order they were created as slots free.
pub fn plan(wanted: &[Wanted], observed: &[Observed], max_workers: usize) -> Vec<Action> {
    let by_scenario: HashMap<Uuid, &RunnerState> = observed.iter().map(|o| (o.scenario, &o.state)).collect();
    let mut slots_used = observed.iter().filter(|o| o.state.holds_slot()).count();
    let mut actions = Vec::new();
    let mut known = HashSet::with_capacity(wanted.len());
    for w in wanted {
        known.insert(w.scenario);
        let state = by_scenario.get(&w.scenario).copied();
        let shutting_down = matches!(w.status, ScenarioStatus::InitShutdown | ScenarioStatus::InShutdownProcessing);
        match (shutting_down, state) {
            (false, Some(RunnerState::Starting)) => {
                actions.push(Action::Running { scenario: w.scenario, starting: true })
            }
            (false, Some(RunnerState::Running)) => {
                actions.push(Action::Running { scenario: w.scenario, starting: false })
            }
            (_, Some(RunnerState::Stopping)) => {}
            (_, Some(RunnerState::Unreachable { node })) => {
                actions.push(Action::Unreachable { scenario: w.scenario, node: node.clone() })
            }
            (false, Some(RunnerState::Exited { code: 0 })) => actions.push(Action::Finish(w.scenario)),
            (false, Some(RunnerState::Exited { code })) => {
                actions.push(Action::Fail { scenario: w.scenario, reason: exit_reason(*code) })
            }
            (false, Some(RunnerState::Failed { reason })) => {
                actions.push(Action::Fail { scenario: w.scenario, reason: reason.clone() })
            }
            (false, None) => {
                if slots_used < max_workers {
                    slots_used += 1;
                    actions.push(Action::Start(w.scenario));
                } else {
                    actions.push(Action::Wait(w.scenario));
                }
            }
            (true, Some(RunnerState::Starting | RunnerState::Running)) => actions.push(Action::Stop(w.scenario)),
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
            RunnerState::Stopping | RunnerState::Unreachable { .. } => {}
        }
    }
    actions
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
        ids.iter().map(|&scenario| Wanted { scenario, status }).collect()
    }

    #[test]
    fn places_up_to_the_cap_in_creation_order_and_the_rest_wait() {
        let s = ids(5);
        let actions = plan(&wanted(&s, InitStartup), &[], 3);
        assert_eq!(
            actions,
            vec![Action::Start(s[0]), Action::Start(s[1]), Action::Start(s[2]), Action::Wait(s[3]), Action::Wait(s[4])]
        );
    }

    #[test]
    fn a_stopping_runner_still_holds_its_slot() {
        let s = ids(3);
        let mut w = wanted(&s[1..], InitStartup);
        w.insert(0, Wanted { scenario: s[0], status: InShutdownProcessing });
        let observed = vec![Observed { scenario: s[0], state: RunnerState::Stopping }];
        assert_eq!(plan(&w, &observed, 2), vec![Action::Start(s[1]), Action::Wait(s[2])]);
    }

    #[test]
    fn a_runner_on_a_host_that_does_not_answer_is_left_alone_and_keeps_its_slot() {
        let s = ids(4);
        let gone = || RunnerState::Unreachable { node: "worker-2".into() };
        let mut w = wanted(&s[..1], Active);
        w.push(Wanted { scenario: s[1], status: InitShutdown });
        w.extend(wanted(&s[2..], InitStartup));
        let observed = vec![Observed { scenario: s[0], state: gone() }, Observed { scenario: s[1], state: gone() }];
        // Neither started elsewhere, nor stopped, nor finished; the cap counts both.
        let unreachable = |i: usize| Action::Unreachable { scenario: s[i], node: "worker-2".into() };
        assert_eq!(
            plan(&w, &observed, 3),
            vec![unreachable(0), unreachable(1), Action::Start(s[2]), Action::Wait(s[3])]
        );
        // One of a scenario at rest: nothing either, until the host answers.
        assert_eq!(plan(&[], &observed, 3), vec![]);
    }

    #[test]
    fn adopts_what_runs_and_never_starts_twice() {
        let s = ids(2);
        let observed = vec![
            Observed { scenario: s[0], state: RunnerState::Running },
            Observed { scenario: s[1], state: RunnerState::Starting },
        ];
        assert_eq!(
            plan(&wanted(&s, Active), &observed, 2),
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
        let observed = vec![Observed { scenario: s[0], state: RunnerState::Running }];
        assert_eq!(plan(&w, &observed, 5), vec![Action::Stop(s[0]), Action::Finish(s[1])]);
    }

    #[test]
    fn exits_and_failures_end_the_scenario_without_a_restart() {
        let s = ids(3);
        let observed = vec![
            Observed { scenario: s[0], state: RunnerState::Exited { code: 0 } },
            Observed { scenario: s[1], state: RunnerState::Exited { code: 3 } },
            Observed { scenario: s[2], state: RunnerState::Failed { reason: "watchdog".into() } },
        ];
        let actions = plan(&wanted(&s, Active), &observed, 5);
        assert_eq!(actions[0], Action::Finish(s[0]));
        assert!(matches!(&actions[1], Action::Fail { reason, .. } if reason.contains("camera unavailable")));
        assert_eq!(actions[2], Action::Fail { scenario: s[2], reason: "watchdog".into() });
    }

    #[test]
    fn runners_of_scenarios_at_rest_are_stopped() {
        let s = ids(2);
        let observed = vec![
            Observed { scenario: s[0], state: RunnerState::Running },
            Observed { scenario: s[1], state: RunnerState::Exited { code: 0 } },
        ];
        assert_eq!(plan(&[], &observed, 5), vec![Action::Stop(s[0]), Action::Forget { scenario: s[1], error: None }]);
        // Exited runners don't count against the cap.
        let fresh = ids(4)[2..].to_vec();
        assert_eq!(
            plan(&wanted(&fresh, InitStartup), &observed[1..], 2),
            vec![Action::Start(fresh[0]), Action::Start(fresh[1]), Action::Forget { scenario: s[1], error: None }]
        );
    }
}
