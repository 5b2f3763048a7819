//! Stored scene events (`scenario_events`): written by the inbox, read by the API.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Transaction};
use uuid::Uuid;

use super::positions::{self, Advance};
use super::results::{insert_dead_letters, DeadLetter, Placed};
use super::DbError;
use crate::events::{Direction, SceneEvent, SceneEventKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredEvents {
    pub inserted: i64,
    /// Already stored (replayed, or produced again by a restarted runner).
    pub duplicates: i64,
    pub unknown_scenario: i64,
    pub dead_lettered: i64,
    /// Deliveries queued for webhook receivers.
    pub webhooks_queued: i64,
}

/// Stores the events and refused records and advances the position in one transaction (as
/// `results::store_batch` does for frames). `None` when another consumer moved it first.
/// Each new event is also queued for the scenario's `webhook_url` and for `global_webhook`
/// (empty: none), in the same transaction.
pub async fn store_batch(
    pool: &Pool,
    advance: &Advance<'_>,
    events: &[Placed<SceneEvent>],
    dead: Vec<DeadLetter>,
    global_webhook: &str,
) -> Result<Option<StoredEvents>, DbError> {
    match store(pool, advance, events, dead.clone(), global_webhook, false).await {
        Err(e) if e.is_data_error() => {
            tracing::warn!(error = e.server_message(), "PostgreSQL refused an event; storing one at a time");
            store(pool, advance, events, dead, global_webhook, true).await
        }
        other => other,
    }
}

async fn store(
    pool: &Pool,
    advance: &Advance<'_>,
    events: &[Placed<SceneEvent>],
    mut dead: Vec<DeadLetter>,
    global_webhook: &str,
    isolate: bool,
) -> Result<Option<StoredEvents>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if !positions::advance(&tx, advance).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let mut stored = StoredEvents::default();
    if !isolate {
        let all: Vec<&Placed<SceneEvent>> = events.iter().collect();
        stored = insert(&tx, &all, global_webhook).await?;
    } else {
        for event in events {
            tx.batch_execute("SAVEPOINT one_record").await?;
            match insert(&tx, &[event], global_webhook).await {
                Ok(s) => {
                    stored.inserted += s.inserted;
                    stored.duplicates += s.duplicates;
                    stored.unknown_scenario += s.unknown_scenario;
                }
                Err(e) if e.is_data_error() => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT one_record").await?;
                    dead.push(DeadLetter {
                        offset: event.offset,
                        reason: format!("refused by PostgreSQL: {}", e.server_message()),
                        key: Some(event.item.scenario_uuid.to_string().into_bytes()),
                        value: serde_json::to_vec(&event.item).ok(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
    stored.dead_lettered = insert_dead_letters(&tx, advance, &dead).await?;
    tx.commit().await?;
    Ok(Some(stored))
}

async fn insert(
    tx: &Transaction<'_>,
    placed: &[&Placed<SceneEvent>],
    global_webhook: &str,
) -> Result<StoredEvents, DbError> {
    if placed.is_empty() {
        return Ok(StoredEvents::default());
    }
    let frame_times: Vec<DateTime<Utc>> = placed.iter().map(|p| p.frame_time).collect();
    let events: Vec<&SceneEvent> = placed.iter().map(|p| &p.item).collect();
    let column = |f: &dyn Fn(&SceneEvent) -> Option<String>| events.iter().map(|e| f(e)).collect::<Vec<_>>();
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let scenarios: Vec<Uuid> = events.iter().map(|e| e.scenario_uuid).collect();
    let kinds = column(&|e| Some(e.kind.as_str().to_string()));
    let frames: Vec<i64> = events.iter().map(|e| e.frame_number).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.timestamp).collect();
    let zones = column(&|e| e.zone.clone());
    let lines = column(&|e| e.line.clone());
    let directions = column(&|e| e.direction.map(|d| d.as_str().to_string()));
    let tracks: Vec<Option<i64>> = events.iter().map(|e| e.track_id).collect();
    let classes = column(&|e| e.class.clone());
    let dwell: Vec<Option<f64>> = events.iter().map(|e| e.dwell_seconds).collect();
    let details = column(&|e| e.detail.clone());
    let row = tx
        .query_one(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[],
                                      $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[],
                                      $11::float8[], $12::text[], $14::timestamptz[])
                          AS t(event_id, scenario_uuid, kind, frame_number, occurred_at, zone, line, direction,
                               track_id, class, dwell_seconds, detail, frame_time)),
             known AS (
                 SELECT i.* FROM input i WHERE EXISTS (SELECT 1 FROM scenarios s WHERE s.scenario_uuid = i.scenario_uuid)),
             inserted AS (
                 INSERT INTO scenario_events (event_id, scenario_uuid, kind, frame_number, occurred_at, zone, line,
                                              direction, track_id, class, dwell_seconds, detail, frame_time)
                 SELECT * FROM known ON CONFLICT (event_id, frame_time) DO NOTHING
                 RETURNING event_id, scenario_uuid, frame_number, frame_time),
             queued AS (
                 INSERT INTO webhook_deliveries (event_id, scenario_uuid, url, frame_time)
                 SELECT i.event_id, i.scenario_uuid, u.url, i.frame_time
                   FROM inserted i JOIN scenarios s USING (scenario_uuid)
                        CROSS JOIN LATERAL (VALUES (s.options->>'webhook_url'), (NULLIF($13, ''))) AS u(url)
                  WHERE u.url IS NOT NULL
                  ORDER BY i.frame_number, i.event_id
                 ON CONFLICT DO NOTHING
                 RETURNING 1)
             SELECT (SELECT count(*) FROM known), (SELECT count(*) FROM inserted), (SELECT count(*) FROM queued)",
            &[
                &ids, &scenarios, &kinds, &frames, &times, &zones, &lines, &directions, &tracks, &classes, &dwell,
                &details, &global_webhook, &frame_times,
            ],
        )
        .await?;
    let (known, inserted): (i64, i64) = (row.get(0), row.get(1));
    Ok(StoredEvents {
        inserted,
        duplicates: known - inserted,
        unknown_scenario: events.len() as i64 - known,
        dead_lettered: 0,
        webhooks_queued: row.get(2),
    })
}

/// The columns [`from_row`] reads, in its order.
pub(super) const COLUMNS: &str = "e.event_id, e.scenario_uuid, e.kind, e.frame_number, e.occurred_at, e.zone, e.line, \
                                  e.direction, e.track_id, e.class, e.dwell_seconds, e.detail";

/// An event from a row that holds [`COLUMNS`] from `at` on (`None`: a kind this build does not
/// know).
pub(super) fn from_row(r: &tokio_postgres::Row, at: usize) -> Option<SceneEvent> {
    Some(SceneEvent {
        version: crate::events::RECORD_VERSION,
        event_id: r.get(at),
        scenario_uuid: r.get(at + 1),
        kind: SceneEventKind::parse(r.get::<_, &str>(at + 2))?,
        frame_number: r.get(at + 3),
        timestamp: r.get(at + 4),
        zone: r.get(at + 5),
        line: r.get(at + 6),
        direction: r.get::<_, Option<&str>>(at + 7).and_then(Direction::parse),
        track_id: r.get(at + 8),
        class: r.get(at + 9),
        dwell_seconds: r.get(at + 10),
        detail: r.get(at + 11),
    })
}

/// Which of a scenario's events a page holds.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub kind: Option<SceneEventKind>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// After this storage sequence number (the previous page's last).
    pub after: Option<i64>,
    pub limit: i64,
}

/// Events of `scenario` in the order they were stored (a runner's order), each with its
/// sequence number (the cursor).
pub async fn page(pool: &Pool, scenario: Uuid, q: &EventQuery) -> Result<Vec<(i64, SceneEvent)>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT e.seq, {COLUMNS}
               FROM scenario_events e
              WHERE e.scenario_uuid = $1
                AND ($2::text IS NULL OR e.kind = $2)
                AND ($3::timestamptz IS NULL OR e.occurred_at >= $3)
                AND ($4::timestamptz IS NULL OR e.occurred_at < $4)
                AND e.seq > $5
              ORDER BY e.seq
              LIMIT $6"
        ))
        .await?;
    let kind = q.kind.map(|k| k.as_str().to_string());
    let after = q.after.unwrap_or(0);
    let rows = client.query(&stmt, &[&scenario, &kind, &q.since, &q.until, &after, &q.limit]).await?;
    Ok(rows.iter().filter_map(|r| Some((r.get(0), from_row(r, 1)?))).collect())
}

/// Buckets of [`counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
}

impl Bucket {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1m" => Some(Bucket::Minute),
            "1h" => Some(Bucket::Hour),
            _ => None,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
        }
    }

    pub fn length(self) -> chrono::Duration {
        match self {
            Bucket::Minute => chrono::Duration::minutes(1),
            Bucket::Hour => chrono::Duration::hours(1),
        }
    }
}

/// The most buckets one counts request spans: 10,000 minutes (about a week) or hours (about
/// fourteen months), so no request aggregates years of events on a pool connection.
pub const MAX_COUNT_BUCKETS: i32 = 10_000;

/// What one zone or line saw of one class in one bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    pub start: DateTime<Utc>,
    pub zone: Option<String>,
    pub line: Option<String>,
    pub class: Option<String>,
    pub entered: i64,
    pub left: i64,
    pub crossed_in: i64,
    pub crossed_out: i64,
    /// Zones: the most objects inside at once, counting from the scenario's first event (a
    /// bucket without events has no row, even with objects inside).
    pub peak_occupancy: Option<i64>,
}

/// Per bucket, zone or line, and class: entries, exits, crossings each way, and zones' peak
/// occupancy, between `since` and `until`.
/// The cursor that leaves the scenario's last `n` events after it (0 when it has no more).
pub async fn cursor_before_last(pool: &Pool, scenario: Uuid, n: i64) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT seq - 1 FROM scenario_events WHERE scenario_uuid = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1",
            &[&scenario, &(n - 1).max(0)],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

pub async fn counts(
    pool: &Pool,
    scenario: Uuid,
    bucket: Bucket,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Count>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH occupancy AS (
                 -- Running count inside each zone, over the whole history up to `until`: leaving
                 -- before entering within one frame, so a swap never looks like two at once.
                 SELECT event_id, sum(CASE kind WHEN 'object_entered' THEN 1 ELSE -1 END)
                            OVER (PARTITION BY zone, class ORDER BY frame_number,
                                  CASE kind WHEN 'object_entered' THEN 1 ELSE 0 END, event_id) AS inside
                   FROM scenario_events
                  WHERE scenario_uuid = $1 AND kind IN ('object_entered', 'object_left')
                    AND ($4::timestamptz IS NULL OR occurred_at < $4))
             SELECT date_trunc($2, e.occurred_at) AS start, e.zone, e.line, e.class,
                    count(*) FILTER (WHERE e.kind = 'object_entered'),
                    count(*) FILTER (WHERE e.kind = 'object_left'),
                    count(*) FILTER (WHERE e.kind = 'line_crossed' AND e.direction = 'in'),
                    count(*) FILTER (WHERE e.kind = 'line_crossed' AND e.direction = 'out'),
                    max(o.inside)
               FROM scenario_events e LEFT JOIN occupancy o USING (event_id)
              WHERE e.scenario_uuid = $1 AND e.kind IN ('object_entered', 'object_left', 'line_crossed')
                AND ($3::timestamptz IS NULL OR e.occurred_at >= $3)
                AND ($4::timestamptz IS NULL OR e.occurred_at < $4)
              GROUP BY 1, 2, 3, 4
              ORDER BY 1, 2 NULLS LAST, 3 NULLS LAST, 4",
        )
        .await?;
    let rows = client.query(&stmt, &[&scenario, &bucket.unit(), &since, &until]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let zone: Option<String> = r.get(1);
            let peak: Option<i64> = r.get(8);
            Count {
                start: r.get(0),
                peak_occupancy: zone.as_ref().and(peak.map(|p| p.max(0))),
                zone,
                line: r.get(2),
                class: r.get(3),
                entered: r.get(4),
                left: r.get(5),
                crossed_in: r.get(6),
                crossed_out: r.get(7),
            }
        })
        .collect())
}
