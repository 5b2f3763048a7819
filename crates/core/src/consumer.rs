//! A Kafka consumer that keeps its positions in PostgreSQL: one task per partition reads from
//! its stored position, and the handler stores what it read and the new position in one
//! transaction (`db::positions::advance`). Redelivered or duplicated records have one effect,
//! and a crash never loses or doubles one. Used by the inbox (its partitions [shared](share)
//! among relays) and the orchestrator's leader.

mod progress;
mod share;

pub use progress::{PartitionState, Progress};

/// The inbox's positions are stored under this name; several relays share it (and the
/// partitions). The API reads its lag.
pub const INBOX_CONSUMER: &str = "inbox";

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use rskafka::client::partition::OffsetAt;
use rskafka::record::RecordAndOffset;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::db::positions::{self, Advance, PartitionRef};
use crate::db::DbError;
use crate::kafka::{KafkaError, KafkaLink};
use crate::tasks::{OwnedTasks, TaskFailed};

/// Applies a range of records; see the module documentation.
pub trait RecordHandler: Send + Sync + 'static {
    /// Stores the effects of `records` with `db::positions::advance(&tx, &advance)` in one
    /// transaction. `Ok(false)` when the advance found the position moved (nothing stored).
    fn apply(
        &self,
        advance: Advance<'_>,
        records: &[RecordAndOffset],
    ) -> impl Future<Output = Result<bool, DbError>> + Send;

    /// Called when this process's share of `topic` changes, with how many partitions it holds.
    fn held(&self, _topic: &str, _partitions: usize) {}

    /// Called when `records` offsets of a batch no fetch could decode were stepped over.
    fn skipped(&self, _topic: &str, _partition: i32, _records: i64) {}
}

/// Fetches of one offset that must fail to decode before its batch is stepped over: a batch
/// this client cannot read fails the same way every time, but one failure may be a fluke.
pub const UNDECODABLE_TRIES: u32 = 3;

/// Which partitions of a topic this process consumes.
#[derive(Debug, Clone)]
pub enum Share {
    /// All of them: the only process running the consumer (the orchestrator's leader).
    All,
    /// Those that fall to it among the processes running the same consumer, agreed through
    /// advisory locks on a connection of its own and re-divided every `every`.
    Divided { database: crate::config::DatabaseSettings, every: Duration },
}

#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_bytes: i32,
    pub max_wait_ms: i32,
    /// Largest number of records applied in one transaction.
    pub batch_max_records: usize,
}

pub struct PositionedConsumer<H> {
    /// The name positions are stored under; consumers of the same name share them.
    pub name: &'static str,
    pub pool: Pool,
    pub kafka: Arc<KafkaLink>,
    pub limits: FetchLimits,
    pub handler: H,
    pub share: Share,
    /// Where each partition stands, for /metrics and /ready.
    pub progress: Arc<Progress>,
}

impl<H: RecordHandler> PositionedConsumer<H> {
    /// Consumes its share of the partitions of `topic` until `stop`. Waits for the broker first.
    pub async fn run(self: Arc<Self>, topic: String, stop: CancellationToken) -> Result<(), TaskFailed> {
        let Some(partitions) = self.kafka.wait_for_topic(&topic, &stop).await else { return Ok(()) };
        tracing::info!(consumer = self.name, topic, partitions = partitions.len(), "consuming");
        if let Share::Divided { database, every } = self.share.clone() {
            return self.run_divided(topic, partitions, &database, every, stop).await;
        }
        let mut tasks = OwnedTasks::new(&stop);
        for partition in partitions {
            let (this, topic, token) = (Arc::clone(&self), topic.clone(), tasks.token());
            tasks.spawn("partition consumer", async move { this.consume(&topic, partition, token).await });
        }
        tasks.join().await
    }

    async fn consume(&self, topic: &str, partition: i32, stop: CancellationToken) {
        let at = PartitionRef { consumer: self.name, topic, partition };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut next: Option<i64> = None;
        // The offset fetches failed to decode at, and how many times in a row.
        let mut undecodable: Option<(i64, u32)> = None;
        while !stop.is_cancelled() {
            if backoff.failures() > 0 && !backoff.wait(&stop).await {
                return;
            }
            let from = match next {
                Some(n) => n,
                None => match positions::read(&self.pool, at, 0).await {
                    Ok(n) => {
                        self.progress.started(topic, partition, n);
                        *next.insert(n)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, consumer = self.name, topic, partition, "cannot read position");
                        self.progress.failed(topic, partition, e.to_string());
                        backoff.next_delay();
                        continue;
                    }
                },
            };
            let fetched = tokio::select! {
                r = self.fetch(topic, partition, from, self.limits.max_bytes) => r,
                _ = stop.cancelled() => return,
            };
            let (records, high_watermark) = match fetched {
                Ok(r) => r,
                Err(e) if e.is_offset_out_of_range() => {
                    next = self.recover(at, from).await;
                    backoff.next_delay();
                    continue;
                }
                Err(e) if e.is_undecodable() => match self.undecodable(at, from, &e, &mut undecodable).await {
                    Some(Decoded::Records(records, high_watermark)) => (records, high_watermark),
                    Some(Decoded::SteppedTo(n)) => {
                        next = Some(n);
                        continue;
                    }
                    None => {
                        backoff.next_delay();
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, consumer = self.name, topic, partition, "fetch failed");
                    self.progress.failed(topic, partition, e.to_string());
                    self.look_at_end(at).await;
                    backoff.next_delay();
                    continue;
                }
            };
            // Past the end of the log: the broker lost records we had read (a restart without
            // its storage). Some brokers answer that with no records rather than an error.
            if from > high_watermark {
                next = self.recover(at, from).await;
                backoff.next_delay();
                continue;
            }
            backoff.reset();
            undecodable = None;
            self.progress.saw_end(topic, partition, high_watermark);
            match self.apply(at, from, high_watermark, &records).await {
                Ok(n) => {
                    self.progress.advanced(topic, partition, n);
                    next = Some(n);
                    // Nothing readable below the end (a trailing transaction marker, or records
                    // not yet committed): ask again later, not in a loop.
                    if records.is_empty() && n < high_watermark {
                        backoff.next_delay();
                    }
                }
                Err(ApplyFailed::PositionMoved) => next = None,
                Err(ApplyFailed::Db(e)) => {
                    tracing::warn!(error = %e, consumer = self.name, topic, partition, "storing failed; will re-read");
                    self.progress.failed(topic, partition, e.to_string());
                    backoff.next_delay();
                    next = None;
                }
            }
        }
    }

    /// A fetch from `from` could not be decoded. The failing batch may lie further in the
    /// answer, so first one batch alone is asked for; when that fails [`UNDECODABLE_TRIES`]
    /// times, the unreadable batches are stepped over to the first offset that reads, and the
    /// range is set aside in `dead_letters`. None: try again after a pause.
    async fn undecodable(
        &self,
        at: PartitionRef<'_>,
        from: i64,
        error: &KafkaError,
        seen: &mut Option<(i64, u32)>,
    ) -> Option<Decoded> {
        let (topic, partition) = (at.topic, at.partition);
        match self.fetch(topic, partition, from, ONE_BATCH).await {
            Ok((records, high_watermark)) if !records.is_empty() => {
                return Some(Decoded::Records(records, high_watermark))
            }
            Ok(_) => return None,
            Err(e) if !e.is_undecodable() => return None,
            Err(_) => {}
        }
        let tries = match seen {
            Some((offset, n)) if *offset == from => {
                *n += 1;
                *n
            }
            _ => seen.insert((from, 1)).1,
        };
        tracing::warn!(error = %error, consumer = self.name, topic, partition, offset = from, tries, "cannot decode the batch");
        self.progress.failed(topic, partition, format!("cannot decode the batch at offset {from}: {error}"));
        self.look_at_end(at).await;
        if tries < UNDECODABLE_TRIES {
            return None;
        }
        let (to, end) = self.first_readable_after(topic, partition, from).await?;
        let reason = format!("undecodable batch, offsets {from}..{}: {error}", to - 1);
        match positions::step_over(
            &self.pool,
            Advance { at, from_offset: from, next_offset: to, high_watermark: end },
            &reason,
        )
        .await
        {
            Ok(true) => {
                tracing::error!(consumer = self.name, topic, partition, from, to, %error, "stepped over an undecodable batch; set aside in dead_letters");
                self.handler.skipped(topic, partition, to - from);
                self.progress.advanced(topic, partition, to);
                *seen = None;
                Some(Decoded::SteppedTo(to))
            }
            // Another consumer moved the position: start again from the stored one.
            Ok(false) => Some(Decoded::SteppedTo(positions::read(&self.pool, at, 0).await.ok()?)),
            Err(e) => {
                tracing::warn!(error = %e, consumer = self.name, topic, partition, "cannot record the skipped batch");
                None
            }
        }
    }

    /// The first offset after `from` whose batch decodes (or the log's end), and the end. One
    /// offset at a time: a batch's length is in the header the client could not give us, and
    /// stepping further could pass readable records.
    async fn first_readable_after(&self, topic: &str, partition: i32, from: i64) -> Option<(i64, i64)> {
        let end = self.log_end(topic, partition).await?.max(from + 1);
        let mut offset = from + 1;
        while offset < end {
            match self.fetch(topic, partition, offset, ONE_BATCH).await {
                Ok(_) => return Some((offset, end)),
                Err(e) if e.is_undecodable() => offset += 1,
                Err(_) => return None,
            }
        }
        Some((end, end))
    }

    /// The partition's end as the broker reports it now, also when fetches fail.
    async fn log_end(&self, topic: &str, partition: i32) -> Option<i64> {
        let kafka = self.kafka.get().await.ok()?;
        let client = kafka.partition(topic, partition).await.ok()?;
        crate::kafka::bounded(kafka.request_timeout(), client.get_offset(OffsetAt::Latest)).await.ok()
    }

    /// Keeps the lag true while nothing can be read: the end is asked for and stored.
    async fn look_at_end(&self, at: PartitionRef<'_>) {
        if let Some(end) = self.log_end(at.topic, at.partition).await {
            self.progress.saw_end(at.topic, at.partition, end);
            if let Err(e) = positions::saw_end(&self.pool, at, end).await {
                tracing::debug!(error = %e, "cannot store the partition's end");
            }
        }
    }

    /// Records from `from` on, in offset order (a fetch can start at the head of the batch
    /// that holds `from`), and the partition's high watermark.
    async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        max_bytes: i32,
    ) -> Result<(Vec<RecordAndOffset>, i64), KafkaError> {
        let kafka = self.kafka.get().await?;
        let client = kafka.partition(topic, partition).await?;
        let fetch = client.fetch_records(from, 1..max_bytes, self.limits.max_wait_ms);
        let (mut records, high_watermark) = crate::kafka::bounded(kafka.request_timeout(), fetch).await?;
        records.retain(|r| r.offset >= from);
        records.sort_by_key(|r| r.offset);
        Ok((records, high_watermark))
    }

    /// Applies `records` in chunks, each in its own transaction; returns the position after.
    async fn apply(
        &self,
        at: PartitionRef<'_>,
        from: i64,
        high_watermark: i64,
        records: &[RecordAndOffset],
    ) -> Result<i64, ApplyFailed> {
        let mut start = from;
        for chunk in records.chunks(self.limits.batch_max_records.max(1)) {
            let end = chunk.last().map_or(start, |r| r.offset + 1);
            let advance = Advance { at, from_offset: start, next_offset: end, high_watermark };
            if !self.handler.apply(advance, chunk).await? {
                // Another consumer of the same name took this range.
                return Err(ApplyFailed::PositionMoved);
            }
            start = end;
        }
        Ok(start)
    }

    /// The stored position fell outside the log (retention, or a broker that lost its data):
    /// continue from the earliest record still kept. Duplicates are harmless; gaps are not.
    async fn recover(&self, at: PartitionRef<'_>, from: i64) -> Option<i64> {
        let kafka = self.kafka.get().await.ok()?;
        let client = kafka.partition(at.topic, at.partition).await.ok()?;
        let earliest =
            crate::kafka::bounded(kafka.request_timeout(), client.get_offset(OffsetAt::Earliest)).await.ok()?;
        tracing::warn!(
            consumer = at.consumer,
            topic = at.topic,
            partition = at.partition,
            from,
            earliest,
            "position out of range; restarting at the earliest offset"
        );
        positions::reset(&self.pool, at, earliest).await.ok()?;
        Some(earliest)
    }
}

/// A byte limit of one: the broker still sends the first whole batch, and only that one.
const ONE_BATCH: i32 = 2;

enum Decoded {
    /// The first batch alone decoded: the undecodable one lies further on.
    Records(Vec<RecordAndOffset>, i64),
    /// The position after the batches stepped over.
    SteppedTo(i64),
}

enum ApplyFailed {
    PositionMoved,
    Db(DbError),
}

impl From<DbError> for ApplyFailed {
    fn from(e: DbError) -> Self {
        ApplyFailed::Db(e)
    }
}
