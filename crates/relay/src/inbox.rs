//! Kafka `results`, `events` and `snapshots` -> PostgreSQL, through the [positioned consumer](vap_core::consumer):
//! results, stream ends, scene events and the new position in one transaction, so a redelivered
//! or duplicated record is stored once and a crash never loses or doubles one.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use rskafka::record::RecordAndOffset;
use tokio_util::sync::CancellationToken;

use crate::retention::Window;
use vap_core::config::InboxSettings;
use vap_core::consumer::{FetchLimits, PositionedConsumer, RecordHandler, Share};
use vap_core::db::positions::Advance;
use vap_core::db::results::{self, Batch, DeadLetter, Placed, Stored};
use vap_core::db::DbError;
use vap_core::db::{scene_events, snapshots};
use vap_core::events::{ResultsRecord, SceneEvent, Snapshot};
use vap_core::kafka::KafkaLink;
use vap_core::metrics::Metrics;
use vap_core::tasks::TaskFailed;

pub use vap_core::consumer::INBOX_CONSUMER as CONSUMER;

pub struct Inbox {
    pub pool: Pool,
    pub kafka: Arc<KafkaLink>,
    pub settings: InboxSettings,
    pub metrics: Arc<Metrics>,
    /// `webhooks.url`: every new event is queued for it (empty: none).
    pub global_webhook: String,
    /// Where the share's session connects (with `settings.share_partitions`).
    pub database: vap_core::config::DatabaseSettings,
    /// What is kept, and the partitions it goes to.
    pub retention: Arc<Window>,
}

impl Inbox {
    /// Consumes every partition of `results`, `events` and `snapshots` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TaskFailed> {
        let (results_topic, events_topic) =
            (self.kafka.settings().topic_results.clone(), self.kafka.settings().topic_events.clone());
        let s = &self.settings;
        let limits = FetchLimits {
            max_bytes: s.fetch_max_bytes,
            max_wait_ms: s.fetch_max_wait_ms,
            batch_max_records: s.batch_max_records,
        };
        let share = if s.share_partitions {
            Share::Divided { database: self.database, every: Duration::from_millis(s.rebalance_interval_ms) }
        } else {
            Share::All
        };
        let results = PositionedConsumer {
            name: CONSUMER,
            pool: self.pool.clone(),
            kafka: Arc::clone(&self.kafka),
            limits,
            handler: Reported {
                store: StoreResults {
                    pool: self.pool.clone(),
                    metrics: Arc::clone(&self.metrics),
                    retention: Arc::clone(&self.retention),
                },
                metrics: Arc::clone(&self.metrics),
            },
            share: share.clone(),
        };
        let events = PositionedConsumer {
            name: CONSUMER,
            pool: self.pool.clone(),
            kafka: Arc::clone(&self.kafka),
            limits,
            handler: Reported {
                store: StoreEvents {
                    pool: self.pool.clone(),
                    metrics: Arc::clone(&self.metrics),
                    global_webhook: self.global_webhook,
                    retention: self.retention,
                },
                metrics: Arc::clone(&self.metrics),
            },
            share: share.clone(),
        };
        let snapshots_topic = self.kafka.settings().topic_snapshots.clone();
        let snapshots = PositionedConsumer {
            name: CONSUMER,
            pool: self.pool.clone(),
            kafka: self.kafka,
            // Snapshots are large: fewer to a transaction.
            limits: FetchLimits { batch_max_records: s.batch_max_records.min(50), ..limits },
            handler: Reported {
                store: StoreSnapshots {
                    pool: self.pool,
                    metrics: Arc::clone(&self.metrics),
                    keep: s.snapshots_per_scenario,
                },
                metrics: self.metrics,
            },
            share,
        };
        let (a, b, c) = tokio::join!(
            Arc::new(results).run(results_topic, shutdown.clone()),
            Arc::new(events).run(events_topic, shutdown.clone()),
            Arc::new(snapshots).run(snapshots_topic, shutdown)
        );
        a.and(b).and(c)
    }
}

struct StoreResults {
    pool: Pool,
    metrics: Arc<Metrics>,
    retention: Arc<Window>,
}

enum Placing {
    Placed(chrono::DateTime<chrono::Utc>),
    UnknownScenario,
    Expired,
    Refused(Refusal),
}

/// Where a checked frame of a scenario with `facts` goes.
fn placed(facts: Option<&results::SigningFacts>, frame: i64, expired_before: chrono::DateTime<chrono::Utc>) -> Placing {
    let Some(facts) = facts else { return Placing::UnknownScenario };
    match results::frame_time(facts.epoch, frame) {
        None => Placing::Refused(("frame_out_of_window", format!("frame {frame} is past the calendar's end"))),
        Some(t) if t < expired_before => Placing::Expired,
        Some(t) => Placing::Placed(t),
    }
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
        let expired_before = now - self.retention.keep;
        for (r, parsed) in records.iter().zip(parsed) {
            let checked = parsed.and_then(|p| match facts.get(&p.scenario()) {
                None => Ok((p, None)),
                Some(f) => check(claim(&p), &r.record, f, now).map(|()| (p, Some(f))),
            });
            match checked {
                Ok((ResultsRecord::Frame(result), facts)) => match placed(facts, result.frame_number, expired_before) {
                    Placing::Placed(frame_time) => {
                        batch.frames.push(Placed { offset: r.offset, frame_time, item: result })
                    }
                    // Unknown scenarios are counted (not set aside).
                    Placing::UnknownScenario => batch.unknown_scenario += 1,
                    Placing::Expired => batch.expired += 1,
                    Placing::Refused(refusal) => {
                        reject(&self.metrics, &advance, r.offset, &refusal);
                        batch.dead.push(dead_letter(r, &refusal));
                    }
                },
                Ok((ResultsRecord::End(end), _)) => {
                    tracing::info!(scenario = %end.scenario_uuid, reason = ?end.end_of_stream, detail = end.detail, "stream ended");
                    batch.ends.push((r.offset, end));
                }
                Err(refusal) => {
                    reject(&self.metrics, &advance, r.offset, &refusal);
                    batch.dead.push(dead_letter(r, &refusal));
                }
            }
        }
        let times: Vec<_> = batch.frames.iter().map(|f| f.frame_time).collect();
        self.retention.coverage.cover(&self.pool, "scenario_results", &times).await?;
        let Some(stored) = results::store_batch(&self.pool, &advance, batch).await? else { return Ok(false) };
        self.count(&advance, stored);
        Ok(true)
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
        Some(Ok(p)) => key_matches(r, p.scenario()).map(|()| p),
    }
}

/// What a record claims, for [`check`]: a frame (or an event seen in one) with its capture
/// time, or an end.
enum Claim {
    Frame(i64, chrono::DateTime<chrono::Utc>),
    End,
}

/// Signed with the scenario's key; a frame not from the future; nothing produced after the
/// scenario came to rest (a replayed end, a late forgery).
fn check(
    claim: Claim,
    raw: &rskafka::record::Record,
    facts: &results::SigningFacts,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), Refusal> {
    let value = raw.value.as_deref().unwrap_or_default();
    match raw.headers.get(vap_core::signing::SIGNATURE_HEADER) {
        None => return Err(("unsigned", "record has no signature".into())),
        Some(signature) if !facts.key.verify(value, signature) => {
            return Err(("bad_signature", "signature does not verify with the scenario's key".into()))
        }
        Some(_) => {}
    }
    let latest = facts.rested_at.unwrap_or(now) + CLOCK_SKEW;
    match claim {
        Claim::End if facts.rested_at.is_some() => {
            Err(("not_running", "end of stream for a scenario already at rest".into()))
        }
        Claim::End => Ok(()),
        Claim::Frame(frame, captured_at) => {
            // Frames of a file count media time (ahead of the clock when analysed fast): its
            // records are placed in time by their capture time instead.
            let at = match facts.by_media_time {
                true => Some(captured_at),
                false => results::frame_time(facts.epoch, frame),
            };
            match at {
                Some(at) if at <= latest => Ok(()),
                _ if facts.rested_at.is_some() => {
                    Err(("not_running", format!("frame {frame} is after the scenario came to rest")))
                }
                _ => Err(("frame_out_of_window", format!("frame {frame} is in the future"))),
            }
        }
    }
}

fn claim(record: &ResultsRecord) -> Claim {
    match record {
        ResultsRecord::Frame(f) => Claim::Frame(f.frame_number, f.timestamp),
        ResultsRecord::End(_) => Claim::End,
    }
}

/// The key places a record on its scenario's partition, in order: it must be the scenario the
/// record says.
fn key_matches(r: &RecordAndOffset, scenario: uuid::Uuid) -> Result<(), Refusal> {
    if r.record.key.as_deref() == Some(scenario.to_string().as_bytes()) {
        Ok(())
    } else {
        Err(("key_mismatch", format!("record key is not its scenario {scenario}")))
    }
}

fn dead_letter(r: &RecordAndOffset, (reason, error): &Refusal) -> DeadLetter {
    DeadLetter {
        offset: r.offset,
        reason: format!("{reason}: {error}"),
        key: r.record.key.clone(),
        value: r.record.value.clone(),
    }
}

/// `events` -> `scenario_events`, checked like results.
struct StoreEvents {
    pool: Pool,
    metrics: Arc<Metrics>,
    global_webhook: String,
    retention: Arc<Window>,
}

impl RecordHandler for StoreEvents {
    async fn apply(&self, advance: Advance<'_>, records: &[RecordAndOffset]) -> Result<bool, DbError> {
        let parsed: Vec<Result<SceneEvent, Refusal>> = records
            .iter()
            .map(|r| match r.record.value.as_deref().map(SceneEvent::parse) {
                None => Err(("empty", "record has no value".to_string())),
                Some(Err(e)) => Err(("malformed", e.to_string())),
                Some(Ok(e)) => key_matches(r, e.scenario_uuid).map(|()| e),
            })
            .collect();
        let mut ids: Vec<uuid::Uuid> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|e| e.scenario_uuid)).collect();
        ids.sort_unstable();
        ids.dedup();
        let facts = results::signing_facts(&self.pool, &ids).await?;
        let now = chrono::Utc::now();
        let (mut events, mut dead) = (Vec::with_capacity(records.len()), Vec::new());
        let (mut unknown, mut expired) = (0, 0);
        let expired_before = now - self.retention.keep;
        for (r, parsed) in records.iter().zip(parsed) {
            let checked = parsed.and_then(|e| match facts.get(&e.scenario_uuid) {
                None => Ok((e, None)),
                Some(f) => check(Claim::Frame(e.frame_number, e.timestamp), &r.record, f, now).map(|()| (e, Some(f))),
            });
            let refusal = match checked {
                Ok((e, facts)) => match placed(facts, e.frame_number, expired_before) {
                    Placing::Placed(frame_time) => {
                        events.push(Placed { offset: r.offset, frame_time, item: e });
                        continue;
                    }
                    Placing::UnknownScenario => {
                        unknown += 1;
                        continue;
                    }
                    Placing::Expired => {
                        expired += 1;
                        continue;
                    }
                    Placing::Refused(refusal) => refusal,
                },
                Err(refusal) => refusal,
            };
            reject(&self.metrics, &advance, r.offset, &refusal);
            dead.push(dead_letter(r, &refusal));
        }
        let times: Vec<_> = events.iter().map(|e| e.frame_time).collect();
        self.retention.coverage.cover(&self.pool, "scenario_events", &times).await?;
        let Some(s) = scene_events::store_batch(&self.pool, &advance, &events, dead, &self.global_webhook).await?
        else {
            return Ok(false);
        };
        count_expired(&self.metrics, expired);
        let s = scene_events::StoredEvents { unknown_scenario: s.unknown_scenario + unknown, ..s };
        let m = &self.metrics;
        m.inc("vap_inbox_events_stored_total", "Scene events written to PostgreSQL.", &[], s.inserted as u64);
        m.inc(
            "vap_inbox_event_duplicates_total",
            "Scene events already stored (redelivered or produced again).",
            &[],
            s.duplicates as u64,
        );
        count_set_aside(m, &advance, s.unknown_scenario, s.dead_lettered);
        Ok(true)
    }
}

/// `snapshots` -> `scenario_snapshots`, checked like results.
struct StoreSnapshots {
    pool: Pool,
    metrics: Arc<Metrics>,
    keep: i64,
}

impl RecordHandler for StoreSnapshots {
    async fn apply(&self, advance: Advance<'_>, records: &[RecordAndOffset]) -> Result<bool, DbError> {
        let parsed: Vec<Result<Snapshot, Refusal>> = records
            .iter()
            .map(|r| match r.record.value.as_deref().map(Snapshot::parse) {
                None => Err(("empty", "record has no value".to_string())),
                Some(Err(e)) => Err(("malformed", e.to_string())),
                Some(Ok(s)) => key_matches(r, s.scenario_uuid).map(|()| s),
            })
            .collect();
        let mut ids: Vec<uuid::Uuid> = parsed.iter().filter_map(|p| p.as_ref().ok().map(|s| s.scenario_uuid)).collect();
        ids.sort_unstable();
        ids.dedup();
        let facts = results::signing_facts(&self.pool, &ids).await?;
        let now = chrono::Utc::now();
        let (mut snapshots, mut dead) = (Vec::with_capacity(records.len()), Vec::new());
        for (r, parsed) in records.iter().zip(parsed) {
            let checked = parsed.and_then(|s| match facts.get(&s.scenario_uuid) {
                None => Ok(s),
                Some(f) => check(Claim::Frame(s.frame_number, s.timestamp), &r.record, f, now).map(|()| s),
            });
            match checked {
                Ok(s) => snapshots.push((r.offset, s)),
                Err(refusal) => {
                    reject(&self.metrics, &advance, r.offset, &refusal);
                    // The picture is not kept: only why it was refused.
                    dead.push(DeadLetter { value: None, ..dead_letter(r, &refusal) });
                }
            }
        }
        let Some(s) = snapshots::store_batch(&self.pool, &advance, &snapshots, dead, self.keep).await? else {
            return Ok(false);
        };
        let m = &self.metrics;
        m.inc("vap_inbox_snapshots_stored_total", "Snapshots written to PostgreSQL.", &[], s.inserted as u64);
        m.inc(
            "vap_inbox_snapshots_pruned_total",
            "Older snapshots deleted to stay within bounds.",
            &[],
            s.pruned as u64,
        );
        count_set_aside(m, &advance, s.unknown_scenario, s.dead_lettered);
        Ok(true)
    }
}

/// The inbox's stores report alike: lag per partition, and the share of each topic held.
struct Reported<H> {
    store: H,
    metrics: Arc<Metrics>,
}

impl<H: RecordHandler> RecordHandler for Reported<H> {
    fn apply(
        &self,
        advance: Advance<'_>,
        records: &[RecordAndOffset],
    ) -> impl std::future::Future<Output = Result<bool, DbError>> + Send {
        self.store.apply(advance, records)
    }

    fn fetched(&self, topic: &str, partition: i32, lag: i64) {
        lag_metric(&self.metrics, topic, partition, lag);
    }

    fn held(&self, topic: &str, partitions: usize) {
        self.metrics.set(
            "vap_inbox_partitions_held",
            "Partitions of the topic this relay stores, its share among the relays running.",
            &[("topic", topic)],
            partitions as f64,
        );
    }

    fn released(&self, topic: &str, partition: i32) {
        lag_metric(&self.metrics, topic, partition, 0);
    }
}

fn lag_metric(metrics: &Metrics, topic: &str, partition: i32, lag: i64) {
    metrics.set(
        "vap_inbox_lag_records",
        "Records on `results` and `events` not yet stored, per topic and partition.",
        &[("topic", topic), ("partition", &partition.to_string())],
        lag as f64,
    );
}

/// Records of scenarios this database does not know (dropped) and records set aside.
fn count_set_aside(metrics: &Metrics, advance: &Advance<'_>, unknown_scenario: i64, dead_lettered: i64) {
    if unknown_scenario > 0 {
        metrics.inc(
            "vap_inbox_rejected_total",
            "Records not stored, by reason.",
            &[("reason", "unknown_scenario")],
            unknown_scenario as u64,
        );
        let (topic, partition) = (advance.at.topic, advance.at.partition);
        tracing::warn!(topic, partition, count = unknown_scenario, "records for unknown scenarios dropped");
    }
    if dead_lettered > 0 {
        metrics.inc(
            "vap_inbox_dead_letters_total",
            "Records set aside in dead_letters (malformed, or refused by PostgreSQL).",
            &[],
            dead_lettered as u64,
        );
    }
}

/// Results and events not stored because retention has already passed them.
fn count_expired(metrics: &Metrics, expired: u64) {
    if expired > 0 {
        metrics.inc("vap_inbox_expired_total", "Results and events older than retention: not stored.", &[], expired);
    }
}

fn reject(metrics: &Metrics, advance: &Advance<'_>, offset: i64, (reason, error): &Refusal) {
    metrics.inc("vap_inbox_rejected_total", "Records not stored, by reason.", &[("reason", reason)], 1);
    let (topic, partition) = (advance.at.topic, advance.at.partition);
    tracing::warn!(topic, partition, offset, error, "rejected a record");
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
        count_set_aside(m, advance, s.unknown_scenario, s.dead_lettered);
        count_expired(m, s.expired as u64);
        if s.ended > 0 {
            m.inc(
                "vap_inbox_streams_ended_total",
                "Scenarios moved to rest by their runner's end-of-stream record.",
                &[],
                s.ended as u64,
            );
        }
    }
}
