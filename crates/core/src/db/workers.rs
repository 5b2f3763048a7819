//! What the orchestrator reads and writes: scenarios that should run or stop, and one worker
//! row per scenario saying where its runner is. Writes happen only on change, so a reconcile
//! round over many steady scenarios costs one read.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use uuid::Uuid;

use super::positions::{self, Advance};
use super::DbError;
use crate::camera_url::CameraUrl;
use crate::signing::PlacementEpoch;

pub use super::status::{ScenarioStatus, WorkerStatus};

/// The worker row as the orchestrator compares it with what a backend reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorker {
    pub status: Option<WorkerStatus>,
    pub backend_ref: Option<String>,
    pub restarts: i32,
    /// The digest of the options its runner was last given.
    pub spec_digest: Option<String>,
    /// The host it was last placed on or seen on.
    pub node: Option<String>,
}

/// A scenario not at rest, with what starting its runner needs.
#[derive(Debug, Clone)]
pub struct ActiveScenario {
    pub scenario: Uuid,
    pub status: ScenarioStatus,
    pub camera_url: CameraUrl,
    pub options: crate::options::ScenarioOptions,
    pub options_revision: i64,
    pub created_at: DateTime<Utc>,
    pub results_key: crate::signing::ResultsKey,
    /// The current placement (0: never placed with an epoch).
    pub placement: PlacementEpoch,
    pub worker: Option<StoredWorker>,
}

/// Scenarios that are not `inactive` or `failed`, oldest first.
pub async fn active_scenarios(pool: &Pool) -> Result<Vec<ActiveScenario>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT s.scenario_uuid, s.status, s.camera_url, s.created_at, w.status, w.backend_ref, w.restarts, s.options, s.options_revision, w.spec_digest,
                    s.results_key, s.placement_epoch, w.node
               FROM scenarios s LEFT JOIN workers w USING (scenario_uuid)
              WHERE s.status NOT IN ('inactive', 'failed') ORDER BY s.seq",
        )
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(ActiveScenario {
                scenario: r.get(0),
                status: ScenarioStatus::parse(r.get(1))?,
                camera_url: CameraUrl::trusted(r.get(2)),
                options: super::scenarios::options_from(r.get(7)),
                options_revision: r.get(8),
                created_at: r.get(3),
                results_key: crate::signing::ResultsKey::new(r.get(10)),
                placement: PlacementEpoch(r.get(11)),
                worker: r.get::<_, Option<&str>>(4).map(|status| StoredWorker {
                    status: WorkerStatus::parse(status),
                    backend_ref: r.get(5),
                    restarts: r.get::<_, Option<i32>>(6).unwrap_or(0),
                    spec_digest: r.get(9),
                    node: r.get(12),
                }),
            })
        })
        .collect())
}

/// Which of `ids` are scenarios of this database. A backend can report runners of another vap
/// deployment sharing its hosts: those are not ours to stop.
pub async fn existing(pool: &Pool, ids: &[Uuid]) -> Result<std::collections::HashSet<Uuid>, DbError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let client = pool.get().await?;
    let rows = client.query("SELECT scenario_uuid FROM scenarios WHERE scenario_uuid = ANY($1)", &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How a worker row should read after a reconcile action.
#[derive(Debug, Clone)]
pub struct WorkerRecord<'a> {
    pub scenario: Uuid,
    pub backend: &'a str,
    pub status: WorkerStatus,
    pub backend_ref: Option<&'a str>,
    pub node: Option<&'a str>,
    pub restarts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub last_error: Option<&'a str>,
    /// Set when placed; `None` keeps what the row has.
    pub epoch: Option<PlacementEpoch>,
}

impl<'a> WorkerRecord<'a> {
    /// A change of status only: the other columns keep what the row has.
    pub fn status(scenario: Uuid, backend: &'a str, status: WorkerStatus) -> Self {
        Self {
            scenario,
            backend,
            status,
            backend_ref: None,
            node: None,
            restarts: 0,
            started_at: None,
            last_error: None,
            epoch: None,
        }
    }
}

async fn upsert_worker(client: &impl GenericClient, w: &WorkerRecord<'_>) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "INSERT INTO workers AS w (scenario_uuid, backend, status, backend_ref, node, restarts, started_at, last_error, epoch)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (scenario_uuid) DO UPDATE
                SET backend = EXCLUDED.backend, status = EXCLUDED.status,
                    backend_ref = COALESCE(EXCLUDED.backend_ref, w.backend_ref),
                    node = COALESCE(EXCLUDED.node, w.node), restarts = GREATEST(EXCLUDED.restarts, w.restarts),
                    started_at = COALESCE(EXCLUDED.started_at, w.started_at),
                    last_error = COALESCE(EXCLUDED.last_error, w.last_error),
                    epoch = COALESCE(EXCLUDED.epoch, w.epoch), updated_at = now()
              WHERE (w.backend, w.status, w.backend_ref, w.node, w.restarts, w.started_at, w.last_error, w.epoch)
                    IS DISTINCT FROM
                    (EXCLUDED.backend, EXCLUDED.status, COALESCE(EXCLUDED.backend_ref, w.backend_ref),
                     COALESCE(EXCLUDED.node, w.node), GREATEST(EXCLUDED.restarts, w.restarts),
                     COALESCE(EXCLUDED.started_at, w.started_at), COALESCE(EXCLUDED.last_error, w.last_error),
                     COALESCE(EXCLUDED.epoch, w.epoch))",
            &[
                &w.scenario,
                &w.backend,
                &w.status.as_str(),
                &w.backend_ref,
                &w.node,
                &w.restarts,
                &w.started_at,
                &w.last_error,
                &w.epoch.map(|e| e.0),
            ],
        )
        .await?)
}

/// Moves the scenarios among `ids` whose status is one of `from` to `to` (the others stay).
async fn move_scenarios(
    client: &impl GenericClient,
    ids: &[Uuid],
    from: &[&str],
    to: &str,
    error: Option<&str>,
) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    Ok(client
        .execute(
            "UPDATE scenarios SET status = $3, error = COALESCE($4, error), updated_at = now()
              WHERE scenario_uuid = ANY($1) AND status = ANY($2)",
            &[&ids, &from, &to, &error],
        )
        .await?)
}

/// Scenario statuses a record moves from, to, and the error it sets.
type Move<'a> = (&'a [&'a str], &'a str, Option<&'a str>);

/// One transaction: the worker row, then the scenario's status moves in order.
async fn record(pool: &Pool, w: &WorkerRecord<'_>, moves: &[Move<'_>]) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    upsert_worker(&tx, w).await?;
    for (from, to, error) in moves {
        move_scenarios(&tx, &[w.scenario], from, to, *error).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The runner is placed (starting or running): the scenario is being processed.
pub async fn record_placed(pool: &Pool, w: &WorkerRecord<'_>) -> Result<(), DbError> {
    record(pool, w, &[(&["init_startup"], "in_startup_processing", None)]).await
}

/// Why a scenario's runner is placed again elsewhere: the host it was on stopped answering.
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    pub from_node: String,
    pub reason: String,
    /// When the host last answered (`None`: not since this orchestrator started).
    pub host_last_answer_at: Option<DateTime<Utc>>,
}

/// Takes the scenario's next placement epoch, before its runner starts: from this commit on,
/// records of every earlier placement are refused.
pub async fn begin_placement(pool: &Pool, scenario: Uuid) -> Result<PlacementEpoch, DbError> {
    let client = pool.get().await?;
    let epoch: i64 = client
        .query_one(
            "UPDATE scenarios SET placement_epoch = placement_epoch + 1 WHERE scenario_uuid = $1 RETURNING placement_epoch",
            &[&scenario],
        )
        .await?
        .get(0);
    Ok(PlacementEpoch(epoch))
}

/// A placement that moved the camera off a host that is down has started: the worker says from
/// where, when and why, and waits for its first result.
pub async fn record_failover(pool: &Pool, scenario: Uuid, f: &Failover) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE workers SET previous_node = $2, moved_at = now(), moved_reason = $3, host_last_answer_at = $4,
                    recovered_at = NULL, updated_at = now()
              WHERE scenario_uuid = $1",
            &[&scenario, &f.from_node, &f.reason, &f.host_last_answer_at],
        )
        .await?;
    Ok(())
}

/// A scenario whose runner is on a host that is down comes to rest: a new epoch, so nothing
/// that runner still sends is stored (its scenario's rest alone would let through frames it
/// captured before then).
pub async fn fence(pool: &Pool, scenario: Uuid) -> Result<(), DbError> {
    begin_placement(pool, scenario).await.map(drop)
}

/// A moved scenario whose first result after the move is stored: when its old host last
/// answered, when it moved, and that result's capture time.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    pub scenario: Uuid,
    pub host_last_answer_at: Option<DateTime<Utc>>,
    pub moved_at: DateTime<Utc>,
    pub first_result_at: DateTime<Utc>,
}

/// Moved workers whose first new result has come since the last call, marked recovered.
pub async fn take_recovered(pool: &Pool) -> Result<Vec<Recovered>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "WITH awaited AS (
                 SELECT w.scenario_uuid, w.host_last_answer_at, w.moved_at,
                        (SELECT min(r.frame_time) FROM scenario_results r
                          WHERE r.scenario_uuid = w.scenario_uuid AND r.frame_time >= w.moved_at) AS first_result_at
                   FROM workers w
                  -- A scenario stopped before its first result never recovers: an hour bounds the wait.
                  WHERE w.moved_at IS NOT NULL AND w.recovered_at IS NULL AND w.moved_at > now() - interval '1 hour'),
             marked AS (
                 UPDATE workers w SET recovered_at = a.first_result_at
                   FROM awaited a
                  WHERE w.scenario_uuid = a.scenario_uuid AND w.moved_at = a.moved_at AND a.first_result_at IS NOT NULL
                 RETURNING w.scenario_uuid)
             SELECT a.scenario_uuid, a.host_last_answer_at, a.moved_at, a.first_result_at
               FROM awaited a JOIN marked m USING (scenario_uuid)",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Recovered {
            scenario: r.get(0),
            host_last_answer_at: r.get(1),
            moved_at: r.get(2),
            first_result_at: r.get(3),
        })
        .collect())
}

/// The options its runner was given (at placement, or by a control record).
pub async fn record_spec(pool: &Pool, scenario: Uuid, digest: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.execute("UPDATE workers SET spec_digest = $2 WHERE scenario_uuid = $1", &[&scenario, &digest]).await?;
    Ok(())
}

/// Over the cap: these scenarios wait for a slot (the API shows their workers as `waiting`).
/// One statement for all: a queue can hold tens of thousands.
pub async fn record_waiting(pool: &Pool, scenarios: &[Uuid], backend: &str) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO workers AS w (scenario_uuid, backend, status)
         SELECT unnest($1::uuid[]), $2, 'waiting'
         ON CONFLICT (scenario_uuid) DO UPDATE SET backend = EXCLUDED.backend, status = 'waiting', updated_at = now()
          WHERE (w.backend, w.status) IS DISTINCT FROM (EXCLUDED.backend, 'waiting')",
        &[&scenarios, &backend],
    )
    .await?;
    move_scenarios(&tx, scenarios, &["init_startup"], "in_startup_processing", None).await?;
    tx.commit().await?;
    Ok(())
}

/// The runner's host does not answer: the worker shows it, and the scenario stays as it is.
pub async fn record_unreachable(pool: &Pool, scenario: Uuid, backend: &str, node: &str) -> Result<(), DbError> {
    let error = format!("{node} does not answer");
    let w = WorkerRecord {
        node: Some(node),
        last_error: Some(&error),
        ..WorkerRecord::status(scenario, backend, WorkerStatus::Unreachable)
    };
    record(pool, &w, &[]).await
}

/// A stop was asked of the backend.
pub async fn record_stopping(pool: &Pool, scenario: Uuid, backend: &str) -> Result<(), DbError> {
    let w = WorkerRecord::status(scenario, backend, WorkerStatus::Stopping);
    record(pool, &w, &[(&["init_shutdown"], "in_shutdown_processing", None)]).await
}

/// The scenario is done (source ended, or shutdown complete): `inactive`, worker `stopped`.
pub async fn record_finished(pool: &Pool, scenario: Uuid, backend: &str) -> Result<(), DbError> {
    let w = WorkerRecord::status(scenario, backend, WorkerStatus::Stopped);
    let not_at_rest: &[&str] =
        &["init_startup", "in_startup_processing", "active", "init_shutdown", "in_shutdown_processing"];
    record(pool, &w, &[(not_at_rest, "inactive", None)]).await
}

/// The runner failed for good: the scenario is `failed` with the reason.
pub async fn record_failed(
    pool: &Pool,
    scenario: Uuid,
    backend: &str,
    reason: &str,
    restarts: i32,
) -> Result<(), DbError> {
    let w = WorkerRecord {
        restarts,
        last_error: Some(reason),
        ..WorkerRecord::status(scenario, backend, WorkerStatus::Failed)
    };
    record(
        pool,
        &w,
        &[
            (&["init_startup", "in_startup_processing", "active"], "failed", Some(reason)),
            // A failing runner whose shutdown was asked for is simply done.
            (&["init_shutdown", "in_shutdown_processing"], "inactive", None),
        ],
    )
    .await
}

/// A runner ended after its scenario came to rest: only the worker row changes.
pub async fn record_worker_ended(
    pool: &Pool,
    scenario: Uuid,
    backend: &str,
    error: Option<&str>,
) -> Result<(), DbError> {
    let status = if error.is_some() { WorkerStatus::Failed } else { WorkerStatus::Stopped };
    record(pool, &WorkerRecord { last_error: error, ..WorkerRecord::status(scenario, backend, status) }, &[]).await
}

/// Applies a batch of scenario events and the consumer's new position in one transaction:
/// init events move `init_startup` to `in_startup_processing`, shutdown events move
/// `init_shutdown` to `in_shutdown_processing`. False when another consumer moved the position
/// first (nothing written).
pub async fn apply_events(
    pool: &Pool,
    advance: &Advance<'_>,
    started: &[Uuid],
    stopping: &[Uuid],
) -> Result<bool, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if !positions::advance(&tx, advance).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    move_scenarios(&tx, started, &["init_startup"], "in_startup_processing", None).await?;
    move_scenarios(&tx, stopping, &["init_shutdown"], "in_shutdown_processing", None).await?;
    tx.commit().await?;
    Ok(true)
}
