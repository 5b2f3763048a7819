//! Stored snapshots (`scenario_snapshots`): written by the inbox, read by the API. PostgreSQL
//! rather than files: they are small (tens of KB), belong to a scenario like its results
//! (deleted with it, backed up with it), and every relay and API host sees the same ones.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use uuid::Uuid;

use super::positions::{self, Advance};
use super::results::{insert_dead_letters, DeadLetter};
use super::DbError;
use crate::events::{Detection, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredSnapshots {
    pub inserted: i64,
    pub duplicates: i64,
    pub unknown_scenario: i64,
    pub dead_lettered: i64,
    /// Older snapshots deleted to keep within the bounds.
    pub pruned: i64,
}

/// A snapshot as stored.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub frame_number: i64,
    pub captured_at: DateTime<Utc>,
    pub jpeg: Vec<u8>,
    pub width: i32,
    pub height: i32,
    pub frame_width: i32,
    pub frame_height: i32,
    pub detections: Vec<Detection>,
    pub event_ids: Vec<Uuid>,
}

/// Stores the snapshots, drops what is beyond the bounds (only the latest periodic one, and
/// `keep_for_events` taken for events, per scenario) and advances the position, in one
/// transaction. `None` when another consumer moved the position first.
pub async fn store_batch(
    pool: &Pool,
    advance: &Advance<'_>,
    snapshots: &[(i64, Snapshot)],
    mut dead: Vec<DeadLetter>,
    keep_for_events: i64,
) -> Result<Option<StoredSnapshots>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if !positions::advance(&tx, advance).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let mut stored = StoredSnapshots::default();
    let mut touched: Vec<Uuid> = Vec::new();
    for (offset, s) in snapshots {
        // One at a time (a few a second per camera): a row PostgreSQL refuses is set aside alone.
        tx.batch_execute("SAVEPOINT one_snapshot").await?;
        match insert(&tx, s).await {
            Ok(Some(true)) => {
                stored.inserted += 1;
                touched.push(s.scenario_uuid);
            }
            Ok(Some(false)) => stored.duplicates += 1,
            Ok(None) => stored.unknown_scenario += 1,
            Err(e) if e.is_data_error() => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT one_snapshot").await?;
                dead.push(DeadLetter {
                    offset: *offset,
                    reason: format!("refused by PostgreSQL: {}", e.server_message()),
                    key: Some(s.scenario_uuid.to_string().into_bytes()),
                    value: Some(s.to_record_value()),
                });
            }
            Err(e) => return Err(e),
        }
    }
    touched.sort_unstable();
    touched.dedup();
    for scenario in touched {
        stored.pruned += prune(&tx, scenario, keep_for_events.max(0)).await?;
    }
    stored.dead_lettered = insert_dead_letters(&tx, advance, &dead).await?;
    tx.commit().await?;
    Ok(Some(stored))
}

/// `Some(true)` stored, `Some(false)` already there, `None` no such scenario.
async fn insert(tx: &Transaction<'_>, s: &Snapshot) -> Result<Option<bool>, DbError> {
    let detections = serde_json::to_value(&s.detections).unwrap_or(serde_json::Value::Null);
    let sizes = [s.width, s.height, s.frame_width, s.frame_height].map(|v| v as i32);
    let row = tx
        .query_one(
            "WITH known AS (SELECT 1 FROM scenarios WHERE scenario_uuid = $1),
                  inserted AS (
                      INSERT INTO scenario_snapshots (scenario_uuid, frame_number, captured_at, jpeg, width, height,
                                                      frame_width, frame_height, detections, event_ids)
                      SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM known
                      ON CONFLICT (scenario_uuid, frame_number) DO NOTHING
                      RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM known), EXISTS (SELECT 1 FROM inserted)",
            &[
                &s.scenario_uuid,
                &s.frame_number,
                &s.timestamp,
                &s.jpeg,
                &sizes[0],
                &sizes[1],
                &sizes[2],
                &sizes[3],
                &detections,
                &s.event_ids,
            ],
        )
        .await?;
    let (known, inserted): (bool, bool) = (row.get(0), row.get(1));
    Ok(known.then_some(inserted))
}

async fn prune(tx: &Transaction<'_>, scenario: Uuid, keep_for_events: i64) -> Result<i64, DbError> {
    let periodic = tx
        .execute(
            "DELETE FROM scenario_snapshots
              WHERE scenario_uuid = $1 AND cardinality(event_ids) = 0
                AND frame_number < (SELECT max(frame_number) FROM scenario_snapshots
                                     WHERE scenario_uuid = $1 AND cardinality(event_ids) = 0)",
            &[&scenario],
        )
        .await?;
    let of_events = tx
        .execute(
            "DELETE FROM scenario_snapshots
              WHERE scenario_uuid = $1 AND cardinality(event_ids) > 0
                AND frame_number <= (SELECT frame_number FROM scenario_snapshots
                                      WHERE scenario_uuid = $1 AND cardinality(event_ids) > 0
                                      ORDER BY frame_number DESC OFFSET $2 LIMIT 1)",
            &[&scenario, &keep_for_events],
        )
        .await?;
    Ok((periodic + of_events) as i64)
}

const COLUMNS: &str =
    "frame_number, captured_at, jpeg, width, height, frame_width, frame_height, detections, event_ids";

fn from_row(row: &tokio_postgres::Row) -> StoredSnapshot {
    StoredSnapshot {
        frame_number: row.get("frame_number"),
        captured_at: row.get("captured_at"),
        jpeg: row.get("jpeg"),
        width: row.get("width"),
        height: row.get("height"),
        frame_width: row.get("frame_width"),
        frame_height: row.get("frame_height"),
        // Checked when stored.
        detections: serde_json::from_value(row.get("detections")).unwrap_or_default(),
        event_ids: row.get("event_ids"),
    }
}

/// The scenario's most recent snapshot.
pub async fn latest(pool: &Pool, scenario: Uuid) -> Result<Option<StoredSnapshot>, DbError> {
    let client = pool.get().await?;
    let sql =
        format!("SELECT {COLUMNS} FROM scenario_snapshots WHERE scenario_uuid = $1 ORDER BY frame_number DESC LIMIT 1");
    Ok(client.query_opt(&sql, &[&scenario]).await?.as_ref().map(from_row))
}

/// The snapshot taken for one of the scenario's events.
pub async fn of_event(pool: &Pool, scenario: Uuid, event: Uuid) -> Result<Option<StoredSnapshot>, DbError> {
    let client = pool.get().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM scenario_snapshots WHERE scenario_uuid = $1 AND $2 = ANY(event_ids)
          ORDER BY frame_number LIMIT 1"
    );
    Ok(client.query_opt(&sql, &[&scenario, &event]).await?.as_ref().map(from_row))
}
