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
    pub attempts: i32,
    pub event: SceneEvent,
}

/// Claims up to `limit` queue heads (one per scenario and receiver) whose time has come, for
/// `lease_ms`: a later event of a scenario waits for the earlier one, so each receiver gets them
/// in order, and a head claimed by one relay is not sent by another meanwhile.
pub async fn due(pool: &Pool, limit: i64, lease_ms: i64) -> Result<Vec<Due>, DbError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "WITH heads AS (
                 SELECT id, next_attempt_at FROM (
                     SELECT DISTINCT ON (scenario_uuid, url) id, next_attempt_at
                       FROM webhook_deliveries WHERE delivered_at IS NULL
                      ORDER BY scenario_uuid, url, id) h
                  WHERE next_attempt_at <= now()
                  ORDER BY next_attempt_at
                  LIMIT $1),
             claimed AS (
                 -- A row another relay claimed first fails the re-checked condition: skipped.
                 UPDATE webhook_deliveries d SET next_attempt_at = now() + $2 * interval '1 millisecond'
                   FROM heads WHERE d.id = heads.id AND d.next_attempt_at <= now() AND d.delivered_at IS NULL
                 RETURNING d.id, d.event_id, d.frame_time, d.url, d.attempts)
             SELECT c.id, c.url, c.attempts, {COLUMNS}
               FROM claimed c JOIN scenario_events e USING (event_id, frame_time)"
        ))
        .await?;
    let rows = client.query(&stmt, &[&limit, &(lease_ms as f64)]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some(Due { id: r.get(0), url: r.get(1), attempts: r.get(2), event: from_row(r, 3)? }))
        .collect())
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

/// A failed try: the next one after `retry_in_ms`.
pub async fn failed(pool: &Pool, id: i64, status: Option<u16>, error: &str, retry_in_ms: i64) -> Result<(), DbError> {
    let client = pool.get().await?;
    let error: String = error.replace('\0', "\\0").chars().take(1000).collect();
    client
        .execute(
            "UPDATE webhook_deliveries
                SET attempts = attempts + 1, last_status = $2, last_error = $3,
                    next_attempt_at = now() + $4 * interval '1 millisecond'
              WHERE id = $1",
            &[&id, &status.map(i32::from), &error, &(retry_in_ms as f64)],
        )
        .await?;
    Ok(())
}

/// How an event's deliveries stand, for the API.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryState {
    pub url: String,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

pub async fn states(pool: &Pool, events: &[Uuid]) -> Result<Vec<(Uuid, DeliveryState)>, DbError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT event_id, url, delivered_at, attempts, last_status, last_error FROM webhook_deliveries
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
                },
            )
        })
        .collect())
}
