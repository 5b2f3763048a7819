//! Time partitions of `scenario_results` and `scenario_events` (migration 0013), keyed by
//! frame time: made ahead and on demand, dropped whole once past retention.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, DurationRound, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;

use vap_core::db::DbError;

/// The partitioned tables.
pub const TABLES: [&str; 2] = ["scenario_results", "scenario_events"];

/// Serialise the relays' creating partitions, and their dropping them, each apart: a drop
/// waits for old readers and must not hold up a batch that needs a new partition.
const CREATE_LOCK: i64 = 0x0076_6170_5f70_6172; // "vap_par"
const DROP_LOCK: i64 = 0x0076_6170_5f64_726f; // "vap_dro"

/// One partition: `[lower, upper)` of frame time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub lower: DateTime<Utc>,
    pub upper: DateTime<Utc>,
    /// A `DETACH ... CONCURRENTLY` that was interrupted: it still has to be finished.
    pub detach_pending: bool,
}

/// The partitions of `table`, oldest first.
pub async fn list(client: &impl GenericClient, table: &str) -> Result<Vec<Partition>, DbError> {
    let rows = client
        .query(
            r"SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz, i.inhdetachpending
                FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
                     regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') b
               WHERE i.inhparent = $1::text::regclass
               ORDER BY 2",
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Partition { name: r.get(0), lower: r.get(1), upper: r.get(2), detach_pending: r.get(3) })
        .collect())
}

/// The span `[lower, upper)` a new partition holding `t` gets: `span` aligned to the Unix
/// epoch (days start at midnight UTC), cut short where it would overlap an existing one.
pub fn span_for(t: DateTime<Utc>, span: Duration, existing: &[Partition]) -> (DateTime<Utc>, DateTime<Utc>) {
    let mut lower = t.duration_trunc(span).unwrap_or(t);
    let mut upper = lower + span;
    for p in existing {
        if p.upper <= t {
            lower = lower.max(p.upper);
        } else if p.lower > t {
            upper = upper.min(p.lower);
        }
    }
    (lower, upper)
}

fn covers(partitions: &[Partition], t: DateTime<Utc>) -> bool {
    partitions.iter().any(|p| p.lower <= t && t < p.upper)
}

/// Makes partitions so that each of `times` has one; returns the names made. Serialised with
/// other relays by a transaction-scoped lock, so two never make overlapping ones.
pub async fn ensure(
    pool: &Pool,
    table: &str,
    times: &[DateTime<Utc>],
    span: Duration,
) -> Result<Vec<Partition>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK]).await?;
    let mut partitions = list(&*tx, table).await?;
    for &t in times {
        if covers(&partitions, t) {
            continue;
        }
        let (lower, upper) = span_for(t, span, &partitions);
        let name: String =
            tx.query_one("SELECT vap_attach_partition($1, $2, $3)", &[&table, &lower, &upper]).await?.get(0);
        tracing::info!(table, partition = name, %lower, %upper, "partition made");
        partitions.push(Partition { name, lower, upper, detach_pending: false });
        partitions.sort_by_key(|p| p.lower);
    }
    tx.commit().await?;
    Ok(partitions)
}

/// Detaches and drops the partitions of `table` that end at or before `cutoff`; returns their
/// names. `DETACH ... CONCURRENTLY` waits for readers of the partition but blocks no reader or
/// writer of the table. Relays take turns.
pub async fn drop_before(
    settings: &vap_core::config::DatabaseSettings,
    table: &str,
    cutoff: DateTime<Utc>,
) -> Result<Vec<String>, DbError> {
    // A connection of its own: the session lock must be released on the one that took it, and
    // a concurrent detach runs outside any transaction.
    let client = vap_core::db::dedicated_connection(settings).await?;
    // Detaching waits for the readers of the partition: the database's own timeout, not ours.
    client.batch_execute("SET statement_timeout = 0").await?;
    // After another relay's drops, not beside them (the lock goes with this connection).
    client.execute("SELECT pg_advisory_lock($1)", &[&DROP_LOCK]).await?;
    let mut dropped = Vec::new();
    for p in list(&client, table).await?.into_iter().filter(|p| p.upper <= cutoff) {
        let (parent, name) = (quote(table), quote(&p.name));
        // An interrupted detach can only be finished.
        let how = if p.detach_pending { "FINALIZE" } else { "CONCURRENTLY" };
        client.batch_execute(&format!("ALTER TABLE {parent} DETACH PARTITION {name} {how}")).await?;
        client.batch_execute(&format!("DROP TABLE {name}")).await?;
        tracing::info!(table, partition = p.name, upper = %p.upper, "partition dropped");
        dropped.push(p.name);
    }
    Ok(dropped)
}

/// A name as an SQL identifier (ours, but quoted all the same).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What the inbox knows of the partitions, so that a batch needs no catalogue lookup unless
/// it holds a frame time no known partition covers.
#[derive(Debug)]
pub struct Coverage {
    pub span: Duration,
    known: Mutex<HashMap<String, Vec<Partition>>>,
}

impl Coverage {
    pub fn new(span: Duration) -> Self {
        Self { span, known: Mutex::new(HashMap::new()) }
    }

    /// Forgets what it knew (after partitions were dropped).
    pub fn forget(&self) {
        vap_core::sys::lock(&self.known).clear();
    }

    /// Makes sure every time in `times` has a partition of `table`.
    pub async fn cover(&self, pool: &Pool, table: &str, times: &[DateTime<Utc>]) -> Result<(), DbError> {
        let missing: Vec<DateTime<Utc>> = {
            let known = vap_core::sys::lock(&self.known);
            let partitions = known.get(table).map(Vec::as_slice).unwrap_or_default();
            times.iter().copied().filter(|&t| !covers(partitions, t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let partitions = ensure(pool, table, &missing, self.span).await?;
        vap_core::sys::lock(&self.known).insert(table.to_string(), partitions);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn part(lower: &str, upper: &str) -> Partition {
        Partition { name: String::new(), lower: at(lower), upper: at(upper), detach_pending: false }
    }

    #[test]
    fn a_new_partition_is_aligned_to_its_span_and_cut_short_by_its_neighbours() {
        let day = Duration::days(1);
        let t = at("2026-12-06T13:14:15Z");
        assert_eq!(span_for(t, day, &[]), (at("2026-12-06T00:00:00Z"), at("2026-12-07T00:00:00Z")));
        assert_eq!(span_for(t, Duration::hours(6), &[]), (at("2026-12-06T12:00:00Z"), at("2026-12-06T18:00:00Z")));
        // Made with another span before: no overlap either side.
        let existing = [
            part("2026-12-05T00:00:00Z", "2026-12-06T06:00:00Z"),
            part("2026-12-06T18:00:00Z", "2026-12-07T18:00:00Z"),
        ];
        assert_eq!(span_for(t, day, &existing), (at("2026-12-06T06:00:00Z"), at("2026-12-06T18:00:00Z")));
    }
}
