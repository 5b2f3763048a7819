//! vap-api's metrics, each declared once.

use vap_core::metrics::{Counter, Family, Gauge, Histogram};

pub const HTTP_REQUESTS: Counter = Counter::new(
    "vap_http_requests_total",
    "HTTP requests by route, method and status.",
    &["route", "method", "status"],
);
pub const HTTP_REQUEST_DURATION: Histogram =
    Histogram::new("vap_http_request_duration_seconds", "Time to the response head, by route.", &["route", "method"]);
pub const HTTP_CONNECTIONS_REFUSED: Counter =
    Counter::new("vap_http_connections_refused_total", "Connections answered 503 at api.max_connections.", &[]);
pub const SSE_STREAMS: Gauge = Gauge::new("vap_api_sse_streams", "Prediction streams (SSE) open.", &[]);
pub const OUTBOX_BACKLOG: Gauge = Gauge::new("vap_outbox_backlog", "Outbox events not yet acknowledged by Kafka.", &[]);
pub const OUTBOX_OLDEST_UNPUBLISHED: Gauge =
    Gauge::new("vap_outbox_oldest_unpublished_seconds", "Age of the oldest unpublished outbox event.", &[]);
pub const INBOX_BACKLOG: Gauge = Gauge::new(
    "vap_inbox_backlog_records",
    "Records on `results` not yet stored, summed over partitions as of the inbox's last fetches (read from PostgreSQL).",
    &[],
);
pub const DATABASE_UP: Gauge = Gauge::new("vap_database_up", "1 when the last scrape could read the database.", &[]);

/// Every metric of vap-api.
pub const FAMILIES: [Family; 8] = [
    HTTP_REQUESTS.0,
    HTTP_REQUEST_DURATION.0,
    HTTP_CONNECTIONS_REFUSED.0,
    SSE_STREAMS.0,
    OUTBOX_BACKLOG.0,
    OUTBOX_OLDEST_UNPUBLISHED.0,
    INBOX_BACKLOG.0,
    DATABASE_UP.0,
];
