//! A small Prometheus text-format registry: labelled counters, gauges and latency histograms.
//! Enough for vap's handful of series without a metrics framework.
//!
//! Each metric is declared once, as a [`Counter`], [`Gauge`] or [`Histogram`] constant with its
//! name, help and label names, in its process's `metrics` module; call sites give the label
//! values in the declared order.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets in seconds, fine at the low end where the API lives.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets in seconds for what takes seconds to minutes (a camera's failover).
const SLOW_BUCKETS: [f64; 13] = [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0];

type Labels = Vec<(&'static str, String)>;

/// What a metric is: its name, help text and label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

/// A metric that only goes up.
#[derive(Debug, Clone, Copy)]
pub struct Counter(pub Family);

/// A metric set to the value last seen.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(pub Family);

/// Durations, in the latency buckets (or the slow ones).
#[derive(Debug, Clone, Copy)]
pub struct Histogram(pub Family, &'static [f64]);

impl Counter {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self(Family { name, help, labels })
    }
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self(Family { name, help, labels })
    }
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self(Family { name, help, labels }, &BUCKETS)
    }

    /// For durations of seconds to minutes.
    pub const fn slow(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self(Family { name, help, labels }, &SLOW_BUCKETS)
    }
}

struct Buckets {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

struct Series<T> {
    help: &'static str,
    series: BTreeMap<Labels, T>,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<&'static str, Series<u64>>,
    gauges: BTreeMap<&'static str, Series<f64>>,
    histograms: BTreeMap<&'static str, Series<Buckets>>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn family<'a, T>(
    map: &'a mut BTreeMap<&'static str, Series<T>>,
    name: &'static str,
    help: &'static str,
) -> &'a mut Series<T> {
    map.entry(name).or_insert_with(|| Series { help, series: BTreeMap::new() })
}

/// The declared label names with the values a call site gives, in order.
fn labels(f: &Family, values: &[&str]) -> Labels {
    debug_assert_eq!(f.labels.len(), values.len(), "{}: label values for {:?}", f.name, f.labels);
    f.labels.iter().zip(values).map(|(k, v)| (*k, (*v).to_string())).collect()
}

impl Metrics {
    pub fn inc(&self, c: &Counter, values: &[&str], by: u64) {
        let mut inner = crate::sys::lock(&self.inner);
        *family(&mut inner.counters, c.0.name, c.0.help).series.entry(labels(&c.0, values)).or_default() += by;
    }

    pub fn set(&self, g: &Gauge, values: &[&str], value: f64) {
        let mut inner = crate::sys::lock(&self.inner);
        family(&mut inner.gauges, g.0.name, g.0.help).series.insert(labels(&g.0, values), value);
    }

    pub fn observe(&self, h: &Histogram, values: &[&str], d: Duration) {
        let secs = d.as_secs_f64();
        let bounds = h.1;
        let mut inner = crate::sys::lock(&self.inner);
        let h = family(&mut inner.histograms, h.0.name, h.0.help)
            .series
            .entry(labels(&h.0, values))
            .or_insert_with(|| Buckets { bounds, counts: vec![0; bounds.len()], count: 0, sum: 0.0 });
        for (i, b) in bounds.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Replaces every series of `g`: a gauge computed when scraped, whose label sets come and go.
    pub fn set_all(&self, g: &Gauge, series: impl IntoIterator<Item = (Vec<String>, f64)>) {
        let mut inner = crate::sys::lock(&self.inner);
        let family = family(&mut inner.gauges, g.0.name, g.0.help);
        family.series = series
            .into_iter()
            .map(|(values, v)| {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                (labels(&g.0, &values), v)
            })
            .collect();
    }

    /// A counter's current value (tests and status lines use it).
    pub fn counter(&self, c: &Counter, values: &[&str]) -> u64 {
        let inner = crate::sys::lock(&self.inner);
        inner.counters.get(c.0.name).and_then(|f| f.series.get(&labels(&c.0, values))).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        let inner = crate::sys::lock(&self.inner);
        let mut out = String::new();
        for (name, f) in &inner.counters {
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", f.help);
            for (l, v) in &f.series {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        for (name, f) in &inner.gauges {
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} gauge", f.help);
            for (l, v) in &f.series {
                let _ = writeln!(out, "{name}{} {v}", fmt_labels(l, None));
            }
        }
        for (name, f) in &inner.histograms {
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", f.help);
            for (l, h) in &f.series {
                for (i, b) in h.bounds.iter().enumerate() {
                    let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(l, Some(&b.to_string())), h.counts[i]);
                }
                let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(l, Some("+Inf")), h.count);
                let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", fmt_labels(l, None), h.count);
            }
        }
        out
    }
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// What a process adds to its /metrics and /ready at the moment they are asked.
pub trait Probe: Send + Sync + 'static {
    /// Sets the gauges that are computed when scraped.
    fn refresh(&self, _metrics: &Metrics) {}

    /// Why the process is degraded (the body of a 503 from /ready), or None when it is ready.
    fn degraded(&self) -> Option<serde_json::Value> {
        None
    }
}

/// A process with nothing to add.
pub struct NoProbe;
impl Probe for NoProbe {}

/// /health, /ready and /metrics of the relay and the orchestrator (plain HTTP/1).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, probe: Arc<dyn Probe>, shutdown: CancellationToken) {
    // Scrapes in flight are owned: they end with the server.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (metrics, probe) = (Arc::clone(&metrics), Arc::clone(&probe));
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (metrics, probe) = (Arc::clone(&metrics), Arc::clone(&probe));
            async move {
                let (status, ctype, body) = match req.uri().path() {
                    "/metrics" => {
                        probe.refresh(&metrics);
                        (StatusCode::OK, "text/plain; version=0.0.4", metrics.render())
                    }
                    "/health" => (StatusCode::OK, "application/json", r#"{"status": "healthy"}"#.to_string()),
                    "/ready" => match probe.degraded() {
                        None => (StatusCode::OK, "application/json", r#"{"status": "ready"}"#.to_string()),
                        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "application/json", why.to_string()),
                    },
                    _ => (
                        StatusCode::NOT_FOUND,
                        "application/json",
                        r#"{"error": {"code": "not_found", "message": "try /metrics, /health or /ready"}}"#.to_string(),
                    ),
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header(header::CONTENT_TYPE, ctype)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default(),
                )
            }
        });
        connections.spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        const X: Counter = Counter::new("vap_x_total", "x", &["route"]);
        const LAT: Histogram = Histogram::new("vap_lat_seconds", "lat", &["route"]);
        let m = Metrics::default();
        m.inc(&X, &["/a"], 2);
        m.observe(&LAT, &["/a"], Duration::from_millis(3));
        assert_eq!(m.counter(&X, &["/a"]), 2);
        let text = m.render();
        assert!(text.contains("vap_x_total{route=\"/a\"} 2"));
        assert!(text.contains("vap_lat_seconds_bucket{route=\"/a\",le=\"0.0025\"} 0"));
        assert!(text.contains("vap_lat_seconds_bucket{route=\"/a\",le=\"0.005\"} 1"));
        assert!(text.contains("vap_lat_seconds_count{route=\"/a\"} 1"));
    }
}
