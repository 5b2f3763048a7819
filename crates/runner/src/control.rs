//! Options that change while a runner runs: the orchestrator's control records for this
//! scenario (`kafka.topic_runner_control`, keyed by scenario). The partition is read from its
//! start, so a runner restarted by its backend with the options it was placed with catches up;
//! only a revision newer than the one running is handed on, and only from a record signed
//! with the scenario's key (the orchestrator's): anyone else with the broker's login is refused.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::OffsetAt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use vap_core::backoff::Backoff;
use vap_core::events::RunnerControl;
use vap_core::kafka::{partition_for_key, KafkaError, KafkaLink};
use vap_core::signing::{ResultsKey, SIGNATURE_HEADER};

pub struct ControlFollower {
    pub kafka: Arc<KafkaLink>,
    pub scenario: Uuid,
    /// The revision the runner started with.
    pub revision: i64,
    /// The scenario's key: control records must be signed with it.
    pub key: ResultsKey,
}

impl ControlFollower {
    /// Sends each newer revision of this scenario's options to `changes`, until `stop` or
    /// until the receiver is gone.
    pub async fn run(self, changes: tokio::sync::mpsc::Sender<RunnerControl>, stop: CancellationToken) {
        let topic = self.kafka.settings().topic_runner_control.clone();
        let Some(partitions) = self.kafka.wait_for_topic(&topic, &stop).await else { return };
        let key = self.scenario.to_string();
        let partition = partition_for_key(key.as_bytes(), partitions.len() as i32);
        let mut revision = self.revision;
        let mut offset: Option<i64> = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !stop.is_cancelled() {
            let read = async {
                let kafka = self.kafka.get().await?;
                let client = kafka.partition(&topic, partition).await?;
                let limit = kafka.request_timeout();
                let from = match offset {
                    Some(o) => o,
                    None => vap_core::kafka::bounded(limit, client.get_offset(OffsetAt::Earliest)).await?,
                };
                // Waits at most 500 ms for records, like every consumer (within the request timeout).
                let (records, _) =
                    vap_core::kafka::bounded(limit, client.fetch_records(from, 1..1_000_000, 500)).await?;
                Ok::<_, KafkaError>((from, records))
            };
            let (from, records) = tokio::select! {
                r = read => match r {
                    Ok(read) => read,
                    Err(e) => {
                        // Retention removed what we were to read next: go on from the start.
                        if e.is_offset_out_of_range() {
                            offset = None;
                        }
                        tracing::debug!(error = %e, topic, "reading control records failed; retrying");
                        if !backoff.wait(&stop).await {
                            return;
                        }
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            backoff.reset();
            offset = Some(records.last().map_or(from, |r| r.offset + 1));
            for r in records {
                if r.record.key.as_deref() != Some(key.as_bytes()) {
                    continue;
                }
                let Some(value) = r.record.value.as_deref() else {
                    tracing::warn!(offset = r.offset, "a control record without a value; skipped");
                    continue;
                };
                let signed = r.record.headers.get(SIGNATURE_HEADER).is_some_and(|sig| self.key.verify(value, sig));
                if !signed {
                    tracing::warn!(offset = r.offset, "a control record not signed with the scenario's key; refused");
                    continue;
                }
                let control = match RunnerControl::parse(value) {
                    Ok(control) if control.scenario_uuid == self.scenario => control,
                    Ok(_) => {
                        tracing::warn!(offset = r.offset, "a control record of another scenario; refused");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(offset = r.offset, error = %e, "not a control record; skipped");
                        continue;
                    }
                };
                if control.revision > revision {
                    revision = control.revision;
                    if changes.send(control).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
