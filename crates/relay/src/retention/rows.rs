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
    pub dead_letters: i64,
}

impl Deleted {
    pub fn total(&self) -> i64 {
        self.results + self.events + self.snapshots + self.webhook_deliveries + self.dead_letters
    }
}

/// How many records set aside are kept, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterBounds {
    pub keep: chrono::Duration,
    pub per_scenario: i64,
    pub total: i64,
}

/// Deletes records set aside past their age, past a scenario's count (the oldest of it first),
/// and past the count of all (the oldest first). Returns how many.
pub async fn prune_dead_letters(pool: &Pool, bounds: DeadLetterBounds) -> Result<i64, DbError> {
    let client = pool.get().await?;
    let keep_secs = bounds.keep.num_seconds() as f64;
    let old = client
        .execute("DELETE FROM dead_letters WHERE received_at < now() - make_interval(secs => $1)", &[&keep_secs])
        .await?;
    let per_scenario = client
        .execute(
            "DELETE FROM dead_letters d USING (
                 SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY record_key ORDER BY id DESC) AS nth
                                   FROM dead_letters WHERE record_key IS NOT NULL) n
                  WHERE nth > $1) past
              WHERE d.id = past.id",
            &[&bounds.per_scenario],
        )
        .await?;
    let over = client
        .execute(
            "DELETE FROM dead_letters
              WHERE id <= (SELECT id FROM dead_letters ORDER BY id DESC OFFSET $1 LIMIT 1)",
            &[&bounds.total],
        )
        .await?;
    Ok((old + per_scenario + over) as i64)
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
    Ok(Deleted {
        results: row.get(0),
        events: row.get(1),
        snapshots: row.get(2),
        webhook_deliveries: row.get(3),
        dead_letters: 0,
    })
}
