//! Scenario rows and the events written beside them.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;
use crate::camera_url::CameraUrl;
use crate::events::EventKind;
use crate::options::ScenarioOptions;

pub use super::status::{ScenarioStatus, WorkerStatus};

/// Where the scenario's runner is, as the orchestrator recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct Worker {
    pub backend: String,
    pub backend_ref: Option<String>,
    pub node: Option<String>,
    pub status: WorkerStatus,
    pub restarts: i32,
    pub last_error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Which placement of the scenario runs (a later one fences every earlier one).
    pub epoch: Option<i64>,
    /// The last move off a host that stopped answering, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
}

/// A worker's last move off a host that stopped answering.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub previous_node: Option<String>,
    pub moved_at: DateTime<Utc>,
    pub reason: Option<String>,
    /// When the host last answered.
    pub host_last_answer_at: Option<DateTime<Utc>>,
    /// Capture time of the first result after the move (`None` until it is stored).
    pub recovered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub uuid: Uuid,
    pub seq: i64,
    pub camera_url: CameraUrl,
    pub options: ScenarioOptions,
    /// How many times the options were changed.
    pub options_revision: i64,
    pub status: ScenarioStatus,
    pub error: Option<String>,
    pub frames_processed: i64,
    /// Capture time of the latest stored result.
    pub last_frame_at: Option<DateTime<Utc>>,
    /// The runner's analysed frames per second, as of the latest result that said.
    pub analysed_fps: Option<f32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub worker: Option<Worker>,
}

const SELECT_SCENARIO: &str =
    "SELECT s.scenario_uuid, s.seq, s.camera_url, s.options, s.options_revision, s.status, s.error, s.frames_processed,
        s.last_frame_at, s.analysed_fps, s.created_at, s.updated_at, w.backend, w.backend_ref, w.node, w.status AS worker_status, w.restarts,
        w.last_error, w.started_at, w.updated_at AS worker_updated_at, w.epoch, w.previous_node, w.moved_at,
        w.moved_reason, w.host_last_answer_at, w.recovered_at
   FROM scenarios s LEFT JOIN workers w USING (scenario_uuid)";

fn scenario_from_row(row: &Row) -> Scenario {
    let status: &str = row.get("status");
    let worker = row.get::<_, Option<String>>("backend").map(|backend| Worker {
        backend,
        backend_ref: row.get("backend_ref"),
        node: row.get("node"),
        // The CHECK constraint keeps this in the known set.
        status: WorkerStatus::parse(row.get("worker_status")).unwrap_or(WorkerStatus::Failed),
        restarts: row.get("restarts"),
        last_error: row.get("last_error"),
        started_at: row.get("started_at"),
        updated_at: row.get("worker_updated_at"),
        epoch: row.get("epoch"),
        moved: row.get::<_, Option<DateTime<Utc>>>("moved_at").map(|moved_at| Moved {
            previous_node: row.get("previous_node"),
            moved_at,
            reason: row.get("moved_reason"),
            host_last_answer_at: row.get("host_last_answer_at"),
            recovered_at: row.get("recovered_at"),
        }),
    });
    Scenario {
        uuid: row.get("scenario_uuid"),
        seq: row.get("seq"),
        camera_url: CameraUrl::trusted(row.get("camera_url")),
        options: options_from(row.get("options")),
        options_revision: row.get("options_revision"),
        // The CHECK constraint keeps this in the known set.
        status: ScenarioStatus::parse(status).unwrap_or(ScenarioStatus::Failed),
        error: row.get("error"),
        frames_processed: row.get("frames_processed"),
        last_frame_at: row.get("last_frame_at"),
        analysed_fps: row.get("analysed_fps"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        worker,
    }
}

/// Options as stored; a row this version can't read (written by a newer one) runs on defaults.
pub(crate) fn options_from(value: serde_json::Value) -> ScenarioOptions {
    serde_json::from_value(value).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "stored scenario options unreadable; using the defaults");
        ScenarioOptions::default()
    })
}

/// The outcome of a create with an idempotency key.
#[derive(Debug)]
pub enum Created {
    /// A new scenario; `response` is what was stored for replays.
    New { scenario: Box<Scenario>, response: serde_json::Value },
    /// The key was seen before with the same request: the first answer.
    Replayed(serde_json::Value),
    /// The key was seen before with a different request.
    KeyReused,
}

pub struct Idempotency<'a> {
    pub key: &'a str,
    /// A digest of the request, so a key reused for another request is refused.
    pub request_hash: &'a str,
}

/// An outbox event of a scenario, in the transaction that changed it.
async fn write_event(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: EventKind,
    uuid: Uuid,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    // No camera URL: events travel on Kafka, the URL and its credentials stay here.
    let payload = serde_json::json!({
        "event_type": kind.as_str(),
        "scenario_uuid": uuid,
        "occurred_at": at,
    });
    tx.execute(
        "INSERT INTO outbox (scenario_uuid, event_type, payload) VALUES ($1, $2, $3)",
        &[&uuid, &kind.as_str(), &payload],
    )
    .await?;
    Ok(())
}

/// The scenario row and its `init_scenario` event in one statement: atomic on its own, and one
/// round trip instead of a BEGIN/INSERT/INSERT/COMMIT exchange.
/// A scenario and its `init_scenario` event in one statement (`$1` uuid, `$2` camera URL, `$3`
/// options); public for the benchmark that runs it under pgbench beside the API.
pub const INSERT_SCENARIO_WITH_EVENT: &str = "
    WITH s AS (
        INSERT INTO scenarios (scenario_uuid, camera_url, options, status) VALUES ($1, $2, $3, 'init_startup')
        RETURNING scenario_uuid, seq, camera_url, options, options_revision, status, error, frames_processed,
                  last_frame_at, analysed_fps, created_at, updated_at),
    e AS (
        INSERT INTO outbox (scenario_uuid, event_type, payload)
        SELECT scenario_uuid, 'init_scenario',
               jsonb_build_object('event_type', 'init_scenario', 'scenario_uuid', scenario_uuid,
                                  'occurred_at', created_at)
          FROM s)
    SELECT s.*, NULL::text AS backend, NULL::text AS backend_ref, NULL::text AS node,
           NULL::text AS worker_status, NULL::int AS restarts, NULL::text AS last_error,
           NULL::timestamptz AS started_at, NULL::timestamptz AS worker_updated_at
      FROM s";

/// Inserts the scenario and its `init_scenario` event atomically. With an idempotency key, the
/// key is claimed in the same transaction; `render` makes the answer a replay gets back.
pub async fn create(
    pool: &Pool,
    camera_url: &CameraUrl,
    options: &ScenarioOptions,
    idempotency: Option<Idempotency<'_>>,
    render: impl Fn(&Scenario) -> serde_json::Value,
) -> Result<Created, DbError> {
    let mut client = pool.get().await?;
    let uuid = Uuid::new_v4();
    let options = serde_json::to_value(options).unwrap_or_else(|_| serde_json::json!({}));
    let Some(idem) = idempotency else {
        let insert = client.prepare_cached(INSERT_SCENARIO_WITH_EVENT).await?;
        let scenario = scenario_from_row(&client.query_one(&insert, &[&uuid, &camera_url.expose(), &options]).await?);
        let response = render(&scenario);
        return Ok(Created::New { scenario: Box::new(scenario), response });
    };
    let tx = client.transaction().await?;
    // Claim the key first: a concurrent twin blocks here until we commit, then sees the key.
    // (The foreign key to scenarios is deferred to the commit for this.)
    let claimed = tx
        .execute(
            "INSERT INTO idempotency_keys (key, request_hash, scenario_uuid, response)
             VALUES ($1, $2, $3, 'null') ON CONFLICT (key) DO NOTHING",
            &[&idem.key, &idem.request_hash, &uuid],
        )
        .await?;
    if claimed == 0 {
        tx.rollback().await?;
        let row = client
            .query_one("SELECT request_hash, response FROM idempotency_keys WHERE key = $1", &[&idem.key])
            .await?;
        let hash: String = row.get(0);
        return Ok(if hash == idem.request_hash { Created::Replayed(row.get(1)) } else { Created::KeyReused });
    }
    let insert = tx.prepare_cached(INSERT_SCENARIO_WITH_EVENT).await?;
    let scenario = scenario_from_row(&tx.query_one(&insert, &[&uuid, &camera_url.expose(), &options]).await?);
    let response = render(&scenario);
    tx.execute("UPDATE idempotency_keys SET response = $2 WHERE key = $1", &[&idem.key, &response]).await?;
    tx.commit().await?;
    Ok(Created::New { scenario: Box::new(scenario), response })
}

pub async fn get(pool: &Pool, uuid: Uuid) -> Result<Option<Scenario>, DbError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(&format!("{SELECT_SCENARIO} WHERE s.scenario_uuid = $1")).await?;
    let row = client.query_opt(&stmt, &[&uuid]).await?;
    Ok(row.as_ref().map(scenario_from_row))
}

/// Newest first. `before_seq` is the keyset cursor: the `seq` of the last row already seen.
/// Returns up to `limit` rows and whether more exist.
pub async fn list(
    pool: &Pool,
    status: Option<ScenarioStatus>,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<(Vec<Scenario>, bool), DbError> {
    let client = pool.get().await?;
    let status = status.map(ScenarioStatus::as_str);
    let rows = client
        .query(
            &format!(
                "{SELECT_SCENARIO} WHERE ($1::text IS NULL OR s.status = $1)
                   AND ($2::bigint IS NULL OR s.seq < $2) ORDER BY s.seq DESC LIMIT $3"
            ),
            &[&status, &before_seq, &(limit + 1)],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    Ok((rows.iter().take(limit as usize).map(scenario_from_row).collect(), more))
}

#[derive(Debug)]
pub enum Shutdown {
    /// Moved to `init_shutdown`; a shutdown event was written.
    Requested(Scenario),
    /// Already on its way down: nothing new written.
    AlreadyShuttingDown(Scenario),
    /// `inactive` or `failed`: nothing to shut down.
    Finished(Scenario),
    NotFound,
}

pub async fn request_shutdown(pool: &Pool, uuid: Uuid) -> Result<Shutdown, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Lock the row so a concurrent shutdown or status change serialises with us.
    let Some(row) = tx.query_opt("SELECT status FROM scenarios WHERE scenario_uuid = $1 FOR UPDATE", &[&uuid]).await?
    else {
        return Ok(Shutdown::NotFound);
    };
    let status = ScenarioStatus::parse(row.get(0)).unwrap_or(ScenarioStatus::Failed);
    let outcome_kind = match status {
        ScenarioStatus::InitShutdown | ScenarioStatus::InShutdownProcessing => Some(false),
        s if s.is_finished() => None,
        _ => Some(true),
    };
    if outcome_kind == Some(true) {
        let now: DateTime<Utc> = tx
            .query_one(
                "UPDATE scenarios SET status = 'init_shutdown', updated_at = now() WHERE scenario_uuid = $1
                 RETURNING updated_at",
                &[&uuid],
            )
            .await?
            .get(0);
        write_event(&tx, EventKind::ShutdownScenario, uuid, now).await?;
    }
    let row = tx.query_one(&format!("{SELECT_SCENARIO} WHERE s.scenario_uuid = $1"), &[&uuid]).await?;
    tx.commit().await?;
    let scenario = scenario_from_row(&row);
    Ok(match outcome_kind {
        Some(true) => Shutdown::Requested(scenario),
        Some(false) => Shutdown::AlreadyShuttingDown(scenario),
        None => Shutdown::Finished(scenario),
    })
}

#[derive(Debug)]
pub enum Deletion {
    Deleted,
    /// Not finished: it must be shut down first.
    Running(ScenarioStatus),
    NotFound,
}

/// Rows of one table deleted per statement when a scenario goes: each statement stays far
/// inside `statement_timeout` however much a scenario stored.
const DELETE_BATCH: i64 = 10_000;

/// Deletes a finished scenario and everything stored of it: results, events (and their webhook
/// deliveries), snapshots, its worker row and idempotency keys (by cascade), its outbox rows,
/// and records set aside for it. Late records of its runner are then refused as unknown.
///
/// What it stored goes first, in batches, each its own statement; the scenario row last, so a
/// delete cut short is finished by the next one.
pub async fn delete(pool: &Pool, uuid: Uuid) -> Result<Deletion, DbError> {
    let mut client = pool.get().await?;
    let Some(row) = client.query_opt("SELECT status FROM scenarios WHERE scenario_uuid = $1", &[&uuid]).await? else {
        return Ok(Deletion::NotFound);
    };
    let status = ScenarioStatus::parse(row.get(0)).unwrap_or(ScenarioStatus::Failed);
    if !status.is_finished() {
        return Ok(Deletion::Running(status));
    }
    for table in ["webhook_deliveries", "scenario_snapshots", "scenario_events", "scenario_results"] {
        // A ctid names a row only within its partition: the scenario is checked again.
        let batch = format!(
            "DELETE FROM {table} WHERE scenario_uuid = $1
                AND ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE scenario_uuid = $1 LIMIT $2))"
        );
        while client.execute(&batch, &[&uuid, &DELETE_BATCH]).await? > 0 {}
    }
    let tx = client.transaction().await?;
    let Some(row) = tx.query_opt("SELECT status FROM scenarios WHERE scenario_uuid = $1 FOR UPDATE", &[&uuid]).await?
    else {
        return Ok(Deletion::NotFound);
    };
    let status = ScenarioStatus::parse(row.get(0)).unwrap_or(ScenarioStatus::Failed);
    if !status.is_finished() {
        return Ok(Deletion::Running(status));
    }
    tx.execute("DELETE FROM outbox WHERE scenario_uuid = $1", &[&uuid]).await?;
    tx.execute("DELETE FROM dead_letters WHERE record_key = convert_to($1::text, 'UTF8')", &[&uuid.to_string()])
        .await?;
    tx.execute("DELETE FROM scenarios WHERE scenario_uuid = $1", &[&uuid]).await?;
    tx.commit().await?;
    Ok(Deletion::Deleted)
}

#[derive(Debug)]
pub enum OptionsChange<E> {
    /// Stored with an `update_scenario` event, revision incremented.
    Changed(Scenario),
    /// The patch changes nothing: nothing written.
    Unchanged(Scenario),
    /// Shutting down or at rest: options can't change.
    NotRunning(Scenario),
    /// `edit` refused the patch.
    Refused(E),
    NotFound,
}

/// Changes a scenario's options with `edit` (which sees the stored ones), and writes the
/// `update_scenario` event in the same transaction; the row is locked meanwhile, so concurrent
/// patches apply one after the other.
pub async fn change_options<E>(
    pool: &Pool,
    uuid: Uuid,
    edit: impl FnOnce(&ScenarioOptions) -> Result<ScenarioOptions, E>,
) -> Result<OptionsChange<E>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) =
        tx.query_opt(&format!("{SELECT_SCENARIO} WHERE s.scenario_uuid = $1 FOR UPDATE OF s"), &[&uuid]).await?
    else {
        return Ok(OptionsChange::NotFound);
    };
    let current = scenario_from_row(&row);
    if current.status.is_finished() || current.status.is_shutting_down() {
        return Ok(OptionsChange::NotRunning(current));
    }
    let next = match edit(&current.options) {
        Ok(next) => next,
        Err(e) => return Ok(OptionsChange::Refused(e)),
    };
    if next == current.options {
        return Ok(OptionsChange::Unchanged(current));
    }
    let options = serde_json::to_value(&next).unwrap_or_else(|_| serde_json::json!({}));
    let now: DateTime<Utc> = tx
        .query_one(
            "UPDATE scenarios SET options = $2, options_revision = options_revision + 1, updated_at = now()
              WHERE scenario_uuid = $1 RETURNING updated_at",
            &[&uuid, &options],
        )
        .await?
        .get(0);
    write_event(&tx, EventKind::UpdateScenario, uuid, now).await?;
    let row = tx.query_one(&format!("{SELECT_SCENARIO} WHERE s.scenario_uuid = $1"), &[&uuid]).await?;
    tx.commit().await?;
    Ok(OptionsChange::Changed(scenario_from_row(&row)))
}
