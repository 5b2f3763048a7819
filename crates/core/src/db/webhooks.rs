//! Webhook deliveries (`webhook_deliveries`): queued by the inbox with each event, sent by
//! `webhooks::Sender`, shown by the API.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::scene_events::{from_row, COLUMNS};
use super::DbError;
use crate::events::SceneEvent;

/// The oldest undelivered event of one scenario for one receiver, due now.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub url: String,
    /// `scheme://host:port` of the URL: sends are shared out by it.
    pub receiver: String,
    pub attempts: i32,
    pub event: SceneEvent,
}

/// Claims up to `limit` queue heads (one per scenario and receiver) whose time has come, for
/// `lease_ms`, at most `per_receiver` of each receiver and none of those in `busy`: a later
/// event of a scenario waits for the earlier one, so each receiver gets them in order, and a
/// head claimed by one relay is not sent by another meanwhile. Found through the index of
/// pending rows by due time, not by scanning every pending row.
pub async fn due(
    pool: &Pool,
    limit: i64,
    lease_ms: i64,
    busy: &[String],
    per_receiver: i64,
) -> Result<Vec<Due>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "WITH heads AS (
                 SELECT id FROM (
                     SELECT d.id, d.next_attempt_at,
                            row_number() OVER (PARTITION BY d.receiver ORDER BY d.next_attempt_at, d.id) AS nth
                       FROM webhook_deliveries d
                      WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= now()
                        AND d.receiver <> ALL($3)
                        AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                                         WHERE p.scenario_uuid = d.scenario_uuid AND p.url = d.url
                                           AND p.delivered_at IS NULL AND p.gave_up_at IS NULL AND p.id < d.id)) h
                  WHERE nth <= $4
                  ORDER BY next_attempt_at
                  LIMIT $1),
             claimed AS (
                 -- A row another relay claimed first fails the re-checked condition: skipped.
                 UPDATE webhook_deliveries d SET next_attempt_at = now() + $2 * interval '1 millisecond'
                   FROM heads WHERE d.id = heads.id AND d.next_attempt_at <= now()
                    AND d.delivered_at IS NULL AND d.gave_up_at IS NULL
                 RETURNING d.id, d.event_id, d.frame_time, d.url, d.attempts, d.receiver)
             SELECT c.id, c.url, c.attempts, c.receiver, {COLUMNS}
               FROM claimed c JOIN scenario_events e USING (event_id, frame_time)"
        ))
        .await?;
    let rows = client.query(&stmt, &[&limit, &(lease_ms as f64), &busy, &per_receiver]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(Due { id: r.get(0), url: r.get(1), attempts: r.get(2), receiver: r.get(3), event: from_row(r, 4)? })
        })
        .collect())
}

/// Hands claimed rows back unsent (more than a receiver's share came in one claim).
pub async fn release(pool: &Pool, ids: &[i64]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
    client.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = ANY($1)", &[&ids]).await?;
    Ok(())
}

pub async fn delivered(pool: &Pool, id: i64, status: u16) -> Result<(), DbError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE webhook_deliveries SET delivered_at = now(), attempts = attempts + 1, last_status = $2,
                    last_error = NULL WHERE id = $1",
            &[&id, &i32::from(status)],
        )
        .await?;
    Ok(())
}

/// A failed try: the next one after `retry_in_ms`, or none when the delivery is older than
/// `max_age_secs` (given up). Returns whether it was given up.
pub async fn failed(
    pool: &Pool,
    id: i64,
    status: Option<u16>,
    error: &str,
    retry_in_ms: i64,
    max_age_secs: u64,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let error: String = error.replace('\0', "\\0").chars().take(1000).collect();
    let row = client
        .query_one(
            "UPDATE webhook_deliveries
                SET attempts = attempts + 1, last_status = $2, last_error = $3,
                    next_attempt_at = now() + $4 * interval '1 millisecond',
                    gave_up_at = CASE WHEN created_at < now() - $5 * interval '1 second' THEN now() END
              WHERE id = $1
              RETURNING gave_up_at IS NOT NULL",
            &[&id, &status.map(i32::from), &error, &(retry_in_ms as f64), &(max_age_secs as f64)],
        )
        .await?;
    Ok(row.get(0))
}

/// Gives up every pending delivery older than `max_age_secs` (those queued behind a receiver
/// that stopped answering, too). Returns how many.
pub async fn give_up_expired(pool: &Pool, max_age_secs: u64) -> Result<u64, DbError> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE webhook_deliveries SET gave_up_at = now(),
                    last_error = COALESCE(last_error, 'not delivered within webhooks.max_age_secs')
              WHERE delivered_at IS NULL AND gave_up_at IS NULL
                AND created_at < now() - $1 * interval '1 second'",
            &[&(max_age_secs as f64)],
        )
        .await?)
}

/// How an event's deliveries stand, for the API.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryState {
    pub url: String,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    /// When vap stopped trying (`webhooks.max_age_secs`).
    pub gave_up_at: Option<DateTime<Utc>>,
}

pub async fn states(pool: &Pool, events: &[Uuid]) -> Result<Vec<(Uuid, DeliveryState)>, DbError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT event_id, url, delivered_at, attempts, last_status, last_error, gave_up_at FROM webhook_deliveries
              WHERE event_id = ANY($1) ORDER BY id",
            &[&events],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                DeliveryState {
                    url: r.get(1),
                    delivered_at: r.get(2),
                    attempts: r.get(3),
                    last_status: r.get(4),
                    last_error: r.get(5),
                    gave_up_at: r.get(6),
                },
            )
        })
        .collect())
}
