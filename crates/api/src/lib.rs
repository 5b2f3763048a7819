//! `vap-api`: the REST API on hyper. It talks to PostgreSQL only; events reach Kafka through
//! the outbox, so a request never waits for the broker.

#![deny(unsafe_code)]

mod console;
mod error;
mod handlers;
pub mod metrics;
mod openapi;
mod origin;
mod picture;
mod query;
mod routes;
mod snapshots;
mod sse;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::Pool;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use routes::{Access, Endpoint, Matched, Route};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use vap_core::config::{ApiSettings, DatabaseSettings};
use vap_core::destination::DestinationPolicy;
use vap_core::metrics::Metrics;
use vap_core::options::Defaults;
use vap_core::tasks::{OwnedTasks, TaskFailed};

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
pub struct AppState {
    pub pool: Pool,
    pub settings: ApiSettings,
    pub metrics: Arc<Metrics>,
    /// Scenario uuids with newly stored results (from PostgreSQL NOTIFY); `Uuid::nil()` means
    /// "anything may have changed" (after a LISTEN reconnect).
    pub results_bus: tokio::sync::broadcast::Sender<uuid::Uuid>,
    /// Cancelled at shutdown so long-lived SSE streams end and the drain completes.
    pub shutdown: CancellationToken,
    /// Tells relays that new outbox rows are committed.
    pub outbox_waker: vap_core::db::outbox::OutboxWaker,
    /// The model catalogue and the defaults of omitted scenario options.
    pub options: Defaults,
    /// Which camera hosts are refused (literal addresses; runners check resolved names).
    pub destinations: DestinationPolicy,
    /// The OpenAPI document as this configuration enforces it.
    pub openapi: Bytes,
    /// Prediction streams open now (capped by `max_sse_streams`).
    pub sse_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// When the database gauges of /metrics were last read.
    pub gauges_refreshed: tokio::sync::Mutex<Option<Instant>>,
    /// Snapshots being drawn with boxes (one per core at most).
    pub drawing: Arc<tokio::sync::Semaphore>,
}

pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn text_response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A running API: its address, and a handle that ends when it has drained.
pub struct RunningApi {
    pub addr: SocketAddr,
    pub done: tokio::task::JoinHandle<Result<(), TaskFailed>>,
}

/// Binds and serves until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    settings: ApiSettings,
    database: DatabaseSettings,
    options: Defaults,
    destinations: DestinationPolicy,
    shutdown: CancellationToken,
) -> std::io::Result<RunningApi> {
    let addr = listener.local_addr()?;
    let (results_bus, _) = tokio::sync::broadcast::channel(1024);
    let mut tasks = OwnedTasks::new(&shutdown);
    let (outbox_waker, waking) = vap_core::db::outbox::OutboxWaker::new(pool.clone(), tasks.token());
    tasks.spawn("outbox waker", waking);
    let openapi = Bytes::from(openapi::document(&settings));
    let state = Arc::new(AppState {
        outbox_waker,
        pool,
        settings,
        metrics: Arc::new(Metrics::default()),
        results_bus: results_bus.clone(),
        shutdown: shutdown.clone(),
        options,
        destinations,
        openapi,
        sse_streams: Arc::default(),
        gauges_refreshed: tokio::sync::Mutex::new(None),
        drawing: Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))),
    });
    tasks.spawn("results listener", sse::forward_notifications(database, results_bus, tasks.token()));
    tasks.spawn("accept loop", accept_loop(listener, state, tasks.token()));
    Ok(RunningApi { addr, done: tokio::spawn(tasks.join()) })
}

async fn accept_loop(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connections are owned: any still open after the drain end with this loop.
    let mut connections = tokio::task::JoinSet::new();
    let mut watchdog = vap_core::lifecycle::Watchdog::from_env();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= state.settings.max_connections {
                    refuse_busy(&stream);
                    state.metrics.inc(&metrics::HTTP_CONNECTIONS_REFUSED, &[], 1);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                let service = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(state, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                connections.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = watchdog.tick() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    let drain = Duration::from_millis(state.settings.drain_timeout_ms);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    connections.shutdown().await;
}

/// Over the connection cap: a 503 in one write (a fresh socket's buffer takes it whole), closed.
fn refuse_busy(stream: &tokio::net::TcpStream) {
    const BODY: &str = r#"{"error": {"code": "too_many_connections", "message": "this server is at its connection limit; retry later"}}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(head.as_bytes());
}

/// The scope a request needs, `None` for open routes.
fn scope(route: &Route, method: &Method, settings: &ApiSettings) -> Option<handlers::Scope> {
    match route.access {
        Access::Open => None,
        Access::Metrics if settings.metrics_public => None,
        _ if matches!(*method, Method::POST | Method::PATCH | Method::DELETE) => Some(handlers::Scope::Operate),
        _ => Some(handlers::Scope::Read),
    }
}

/// The method as a metrics label: any method a client makes up is `other`, so requests can't
/// mint new series.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.into_iter().find(|m| *m == method.as_str()).unwrap_or("other")
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = method_label(req.method());
    let matched = routes::find(req.uri().path());
    // The template, never the raw path: uuids would explode the label's cardinality.
    let template = matched.as_ref().map_or("unmatched", |m| m.route.template);
    let response = match matched {
        None => ApiError::NotFound(req.uri().path().to_string()).into_response(),
        Some(m) => match dispatch(&state, m, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
    };
    let status = response.status();
    state.metrics.inc(&metrics::HTTP_REQUESTS, &[template, method, status.as_str()], 1);
    state.metrics.observe(&metrics::HTTP_REQUEST_DURATION, &[template, method], started.elapsed());
    if status.is_server_error() {
        tracing::warn!(route = template, status = status.as_u16(), "request failed");
    }
    response
}

async fn dispatch(state: &Arc<AppState>, m: Matched, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let route = m.route;
    origin::check(&state.settings, &req)?;
    if !route.answers(req.method()) {
        return Err(ApiError::MethodNotAllowed { method: req.method().to_string(), allowed: route.allow });
    }
    if let Some(needed) = scope(route, req.method(), &state.settings) {
        match handlers::granted_scope(&state.settings, &req) {
            None => return Err(ApiError::Unauthorized),
            Some(granted) if granted < needed => return Err(ApiError::Forbidden(req.method().to_string())),
            Some(_) => {}
        }
    }
    let id = m.param("uuid");
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    match route.endpoint {
        Endpoint::Health => Ok(json_response(StatusCode::OK, &serde_json::json!({"status": "healthy"}))),
        Endpoint::Ready => Ok(handlers::ready(state).await),
        Endpoint::Metrics => {
            Ok(text_response(StatusCode::OK, "text/plain; version=0.0.4", handlers::metrics(state).await))
        }
        Endpoint::OpenApi => Ok(text_response(StatusCode::OK, "application/json", state.openapi.clone())),
        Endpoint::Docs => Ok(console::page(console::DOCS)),
        Endpoint::Console => Ok(console::page(console::INDEX)),
        Endpoint::ConsoleAsset => console::asset(m.param("asset")),
        Endpoint::InitScenario => handlers::init_scenario(state, req).await,
        Endpoint::ListScenarios => handlers::list_scenarios(state, query).await,
        Endpoint::Models => Ok(handlers::models(state)),
        Endpoint::Scenario if req.method() == Method::PATCH => handlers::patch_scenario(state, id, req).await,
        Endpoint::Scenario if req.method() == Method::DELETE => handlers::delete_scenario(state, id).await,
        Endpoint::Scenario => handlers::get_scenario(state, id).await,
        Endpoint::Shutdown => handlers::shutdown_scenario(state, id).await,
        Endpoint::Prediction => handlers::prediction(state, id, query).await,
        Endpoint::Events => handlers::scene_events(state, id, query).await,
        Endpoint::Counts => handlers::scene_counts(state, id, query).await,
        Endpoint::EventStream => sse::stream_events(state, id, &req).await,
        Endpoint::SnapshotInfo => snapshots::latest_info(state, id).await,
        Endpoint::Snapshot => snapshots::latest_jpeg(state, id, &req).await,
        Endpoint::EventSnapshot => snapshots::event_jpeg(state, id, m.param("event_id"), &req).await,
        Endpoint::PredictionStream => sse::stream(state, id, &req).await,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiRunError {
    #[error(transparent)]
    Db(#[from] vap_core::db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Task(#[from] TaskFailed),
    #[error(transparent)]
    Catalogue(#[from] vap_core::models::CatalogueError),
    #[error(transparent)]
    Config(#[from] vap_core::config::ConfigError),
}

/// An API without tokens answers anyone who can reach it: only on loopback, or when asked for.
pub fn refuse_open_api_beyond_loopback(api: &ApiSettings) -> Result<(), vap_core::config::ConfigError> {
    let open = api.auth_token.is_empty() && api.read_token.is_empty();
    if open && !api.listen.ip().is_loopback() && !api.allow_anonymous {
        return Err(vap_core::config::ConfigError::Value {
            key: "api.auth_token",
            reason: format!(
                "vap-api would listen on {} with no token, open to anyone who reaches it; set api.auth_token \
                 (VAP_API__AUTH_TOKEN), or api.allow_anonymous = true behind a proxy that authenticates",
                api.listen
            ),
        });
    }
    Ok(())
}

/// The `vap-api` process: migrate (when configured), bind, serve until `shutdown`, drain.
pub async fn run(settings: vap_core::config::Settings, shutdown: CancellationToken) -> Result<(), ApiRunError> {
    refuse_open_api_beyond_loopback(&settings.api)?;
    let options = settings.runner.option_defaults()?;
    tracing::info!(models = ?options.catalogue.names(), default = options.catalogue.default_name(), "model catalogue checked");
    vap_core::cli::migrate_on_start(&settings).await?;
    let pool = vap_core::db::pool(&settings.database)?;
    let addr = settings.api.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| ApiRunError::Bind { addr, source })?;
    let destinations =
        DestinationPolicy::from_settings(&settings.destinations).map_err(vap_core::config::ConfigError::from)?;
    let running = serve(listener, pool, settings.api, settings.database, options, destinations, shutdown.clone())
        .await
        .map_err(|source| ApiRunError::Bind { addr, source })?;
    vap_core::lifecycle::notify_ready();
    tracing::info!(addr = %running.addr, "api listening");
    let mut done = running.done;
    // A task that dies ends the serving early (its siblings are cancelled with it).
    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = &mut done => Some(ended),
    };
    vap_core::lifecycle::notify_stopping();
    let drained = match early {
        Some(ended) => ended,
        None => done.await,
    };
    tracing::info!("api stopped");
    Ok(drained.unwrap_or_else(|e| Err(TaskFailed { task: "api", reason: e.to_string() }))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vap_core::config::Secret;

    #[test]
    fn an_open_api_is_refused_beyond_loopback_unless_asked_for() {
        let api = |listen: &str, token: &str, read: &str, anonymous: bool| ApiSettings {
            listen: listen.parse().unwrap(),
            auth_token: Secret::new(token),
            read_token: Secret::new(read),
            allow_anonymous: anonymous,
            ..ApiSettings::default()
        };
        assert!(refuse_open_api_beyond_loopback(&api("127.0.0.1:8080", "", "", false)).is_ok());
        assert!(refuse_open_api_beyond_loopback(&api("[::1]:8080", "", "", false)).is_ok());
        assert!(refuse_open_api_beyond_loopback(&api("0.0.0.0:8080", "", "", false)).is_err());
        assert!(refuse_open_api_beyond_loopback(&api("192.168.1.5:8080", "", "", false)).is_err());
        assert!(refuse_open_api_beyond_loopback(&api("0.0.0.0:8080", "t", "", false)).is_ok());
        assert!(refuse_open_api_beyond_loopback(&api("0.0.0.0:8080", "", "r", false)).is_ok());
        assert!(refuse_open_api_beyond_loopback(&api("0.0.0.0:8080", "", "", true)).is_ok());
    }
}
