//! `vap-orchestrator`: turns scenario events into running runners and keeps the two in
//! agreement.
//!
//! - **Leadership**: any number of orchestrators run; the one holding a PostgreSQL session
//!   advisory lock leads. The lock dies with its connection, so a killed leader is replaced
//!   within `leader_poll_ms`. Only the leader consumes events and places runners, which is
//!   what makes MAX_WORKERS cluster-wide.
//! - **Events are hints**: the leader consumes `init_scenario` and `shutdown_scenario`, storing
//!   its positions in the same transaction as the status changes they cause, and wakes the
//!   reconcile loop. PostgreSQL is the truth: the loop also runs every `reconcile_interval_ms`.
//! - **Reconcile**: what should run (scenarios) against what runs (the backend's list, by
//!   runner name), through [`reconcile::plan`]; see its cases.
//!
//! | module | role |
//! |---|---|
//! | [`reconcile`] | the pure decision: wanted + observed -> actions |
//! | [`backend`] | the placement interface and runner naming |
//! | [`local`] | runners as supervised local processes (the embedded default) |
//! | [`nomad`] | one Nomad service job per scenario, a typed HTTP API client |
//! | [`systemd`] | one transient unit per scenario over systemd's D-Bus API |

pub mod backend;
pub mod local;
pub mod nomad;
pub mod reconcile;
pub mod systemd;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{OrchestratorSettings, Settings};
use crate::db::{self, workers};
use crate::events::{EventKind, ScenarioEvent};
use crate::kafka::{KafkaError, KafkaLink};
use crate::metrics::Metrics;
use backend::{Backend, RunnerSpec, WorkerInfo};
use reconcile::{Action, Wanted};

/// The name its Kafka positions are stored under.
pub const CONSUMER: &str = "orchestrator";
/// Backend calls in flight at once when placing many runners.
const PLACEMENT_CONCURRENCY: usize = 16;
/// The advisory lock key of the leader ("vaporch" in ASCII).
const LEADER_LOCK: i64 = 0x0076_6170_6f72_6368;

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("orchestrator.backend = {0}: not available in this build yet (use local)")]
    BackendNotBuilt(String),
    #[error(transparent)]
    Nomad(#[from] nomad::NomadError),
    #[error("orchestrator metrics listener {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

pub struct Orchestrator {
    pool: Pool,
    kafka: Arc<KafkaLink>,
    backend: Arc<Backend>,
    settings: OrchestratorSettings,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

/// Runs until `shutdown`: standby until it holds the lead, then leads until it loses it.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), OrchestratorError> {
    crate::cli::migrate_on_start(&settings).await?;
    let pool = db::pool(&settings.database)?;
    drop(pool.get().await.map_err(db::DbError::from)?);
    let backend = match settings.orchestrator.backend.as_str() {
        "local" => Backend::Local(local::LocalBackend::new(settings.orchestrator.local.clone())),
        "nomad" => Backend::Nomad(nomad::NomadBackend::new(settings.orchestrator.nomad.clone())?),
        "systemd" => Backend::Systemd(systemd::SystemdBackend::new(settings.orchestrator.systemd.clone())),
        other => return Err(OrchestratorError::BackendNotBuilt(other.to_string())),
    };
    let metrics = Arc::new(Metrics::default());
    if !settings.orchestrator.metrics_listen.is_empty() {
        let addr = settings.orchestrator.metrics_listen.clone();
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|source| OrchestratorError::Bind { addr, source })?;
        tokio::spawn(crate::relay::serve_metrics(listener, Arc::clone(&metrics), shutdown.clone()));
    }
    let this = Arc::new(Orchestrator {
        pool,
        kafka: Arc::new(KafkaLink::new(settings.kafka.clone())),
        backend: Arc::new(backend),
        settings: settings.orchestrator.clone(),
        metrics,
        wake: Arc::new(Notify::new()),
    });
    if let Some(changes) = this.backend.changes() {
        let wake = Arc::clone(&this.wake);
        tokio::spawn(async move {
            loop {
                changes.notified().await;
                wake.notify_one();
            }
        });
    }
    crate::lifecycle::notify_ready();
    tracing::info!(
        backend = this.backend.kind(),
        max_workers = this.settings.max_workers,
        "orchestrator ready (standby)"
    );
    let poll = Duration::from_millis(this.settings.leader_poll_ms);
    let mut standby_watchdog = crate::lifecycle::Watchdog::from_env();
    while !shutdown.is_cancelled() {
        match db::dedicated_connection(&settings.database).await {
            Ok(lock) => match lock.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]).await {
                Ok(row) if row.get::<_, bool>(0) => {
                    tracing::info!("leading");
                    this.metrics.set("vap_orchestrator_leader", "1 while this orchestrator leads.", &[], 1.0);
                    Arc::clone(&this).lead(&lock, shutdown.clone()).await;
                    this.metrics.set("vap_orchestrator_leader", "1 while this orchestrator leads.", &[], 0.0);
                    if !shutdown.is_cancelled() {
                        tracing::warn!("lost the lead; standing by");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot try the leader lock"),
            },
            Err(e) => tracing::warn!(error = %e, "database unreachable; standing by"),
        }
        // A standby is healthy too: it keeps systemd's watchdog fed while it waits.
        let pause = tokio::time::sleep(poll);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = standby_watchdog.tick() => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    crate::lifecycle::notify_stopping();
    if this.settings.local.stop_runners_on_exit {
        let backend = Arc::clone(&this.backend);
        let _ = tokio::task::spawn_blocking(move || {
            if let Backend::Local(local) = &*backend {
                local.stop_all(Duration::from_secs(15));
            }
        })
        .await;
    }
    Ok(())
}

impl Orchestrator {
    /// Leads until `shutdown` or until the lock connection fails (then another may lead).
    async fn lead(self: Arc<Self>, lock: &tokio_postgres::Client, shutdown: CancellationToken) {
        let leading = shutdown.child_token();
        let consumers: Vec<_> = {
            let k = self.kafka.settings();
            [k.topic_init_scenario.clone(), k.topic_shutdown_scenario.clone()]
                .into_iter()
                .map(|topic| tokio::spawn(Arc::clone(&self).consume_topic(topic, leading.clone())))
                .collect()
        };
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.reconcile_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = crate::lifecycle::Watchdog::from_env();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = watchdog.tick() => continue,
                _ = shutdown.cancelled() => break,
            }
            // Act only while the lock's connection is alive: a leader cut off from the database
            // must stop placing before another takes over.
            if lock.simple_query("SELECT 1").await.is_err() {
                break;
            }
            let started = Instant::now();
            match self.reconcile().await {
                Ok(n) => {
                    self.metrics.observe(
                        "vap_orchestrator_reconcile_seconds",
                        "One reconcile round.",
                        &[],
                        started.elapsed(),
                    );
                    if n > 0 {
                        tracing::debug!(actions = n, "reconciled");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconcile failed; will retry"),
            }
        }
        leading.cancel();
        for c in consumers {
            let _ = c.await;
        }
    }

    /// One round: list, plan, act. Returns the number of actions taken.
    async fn reconcile(&self) -> Result<usize, ReconcileError> {
        let scenarios = workers::active_scenarios(&self.pool).await?;
        let listed = self.backend.list().await;
        for (node, up) in self.backend.nodes_answering() {
            self.metrics.set(
                "vap_orchestrator_node_up",
                "1 when the host answered the last list of runners.",
                &[("node", &node)],
                if up { 1.0 } else { 0.0 },
            );
        }
        let mut listed = listed?;
        let ids: Vec<_> = listed.iter().map(|w| w.scenario).collect();
        let ours = workers::existing(&self.pool, &ids).await?;
        listed.retain(|w| ours.contains(&w.scenario));
        let wanted: Vec<Wanted> = scenarios.iter().map(|s| Wanted { scenario: s.scenario, status: s.status }).collect();
        let observed: Vec<_> = listed.iter().map(WorkerInfo::observed).collect();
        let running = observed.iter().filter(|o| o.state.holds_slot()).count();
        self.metrics.set(
            "vap_orchestrator_runners",
            "Runners holding a slot, as the backend reports.",
            &[],
            running as f64,
        );
        let actions = reconcile::plan(&wanted, &observed, self.settings.max_workers);
        let waiting = actions.iter().filter(|a| matches!(a, Action::Wait(_))).count();
        self.metrics.set(
            "vap_orchestrator_waiting",
            "Scenarios waiting for a slot under MAX_WORKERS.",
            &[],
            waiting as f64,
        );
        let unreachable = actions.iter().filter(|a| matches!(a, Action::Unreachable { .. })).count();
        self.metrics.set(
            "vap_orchestrator_unreachable",
            "Scenarios whose runner's host does not answer.",
            &[],
            unreachable as f64,
        );
        let kind = self.backend.kind();
        let stored: HashMap<Uuid, &workers::ActiveScenario> = scenarios.iter().map(|s| (s.scenario, s)).collect();
        // Rounds repeat Wait and Unreachable: skip the write when the worker row says it already.
        let worker_shows =
            |id: &Uuid, status: &str| stored.get(id).and_then(|s| s.worker.as_ref()).is_some_and(|w| w.0 == status);
        let (starts, others): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(|a| matches!(a, Action::Start(_)));
        // Placements are independent: several at once (a backend call is a network round trip).
        let placed = futures::stream::iter(starts.into_iter().filter_map(|a| match a {
            Action::Start(id) => stored.get(&id).map(|s| RunnerSpec { scenario: s.scenario, camera_url: s.camera_url.clone(), epoch: s.created_at }),
            _ => None,
        }))
        .map(|spec| async move {
            match self.backend.start(&spec).await {
                Ok(info) => {
                    tracing::info!(scenario = %spec.scenario, backend = kind, reference = info.backend_ref, "runner placed");
                    self.metrics.inc("vap_orchestrator_placements_total", "Runners placed.", &[("backend", kind)], 1);
                    self.record(&info, true).await.map(|_| 1)
                }
                Err(e) => {
                    tracing::warn!(scenario = %spec.scenario, error = %e, "placement failed; will retry");
                    Ok(0)
                }
            }
        })
        .buffer_unordered(PLACEMENT_CONCURRENCY)
        .collect::<Vec<Result<usize, ReconcileError>>>()
        .await;
        let mut taken = 0;
        for p in placed {
            taken += p?;
        }
        for action in others {
            let result = match &action {
                Action::Start(_) => Ok(()),
                Action::Wait(id) if worker_shows(id, "waiting") => Ok(()),
                Action::Wait(id) => workers::record_waiting(&self.pool, *id, kind).await.map_err(Into::into),
                Action::Unreachable { scenario, .. } if worker_shows(scenario, "unreachable") => Ok(()),
                Action::Unreachable { scenario, node } => {
                    tracing::warn!(scenario = %scenario, node, "the runner's host does not answer; leaving it as it is");
                    workers::record_unreachable(&self.pool, *scenario, kind, node).await.map_err(Into::into)
                }
                Action::Running { scenario, starting } => {
                    let info = listed.iter().find(|w| w.scenario == *scenario);
                    match (info, stored.get(scenario)) {
                        // Most rounds change nothing: skip the write when the row already says it.
                        (Some(info), Some(s)) if !unchanged(s, info, *starting) => self.record(info, *starting).await,
                        _ => Ok(()),
                    }
                }
                Action::Stop(id) => {
                    tracing::info!(scenario = %id, "stopping runner");
                    self.backend.stop(*id).await?;
                    workers::record_stopping(&self.pool, *id, kind).await.map_err(Into::into)
                }
                Action::Finish(id) => {
                    self.backend.forget(*id).await?;
                    tracing::info!(scenario = %id, "scenario inactive");
                    workers::record_finished(&self.pool, *id, kind).await.map_err(Into::into)
                }
                Action::Fail { scenario, reason } => {
                    self.backend.forget(*scenario).await?;
                    tracing::warn!(scenario = %scenario, reason, "scenario failed");
                    let restarts =
                        listed.iter().find(|w| w.scenario == *scenario).map(|w| w.restarts as i32).unwrap_or(0);
                    workers::record_failed(&self.pool, *scenario, kind, reason, restarts).await.map_err(Into::into)
                }
                Action::Forget { scenario, error } => {
                    self.backend.forget(*scenario).await?;
                    workers::record_worker_ended(&self.pool, *scenario, kind, error.as_deref())
                        .await
                        .map_err(Into::into)
                }
            };
            if !matches!(action, Action::Running { .. } | Action::Wait(_) | Action::Unreachable { .. }) {
                taken += 1;
            }
            result?;
        }
        Ok(taken)
    }

    async fn record(&self, info: &WorkerInfo, starting: bool) -> Result<(), ReconcileError> {
        let status = if starting { "starting" } else { "running" };
        let w = workers::WorkerRecord {
            scenario: info.scenario,
            backend: self.backend.kind(),
            status,
            backend_ref: Some(&info.backend_ref).filter(|r| !r.is_empty()).map(|r| r.as_str()),
            node: info.node.as_deref(),
            restarts: info.restarts as i32,
            started_at: info.started_at,
            last_error: None,
        };
        workers::record_placed(&self.pool, &w).await?;
        Ok(())
    }

    /// Consumes one topic's partitions until `stop`, waking the reconcile loop per batch.
    async fn consume_topic(self: Arc<Self>, topic: String, stop: CancellationToken) {
        let Some(partitions) = self.kafka.wait_for_topic(&topic, &stop).await else { return };
        let tasks: Vec<_> = partitions
            .into_iter()
            .map(|p| tokio::spawn(Arc::clone(&self).consume_partition(topic.clone(), p, stop.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn consume_partition(self: Arc<Self>, topic: String, partition: i32, stop: CancellationToken) {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            if failures > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200u64 << failures.min(5))) => {}
                    _ = stop.cancelled() => return,
                }
            }
            let from = match db::results::position(&self.pool, CONSUMER, &topic, partition, 0).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, topic, partition, "cannot read orchestrator position");
                    failures += 1;
                    continue;
                }
            };
            let fetched = async {
                let client = self.kafka.get().await?.partition(&topic, partition).await?;
                client.fetch_records(from, 1..1_000_000, 500).await.map_err(KafkaError::from)
            };
            let (mut records, _) = tokio::select! {
                r = fetched => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition, "event fetch failed");
                        failures += 1;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            failures = 0;
            records.retain(|r| r.offset >= from);
            let Some(last) = records.iter().map(|r| r.offset).max() else { continue };
            let (mut started, mut stopping) = (Vec::new(), Vec::new());
            for r in &records {
                match r.record.value.as_deref().map(serde_json::from_slice::<ScenarioEvent>) {
                    Some(Ok(e)) if e.event_type == EventKind::InitScenario => started.push(e.scenario_uuid),
                    Some(Ok(e)) => stopping.push(e.scenario_uuid),
                    _ => {
                        self.metrics.inc(
                            "vap_orchestrator_rejected_events_total",
                            "Event records that are not scenario events.",
                            &[],
                            1,
                        );
                        tracing::warn!(topic, partition, offset = r.offset, "not a scenario event; skipped");
                    }
                }
            }
            match workers::apply_events(&self.pool, CONSUMER, &topic, partition, from, last + 1, &started, &stopping)
                .await
            {
                Ok(_) => {
                    self.metrics.inc(
                        "vap_orchestrator_events_total",
                        "Scenario events consumed.",
                        &[],
                        records.len() as u64,
                    );
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic, partition, "applying events failed; will re-read");
                    failures += 1;
                }
            }
        }
    }
}

/// Whether the stored scenario and worker row already say what the backend reports.
fn unchanged(stored: &workers::ActiveScenario, info: &WorkerInfo, starting: bool) -> bool {
    let status = if starting { "starting" } else { "running" };
    stored.status != crate::db::scenarios::ScenarioStatus::InitStartup
        && stored.worker.as_ref().is_some_and(|(s, reference, restarts)| {
            s == status && reference.as_deref() == Some(info.backend_ref.as_str()) && *restarts == info.restarts as i32
        })
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
}
