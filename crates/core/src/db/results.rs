//! Stored detection results.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::positions::{self, Advance};
use super::DbError;
use crate::events::{EndReason, FrameDetails, FrameResult, StreamEnd};

/// One stored frame as the API serves it.
#[derive(Debug, Clone)]
pub struct StoredResult {
    pub frame_number: i64,
    pub timestamp: DateTime<Utc>,
    /// As stored: served as it is.
    pub detections: Box<serde_json::value::RawValue>,
    /// What the runner said of the frame: model and its digest, runner instance, media position.
    pub details: FrameDetails,
}

/// Frames of a scenario after `after_frame`, in frame order.
pub async fn page(pool: &Pool, scenario: Uuid, after_frame: i64, limit: i64) -> Result<Vec<StoredResult>, DbError> {
    page_in(pool, scenario, after_frame, limit, TimeRange::default()).await
}

/// Capture times `[since, until)`; either end may be open.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeRange {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// A page of results after `after_frame`, in frame order, captured within `range`. A
/// scenario's frames number its capture times in order, so the range is first turned into
/// frame bounds (index `scenario_results_by_time`), and the page is a plain primary-key range
/// in the partitions from `after_frame`'s on.
pub async fn page_in(
    pool: &Pool,
    scenario: Uuid,
    after_frame: i64,
    limit: i64,
    range: TimeRange,
) -> Result<Vec<StoredResult>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH lo AS (SELECT frame_number FROM scenario_results
                          WHERE scenario_uuid = $1 AND $4::timestamptz IS NOT NULL AND captured_at >= $4
                          ORDER BY captured_at, frame_number LIMIT 1),
                  hi AS (SELECT frame_number FROM scenario_results
                          WHERE scenario_uuid = $1 AND $5::timestamptz IS NOT NULL AND captured_at < $5
                          ORDER BY captured_at DESC, frame_number DESC LIMIT 1)
             SELECT frame_number, captured_at, detections::text, extra::text FROM scenario_results
              WHERE scenario_uuid = $1 AND frame_number > $2
                -- The same bound in frame time: partitions before it are skipped.
                AND frame_time > (SELECT created_at FROM scenarios WHERE scenario_uuid = $1) + $2 * interval '1 millisecond'
                AND ($4::timestamptz IS NULL OR (frame_number >= (SELECT frame_number FROM lo) AND captured_at >= $4))
                AND ($5::timestamptz IS NULL OR (frame_number <= (SELECT frame_number FROM hi) AND captured_at < $5))
              ORDER BY frame_number LIMIT $3",
        )
        .await?;
    let rows = client.query(&stmt, &[&scenario, &after_frame, &limit, &range.since, &range.until]).await?;
    Ok(rows
        .iter()
        .map(|r| StoredResult {
            frame_number: r.get(0),
            timestamp: r.get(1),
            // PostgreSQL's text of a jsonb value is JSON.
            detections: serde_json::value::RawValue::from_string(r.get(2)).unwrap_or_default(),
            // Rows are written from the same type; one that does not read keeps its frame.
            details: serde_json::from_str(r.get(3)).unwrap_or_default(),
        })
        .collect())
}

/// The highest stored frame of a scenario (-1 when none).
pub async fn last_frame(pool: &Pool, scenario: Uuid) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT COALESCE(max(frame_number), -1) FROM scenario_results WHERE scenario_uuid = $1",
            &[&scenario],
        )
        .await?;
    Ok(row.get(0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    /// New rows written.
    pub inserted: i64,
    /// Results already stored (redeliveries, duplicates).
    pub duplicates: i64,
    /// Results whose scenario does not exist: dropped.
    pub unknown_scenario: i64,
    /// Scenarios that became `active` with this batch.
    pub activated: i64,
    /// Scenarios whose stream ended with this batch (now `inactive` or `failed`).
    pub ended: i64,
    /// Records set aside in `dead_letters` (the handler's and PostgreSQL's refusals).
    pub dead_lettered: i64,
    /// Frames older than retention: not stored.
    pub expired: i64,
}

/// A record a consumer sets aside: where it came from, why, and its bytes.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub offset: i64,
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A checked record to store: its offset and frame time (the partition key, [`frame_time`]).
#[derive(Debug, Clone)]
pub struct Placed<T> {
    pub offset: i64,
    pub frame_time: DateTime<Utc>,
    pub item: T,
}

/// The frame time of `frame`: the scenario's epoch plus the frame number in milliseconds, the
/// same at every delivery (`None` past the calendar's end).
pub fn frame_time(epoch: DateTime<Utc>, frame: i64) -> Option<DateTime<Utc>> {
    chrono::Duration::try_milliseconds(frame).and_then(|d| epoch.checked_add_signed(d))
}

/// What one fetch brought, parsed: frames and ends by offset, and the records refused.
#[derive(Debug, Default)]
pub struct Batch {
    pub frames: Vec<Placed<FrameResult>>,
    pub ends: Vec<(i64, StreamEnd)>,
    pub dead: Vec<DeadLetter>,
    /// Found unknown before storing (counted with those the insert finds).
    pub unknown_scenario: i64,
    /// Older than retention: not stored.
    pub expired: i64,
}

/// What the inbox checks a scenario's records against.
#[derive(Debug, Clone)]
pub struct SigningFacts {
    pub key: crate::signing::ResultsKey,
    /// The runner's frame numbers count milliseconds from this.
    pub epoch: DateTime<Utc>,
    /// When the scenario came to rest (`inactive` or `failed`); `None` while it runs.
    pub rested_at: Option<DateTime<Utc>>,
    /// A local file: frames are numbered by media time, so a record's time is its timestamp.
    pub by_media_time: bool,
    /// The current placement: records of earlier ones are set aside.
    pub placement: crate::signing::PlacementEpoch,
}

/// The facts of `ids` that exist.
pub async fn signing_facts(
    pool: &Pool,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, SigningFacts>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT scenario_uuid, results_key, created_at,
                    CASE WHEN status IN ('inactive', 'failed') THEN updated_at END, camera_url, placement_epoch
               FROM scenarios WHERE scenario_uuid = ANY($1)",
        )
        .await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let facts = SigningFacts {
                key: crate::signing::ResultsKey::new(r.get(1)),
                epoch: r.get(2),
                rested_at: r.get(3),
                by_media_time: crate::camera_url::CameraUrl::trusted(r.get(4)).is_local_file(),
                placement: crate::signing::PlacementEpoch(r.get(5)),
            };
            (r.get(0), facts)
        })
        .collect())
}

/// Stores results, stream ends and refused records and advances the position in one
/// transaction: a crash between them can't happen, so a re-read after a crash stores nothing
/// twice. Duplicate frames are ignored. Should PostgreSQL refuse a record the checks let
/// through, the batch is stored again one record at a time and that record set aside, so one
/// bad record never stops its partition. `None` when another consumer moved the position first.
pub async fn store_batch(pool: &Pool, advance: &Advance<'_>, batch: Batch) -> Result<Option<Stored>, DbError> {
    match store(pool, advance, &batch, false).await {
        Err(e) if e.is_data_error() => {
            tracing::warn!(
                error = e.server_message(),
                "PostgreSQL refused a record; storing this batch one record at a time"
            );
            store(pool, advance, &batch, true).await
        }
        other => other,
    }
}

async fn store(pool: &Pool, advance: &Advance<'_>, batch: &Batch, isolate: bool) -> Result<Option<Stored>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if !positions::advance(&tx, advance).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let mut stored = Stored::default();
    let mut dead = batch.dead.clone();
    if !isolate {
        let frames: Vec<&Placed<FrameResult>> = batch.frames.iter().collect();
        if !frames.is_empty() {
            stored = insert_results(&tx, &frames).await?;
        }
        for (_, end) in &batch.ends {
            stored.ended += end_stream(&tx, end).await? as i64;
        }
    } else {
        // Each record under a savepoint: a refused one is rolled back alone and set aside.
        for frame in &batch.frames {
            tx.batch_execute("SAVEPOINT one_record").await?;
            match insert_results(&tx, &[frame]).await {
                Ok(s) => {
                    stored.inserted += s.inserted;
                    stored.duplicates += s.duplicates;
                    stored.unknown_scenario += s.unknown_scenario;
                    stored.activated += s.activated;
                }
                Err(e) if e.is_data_error() => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT one_record").await?;
                    dead.push(refused(frame.offset, frame.item.scenario_uuid, serde_json::to_vec(&frame.item), &e));
                }
                Err(e) => return Err(e),
            }
        }
        for (offset, end) in &batch.ends {
            tx.batch_execute("SAVEPOINT one_record").await?;
            match end_stream(&tx, end).await {
                Ok(n) => stored.ended += n as i64,
                Err(e) if e.is_data_error() => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT one_record").await?;
                    dead.push(refused(*offset, end.scenario_uuid, serde_json::to_vec(end), &e));
                }
                Err(e) => return Err(e),
            }
        }
    }
    stored.dead_lettered = insert_dead_letters(&tx, advance, &dead).await?;
    stored.unknown_scenario += batch.unknown_scenario;
    stored.expired = batch.expired;
    tx.commit().await?;
    Ok(Some(stored))
}

fn refused(offset: i64, scenario: Uuid, value: serde_json::Result<Vec<u8>>, e: &DbError) -> DeadLetter {
    DeadLetter {
        offset,
        reason: format!("refused by PostgreSQL: {}", e.server_message()),
        key: Some(scenario.to_string().into_bytes()),
        value: value.ok(),
    }
}

/// The most of a record set aside that is kept: enough to see what it was.
pub const DEAD_LETTER_HEAD_BYTES: usize = 4096;

pub(crate) async fn insert_dead_letters(
    tx: &deadpool_postgres::Transaction<'_>,
    advance: &Advance<'_>,
    dead: &[DeadLetter],
) -> Result<i64, DbError> {
    let at = &advance.at;
    let mut n = 0;
    for d in dead {
        // A reason is ours, but may quote a record's text: no NUL reaches PostgreSQL.
        let reason = d.reason.replace('\0', "\\0");
        let bytes = d.value.as_ref().map(|v| i32::try_from(v.len()).unwrap_or(i32::MAX));
        let head = d.value.as_deref().map(|v| &v[..v.len().min(DEAD_LETTER_HEAD_BYTES)]);
        let key = d.key.as_deref().map(|k| &k[..k.len().min(DEAD_LETTER_HEAD_BYTES)]);
        n += tx
            .execute(
                "INSERT INTO dead_letters (consumer, topic, partition, record_offset, reason, record_key, record_value,
                                           value_bytes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[&at.consumer, &at.topic, &at.partition, &d.offset, &reason, &key, &head, &bytes],
            )
            .await? as i64;
    }
    Ok(n)
}

/// How many records a consumer has set aside, for the API's metrics.
pub async fn dead_letter_count(pool: &Pool, consumer: &str) -> Result<i64, DbError> {
    let client = pool.get().await?;
    Ok(client.query_one("SELECT count(*) FROM dead_letters WHERE consumer = $1", &[&consumer]).await?.get(0))
}

async fn insert_results(
    tx: &deadpool_postgres::Transaction<'_>,
    results: &[&Placed<FrameResult>],
) -> Result<Stored, DbError> {
    let n = results.len();
    let mut uuids = Vec::with_capacity(n);
    let mut frames = Vec::with_capacity(n);
    let mut frame_times = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut detections = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut fps = Vec::with_capacity(n);
    for placed in results {
        let r = &placed.item;
        frame_times.push(placed.frame_time);
        uuids.push(r.scenario_uuid);
        frames.push(r.frame_number);
        times.push(r.timestamp);
        detections.push(serde_json::to_value(&r.detections).unwrap_or(serde_json::Value::Null));
        details.push(serde_json::to_value(&r.details).unwrap_or(serde_json::Value::Null));
        fps.push(r.details.plausible_fps());
    }
    let row = tx
        .query_one(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::jsonb[], $5::jsonb[],
                                      $6::timestamptz[], $7::real[])
                          AS t(scenario_uuid, frame_number, captured_at, detections, extra, frame_time, fps)),
             known AS (
                 SELECT i.* FROM input i WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.scenario_uuid = i.scenario_uuid)),
             inserted AS (
                 INSERT INTO scenario_results (scenario_uuid, frame_number, frame_time, captured_at, detections, extra)
                 SELECT scenario_uuid, frame_number, frame_time, captured_at, detections, extra FROM known
                 ON CONFLICT (scenario_uuid, frame_number, frame_time) DO NOTHING
                 RETURNING scenario_uuid, frame_number, captured_at),
             counts AS (
                 SELECT scenario_uuid, count(*) AS n, max(captured_at) AS last_at,
                        -- The rate the newest frame stored now reports (none: the last one stays).
                        (SELECT k.fps FROM known k
                           JOIN inserted x ON x.scenario_uuid = k.scenario_uuid AND x.frame_number = k.frame_number
                          WHERE k.scenario_uuid = i.scenario_uuid
                          ORDER BY k.frame_number DESC LIMIT 1) AS fps
                   FROM inserted i GROUP BY scenario_uuid),
             updated AS (
                 UPDATE scenarios s
                    SET frames_processed = s.frames_processed + c.n,
                        last_frame_at = GREATEST(s.last_frame_at, c.last_at),
                        analysed_fps = COALESCE(c.fps, s.analysed_fps),
                        status = CASE WHEN s.status IN ('init_startup', 'in_startup_processing')
                                      THEN 'active' ELSE s.status END,
                        updated_at = now()
                   FROM counts c WHERE s.scenario_uuid = c.scenario_uuid
                 RETURNING (SELECT status FROM scenarios o WHERE o.scenario_uuid = s.scenario_uuid) AS old_status)
             SELECT (SELECT count(*) FROM known), (SELECT count(*) FROM inserted),
                    (SELECT count(*) FROM updated WHERE old_status IN ('init_startup', 'in_startup_processing'))",
            &[&uuids, &frames, &times, &detections, &details, &frame_times, &fps],
        )
        .await?;
    let known: i64 = row.get(0);
    let inserted: i64 = row.get(1);
    Ok(Stored {
        inserted,
        duplicates: known - inserted,
        unknown_scenario: n as i64 - known,
        activated: row.get(2),
        ..Stored::default()
    })
}

/// A finished source makes the scenario `inactive`; one that never opened makes it `failed`
/// with the runner's reason. A scenario already at rest is left alone (redelivery).
async fn end_stream(tx: &deadpool_postgres::Transaction<'_>, end: &StreamEnd) -> Result<u64, DbError> {
    let (status, error) = match end.end_of_stream {
        EndReason::Finished => ("inactive", None),
        EndReason::SourceUnavailable => ("failed", Some(format!("camera unavailable: {}", end.detail))),
    };
    Ok(tx
        .execute(
            "UPDATE scenarios SET status = $2, error = $3, updated_at = now()
              WHERE scenario_uuid = $1 AND status NOT IN ('inactive', 'failed')",
            &[&end.scenario_uuid, &status, &error],
        )
        .await?)
}
