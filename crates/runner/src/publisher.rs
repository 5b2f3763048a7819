//! Analysed frames -> Kafka `results` (and scene events -> `events`), keyed by scenario uuid. A bounded buffer sits between
//! the detector and the broker: while the broker is down the runner keeps analysing, the
//! oldest unsent results beyond the buffer are dropped (counted), and the rest go out when the
//! broker returns, in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::record::Record;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use vap_core::backoff::Backoff;
use vap_core::kafka::{partition_for_key, KafkaError, KafkaLink};

struct Pending {
    seq: u64,
    record: Record,
}

/// What the detector thread pushes into and the publisher task drains.
pub struct ResultBuffer {
    queue: Mutex<VecDeque<Pending>>,
    capacity: usize,
    next_seq: AtomicU64,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
    pub stats: PublishStats,
}

#[derive(Default)]
pub struct PublishStats {
    pub published: AtomicU64,
    /// Results dropped unsent because the buffer was full (broker unreachable too long).
    pub dropped_unsent: AtomicU64,
    pub produce_requests: AtomicU64,
    /// Total time in acknowledged produce requests, microseconds.
    pub produce_micros: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl PublishStats {
    fn count_produced(&self, records: usize, took: Duration) {
        self.published.fetch_add(records as u64, Ordering::Relaxed);
        self.produce_requests.fetch_add(1, Ordering::Relaxed);
        self.produce_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

impl ResultBuffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            // Grown on demand: a queue made at full size is written all the way round as it
            // turns over, so each runner's resident memory crept up to the whole of it.
            queue: Mutex::new(VecDeque::new()),
            capacity,
            next_seq: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            stats: PublishStats::default(),
        }
    }

    /// Queues a record; drops the oldest one when full. Never blocks the detector for long.
    pub fn push(&self, record: Record) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut q = vap_core::sys::lock(&self.queue);
        if q.len() >= self.capacity {
            q.pop_front();
            self.stats.dropped_unsent.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(Pending { seq, record });
        drop(q);
        self.wake.notify_one();
    }

    /// No more records will come: the publisher drains what is left and returns.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub fn len(&self) -> usize {
        vap_core::sys::lock(&self.queue).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn peek(&self, max: usize) -> Vec<(u64, Record)> {
        let q = vap_core::sys::lock(&self.queue);
        q.iter().take(max).map(|p| (p.seq, p.record.clone())).collect()
    }

    /// Forgets records up to `seq`: they were acknowledged.
    fn ack(&self, seq: u64) {
        let mut q = vap_core::sys::lock(&self.queue);
        while q.front().is_some_and(|p| p.seq <= seq) {
            q.pop_front();
        }
        // A backlog (the broker away) grew it; drained, the memory goes back.
        if q.capacity() > SMALL_QUEUE && q.len() < q.capacity() / 4 {
            let keep = q.len().max(SMALL_QUEUE);
            q.shrink_to(keep);
        }
    }

    #[cfg(test)]
    fn allocated(&self) -> usize {
        vap_core::sys::lock(&self.queue).capacity()
    }
}

/// What a buffer keeps allocated when it holds little.
const SMALL_QUEUE: usize = 64;

/// A `results` record keyed by the scenario.
pub fn result_record(scenario: Uuid, value: Vec<u8>, timestamp: chrono::DateTime<chrono::Utc>) -> Record {
    Record { key: Some(scenario.to_string().into_bytes()), value: Some(value), headers: BTreeMap::new(), timestamp }
}

pub struct Publisher {
    pub kafka: Arc<KafkaLink>,
    /// `results` or `events`.
    pub topic: String,
    pub scenario: Uuid,
    pub batch: usize,
    /// Signs every record and names its placement (the inbox stores only what verifies and is
    /// of the scenario's current placement).
    pub signer: vap_core::signing::RecordSigner,
}

impl Publisher {
    /// Drains `buffer` to the broker until it is closed and empty. After `abandon` fires (the
    /// flush deadline on shutdown) it stops even with records left, and says how many.
    pub async fn run(self, buffer: Arc<ResultBuffer>, abandon: CancellationToken) -> usize {
        let topic = self.topic.clone();
        let key = self.scenario.to_string().into_bytes();
        // Found once: every result of a scenario goes to the partition its key maps to.
        let mut partition: Option<i32> = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if abandon.is_cancelled() {
                return buffer.len();
            }
            let batch = buffer.peek(self.batch);
            if batch.is_empty() {
                if buffer.closed.load(Ordering::SeqCst) {
                    return 0;
                }
                tokio::select! {
                    _ = buffer.wake.notified() => {}
                    _ = abandon.cancelled() => {}
                    // A push between peek and notified() is not lost: Notify keeps one permit.
                }
                continue;
            }
            let last_seq = batch.last().map(|(s, _)| *s).unwrap_or(0);
            let records: Vec<Record> = batch
                .into_iter()
                .map(|(_, mut r)| {
                    self.signer.sign(&mut r.headers, r.value.as_deref().unwrap_or_default());
                    r
                })
                .collect();
            let n = records.len();
            let started = Instant::now();
            let outcome = tokio::select! {
                r = self.produce(&topic, &key, &mut partition, records) => r,
                _ = abandon.cancelled() => return buffer.len(),
            };
            match outcome {
                Ok(_) => {
                    buffer.ack(last_seq);
                    buffer.stats.count_produced(n, started.elapsed());
                    if backoff.failures() > 0 {
                        tracing::info!(after_failures = backoff.failures(), "results reach the broker again");
                    }
                    backoff.reset();
                }
                Err(e) => {
                    let wait = backoff.next_delay().unwrap_or(Duration::from_secs(5));
                    let failures = backoff.failures();
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            error = %e,
                            buffered = buffer.len(),
                            retry_in_ms = wait.as_millis() as u64,
                            "producing results failed"
                        );
                    }
                    *vap_core::sys::lock(&buffer.stats.last_error) = Some(e.to_string());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = abandon.cancelled() => return buffer.len(),
                    }
                }
            }
        }
    }

    async fn produce(
        &self,
        topic: &str,
        key: &[u8],
        partition: &mut Option<i32>,
        records: Vec<Record>,
    ) -> Result<(), KafkaError> {
        let kafka = self.kafka.get().await?;
        let p = match *partition {
            Some(p) => p,
            None => {
                let s = self.kafka.settings();
                let ids = kafka.ensure_topic(topic, s.partitions, s.replication_factor).await?;
                *partition.insert(partition_for_key(key, ids.len() as i32))
            }
        };
        let client = kafka.partition(topic, p).await?;
        let codec = vap_core::kafka::compression(self.kafka.settings());
        vap_core::kafka::bounded(kafka.request_timeout(), client.produce(records, codec)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> Record {
        result_record(Uuid::nil(), vec![n; 200], chrono::Utc::now())
    }

    #[test]
    fn a_buffer_keeps_only_what_it_holds_allocated() {
        let buffer = ResultBuffer::new(10_000);
        // A camera whose records are acknowledged as they come: no more than a few slots.
        for n in 0..20_000u64 {
            buffer.push(record(n as u8));
            buffer.ack(n);
        }
        assert!(buffer.allocated() <= SMALL_QUEUE, "{}", buffer.allocated());
        // A backlog grows it; drained, it shrinks back.
        for n in 0..5_000u64 {
            buffer.push(record(n as u8));
        }
        assert!(buffer.allocated() >= 5_000);
        buffer.ack(u64::MAX);
        assert!(buffer.is_empty());
        assert!(buffer.allocated() <= SMALL_QUEUE, "{}", buffer.allocated());
        // Full, it drops the oldest and says so.
        let small = ResultBuffer::new(3);
        (0..5).for_each(|n| small.push(record(n)));
        assert_eq!((small.len(), small.stats.dropped_unsent.load(Ordering::Relaxed)), (3, 2));
    }
}
