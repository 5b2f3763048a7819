//! Outbox -> Kafka. Claims unpublished events in batches, produces them keyed by scenario uuid,
//! and marks them published only after the broker acknowledged them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use rskafka::record::Record;
use tokio_util::sync::CancellationToken;

use vap_core::backoff::Backoff;
use vap_core::config::{DatabaseSettings, RelaySettings};
use vap_core::db::{self, outbox};
use vap_core::events::{EventKind, ScenarioEvent};
use vap_core::kafka::{partition_for_key, Kafka, KafkaError, KafkaLink};
use vap_core::metrics::Metrics;

/// The outbox ids of one (topic, partition) group and the records that carry them.
type EventsAndRecords = (Vec<i64>, Vec<Record>);

pub struct OutboxRelay {
    pub pool: Pool,
    pub database: DatabaseSettings,
    pub kafka: Arc<KafkaLink>,
    pub settings: RelaySettings,
    pub metrics: Arc<Metrics>,
}

impl OutboxRelay {
    fn topic(&self, kind: EventKind) -> &str {
        let k = self.kafka.settings();
        match kind {
            EventKind::InitScenario => &k.topic_init_scenario,
            EventKind::ShutdownScenario => &k.topic_shutdown_scenario,
            EventKind::UpdateScenario => &k.topic_update_scenario,
        }
    }

    /// The connection and each event topic's real partition count (a topic made elsewhere need
    /// not match the config). Done before rows are claimed, so no transaction waits on a connect.
    async fn connect(&self) -> Result<(Arc<Kafka>, BTreeMap<&str, i32>), KafkaError> {
        let kafka = self.kafka.get().await?;
        let s = self.kafka.settings();
        let mut partitions = BTreeMap::new();
        for kind in [EventKind::InitScenario, EventKind::ShutdownScenario, EventKind::UpdateScenario] {
            let topic = self.topic(kind);
            let ids = kafka.ensure_topic(topic, s.partitions, s.replication_factor).await?;
            partitions.insert(topic, ids.len() as i32);
        }
        Ok((kafka, partitions))
    }

    /// Produces `events`; returns the outbox ids the broker acknowledged. Each scenario maps to
    /// one partition, and a partition's events go in one ordered request, so per-scenario order
    /// holds. A partition that fails leaves its rows unpublished for the next round. The claimed
    /// rows stay locked until this returns, so each partition's send has one deadline in all.
    async fn publish(
        &self,
        kafka: &Arc<Kafka>,
        partitions: &BTreeMap<&str, i32>,
        events: Vec<ScenarioEvent>,
    ) -> Result<Vec<i64>, KafkaError> {
        let mut groups: BTreeMap<(&str, i32), EventsAndRecords> = BTreeMap::new();
        for event in &events {
            let key = event.scenario_uuid.to_string().into_bytes();
            let topic = self.topic(event.event_type);
            let partition = partition_for_key(&key, partitions[topic]);
            let group = groups.entry((topic, partition)).or_default();
            group.0.push(event.event_id);
            group.1.push(Record {
                key: Some(key),
                value: Some(serde_json::to_vec(event).unwrap_or_default()),
                headers: BTreeMap::from([("event_type".to_string(), event.event_type.as_str().as_bytes().to_vec())]),
                timestamp: event.occurred_at,
            });
        }
        let codec = vap_core::kafka::compression(self.kafka.settings());
        let sends = groups.into_iter().map(|((topic, partition), (ids, records))| {
            let kafka = Arc::clone(kafka);
            async move {
                let n = records.len();
                let send = async {
                    let client = kafka.partition(topic, partition).await?;
                    client.produce(records, codec).await.map_err(KafkaError::from)
                };
                vap_core::kafka::bounded(kafka.request_timeout(), send).await?;
                Ok::<_, KafkaError>((topic, n, ids))
            }
        });
        let mut acked = Vec::with_capacity(events.len());
        let mut first_error = None;
        for outcome in futures::future::join_all(sends).await {
            match outcome {
                Ok((topic, n, ids)) => {
                    self.metrics.inc(&crate::metrics::EVENTS_PUBLISHED, &[topic], n as u64);
                    acked.extend(ids);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match first_error {
            Some(e) if acked.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "some partitions failed; their events stay in the outbox");
                Ok(acked)
            }
            None => Ok(acked),
        }
    }

    /// Publishes until the outbox is empty or an error stops the round.
    /// Returns rows published, and whether the round ended on a failure.
    async fn drain(&self, shutdown: &CancellationToken) -> (usize, bool) {
        let mut total = 0;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let (kafka, partitions) = match self.connect().await {
                Ok(connected) => connected,
                Err(e) => {
                    self.metrics.inc(&crate::metrics::PUBLISH_FAILURES, &[], 1);
                    tracing::warn!(error = %e, "kafka unavailable; events stay in the outbox");
                    return (total, true);
                }
            };
            let publish = |events| self.publish(&kafka, &partitions, events);
            match outbox::publish_batch(&self.pool, self.settings.batch_size, publish).await {
                Ok(Ok(n)) => {
                    total += n;
                    if n > 0 {
                        self.metrics.observe(&crate::metrics::BATCH_SECONDS, &[], started.elapsed());
                    }
                    if (n as i64) < self.settings.batch_size {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    self.metrics.inc(&crate::metrics::PUBLISH_FAILURES, &[], 1);
                    tracing::warn!(error = %e, "kafka unavailable; events stay in the outbox");
                    return (total, true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox read failed");
                    return (total, true);
                }
            }
        }
        (total, false)
    }

    /// Runs until `shutdown`: wakes on NOTIFY (or the fallback poll), drains, prunes.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let prune_every = Duration::from_secs(self.settings.prune_interval_secs.max(1));
        let mut last_prune = Instant::now() - prune_every;
        let mut watchdog = vap_core::lifecycle::Watchdog::from_env();
        let mut listener = None;
        // After a failed round, back off instead of spinning on the broker (never past the poll).
        let mut backoff = Backoff::new(Duration::from_millis(100), poll);
        while !shutdown.is_cancelled() {
            if listener.is_none() {
                match db::listen(&self.database, &[outbox::OUTBOX_CHANNEL]).await {
                    Ok(l) => listener = Some(l),
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN on the outbox; polling"),
                }
            }
            let (published, failed) = self.drain(&shutdown).await;
            if published > 0 {
                tracing::debug!(published, "outbox drained");
            }
            if last_prune.elapsed() >= prune_every {
                last_prune = Instant::now();
                match outbox::prune(&self.pool, self.settings.retention_secs).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned published outbox rows"),
                    Err(e) => tracing::warn!(error = %e, "outbox prune failed"),
                }
                match outbox::prune_idempotency_keys(&self.pool, self.settings.idempotency_key_retention_secs).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "pruned idempotency keys"),
                    Err(e) => tracing::warn!(error = %e, "idempotency key prune failed"),
                }
            }
            let wait = if failed {
                backoff.next_delay().unwrap_or(poll)
            } else {
                backoff.reset();
                poll
            };
            let notified = async {
                match listener.as_mut() {
                    Some((_, rx)) => rx.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = notified => {
                    if !alive {
                        listener = None;
                    } else if let Some((_, rx)) = listener.as_mut() {
                        while rx.try_recv().is_ok() {} // one drain serves every pending notification
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = watchdog.tick() => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}
