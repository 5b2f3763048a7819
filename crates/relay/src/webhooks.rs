//! Scene events -> webhook receivers, run by vap-relay. The inbox queues a delivery with each new
//! event in the same transaction (`webhook_deliveries`); this sends each queue's oldest one until
//! a 2xx, retrying with jittered back-off, so every receiver gets every event at least once and,
//! per scenario, in event order (a relay claims a queue's head for a while, so several relays do
//! not send it together). Each POST carries the event as JSON, `vap-event-id` (to drop
//! repeats) and `vap-signature: sha256=<hex HMAC-SHA256 of the body>` with `webhooks.secret`.
//!
//! Receivers obey the destination policy: a literal address is checked before the request, a
//! name by the resolver at every connection; redirects are not followed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio_util::sync::CancellationToken;

use vap_core::backoff::Backoff;
use vap_core::camera_url::CameraUrl;
use vap_core::config::WebhookSettings;
use vap_core::db::webhooks::{self as queue, Due};
use vap_core::destination::DestinationPolicy;
use vap_core::metrics::Metrics;
use vap_core::signing::ResultsKey;

pub const SIGNATURE_HEADER: &str = "vap-signature";
pub const EVENT_ID_HEADER: &str = "vap-event-id";

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
    /// Until `stop`: sends what is due, then waits `poll_interval_ms`.
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
        let key = ResultsKey::new(self.settings.secret.expose().as_bytes().to_vec());
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        while !stop.is_cancelled() {
            // Claimed for longer than a try can take: another relay leaves them alone meanwhile.
            let lease = (self.settings.timeout_ms as i64).saturating_mul(3).max(1_000);
            match queue::due(&self.pool, self.settings.concurrency.max(1) as i64, lease).await {
                Ok(due) if !due.is_empty() => {
                    let sends = due.iter().map(|d| self.deliver(&client, &key, d));
                    tokio::select! {
                        _ = futures::future::join_all(sends) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot read the queue"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => return,
            }
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

    async fn deliver(&self, client: &Client, key: &ResultsKey, due: &Due) {
        let shown = CameraUrl::trusted(due.url.clone()).redacted();
        let outcome = self.post(client, key, due).await;
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
                queue::failed(&self.pool, due.id, e.status, &e.message, delay.as_millis() as i64).await
            }
        };
        let result = if outcome.is_ok() { "delivered" } else { "failed" };
        self.metrics.inc(&crate::metrics::WEBHOOK_ATTEMPTS, &[result], 1);
        if let Err(e) = recorded {
            // Sent but not recorded: it goes again (at least once).
            tracing::warn!(error = %e, "webhooks: cannot record a delivery");
        }
    }

    async fn post(&self, client: &Client, key: &ResultsKey, due: &Due) -> Result<u16, SendError> {
        let fail = |status: Option<u16>, message: String| SendError { status, message };
        let uri: hyper::Uri = due.url.parse().map_err(|e| fail(None, format!("not a URI: {e}")))?;
        if let Some(host) = uri.host() {
            self.policy
                .check_host(host.trim_start_matches('[').trim_end_matches(']'))
                .map_err(|e| fail(None, e.to_string()))?;
        }
        let body = serde_json::to_vec(&due.event).unwrap_or_default();
        let request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("vap/", env!("CARGO_PKG_VERSION")))
            .header(EVENT_ID_HEADER, due.event.event_id.to_string())
            .header(SIGNATURE_HEADER, format!("sha256={}", String::from_utf8_lossy(&key.sign(&body))))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(None, e.to_string()))?;
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let answer = tokio::time::timeout(timeout, async {
            let response = client.request(request).await.map_err(|e| fail(None, connect_error(&e)))?;
            let status = response.status();
            // Read (and drop) the body within the same timeout, so the connection can be reused.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
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
