//! Kafka `results`, `events` and `snapshots` -> PostgreSQL, through the [positioned consumer](vap_core::consumer):
//! results, stream ends, scene events and the new position in one transaction, so a redelivered
//! or duplicated record is stored once and a crash never loses or doubles one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use rskafka::record::RecordAndOffset;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::retention::Window;
use vap_core::config::InboxSettings;
use vap_core::consumer::{FetchLimits, PartitionState, PositionedConsumer, Progress, RecordHandler, Share};
use vap_core::db::positions::Advance;
use vap_core::db::results::{self, Batch, DeadLetter, Placed, Stored};
use vap_core::db::DbError;
use vap_core::db::{scene_events, snapshots};
use vap_core::events::{ResultError, ResultsRecord, SceneEvent, Snapshot};
use vap_core::kafka::KafkaLink;
use vap_core::metrics::Metrics;
use vap_core::signing::PlacementEpoch;
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
    /// Where each partition held stands, for /metrics and /ready.
    pub progress: Arc<Progress>,
}

/// The inbox's partitions on /metrics (lag, stall) and /ready (degraded, naming the stalled).
pub struct Watch {
    pub progress: Arc<Progress>,
    pub stall_after: Duration,
}

#[derive(serde::Serialize)]
struct Degraded {
    status: &'static str,
    stalled_partitions: Vec<PartitionState>,
}

impl vap_core::metrics::Probe for Watch {
    fn refresh(&self, m: &Metrics) {
        let states = self.progress.states();
        let at = |s: &PartitionState| vec![s.topic.clone(), s.partition.to_string()];
        m.set_all(&metrics::LAG, states.iter().map(|s| (at(s), s.lag as f64)));
        m.set_all(&metrics::STALLED, states.iter().map(|s| (at(s), s.stalled_seconds)));
    }

    fn degraded(&self) -> Option<serde_json::Value> {
        let stalled_partitions = self.progress.stalled(self.stall_after);
        if stalled_partitions.is_empty() {
            return None;
        }
        serde_json::to_value(Degraded { status: "degraded", stalled_partitions }).ok()
    }
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
            progress: Arc::clone(&self.progress),
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
            progress: Arc::clone(&self.progress),
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
            progress: self.progress,
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
        let Checked { outcomes, facts } = read_and_check::<ResultsRecord>(&self.pool, records).await?;
        let mut batch = Batch { frames: Vec::with_capacity(records.len()), ..Batch::default() };
        let expired_before = chrono::Utc::now() - self.retention.keep;
        for (r, outcome) in records.iter().zip(outcomes) {
            let refusal = match outcome {
                Ok(ResultsRecord::Frame(result)) => {
                    match placed(facts.get(&result.scenario_uuid), result.frame_number, expired_before) {
                        Placing::Placed(frame_time) => {
                            batch.frames.push(Placed { offset: r.offset, frame_time, item: result });
                            continue;
                        }
                        // Unknown scenarios are counted (not set aside).
                        Placing::UnknownScenario => {
                            batch.unknown_scenario += 1;
                            continue;
                        }
                        Placing::Expired => {
                            batch.expired += 1;
                            continue;
                        }
                        Placing::Refused(refusal) => refusal,
                    }
                }
                Ok(ResultsRecord::End(end)) => {
                    tracing::info!(scenario = %end.scenario_uuid, reason = ?end.end_of_stream, detail = end.detail, "stream ended");
                    batch.ends.push((r.offset, end));
                    continue;
                }
                Err(refusal) => refusal,
            };
            reject(&self.metrics, &advance, r.offset, &refusal);
            batch.dead.push(dead_letter(r, &refusal));
        }
        let times: Vec<_> = batch.frames.iter().map(|f| f.frame_time).collect();
        self.retention.coverage.cover(&self.pool, "scenario_results", &times).await?;
        let Some(stored) = results::store_batch(&self.pool, &advance, batch).await? else { return Ok(false) };
        self.count(&advance, stored);
        Ok(true)
    }
}

/// A record of one of the inbox's topics: how it reads, the scenario it names and what it
/// claims, so all three go through one pipeline ([`read_and_check`]).
trait Inbound: Sized {
    fn parse(bytes: &[u8]) -> Result<Self, ResultError>;
    fn scenario(&self) -> uuid::Uuid;
    fn claim(&self) -> Claim;
}

impl Inbound for ResultsRecord {
    fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        ResultsRecord::parse(bytes)
    }
    fn scenario(&self) -> uuid::Uuid {
        ResultsRecord::scenario(self)
    }
    fn claim(&self) -> Claim {
        match self {
            ResultsRecord::Frame(f) => Claim::Frame(f.frame_number, f.timestamp),
            ResultsRecord::End(_) => Claim::End,
        }
    }
}

impl Inbound for SceneEvent {
    fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        SceneEvent::parse(bytes)
    }
    fn scenario(&self) -> uuid::Uuid {
        self.scenario_uuid
    }
    fn claim(&self) -> Claim {
        Claim::Frame(self.frame_number, self.timestamp)
    }
}

impl Inbound for Snapshot {
    fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        Snapshot::parse(bytes)
    }
    fn scenario(&self) -> uuid::Uuid {
        self.scenario_uuid
    }
    fn claim(&self) -> Claim {
        Claim::Frame(self.frame_number, self.timestamp)
    }
}

/// A fetched batch, read and checked: each record or why it is refused, in order, and the
/// signing facts of the scenarios they name (none for a scenario this database does not know).
struct Checked<T> {
    outcomes: Vec<Result<T, Refusal>>,
    facts: HashMap<uuid::Uuid, results::SigningFacts>,
}

async fn read_and_check<T: Inbound>(pool: &Pool, records: &[RecordAndOffset]) -> Result<Checked<T>, DbError> {
    let parsed: Vec<Result<T, Refusal>> = records.iter().map(parse).collect();
    let mut ids: Vec<uuid::Uuid> = parsed.iter().filter_map(|p| p.as_ref().ok().map(T::scenario)).collect();
    ids.sort_unstable();
    ids.dedup();
    let facts = results::signing_facts(pool, &ids).await?;
    let now = chrono::Utc::now();
    let outcomes = records
        .iter()
        .zip(parsed)
        .map(|(r, parsed)| {
            parsed.and_then(|t| match facts.get(&t.scenario()) {
                None => Ok(t),
                Some(f) => check(t.claim(), &r.record, f, now).map(|()| t),
            })
        })
        .collect();
    Ok(Checked { outcomes, facts })
}

/// Why a record is refused: a metric label and the detail.
type Refusal = (&'static str, String);

/// The refusal of a replaced runner's record.
const SUPERSEDED: &str = "superseded_placement";

/// Runners' clocks and the database's differ a little; more than this ahead is forged.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

fn parse<T: Inbound>(r: &RecordAndOffset) -> Result<T, Refusal> {
    match r.record.value.as_deref().map(T::parse) {
        None => Err(("empty", "record has no value".to_string())),
        Some(Err(e @ ResultError::NewerVersion(_))) => Err(("newer_version", e.to_string())),
        Some(Err(e)) => Err(("malformed", e.to_string())),
        // The key places the record on its scenario's partition, in order: it must be the
        // scenario the record says.
        Some(Ok(t)) => key_matches(r, t.scenario()).map(|()| t),
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
    let Some(placement) = PlacementEpoch::of_record(&raw.headers) else {
        return Err(("bad_signature", "the placement header is not a whole number".into()));
    };
    match raw.headers.get(vap_core::signing::SIGNATURE_HEADER) {
        None => return Err(("unsigned", "record has no signature".into())),
        // Only a runner of that placement holds its key: the header cannot be raised.
        Some(signature) if !facts.key.for_placement(placement).verify(value, signature) => {
            return Err(("bad_signature", format!("signature does not verify with placement {placement}'s key")))
        }
        Some(_) => {}
    }
    // Fencing: a replaced runner (its host cut off, a twin kept running) writes nothing more.
    // A later placement than the stored one cannot be signed: its key is made after the epoch.
    if placement != facts.placement {
        return Err((
            SUPERSEDED,
            format!("placement {placement} is not the scenario's current placement {}", facts.placement),
        ));
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
                true if frame > vap_core::events::limits::MAX_MEDIA_MS => {
                    let hours = vap_core::events::limits::MAX_MEDIA_MS / 3_600_000;
                    return Err(("frame_out_of_window", format!("frame {frame} is past {hours} h of a file's media")));
                }
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

/// The key places a record on its scenario's partition, in order: it must be the scenario the
/// record says.
fn key_matches(r: &RecordAndOffset, scenario: uuid::Uuid) -> Result<(), Refusal> {
    if r.record.key.as_deref() == Some(scenario.to_string().as_bytes()) {
        Ok(())
    } else {
        Err(("key_mismatch", format!("record key is not its scenario {scenario}")))
    }
}

/// A refused record, set aside with why. A replaced runner's records are many and their
/// content is known (a runner's ordinary output): only why is kept.
fn dead_letter(r: &RecordAndOffset, (reason, error): &Refusal) -> DeadLetter {
    DeadLetter {
        offset: r.offset,
        reason: format!("{reason}: {error}"),
        key: r.record.key.clone(),
        value: r.record.value.clone().filter(|_| *reason != SUPERSEDED),
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
        let Checked { outcomes, facts } = read_and_check::<SceneEvent>(&self.pool, records).await?;
        let (mut events, mut dead) = (Vec::with_capacity(records.len()), Vec::new());
        let (mut unknown, mut expired) = (0, 0);
        let expired_before = chrono::Utc::now() - self.retention.keep;
        for (r, outcome) in records.iter().zip(outcomes) {
            let refusal = match outcome {
                Ok(e) => match placed(facts.get(&e.scenario_uuid), e.frame_number, expired_before) {
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
        m.inc(&metrics::EVENTS_STORED, &[], s.inserted as u64);
        m.inc(&metrics::EVENT_DUPLICATES, &[], s.duplicates as u64);
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
        let Checked { outcomes, .. } = read_and_check::<Snapshot>(&self.pool, records).await?;
        let (mut snapshots, mut dead) = (Vec::with_capacity(records.len()), Vec::new());
        for (r, outcome) in records.iter().zip(outcomes) {
            match outcome {
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
        m.inc(&metrics::SNAPSHOTS_STORED, &[], s.inserted as u64);
        m.inc(&metrics::SNAPSHOTS_PRUNED, &[], s.pruned as u64);
        count_set_aside(m, &advance, s.unknown_scenario, s.dead_lettered);
        Ok(true)
    }
}

/// The inbox's stores report alike: the share of each topic held, and batches stepped over.
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

    fn held(&self, topic: &str, partitions: usize) {
        self.metrics.set(&metrics::PARTITIONS_HELD, &[topic], partitions as f64);
    }

    fn skipped(&self, topic: &str, _partition: i32, records: i64) {
        self.metrics.inc(&metrics::SKIPPED, &[topic], records as u64);
    }
}

/// Records of scenarios this database does not know (dropped) and records set aside.
fn count_set_aside(metrics: &Metrics, advance: &Advance<'_>, unknown_scenario: i64, dead_lettered: i64) {
    if unknown_scenario > 0 {
        metrics.inc(&metrics::REJECTED, &["unknown_scenario"], unknown_scenario as u64);
        let (topic, partition) = (advance.at.topic, advance.at.partition);
        tracing::warn!(topic, partition, count = unknown_scenario, "records for unknown scenarios dropped");
    }
    if dead_lettered > 0 {
        metrics.inc(&metrics::DEAD_LETTERS, &[], dead_lettered as u64);
    }
}

/// Results and events not stored because retention has already passed them.
fn count_expired(metrics: &Metrics, expired: u64) {
    if expired > 0 {
        metrics.inc(&metrics::EXPIRED, &[], expired);
    }
}

fn reject(metrics: &Metrics, advance: &Advance<'_>, offset: i64, (reason, error): &Refusal) {
    metrics.inc(&metrics::REJECTED, &[reason], 1);
    let (topic, partition) = (advance.at.topic, advance.at.partition);
    if *reason == SUPERSEDED {
        // Expected after every failover, record after record: counted, logged at debug.
        metrics.inc(&metrics::SUPERSEDED, &[topic], 1);
        tracing::debug!(topic, partition, offset, error, "a replaced runner's record set aside");
        return;
    }
    tracing::warn!(topic, partition, offset, error, "rejected a record");
}

impl StoreResults {
    fn count(&self, advance: &Advance<'_>, s: Stored) {
        let m = &self.metrics;
        m.inc(&metrics::RESULTS_STORED, &[], s.inserted as u64);
        m.inc(&metrics::RESULT_DUPLICATES, &[], s.duplicates as u64);
        count_set_aside(m, advance, s.unknown_scenario, s.dead_lettered);
        count_expired(m, s.expired as u64);
        if s.ended > 0 {
            m.inc(&metrics::STREAMS_ENDED, &[], s.ended as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use rskafka::record::Record;
    use vap_core::signing::{ResultsKey, SIGNATURE_HEADER};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-12-07T12:00:00Z";

    fn facts(rested_at: Option<&str>, by_media_time: bool) -> results::SigningFacts {
        results::SigningFacts {
            key: ResultsKey::new(vec![7; 32]),
            epoch: at("2026-12-07T11:00:00Z"),
            rested_at: rested_at.map(at),
            by_media_time,
            placement: vap_core::signing::PlacementEpoch(0),
        }
    }

    fn signed_by(key: &ResultsKey) -> Record {
        let value = b"a record".to_vec();
        let headers = BTreeMap::from([(SIGNATURE_HEADER.to_string(), key.sign(&value))]);
        Record { key: None, value: Some(value), headers, timestamp: at(NOW) }
    }

    fn reason(r: Result<(), Refusal>) -> &'static str {
        r.map_or_else(|(reason, _)| reason, |()| "ok")
    }

    /// Frame numbers count milliseconds from the epoch: 11:00 + this many ms.
    const AN_HOUR: i64 = 3_600_000;

    #[test]
    fn check_refuses_each_reason_and_passes_the_rest() {
        let running = facts(None, false);
        let good = signed_by(&running.key);
        let now = at(NOW);
        let frame = |n| Claim::Frame(n, now);
        assert_eq!(reason(check(frame(AN_HOUR), &good, &running, now)), "ok");
        assert_eq!(reason(check(Claim::End, &good, &running, now)), "ok");
        let unsigned = Record { headers: BTreeMap::new(), ..good.clone() };
        assert_eq!(reason(check(frame(AN_HOUR), &unsigned, &running, now)), "unsigned");
        let forged = signed_by(&ResultsKey::new(vec![8; 32]));
        assert_eq!(reason(check(frame(AN_HOUR), &forged, &running, now)), "bad_signature");
        // Within the clock skew is fine; beyond it is the future.
        assert_eq!(reason(check(frame(AN_HOUR + 4 * 60_000), &good, &running, now)), "ok");
        assert_eq!(reason(check(frame(AN_HOUR + 6 * 60_000), &good, &running, now)), "frame_out_of_window");
        assert_eq!(reason(check(frame(i64::MAX), &good, &running, now)), "frame_out_of_window");
        let rested = facts(Some("2026-12-07T11:30:00Z"), false);
        assert_eq!(reason(check(Claim::End, &good, &rested, now)), "not_running");
        assert_eq!(reason(check(frame(AN_HOUR), &good, &rested, now)), "not_running");
        assert_eq!(reason(check(frame(AN_HOUR / 4), &good, &rested, now)), "ok", "a frame from before the rest");
        // A file's frames count media time: its capture time places it.
        let file = facts(None, true);
        assert_eq!(reason(check(Claim::Frame(47 * AN_HOUR, now), &good, &file, now)), "ok");
        // But no further than two days of media: frame times never reach far-off partitions.
        assert_eq!(reason(check(Claim::Frame(49 * AN_HOUR, now), &good, &file, now)), "frame_out_of_window");
        assert_eq!(reason(check(Claim::Frame(i64::MAX / 2, now), &good, &file, now)), "frame_out_of_window");
        let late = Claim::Frame(1, now + chrono::Duration::minutes(6));
        assert_eq!(reason(check(late, &good, &file, now)), "frame_out_of_window");
    }

    #[test]
    fn only_the_current_placement_is_stored() {
        use vap_core::signing::{PlacementEpoch, RecordSigner};
        let now = at(NOW);
        let current = results::SigningFacts { placement: PlacementEpoch(2), ..facts(None, false) };
        let by = |placement: i64| {
            let signer = RecordSigner {
                key: current.key.for_placement(PlacementEpoch(placement)),
                placement: PlacementEpoch(placement),
            };
            let mut r = signed_by(&current.key);
            r.headers.clear();
            signer.sign(&mut r.headers, r.value.as_deref().unwrap());
            r
        };
        assert_eq!(reason(check(Claim::Frame(AN_HOUR, now), &by(2), &current, now)), "ok");
        assert_eq!(reason(check(Claim::Frame(AN_HOUR, now), &by(1), &current, now)), SUPERSEDED);
        assert_eq!(
            reason(check(Claim::End, &by(1), &current, now)),
            SUPERSEDED,
            "a replaced runner's end rests nothing"
        );
        // Signed with the scenario's own key (placement 0): a runner from before the first placement.
        assert_eq!(reason(check(Claim::Frame(AN_HOUR, now), &signed_by(&current.key), &current, now)), SUPERSEDED);
        // Placement 1's runner claiming placement 2 does not verify.
        let mut raised = by(1);
        raised.headers.insert(vap_core::signing::PLACEMENT_HEADER.into(), b"2".to_vec());
        assert_eq!(reason(check(Claim::Frame(AN_HOUR, now), &raised, &current, now)), "bad_signature");
        let mut garbled = by(2);
        garbled.headers.insert(vap_core::signing::PLACEMENT_HEADER.into(), b"two".to_vec());
        assert_eq!(reason(check(Claim::Frame(AN_HOUR, now), &garbled, &current, now)), "bad_signature");
    }

    #[test]
    fn placed_by_frame_time_within_retention() {
        let f = facts(None, false);
        let expired_before = at("2026-12-07T11:10:00Z");
        assert!(matches!(placed(None, 0, expired_before), Placing::UnknownScenario));
        assert!(matches!(placed(Some(&f), 60_000, expired_before), Placing::Expired));
        match placed(Some(&f), 20 * 60_000, expired_before) {
            Placing::Placed(t) => assert_eq!(t, at("2026-12-07T11:20:00Z")),
            _ => panic!("a frame within retention is placed"),
        }
        assert!(matches!(placed(Some(&f), i64::MAX, expired_before), Placing::Refused(("frame_out_of_window", _))));
    }
}
