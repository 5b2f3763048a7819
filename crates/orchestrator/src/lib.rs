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
//! | [`backend`] | what the backends share: errors, runner states, runner naming (a leaf) |
//! | [`placement`] | the configured backend behind one interface |
//! | [`local`] | runners as supervised local processes (the embedded default) |
//! | [`nomad`] | one Nomad service job per scenario, a typed HTTP API client |
//! | [`systemd`] | one transient unit per scenario over systemd's D-Bus API |

#![deny(unsafe_code)]

pub mod backend;
pub mod local;
pub mod metrics;
pub mod nomad;
pub mod placement;
pub mod reconcile;
pub mod systemd;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use backend::{HostHealth, HostView, RunnerState, WorkerInfo, FINISH_GRACE};
use placement::Backend;
use reconcile::{Action, Wanted};
use rskafka::record::RecordAndOffset;
use vap_core::config::{OrchestratorSettings, SaslMechanism, Secret, Settings};
use vap_core::consumer::{FetchLimits, PositionedConsumer, RecordHandler, Share};
use vap_core::db;
use vap_core::db::positions::Advance;
use vap_core::db::workers::{self, WorkerStatus};
use vap_core::events::{EventKind, RunnerControl, ScenarioEvent, RECORD_VERSION};
use vap_core::job::RunnerJob;
use vap_core::kafka::KafkaLink;
use vap_core::metrics::Metrics;
use vap_core::signing::{PlacementEpoch, RecordSigner};
use vap_core::tasks::{OwnedTasks, TaskFailed};

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
    #[error(transparent)]
    Task(#[from] TaskFailed),
    #[error(transparent)]
    Nomad(#[from] nomad::NomadError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("orchestrator.systemd.runner_key_file: {0}")]
    RunnerKey(#[from] vap_core::sealed::SealError),
    #[error("orchestrator metrics listener {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// Whether the stored worker row of `id` already has `status` (rounds repeat Wait and
/// Unreachable; the row is written once).
fn worker_shows(stored: &HashMap<Uuid, &workers::ActiveScenario>, id: &Uuid, status: WorkerStatus) -> bool {
    stored.get(id).and_then(|s| s.worker.as_ref()).is_some_and(|w| w.status == Some(status))
}

/// How long the leader's lock connection may take to answer before leadership counts as lost.
const LEADER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Orchestrator {
    pool: Pool,
    kafka: Arc<KafkaLink>,
    backend: Arc<Backend>,
    settings: OrchestratorSettings,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// When each scenario's runner was first seen ended by itself (exit 0), for the grace.
    ended: std::sync::Mutex<HashMap<Uuid, Instant>>,
    /// The broker login's password, handed to runners with their secrets.
    kafka_password: Option<Secret>,
}

/// Runs until `shutdown`: standby until it holds the lead, then leads until it loses it.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), OrchestratorError> {
    vap_core::cli::migrate_on_start(&settings).await?;
    let pool = db::pool(&settings.database)?;
    drop(pool.get().await.map_err(db::DbError::from)?);
    let destinations = vap_core::destination::DestinationPolicy::from_settings(&settings.destinations)
        .map_err(|e| OrchestratorError::Config(e.to_string()))?;
    let backend = Backend::from_settings(&settings.orchestrator, &destinations)?;
    let metrics = Arc::new(Metrics::default());
    let mut tasks = OwnedTasks::new(&shutdown);
    if !settings.orchestrator.metrics_listen.is_empty() {
        let addr = settings.orchestrator.metrics_listen.clone();
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|source| OrchestratorError::Bind { addr, source })?;
        tasks.spawn(
            "metrics server",
            vap_core::metrics::serve(
                listener,
                Arc::clone(&metrics),
                Arc::new(vap_core::metrics::NoProbe),
                tasks.token(),
            ),
        );
    }
    let this = Arc::new(Orchestrator {
        pool,
        kafka: Arc::new(KafkaLink::new(settings.kafka.clone())),
        backend: Arc::new(backend),
        settings: settings.orchestrator.clone(),
        metrics,
        wake: Arc::new(Notify::new()),
        ended: std::sync::Mutex::new(HashMap::new()),
        kafka_password: match settings.kafka.sasl_mechanism {
            SaslMechanism::None => None,
            _ => Some(settings.kafka.sasl_password.clone()),
        },
    });
    if let Some(changes) = this.backend.changes() {
        let (wake, stop) = (Arc::clone(&this.wake), tasks.token());
        tasks.spawn("backend change forwarder", async move {
            while stop.run_until_cancelled(changes.notified()).await.is_some() {
                wake.notify_one();
            }
        });
    }
    vap_core::lifecycle::notify_ready();
    tracing::info!(
        backend = this.backend.kind(),
        max_workers = this.settings.max_workers,
        "orchestrator ready (standby)"
    );
    let outcome = this.stand_by_or_lead(&settings, tasks.token()).await;
    vap_core::lifecycle::notify_stopping();
    this.backend.on_exit(this.settings.local.stop_runners_on_exit).await;
    let tasks_outcome = tasks.shutdown().await;
    outcome?;
    Ok(tasks_outcome?)
}

impl Orchestrator {
    /// Standby until it holds the lead, then leads until it loses it; until `shutdown`.
    async fn stand_by_or_lead(
        self: &Arc<Self>,
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> Result<(), TaskFailed> {
        let poll = Duration::from_millis(self.settings.leader_poll_ms);
        let mut standby_watchdog = vap_core::lifecycle::Watchdog::from_env();
        while !shutdown.is_cancelled() {
            match db::dedicated_connection(&settings.database).await {
                Ok(lock) => match lock.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]).await {
                    Ok(row) if row.get::<_, bool>(0) => {
                        tracing::info!("leading");
                        self.metrics.set(&metrics::LEADER, &[], 1.0);
                        let led = Arc::clone(self).lead(&lock, shutdown.clone()).await;
                        self.metrics.set(&metrics::LEADER, &[], 0.0);
                        led?;
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
        Ok(())
    }

    /// Leads until `shutdown` or until the lock connection fails (then another may lead).
    async fn lead(
        self: Arc<Self>,
        lock: &tokio_postgres::Client,
        shutdown: CancellationToken,
    ) -> Result<(), TaskFailed> {
        self.backend.begin_leading();
        let mut consumers = OwnedTasks::new(&shutdown);
        let events = Arc::new(PositionedConsumer {
            name: CONSUMER,
            pool: self.pool.clone(),
            kafka: Arc::clone(&self.kafka),
            limits: FetchLimits { max_bytes: 1_000_000, max_wait_ms: 500, batch_max_records: usize::MAX },
            // Only the leader consumes, so it takes every partition.
            share: Share::All,
            progress: Arc::default(),
            handler: ApplyEvents {
                pool: self.pool.clone(),
                metrics: Arc::clone(&self.metrics),
                wake: Arc::clone(&self.wake),
            },
        });
        let k = self.kafka.settings();
        for topic in [k.topic_init_scenario.clone(), k.topic_shutdown_scenario.clone(), k.topic_update_scenario.clone()]
        {
            let (events, token) = (Arc::clone(&events), consumers.token());
            consumers.spawn_fallible("event consumer", async move { events.run(topic, token).await });
        }
        let stop = consumers.token();
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.reconcile_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watchdog = vap_core::lifecycle::Watchdog::from_env();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = watchdog.tick() => continue,
                _ = stop.cancelled() => break,
            }
            // Act only while the lock's connection is alive: a leader cut off from the database
            // must stop placing before another takes over.
            // A database that stops answering (not refusing) counts as lost too.
            match tokio::time::timeout(LEADER_CHECK_TIMEOUT, lock.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            // A round waits on hosts and the database; shutdown does not wait for it. Each
            // action is its own transaction, and a runner placed but not recorded is found by
            // the next leader's list.
            tokio::select! {
                _ = self.reconcile_round(&stop) => {}
                _ = stop.cancelled() => break,
            }
        }
        self.backend.release();
        consumers.shutdown().await
    }

    async fn reconcile_round(&self, stop: &CancellationToken) {
        let started = Instant::now();
        match self.reconcile(stop).await {
            Ok(n) => {
                self.metrics.observe(&metrics::RECONCILE_SECONDS, &[], started.elapsed());
                if n > 0 {
                    tracing::debug!(actions = n, "reconciled");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reconcile failed; will retry"),
        }
    }

    /// One round: list, plan, act. Returns the number of actions taken. A round ends early at
    /// `stop` (between actions, each its own transaction), so SIGTERM never waits on a long queue.
    async fn reconcile(&self, stop: &CancellationToken) -> Result<usize, ReconcileError> {
        let scenarios = workers::active_scenarios(&self.pool).await?;
        let stored: HashMap<Uuid, &workers::ActiveScenario> = scenarios.iter().map(|s| (s.scenario, s)).collect();
        let mut listed = self.list_ours().await?;
        self.give_the_inbox_time(&stored, &mut listed);
        let hosts = self.backend.hosts();
        let actions = self.plan(&scenarios, &listed, &hosts);
        let (starts, others): (Vec<Action>, Vec<Action>) =
            actions.into_iter().partition(|a| matches!(a, Action::Start { .. }));
        let starts = starts.into_iter().filter_map(|a| match a {
            Action::Start { scenario, moved_from } => {
                let failover = moved_from.map(|node| failover_from(&node, &hosts));
                stored.get(&scenario).map(|s| (*s, failover))
            }
            _ => None,
        });
        let mut taken = self.place(starts.collect(), stop).await;
        let (waits, others): (Vec<Action>, Vec<Action>) =
            others.into_iter().partition(|a| matches!(a, Action::Wait(_)));
        self.record_waiting(&waits, &stored, stop).await;
        for action in others {
            if stop.is_cancelled() {
                return Ok(taken);
            }
            // One action that fails (a host, a row) must not hold back every action after it.
            if let Err(e) = self.apply(&action, &stored, &listed).await {
                tracing::warn!(?action, error = %e, "action failed; will retry next round");
                self.metrics.inc(&metrics::ACTION_FAILURES, &[action.name()], 1);
                continue;
            }
            if !matches!(action, Action::Running { .. } | Action::Wait(_) | Action::Unreachable { .. }) {
                taken += 1;
            }
        }
        self.count_recoveries().await;
        // After the stops: a broker that is down delays only this, the next round retries.
        match self.tell_changed_options(&scenarios).await {
            Ok(told) => taken += told,
            Err(e) => tracing::warn!(error = %e, "cannot tell runners their new options yet"),
        }
        Ok(taken)
    }

    /// A runner whose source ended exits 0 after producing the end of its stream, which the
    /// inbox applies after the stream's last results. For `FINISH_GRACE` after such an exit the
    /// runner counts as stopping, so the scenario comes to rest through the inbox, with all its
    /// results stored; only an end that never arrives is finished by the orchestrator.
    fn give_the_inbox_time(&self, stored: &HashMap<Uuid, &workers::ActiveScenario>, listed: &mut [WorkerInfo]) {
        let now = Instant::now();
        let mut ended = vap_core::sys::lock(&self.ended);
        let mut seen = HashSet::new();
        for w in listed.iter_mut().filter(|w| w.state == RunnerState::Exited { code: 0 }) {
            let running = stored.get(&w.scenario).is_some_and(|s| !s.status.is_shutting_down());
            if running && now.duration_since(*ended.entry(w.scenario).or_insert(now)) < FINISH_GRACE {
                w.state = RunnerState::Stopping;
            }
            seen.insert(w.scenario);
        }
        ended.retain(|id, _| seen.contains(id));
    }

    /// The backend's runners that belong to this database's scenarios. A backend can report
    /// runners of another vap deployment sharing its hosts: those are not ours to stop.
    async fn list_ours(&self) -> Result<Vec<WorkerInfo>, ReconcileError> {
        let listed = self.backend.list().await;
        for (node, up) in self.backend.nodes_answering() {
            self.metrics.set(&metrics::NODE_UP, &[&node], if up { 1.0 } else { 0.0 });
        }
        for host in self.backend.hosts() {
            let down = if host.health == HostHealth::Down { 1.0 } else { 0.0 };
            self.metrics.set(&metrics::HOST_DOWN, &[&host.name], down);
        }
        let mut listed = listed?;
        let ids: Vec<_> = listed.iter().map(|w| w.scenario).collect();
        let ours = workers::existing(&self.pool, &ids).await?;
        listed.retain(|w| ours.contains(&w.scenario));
        Ok(listed)
    }

    fn plan(&self, scenarios: &[workers::ActiveScenario], listed: &[WorkerInfo], hosts: &[HostView]) -> Vec<Action> {
        let wanted: Vec<Wanted> = scenarios
            .iter()
            .map(|s| Wanted {
                scenario: s.scenario,
                status: s.status,
                placement: s.placement,
                last_node: s.worker.as_ref().and_then(|w| w.node.clone()),
            })
            .collect();
        let observed: Vec<_> = listed.iter().map(WorkerInfo::observed).collect();
        let running = reconcile::holding_slots(&wanted, &observed);
        let health = hosts.iter().map(|h| (h.name.clone(), h.health)).collect();
        let actions = reconcile::plan(&wanted, &observed, &health, self.settings.max_workers);
        let count = |f: fn(&Action) -> bool| actions.iter().filter(|a| f(a)).count() as f64;
        let m = &self.metrics;
        m.set(&metrics::RUNNERS, &[], running as f64);
        m.set(&metrics::WAITING, &[], count(|a| matches!(a, Action::Wait(_))));
        m.set(&metrics::UNREACHABLE, &[], count(|a| matches!(a, Action::Unreachable { .. })));
        actions
    }

    /// Places runners, several at once (each backend call is a network round trip), each in
    /// a new placement taken before it starts. Returns how many were placed; a failed placement
    /// is retried next round (in yet another placement: epochs may skip, never repeat).
    async fn place(
        &self,
        starts: Vec<(&workers::ActiveScenario, Option<workers::Failover>)>,
        stop: &CancellationToken,
    ) -> usize {
        let kind = self.backend.kind();
        let placed = futures::stream::iter(starts)
            .map(|(s, failover)| async move {
                if stop.is_cancelled() {
                    return 0;
                }
                let placement = match workers::begin_placement(&self.pool, s.scenario).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(scenario = %s.scenario, error = %e, "cannot take a placement; will retry");
                        return 0;
                    }
                };
                let job = RunnerJob {
                    scenario: s.scenario,
                    camera_url: s.camera_url.clone(),
                    epoch: s.created_at,
                    options: s.options.clone(),
                    options_revision: s.options_revision,
                    placement,
                    moved: failover.as_ref().map(|f| vap_core::job::Move {
                        at: chrono::Utc::now(),
                        why: format!("moved from {}: {}", f.from_node, f.reason),
                    }),
                    results_key: s.results_key.for_placement(placement),
                    kafka_password: self.kafka_password.clone(),
                };
                match self.backend.start(&job).await {
                    Ok(info) => {
                        tracing::info!(scenario = %job.scenario, backend = kind, reference = info.backend_ref, %placement, "runner placed");
                        self.metrics.inc(&metrics::PLACEMENTS, &[kind], 1);
                        if let Some(f) = &failover {
                            tracing::warn!(scenario = %s.scenario, from = f.from_node, %placement, reason = f.reason, "camera moved off a host that is down");
                            self.metrics.inc(&metrics::FAILOVERS, &[&f.from_node], 1);
                        }
                        // Placed but not recorded: the next round finds it listed and records it.
                        let recorded = async {
                            self.record(&info, true, Some(placement)).await?;
                            workers::record_spec(&self.pool, job.scenario, &job.options.digest()).await?;
                            if let Some(f) = &failover {
                                workers::record_failover(&self.pool, job.scenario, f).await?;
                            }
                            Ok::<_, ReconcileError>(())
                        };
                        if let Err(e) = recorded.await {
                            tracing::warn!(scenario = %job.scenario, error = %e, "recording a placement failed");
                        }
                        1
                    }
                    Err(e) => {
                        tracing::warn!(scenario = %job.scenario, error = %e, "placement failed; will retry");
                        0
                    }
                }
            })
            .buffer_unordered(PLACEMENT_CONCURRENCY)
            .collect::<Vec<usize>>()
            .await;
        placed.into_iter().sum()
    }

    /// Moved cameras whose first result after the move is stored: the time from their old
    /// host's last answer (or the move, when unknown) to that result.
    async fn count_recoveries(&self) {
        match workers::take_recovered(&self.pool).await {
            Ok(recovered) => {
                for r in recovered {
                    let from = r.host_last_answer_at.unwrap_or(r.moved_at);
                    let took = (r.first_result_at - from).to_std().unwrap_or_default();
                    tracing::info!(scenario = %r.scenario, seconds = took.as_secs_f64(), "moved camera stores results again");
                    self.metrics.observe(&metrics::FAILOVER_RECOVERY_SECONDS, &[], took);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for recovered cameras yet"),
        }
    }

    /// Records the scenarios newly over the cap as waiting, in chunks (a first round can find
    /// tens of thousands), stopping at `stop`.
    async fn record_waiting(
        &self,
        waits: &[Action],
        stored: &HashMap<Uuid, &workers::ActiveScenario>,
        stop: &CancellationToken,
    ) {
        const CHUNK: usize = 5_000;
        // Rounds repeat Wait: only rows that don't already say it are written.
        let new: Vec<Uuid> = waits
            .iter()
            .filter_map(|a| match a {
                Action::Wait(id) => Some(*id),
                _ => None,
            })
            .filter(|id| !worker_shows(stored, id, WorkerStatus::Waiting))
            .collect();
        for chunk in new.chunks(CHUNK) {
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = workers::record_waiting(&self.pool, chunk, self.backend.kind()).await {
                tracing::warn!(error = %e, scenarios = chunk.len(), "recording waiting scenarios failed; will retry");
                return;
            }
        }
    }

    /// Carries out one action other than a start or a wait.
    async fn apply(
        &self,
        action: &Action,
        stored: &HashMap<Uuid, &workers::ActiveScenario>,
        listed: &[WorkerInfo],
    ) -> Result<(), ReconcileError> {
        let kind = self.backend.kind();
        match action {
            Action::Start { .. } => {}
            Action::Wait(_) => {}
            // Rounds repeat it: skip the write when the worker row says it already.
            Action::Unreachable { scenario, .. } if worker_shows(stored, scenario, WorkerStatus::Unreachable) => {}
            Action::Unreachable { scenario, node } => {
                tracing::warn!(scenario = %scenario, node, "the runner's host does not answer; leaving it as it is");
                workers::record_unreachable(&self.pool, *scenario, kind, node).await?;
            }
            Action::Running { scenario, starting } => {
                let info = listed.iter().find(|w| w.scenario == *scenario);
                // Most rounds change nothing: skip the write when the row already says it.
                if let (Some(info), Some(s)) = (info, stored.get(scenario)) {
                    let before = s.worker.as_ref().map_or(0, |w| w.restarts);
                    let restarted = i64::from(info.restarts as i32) - i64::from(before);
                    if restarted > 0 {
                        self.metrics.inc(&metrics::RUNNER_RESTARTS, &[kind], restarted as u64);
                    }
                    if !unchanged(s, info, *starting) {
                        self.record(info, *starting, None).await?;
                    }
                }
            }
            Action::Retire { scenario, node } => {
                tracing::info!(scenario = %scenario, node, "stopping a superseded placement's runner");
                self.backend.retire(*scenario, node.as_deref()).await?;
                self.metrics.inc(&metrics::RETIRED, &[], 1);
            }
            Action::Stop(id) => {
                tracing::info!(scenario = %id, "stopping runner");
                self.backend.stop(*id).await?;
                workers::record_stopping(&self.pool, *id, kind).await?;
            }
            Action::Finish(id) => {
                self.backend.forget(*id).await?;
                tracing::info!(scenario = %id, "scenario inactive");
                workers::record_finished(&self.pool, *id, kind).await?;
            }
            Action::Abandon(id) => {
                tracing::warn!(scenario = %id, "scenario inactive while its runner's host is down; that runner is fenced");
                workers::fence(&self.pool, *id).await?;
                workers::record_finished(&self.pool, *id, kind).await?;
            }
            Action::Fail { scenario, reason } => {
                self.backend.forget(*scenario).await?;
                tracing::warn!(scenario = %scenario, reason, "scenario failed");
                self.metrics.inc(&metrics::SCENARIOS_FAILED, &[kind], 1);
                let restarts = listed.iter().find(|w| w.scenario == *scenario).map_or(0, |w| w.restarts as i32);
                workers::record_failed(&self.pool, *scenario, kind, reason, restarts).await?;
            }
            Action::Forget { scenario, error } => {
                self.backend.forget(*scenario).await?;
                workers::record_worker_ended(&self.pool, *scenario, kind, error.as_deref()).await?;
            }
        }
        Ok(())
    }

    /// A running runner whose scenario's options changed since it was given them gets a
    /// control record, signed; its worker row then holds the new digest. Sending one twice is
    /// harmless: a runner applies only a newer revision.
    async fn tell_changed_options(&self, scenarios: &[workers::ActiveScenario]) -> Result<usize, ReconcileError> {
        let topic = &self.kafka.settings().topic_runner_control;
        let mut told = 0;
        for s in scenarios {
            let Some(w) = &s.worker else { continue };
            if !matches!(w.status, Some(WorkerStatus::Running | WorkerStatus::Starting)) {
                continue;
            }
            let digest = s.options.digest();
            if w.spec_digest.as_deref() == Some(digest.as_str()) {
                continue;
            }
            let control = RunnerControl {
                version: RECORD_VERSION,
                scenario_uuid: s.scenario,
                revision: s.options_revision,
                options: s.options.clone(),
            };
            let value = serde_json::to_vec(&control).unwrap_or_default();
            // Signed with the current placement's key, which only its runner holds besides us:
            // a record anyone else with the broker's login writes is refused, and so is this
            // by a superseded runner.
            let signer = RecordSigner { key: s.results_key.for_placement(s.placement), placement: s.placement };
            let mut headers = std::collections::BTreeMap::new();
            signer.sign(&mut headers, &value);
            let offset = self.kafka.produce_keyed(topic, s.scenario.to_string().as_bytes(), value, headers).await?;
            workers::record_spec(&self.pool, s.scenario, &digest).await?;
            tracing::info!(scenario = %s.scenario, revision = s.options_revision, offset, "runner told its new options");
            self.metrics.inc(&metrics::OPTION_CHANGES, &[], 1);
            told += 1;
        }
        Ok(told)
    }

    async fn record(
        &self,
        info: &WorkerInfo,
        starting: bool,
        placement: Option<PlacementEpoch>,
    ) -> Result<(), ReconcileError> {
        let status = if starting { WorkerStatus::Starting } else { WorkerStatus::Running };
        let w = workers::WorkerRecord {
            scenario: info.scenario,
            backend: self.backend.kind(),
            status,
            backend_ref: Some(&info.backend_ref).filter(|r| !r.is_empty()).map(|r| r.as_str()),
            node: info.node.as_deref(),
            restarts: info.restarts as i32,
            started_at: info.started_at,
            last_error: None,
            epoch: placement,
        };
        workers::record_placed(&self.pool, &w).await?;
        Ok(())
    }
}

/// Scenario events -> scenario statuses, with the consumer's positions, waking reconcile.
struct ApplyEvents {
    pool: Pool,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl RecordHandler for ApplyEvents {
    async fn apply(&self, advance: Advance<'_>, records: &[RecordAndOffset]) -> Result<bool, db::DbError> {
        let (mut started, mut stopping) = (Vec::new(), Vec::new());
        for r in records {
            match r.record.value.as_deref().map(ScenarioEvent::parse) {
                Some(Ok(e)) => match e.event_type {
                    EventKind::InitScenario => started.push(e.scenario_uuid),
                    EventKind::ShutdownScenario => stopping.push(e.scenario_uuid),
                    // The options are in the database: reconcile compares them with the runner's.
                    EventKind::UpdateScenario => {}
                },
                refused => {
                    self.metrics.inc(&metrics::REJECTED_EVENTS, &[], 1);
                    let (topic, partition) = (advance.at.topic, advance.at.partition);
                    let reason = match refused {
                        Some(Err(e)) => e.to_string(),
                        _ => "no value".to_string(),
                    };
                    tracing::warn!(topic, partition, offset = r.offset, reason, "not a scenario event; skipped");
                }
            }
        }
        if !workers::apply_events(&self.pool, &advance, &started, &stopping).await? {
            return Ok(false);
        }
        if !records.is_empty() {
            self.metrics.inc(&metrics::EVENTS, &[], records.len() as u64);
            self.wake.notify_one();
        }
        Ok(true)
    }
}

/// Why a camera leaves `node`: how long the host has not answered (systemd), or that its
/// backend lost it (a Nomad client).
fn failover_from(node: &str, hosts: &[HostView]) -> workers::Failover {
    let host = hosts.iter().find(|h| h.name == node);
    let last_answer = host.and_then(|h| h.last_answer);
    let reason = match (host, last_answer) {
        (Some(_), Some(at)) => {
            format!("{node} did not answer for {} s", (chrono::Utc::now() - at).num_seconds().max(0))
        }
        (Some(_), None) => format!("{node} has not answered since the orchestrator started"),
        (None, _) => format!("{node} was lost by its scheduler"),
    };
    workers::Failover { from_node: node.to_string(), reason, host_last_answer_at: last_answer }
}

/// Whether the stored scenario and worker row already say what the backend reports.
fn unchanged(stored: &workers::ActiveScenario, info: &WorkerInfo, starting: bool) -> bool {
    let status = if starting { WorkerStatus::Starting } else { WorkerStatus::Running };
    stored.status != vap_core::db::scenarios::ScenarioStatus::InitStartup
        && stored.worker.as_ref().is_some_and(|w| {
            w.status == Some(status)
                && w.backend_ref.as_deref() == Some(info.backend_ref.as_str())
                && w.restarts == info.restarts as i32
                // Where it runs decides what a silent host holds: it must be the stored one.
                && (info.node.is_none() || w.node == info.node)
        })
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Kafka(#[from] vap_core::kafka::KafkaError),
}
