//! vap-relay's metrics, each declared once.

use vap_core::metrics::{Counter, Family, Gauge, Histogram};

pub const EVENTS_PUBLISHED: Counter =
    Counter::new("vap_relay_events_published_total", "Outbox events acknowledged by Kafka.", &["topic"]);
pub const BATCH_SECONDS: Histogram =
    Histogram::new("vap_relay_batch_seconds", "Claim, produce and commit of one outbox batch.", &[]);
pub const PUBLISH_FAILURES: Counter =
    Counter::new("vap_relay_publish_failures_total", "Outbox batches that Kafka did not acknowledge.", &[]);
pub const PARTITIONS_DROPPED: Counter =
    Counter::new("vap_retention_partitions_dropped_total", "Partitions dropped past retention.", &[]);
pub const ROWS_DELETED: Counter = Counter::new(
    "vap_retention_rows_deleted_total",
    "Rows deleted past a scenario's or the snapshots' retention.",
    &[],
);
pub const WEBHOOK_ATTEMPTS: Counter =
    Counter::new("vap_webhook_attempts_total", "Webhook POSTs, by outcome.", &["outcome"]);
pub const RESULTS_STORED: Counter =
    Counter::new("vap_inbox_results_stored_total", "Results written to PostgreSQL.", &[]);
pub const RESULT_DUPLICATES: Counter =
    Counter::new("vap_inbox_duplicates_total", "Results already stored (redelivered or produced twice).", &[]);
pub const STREAMS_ENDED: Counter = Counter::new(
    "vap_inbox_streams_ended_total",
    "Scenarios moved to rest by their runner's end-of-stream record.",
    &[],
);
pub const EVENTS_STORED: Counter =
    Counter::new("vap_inbox_events_stored_total", "Scene events written to PostgreSQL.", &[]);
pub const EVENT_DUPLICATES: Counter = Counter::new(
    "vap_inbox_event_duplicates_total",
    "Scene events already stored (redelivered or produced again).",
    &[],
);
pub const SNAPSHOTS_STORED: Counter =
    Counter::new("vap_inbox_snapshots_stored_total", "Snapshots written to PostgreSQL.", &[]);
pub const SNAPSHOTS_PRUNED: Counter =
    Counter::new("vap_inbox_snapshots_pruned_total", "Older snapshots deleted to stay within bounds.", &[]);
pub const PARTITIONS_HELD: Gauge = Gauge::new(
    "vap_inbox_partitions_held",
    "Partitions of the topic this relay stores, its share among the relays running.",
    &["topic"],
);
pub const LAG: Gauge = Gauge::new(
    "vap_inbox_lag_records",
    "Records between a held partition's position and its end, also while it cannot be read.",
    &["topic", "partition"],
);
pub const STALLED: Gauge = Gauge::new(
    "vap_inbox_partition_stalled_seconds",
    "Seconds a held partition's position has not moved while records wait (0: moving or caught up).",
    &["topic", "partition"],
);
pub const SKIPPED: Counter = Counter::new(
    "vap_inbox_skipped_records_total",
    "Offsets of batches no fetch could decode, stepped over and set aside in dead_letters.",
    &["topic"],
);
pub const REJECTED: Counter = Counter::new("vap_inbox_rejected_total", "Records not stored, by reason.", &["reason"]);
pub const SUPERSEDED: Counter = Counter::new(
    "vap_inbox_superseded_records_total",
    "Records of a runner whose placement was replaced (fenced off), set aside.",
    &["topic"],
);
pub const DEAD_LETTERS: Counter = Counter::new(
    "vap_inbox_dead_letters_total",
    "Records set aside in dead_letters (malformed, or refused by PostgreSQL).",
    &[],
);
pub const EXPIRED: Counter =
    Counter::new("vap_inbox_expired_total", "Results and events older than retention: not stored.", &[]);

/// Every metric of vap-relay.
pub const FAMILIES: [Family; 21] = [
    EVENTS_PUBLISHED.0,
    BATCH_SECONDS.0,
    PUBLISH_FAILURES.0,
    PARTITIONS_DROPPED.0,
    ROWS_DELETED.0,
    WEBHOOK_ATTEMPTS.0,
    RESULTS_STORED.0,
    RESULT_DUPLICATES.0,
    STREAMS_ENDED.0,
    EVENTS_STORED.0,
    EVENT_DUPLICATES.0,
    SNAPSHOTS_STORED.0,
    SNAPSHOTS_PRUNED.0,
    PARTITIONS_HELD.0,
    LAG.0,
    STALLED.0,
    SKIPPED.0,
    REJECTED.0,
    SUPERSEDED.0,
    DEAD_LETTERS.0,
    EXPIRED.0,
];
