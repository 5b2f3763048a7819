//! Rows past retention that no partition drop takes: those of scenarios that keep less than
//! the rest (option `retention_days`), snapshots and webhook deliveries.

use deadpool_postgres::Pool;

use vap_core::db::DbError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub results: i64,
    pub events: i64,
    pub snapshots: i64,
    pub webhook_deliveries: i64,
}

impl Deleted {
    pub fn total(&self) -> i64 {
        self.results + self.events + self.snapshots + self.webhook_deliveries
    }
}

/// Deletes, by frame time (snapshots by capture time), what is older than `keep` or than its
/// scenario's `retention_days`.
pub async fn delete_expired(pool: &Pool, keep: chrono::Duration) -> Result<Deleted, DbError> {
    let client = pool.get().await?;
    let keep_secs = keep.num_seconds() as f64;
    let row = client
        .query_one(
            "WITH shorter AS (
                 SELECT scenario_uuid, now() - (options->>'retention_days')::float8 * interval '1 day' AS cutoff
                   FROM scenarios WHERE options ? 'retention_days'),
             results AS (
                 DELETE FROM scenario_results r USING shorter s
                  WHERE r.scenario_uuid = s.scenario_uuid AND r.frame_time < s.cutoff RETURNING 1),
             events AS (
                 DELETE FROM scenario_events e USING shorter s
                  WHERE e.scenario_uuid = s.scenario_uuid AND e.frame_time < s.cutoff RETURNING 1),
             snapshots AS (
                 DELETE FROM scenario_snapshots p
                  WHERE p.captured_at < now() - make_interval(secs => $1)
                     OR p.captured_at < (SELECT cutoff FROM shorter s WHERE s.scenario_uuid = p.scenario_uuid)
                 RETURNING 1),
             deliveries AS (
                 DELETE FROM webhook_deliveries d
                  WHERE d.frame_time < now() - make_interval(secs => $1)
                     OR d.frame_time < (SELECT cutoff FROM shorter s WHERE s.scenario_uuid = d.scenario_uuid)
                 RETURNING 1)
             SELECT (SELECT count(*) FROM results), (SELECT count(*) FROM events),
                    (SELECT count(*) FROM snapshots), (SELECT count(*) FROM deliveries)",
            &[&keep_secs],
        )
        .await?;
    Ok(Deleted { results: row.get(0), events: row.get(1), snapshots: row.get(2), webhook_deliveries: row.get(3) })
}
