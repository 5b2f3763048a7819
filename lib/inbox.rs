//! Kafka `results` -> PostgreSQL. One task per partition reads from its stored position and
//! writes results and the new position in one transaction: redelivered or duplicated records
//! are stored once, and a crash never loses or doubles a result.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use rskafka::client::partition::OffsetAt;
use tokio_util::sync::CancellationToken;

use crate::config::InboxSettings;
use crate::db::results::{self, Batch, BatchOutcome};
use crate::events::ResultsRecord;
use crate::kafka::{KafkaError, KafkaLink};
use crate::metrics::Metrics;

/// The name positions are stored under; several relays share it (and the partitions).
pub const CONSUMER: &str = "inbox";

pub struct Inbox {
    pub pool: Pool,
    pub kafka: Arc<KafkaLink>,
    pub settings: InboxSettings,
    pub metrics: Arc<Metrics>,
}

impl Inbox {
    /// Runs one consumer per partition of `results` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let topic = this.kafka.settings().topic_results.clone();
        // The relay keeps serving the outbox while the broker is away.
        let Some(partitions) = this.kafka.wait_for_topic(&topic, &shutdown).await else { return };
        tracing::info!(topic, partitions = partitions.len(), "inbox consuming");
        let tasks: Vec<_> = partitions
            .into_iter()
            .map(|p| tokio::spawn(Arc::clone(&this).consume(topic.clone(), p, shutdown.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn consume(self: Arc<Self>, topic: String, partition: i32, shutdown: CancellationToken) {
        let p = partition.to_string();
        let mut failures = 0u32;
        let mut next: Option<i64> = None;
        while !shutdown.is_cancelled() {
            if failures > 0 {
                let wait = Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let from = match next {
                Some(n) => n,
                None => match results::position(&self.pool, CONSUMER, &topic, partition, 0).await {
                    Ok(n) => {
                        next = Some(n);
                        n
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition, "cannot read inbox position");
                        failures += 1;
                        continue;
                    }
                },
            };
            let fetched = async {
                let client = self.kafka.get().await?.partition(&topic, partition).await?;
                client
                    .fetch_records(from, 1..self.settings.fetch_max_bytes, self.settings.fetch_max_wait_ms)
                    .await
                    .map_err(KafkaError::from)
            };
            let (mut records, high_watermark) = tokio::select! {
                r = fetched => match r {
                    Ok(r) => r,
                    Err(e) if e.is_offset_out_of_range() => {
                        next = self.recover_position(&topic, partition, from).await;
                        failures += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition, "fetch failed");
                        failures += 1;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            failures = 0;
            // A fetch can start at the head of the batch that holds `from`.
            records.retain(|r| r.offset >= from);
            records.sort_by_key(|r| r.offset);
            self.metrics.set(
                "vap_inbox_lag_records",
                "Records on `results` not yet stored, per partition.",
                &[("partition", &p)],
                (high_watermark - from).max(0) as f64,
            );
            if records.is_empty() {
                continue;
            }
            let mut start = from;
            for chunk in records.chunks(self.settings.batch_max_records) {
                let mut parsed = Vec::with_capacity(chunk.len());
                let mut ends = Vec::new();
                for r in chunk {
                    match r.record.value.as_deref().map(ResultsRecord::parse) {
                        Some(Ok(ResultsRecord::Frame(result))) => parsed.push(result),
                        Some(Ok(ResultsRecord::End(end))) => {
                            tracing::info!(scenario = %end.scenario_uuid, reason = ?end.end_of_stream, detail = end.detail, "stream ended");
                            ends.push(end);
                        }
                        Some(Err(e)) => self.reject(&topic, partition, r.offset, &e.to_string(), "malformed"),
                        None => self.reject(&topic, partition, r.offset, "record has no value", "empty"),
                    }
                }
                let end = chunk.last().map(|r| r.offset + 1).unwrap_or(start);
                let batch = Batch {
                    consumer: CONSUMER,
                    topic: &topic,
                    partition,
                    from_offset: start,
                    next_offset: end,
                    high_watermark,
                    results: &parsed,
                    ends: &ends,
                };
                match results::store_batch(&self.pool, batch).await {
                    Ok(BatchOutcome::Stored(s)) => {
                        let m = &self.metrics;
                        m.inc(
                            "vap_inbox_results_stored_total",
                            "Results written to PostgreSQL.",
                            &[],
                            s.inserted as u64,
                        );
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
                            tracing::warn!(
                                topic,
                                partition,
                                count = s.unknown_scenario,
                                "results for unknown scenarios dropped"
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
                        start = end;
                        next = Some(end);
                    }
                    Ok(BatchOutcome::PositionMoved) => {
                        // Another relay's inbox took this range: re-read our position.
                        next = None;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic, partition, "storing results failed; will re-read");
                        failures += 1;
                        next = None;
                        break;
                    }
                }
            }
        }
    }

    fn reject(&self, topic: &str, partition: i32, offset: i64, error: &str, reason: &'static str) {
        self.metrics.inc("vap_inbox_rejected_total", "Records not stored, by reason.", &[("reason", reason)], 1);
        tracing::warn!(topic, partition, offset, error, "rejected a results record");
    }

    /// The stored position fell outside the log (retention, or a broker that lost its data):
    /// continue from the earliest record still kept. Duplicates are harmless; gaps are not.
    async fn recover_position(&self, topic: &str, partition: i32, from: i64) -> Option<i64> {
        let client = self.kafka.get().await.ok()?.partition(topic, partition).await.ok()?;
        let earliest = client.get_offset(OffsetAt::Earliest).await.ok()?;
        tracing::warn!(
            topic,
            partition,
            from,
            earliest,
            "inbox position out of range; restarting at the earliest offset"
        );
        results::reset_position(&self.pool, CONSUMER, topic, partition, earliest).await.ok()?;
        Some(earliest)
    }
}
