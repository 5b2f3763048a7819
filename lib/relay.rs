//! `vap-relay`: the only process between PostgreSQL and Kafka. It runs the outbox relay and
//! the inbox side by side, and serves its own /health and /metrics.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db;
use crate::inbox::Inbox;
use crate::kafka::KafkaLink;
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::outbox_relay::OutboxRelay;
use crate::tasks::{OwnedTasks, TaskFailed};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
    #[error("relay metrics listener {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// Runs until `shutdown`, then finishes the batch in hand and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RelayError> {
    crate::cli::migrate_on_start(&settings).await?;
    let pool = db::pool(&settings.database)?;
    // Fail fast on a bad database address; the broker may come later.
    drop(pool.get().await.map_err(db::DbError::from)?);
    let metrics = Arc::new(Metrics::default());
    let kafka = Arc::new(KafkaLink::new(settings.kafka.clone()));
    let mut tasks = OwnedTasks::new(&shutdown);
    if !settings.relay.metrics_listen.is_empty() {
        let addr = settings.relay.metrics_listen.clone();
        let listener = TcpListener::bind(&addr).await.map_err(|source| RelayError::Bind { addr, source })?;
        tasks.spawn("metrics server", serve_metrics(listener, Arc::clone(&metrics), tasks.token()));
    }
    let relay = OutboxRelay {
        pool: pool.clone(),
        database: settings.database.clone(),
        kafka: Arc::clone(&kafka),
        settings: settings.relay.clone(),
        metrics: Arc::clone(&metrics),
    };
    tasks.spawn("outbox relay", relay.run(tasks.token()));
    if settings.inbox.enabled {
        let inbox = Inbox { pool, kafka, settings: settings.inbox.clone(), metrics };
        tasks.spawn_fallible("inbox", inbox.run(tasks.token()));
    }
    lifecycle::notify_ready();
    tracing::info!("relay ready");
    let stopping = tasks.token();
    tasks.spawn("stop notifier", async move {
        stopping.cancelled().await;
        lifecycle::notify_stopping();
    });
    Ok(tasks.join().await?)
}

/// /health and /metrics for the relay (plain HTTP/1, no routing beyond that).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    // Scrapes in flight are owned: they end with the server.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.cancelled() => return,
        };
        let metrics = Arc::clone(&metrics);
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let metrics = Arc::clone(&metrics);
            async move {
                let (status, ctype, body) = match req.uri().path() {
                    "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
                    "/health" => (StatusCode::OK, "application/json", r#"{"status": "healthy"}"#.to_string()),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "application/json",
                        r#"{"error": {"code": "not_found", "message": "try /metrics"}}"#.to_string(),
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
