//! Scene events -> webhook receivers, run by vap-relay. The inbox queues a delivery with each new
//! event in the same transaction (`webhook_deliveries`); this sends each queue's oldest one until
//! a 2xx, retrying with jittered back-off for up to `webhooks.max_age_secs`, so every receiver
//! gets every event at least once and, per scenario, in event order (a relay claims a queue's
//! head for a while, so several relays do not send it together).
//!
//! Sends run side by side, `webhooks.concurrency` in all and `per_receiver_concurrency` per
//! receiver, each taken up as soon as a slot frees: a receiver that is slow or never answers
//! holds only its own share. A receiver's answer is read up to [`MAX_ANSWER_BYTES`].
//!
//! Each POST is signed as the Standard Webhooks specification says (`webhook-id`: the event id,
//! the same on every try; `webhook-timestamp`; `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`), so receivers can refuse replays with any of its verifier libraries;
//! `vap-event-id` and `vap-signature` (hex HMAC-SHA256 of the body) are still sent for receivers
//! written before.
//!
//! Receivers obey the destination policy: a literal address is checked before the request, a
//! name by the resolver at every connection; redirects are not followed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::Pool;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_util::sync::CancellationToken;

use vap_core::backoff::Backoff;
use vap_core::config::WebhookSettings;
use vap_core::db::webhooks::{self as queue, Due};
use vap_core::destination::DestinationPolicy;
use vap_core::metrics::Metrics;
use vap_core::signing::ResultsKey;

pub const SIGNATURE_HEADER: &str = "vap-signature";
pub const EVENT_ID_HEADER: &str = "vap-event-id";

/// The most of a receiver's answer read; the rest is dropped with the connection.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The key of `webhook-signature`: a `whsec_` secret is base64 of the key, as Standard
/// Webhooks libraries read it; any other secret is its own bytes.
pub fn standard_key(secret: &str) -> Vec<u8> {
    use base64::Engine;
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `webhook-signature` of `body` sent as message `id` at `timestamp` (Unix seconds).
pub fn standard_signature(key: &ResultsKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let signed = [format!("{id}.{timestamp}.").as_bytes(), body].concat();
    let mac = hex::decode(key.sign(&signed)).unwrap_or_default();
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

/// The keys one secret gives: Standard Webhooks' and the legacy `vap-signature`'s.
#[derive(Clone)]
struct Keys {
    standard: ResultsKey,
    legacy: ResultsKey,
}

/// Resolves a receiver's name and keeps only the addresses the policy allows (none: an error).
#[derive(Clone)]
struct CheckedResolver(Arc<DestinationPolicy>);

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (policy, host) = (Arc::clone(&self.0), name.as_str().to_string());
        Box::pin(async move {
            let resolved =
                tokio::task::spawn_blocking(move || policy.resolve(&host, 0)).await.map_err(std::io::Error::other)?;
            resolved.map(Vec::into_iter).map_err(std::io::Error::other)
        })
    }
}

type Client =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>, Full<Bytes>>;

/// Why a try failed: the receiver's status, if it answered, and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub status: Option<u16>,
    pub message: String,
}

pub struct Sender {
    pub pool: Pool,
    pub settings: WebhookSettings,
    pub policy: Arc<DestinationPolicy>,
    pub metrics: Arc<Metrics>,
}

impl Sender {
    /// Until `stop`: keeps up to `concurrency` deliveries in flight, taking up due ones as slots
    /// free and at least every `poll_interval_ms`.
    pub async fn run(self, stop: CancellationToken) {
        if self.settings.secret.is_empty() {
            tracing::warn!("webhooks.secret is empty: webhook deliveries wait unsent");
            stop.cancelled().await;
            return;
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: no TLS configuration; deliveries wait unsent");
                stop.cancelled().await;
                return;
            }
        };
        let secret = self.settings.secret.expose();
        let keys = Keys {
            standard: ResultsKey::new(standard_key(secret)),
            legacy: ResultsKey::new(secret.as_bytes().to_vec()),
        };
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let concurrency = self.settings.concurrency.max(1);
        let per_receiver = self.settings.per_receiver_concurrency.clamp(1, concurrency);
        // Claimed for longer than a try can take: another relay leaves them alone meanwhile.
        let lease = (self.settings.timeout_ms as i64).saturating_mul(3).max(1_000);
        let this = Arc::new(self);
        let mut in_flight: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
        let mut per: HashMap<String, usize> = HashMap::new();
        let mut last_sweep = Instant::now();
        while !stop.is_cancelled() {
            if last_sweep.elapsed() >= Duration::from_secs(60) {
                last_sweep = Instant::now();
                this.give_up_expired().await;
            }
            let free = concurrency - in_flight.len();
            if free > 0 {
                let busy: Vec<String> =
                    per.iter().filter(|(_, n)| **n >= per_receiver).map(|(r, _)| r.clone()).collect();
                match queue::due(&this.pool, free as i64, lease, &busy, per_receiver as i64).await {
                    Ok(due) => {
                        let mut extra = Vec::new();
                        for d in due {
                            let n = per.entry(d.receiver.clone()).or_default();
                            if *n >= per_receiver {
                                extra.push(d.id);
                                continue;
                            }
                            *n += 1;
                            let (this, client, keys) = (Arc::clone(&this), client.clone(), keys.clone());
                            in_flight.spawn(async move {
                                this.deliver(&client, &keys, &d).await;
                                d.receiver
                            });
                        }
                        if let Err(e) = queue::release(&this.pool, &extra).await {
                            tracing::warn!(error = %e, "webhooks: cannot hand back deliveries");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhooks: cannot read the queue"),
                }
            }
            tokio::select! {
                Some(done) = in_flight.join_next() => {
                    if let Ok(receiver) = done {
                        if let Some(n) = per.get_mut(&receiver) {
                            *n -= 1;
                            if *n == 0 {
                                per.remove(&receiver);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => {}
            }
        }
        // A send cut here was not recorded: it goes again (at least once).
        in_flight.abort_all();
    }

    async fn give_up_expired(&self) {
        match queue::give_up_expired(&self.pool, self.settings.max_age_secs).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    deliveries = n,
                    max_age_secs = self.settings.max_age_secs,
                    "webhook deliveries given up"
                );
                self.metrics.inc(&crate::metrics::WEBHOOK_ATTEMPTS, &["gave_up"], n);
            }
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot give up expired deliveries"),
        }
    }

    fn client(&self) -> Result<Client, vap_core::tls::TlsError> {
        let ca = Some(self.settings.ca_file.as_path()).filter(|p| p.exists());
        let tls = vap_core::tls::client_config(ca)?;
        let mut http = HttpConnector::new_with_resolver(CheckedResolver(Arc::clone(&self.policy)));
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(self.settings.timeout_ms)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https))
    }

    async fn deliver(&self, client: &Client, keys: &Keys, due: &Due) {
        let shown = vap_core::camera_url::redact_webhook_url(&due.url);
        let outcome = self.post(client, keys, due).await;
        let recorded = match &outcome {
            Ok(status) => queue::delivered(&self.pool, due.id, *status).await,
            Err(e) => {
                // Back-off by attempt: 1 s doubling to retry_max_ms, with jitter.
                let mut backoff =
                    Backoff::new(Duration::from_secs(1), Duration::from_millis(self.settings.retry_max_ms.max(1_000)));
                let mut delay = Duration::from_secs(1);
                for _ in 0..=due.attempts.clamp(0, 30) {
                    delay = backoff.next_delay().unwrap_or(delay);
                }
                tracing::warn!(url = shown, event = %due.event.event_id, attempts = due.attempts + 1, error = %e,
                    retry_in_ms = delay.as_millis() as u64, "webhook not delivered");
                let max_age = self.settings.max_age_secs;
                let given_up =
                    queue::failed(&self.pool, due.id, e.status, &e.message, delay.as_millis() as i64, max_age).await;
                if matches!(given_up, Ok(true)) {
                    tracing::warn!(url = shown, event = %due.event.event_id, "webhook given up (webhooks.max_age_secs)");
                    self.metrics.inc(&crate::metrics::WEBHOOK_ATTEMPTS, &["gave_up"], 1);
                }
                given_up.map(|_| ())
            }
        };
        let result = if outcome.is_ok() { "delivered" } else { "failed" };
        self.metrics.inc(&crate::metrics::WEBHOOK_ATTEMPTS, &[result], 1);
        if let Err(e) = recorded {
            // Sent but not recorded: it goes again (at least once).
            tracing::warn!(error = %e, "webhooks: cannot record a delivery");
        }
    }

    async fn post(&self, client: &Client, keys: &Keys, due: &Due) -> Result<u16, SendError> {
        let fail = |status: Option<u16>, message: String| SendError { status, message };
        let uri: hyper::Uri = due.url.parse().map_err(|e| fail(None, format!("not a URI: {e}")))?;
        if let Some(host) = uri.host() {
            self.policy
                .check_host(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| fail(None, e.to_string()))?;
        }
        let body = serde_json::to_vec(&due.event).unwrap_or_default();
        let id = due.event.event_id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("vap/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", standard_signature(&keys.standard, &id, timestamp, &body))
            .header(EVENT_ID_HEADER, &id)
            .header(SIGNATURE_HEADER, format!("sha256={}", String::from_utf8_lossy(&keys.legacy.sign(&body))))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(None, e.to_string()))?;
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let answer = tokio::time::timeout(timeout, async {
            let response = client.request(request).await.map_err(|e| fail(None, connect_error(&e)))?;
            let status = response.status();
            // Read (and drop) the answer within the same timeout, so the connection can be
            // reused; one longer than the bound is cut off with its connection.
            let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
            let _ = http_body_util::BodyExt::collect(limited).await;
            Ok::<_, SendError>(status)
        })
        .await
        .map_err(|_| fail(None, format!("no answer within {timeout:?}")))??;
        if answer.is_success() {
            Ok(answer.as_u16())
        } else {
            Err(fail(Some(answer.as_u16()), format!("receiver answered {answer}")))
        }
    }
}

/// The root cause of a failed request (hyper-util's own words are "client error (Connect)").
fn connect_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}
