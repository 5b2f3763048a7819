//! Kafka `results` -> PostgreSQL, through the [positioned consumer](crate::consumer): results,
//! stream ends and the new position in one transaction, so a redelivered or duplicated record is
//! stored once and a crash never loses or doubles a result.

use std::sync::Arc;

use deadpool_postgres::Pool;
use rskafka::record::RecordAndOffset;
use tokio_util::sync::CancellationToken;

use crate::config::InboxSettings;
use crate::consumer::{FetchLimits, PositionedConsumer, RecordHandler};
use crate::db::positions::Advance;
use crate::db::results::{self, Batch, DeadLetter, Stored};
use crate::db::DbError;
use crate::events::ResultsRecord;
use crate::kafka::KafkaLink;
use crate::metrics::Metrics;
use crate::tasks::TaskFailed;

/// The name positions are stored under; several relays share it (and the partitions).
pub const CONSUMER: &str = "inbox";

pub struct Inbox {
    pub pool: Pool,
    pub kafka: Arc<KafkaLink>,
    pub settings: InboxSettings,
    pub metrics: Arc<Metrics>,
}

impl Inbox {
    /// Consumes every partition of `results` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TaskFailed> {
        let topic = self.kafka.settings().topic_results.clone();
        let s = &self.settings;
        let limits = FetchLimits {
            max_bytes: s.fetch_max_bytes,
            max_wait_ms: s.fetch_max_wait_ms,
            batch_max_records: s.batch_max_records,
        };
        let consumer = PositionedConsumer {
            name: CONSUMER,
            pool: self.pool.clone(),
            kafka: self.kafka,
            limits,
            handler: StoreResults { pool: self.pool, metrics: self.metrics },
        };
        Arc::new(consumer).run(topic, shutdown).await
    }
}

struct StoreResults {
    pool: Pool,
    metrics: Arc<Metrics>,
}

impl RecordHandler for StoreResults {
    async fn apply(&self, advance: Advance<'_>, records: &[RecordAndOffset]) -> Result<bool, DbError> {
        let parsed: Vec<Result<ResultsRecord, Refusal>> = records.iter().map(parse).collect();
        let mut ids: Vec<uuid::Uuid> =
            parsed.iter().filter_map(|p| p.as_ref().ok().map(ResultsRecord::scenario)).collect();
        ids.sort_unstable();
        ids.dedup();
        let facts = results::signing_facts(&self.pool, &ids).await?;
        let now = chrono::Utc::now();
        let mut batch = Batch { frames: Vec::with_capacity(records.len()), ..Batch::default() };
        for (r, parsed) in records.iter().zip(parsed) {
            let checked = parsed.and_then(|p| match facts.get(&p.scenario()) {
                // Unknown scenarios are counted (not set aside) where they are stored.
                None => Ok(p),
                Some(f) => check(&p, &r.record, f, now).map(|()| p),
            });
            match checked {
                Ok(ResultsRecord::Frame(result)) => batch.frames.push((r.offset, result)),
                Ok(ResultsRecord::End(end)) => {
                    tracing::info!(scenario = %end.scenario_uuid, reason = ?end.end_of_stream, detail = end.detail, "stream ended");
                    batch.ends.push((r.offset, end));
                }
                Err((reason, error)) => {
                    self.reject(&advance, r.offset, &error, reason);
                    batch.dead.push(DeadLetter {
                        offset: r.offset,
                        reason: format!("{reason}: {error}"),
                        key: r.record.key.clone(),
                        value: r.record.value.clone(),
                    });
                }
            }
        }
        let Some(stored) = results::store_batch(&self.pool, &advance, batch).await? else { return Ok(false) };
        self.count(&advance, stored);
        Ok(true)
    }

    fn fetched(&self, _topic: &str, partition: i32, lag: i64) {
        self.metrics.set(
            "vap_inbox_lag_records",
            "Records on `results` not yet stored, per partition.",
            &[("partition", &partition.to_string())],
            lag as f64,
        );
    }
}

/// Why a record is refused: a metric label and the detail.
type Refusal = (&'static str, String);

/// Runners' clocks and the database's differ a little; more than this ahead is forged.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

fn parse(r: &RecordAndOffset) -> Result<ResultsRecord, Refusal> {
    match r.record.value.as_deref().map(ResultsRecord::parse) {
        None => Err(("empty", "record has no value".to_string())),
        Some(Err(e)) => Err(("malformed", e.to_string())),
        // The key places the record on its scenario's partition, in order: it must be the
        // scenario the record says.
        Some(Ok(p)) if r.record.key.as_deref() != Some(p.scenario().to_string().as_bytes()) => {
            Err(("key_mismatch", format!("record key is not its scenario {}", p.scenario())))
        }
        Some(Ok(p)) => Ok(p),
    }
}

/// Signed with the scenario's key; a frame not from the future; nothing produced after the
/// scenario came to rest (a replayed end, a late forgery).
fn check(
    record: &ResultsRecord,
    raw: &rskafka::record::Record,
    facts: &results::SigningFacts,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Refusal> {
    let value = raw.value.as_deref().unwrap_or_default();
    match raw.headers.get(crate::signing::SIGNATURE_HEADER) {
        None => return Err(("unsigned", "record has no signature".into())),
        Some(signature) if !facts.key.verify(value, signature) => {
            return Err(("bad_signature", "signature does not verify with the scenario's key".into()))
        }
        Some(_) => {}
    }
    let latest = facts.rested_at.unwrap_or(now) + CLOCK_SKEW;
    match record {
        ResultsRecord::End(_) if facts.rested_at.is_some() => {
            Err(("not_running", "end of stream for a scenario already at rest".into()))
        }
        ResultsRecord::End(_) => Ok(()),
        ResultsRecord::Frame(f) => {
            let at = chrono::Duration::try_milliseconds(f.frame_number).and_then(|d| facts.epoch.checked_add_signed(d));
            match at {
                Some(at) if at <= latest => Ok(()),
                _ if facts.rested_at.is_some() => {
                    Err(("not_running", format!("frame {} is after the scenario came to rest", f.frame_number)))
                }
                _ => Err(("frame_out_of_window", format!("frame {} is in the future", f.frame_number))),
            }
        }
    }
}

impl StoreResults {
    fn count(&self, advance: &Advance<'_>, s: Stored) {
        let m = &self.metrics;
        m.inc("vap_inbox_results_stored_total", "Results written to PostgreSQL.", &[], s.inserted as u64);
        m.inc(
            "vap_inbox_duplicates_total",
            "Results already stored (redelivered or produced twice).",
            &[],
            s.duplicates as u64,
        );
        if s.unknown_scenario > 0 {
            m.inc(
                "vap_inbox_rejected_total",
                "Records not stored, by reason.",
                &[("reason", "unknown_scenario")],
                s.unknown_scenario as u64,
            );
            let (topic, partition) = (advance.at.topic, advance.at.partition);
            tracing::warn!(topic, partition, count = s.unknown_scenario, "results for unknown scenarios dropped");
        }
        if s.dead_lettered > 0 {
            m.inc(
                "vap_inbox_dead_letters_total",
                "Records set aside in dead_letters (malformed, or refused by PostgreSQL).",
                &[],
                s.dead_lettered as u64,
            );
        }
        if s.ended > 0 {
            m.inc(
                "vap_inbox_streams_ended_total",
                "Scenarios moved to rest by their runner's end-of-stream record.",
                &[],
                s.ended as u64,
            );
        }
    }

    fn reject(&self, advance: &Advance<'_>, offset: i64, error: &str, reason: &'static str) {
        self.metrics.inc("vap_inbox_rejected_total", "Records not stored, by reason.", &[("reason", reason)], 1);
        let (topic, partition) = (advance.at.topic, advance.at.partition);
        tracing::warn!(topic, partition, offset, error, "rejected a results record");
    }
}
