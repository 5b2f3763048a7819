//! How each partition a consumer holds is moving, read when /metrics or /ready is asked, so a
//! partition stuck anywhere (a fetch that fails, a store that blocks) shows as it is now.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone)]
struct Partition {
    position: i64,
    /// The log's end as last seen (the high watermark), never behind the position.
    log_end: i64,
    /// When the position last moved or was found at the log's end.
    current_at: Instant,
    error: Option<String>,
}

/// The partitions of one consumer in this process.
#[derive(Debug, Default)]
pub struct Progress {
    partitions: Mutex<BTreeMap<(String, i32), Partition>>,
}

/// One partition as /metrics and /ready report it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    /// Records between the position and the log's end.
    pub lag: i64,
    /// Seconds the position has not moved while records wait; 0 when caught up.
    pub stalled_seconds: f64,
    /// The last failure reading or storing it, until it moves again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Progress {
    fn update(&self, topic: &str, partition: i32, change: impl FnOnce(&mut Partition)) {
        let mut all = crate::sys::lock(&self.partitions);
        let entry = all.entry((topic.to_string(), partition)).or_insert_with(|| Partition {
            position: 0,
            log_end: 0,
            current_at: Instant::now(),
            error: None,
        });
        change(entry);
        entry.log_end = entry.log_end.max(entry.position);
        if entry.log_end == entry.position {
            entry.current_at = Instant::now();
        }
    }

    /// The position read from storage when the partition is taken up.
    pub(crate) fn started(&self, topic: &str, partition: i32, position: i64) {
        self.update(topic, partition, |p| {
            p.position = position;
            p.current_at = Instant::now();
        });
    }

    /// The log's end, from a fetch or an offset request.
    pub(crate) fn saw_end(&self, topic: &str, partition: i32, log_end: i64) {
        self.update(topic, partition, |p| p.log_end = log_end);
    }

    pub(crate) fn advanced(&self, topic: &str, partition: i32, position: i64) {
        self.update(topic, partition, |p| {
            if position != p.position {
                p.current_at = Instant::now();
                p.error = None;
            }
            p.position = position;
        });
    }

    pub(crate) fn failed(&self, topic: &str, partition: i32, error: String) {
        self.update(topic, partition, |p| p.error = Some(error));
    }

    /// The partition went to another process: its lag is theirs now.
    pub(crate) fn released(&self, topic: &str, partition: i32) {
        crate::sys::lock(&self.partitions).remove(&(topic.to_string(), partition));
    }

    /// Every partition held, in topic and partition order.
    pub fn states(&self) -> Vec<PartitionState> {
        let all = crate::sys::lock(&self.partitions);
        all.iter()
            .map(|((topic, partition), p)| PartitionState {
                topic: topic.clone(),
                partition: *partition,
                lag: p.log_end - p.position,
                stalled_seconds: if p.log_end > p.position { p.current_at.elapsed().as_secs_f64() } else { 0.0 },
                error: p.error.clone(),
            })
            .collect()
    }

    /// The partitions stalled longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> Vec<PartitionState> {
        self.states().into_iter().filter(|s| s.stalled_seconds > limit.as_secs_f64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_behind_its_end_stalls_until_it_moves_and_a_caught_up_one_never_does() {
        let p = Progress::default();
        p.started("results", 0, 10);
        p.saw_end("results", 0, 10);
        p.started("results", 1, 5);
        p.saw_end("results", 1, 9);
        p.failed("results", 1, "undecodable".into());
        std::thread::sleep(Duration::from_millis(20));
        let states = p.states();
        assert_eq!((states[0].lag, states[0].stalled_seconds), (0, 0.0));
        assert_eq!(states[1].lag, 4);
        assert!(states[1].stalled_seconds >= 0.02, "{states:?}");
        assert_eq!(states[1].error.as_deref(), Some("undecodable"));
        assert_eq!(p.stalled(Duration::from_millis(10)).len(), 1);
        p.advanced("results", 1, 9);
        assert_eq!(
            p.states()[1],
            PartitionState { topic: "results".into(), partition: 1, lag: 0, stalled_seconds: 0.0, error: None }
        );
        p.released("results", 1);
        assert_eq!(p.states().len(), 1);
    }
}
