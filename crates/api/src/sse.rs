//! `GET /api/v1/prediction/{uuid}/stream` and `GET /api/v1/scenario/{uuid}/events/stream`:
//! Server-Sent Events of results and of scene events as they are stored.
//!
//! One LISTEN connection per API process fans PostgreSQL notifications out to every stream.
//! A notification only says "look again": each stream reads rows after its own cursor, so
//! coalesced or missed notifications can't skip or repeat a frame.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Request, Response, StatusCode};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handlers::{parse_uuid, scene_event_json, FrameView};
use super::query::Query;
use super::{ApiError, AppState, Body};
use vap_core::backoff::Backoff;
use vap_core::config::DatabaseSettings;
use vap_core::db::{self, results, scenarios, scene_events};
use vap_core::events::limits::MAX_FRAME_NUMBER;

const PAGE: i64 = 500;
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Keeps a LISTEN connection open and forwards `vap_results` notifications to `bus`.
pub async fn forward_notifications(
    database: DatabaseSettings,
    bus: broadcast::Sender<Uuid>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        match db::listen(&database, &["vap_results", "vap_events"]).await {
            Ok((_client, mut notifications)) => {
                backoff.reset();
                // Anything stored while we were not listening must be looked at again.
                let _ = bus.send(Uuid::nil());
                loop {
                    tokio::select! {
                        n = notifications.recv() => match n {
                            Some(n) => if let Ok(uuid) = Uuid::parse_str(n.payload()) { let _ = bus.send(uuid); },
                            None => break,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
                // Lost: streams look again, and while the database is away they say so to
                // their clients (which is also how they notice a client that left).
                let _ = bus.send(Uuid::nil());
            }
            Err(e) => tracing::warn!(error = %e, "cannot LISTEN for results; retrying"),
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// What a stream sends, after a cursor: results after a frame number, or events after a
/// storage sequence number. Its `Last-Event-ID` is the cursor of the last item sent.
trait Feed: Send + Sync + 'static {
    /// Up to `limit` items after `cursor`: each with its cursor and data.
    fn page(
        &self,
        state: &AppState,
        uuid: Uuid,
        cursor: i64,
        limit: i64,
    ) -> impl std::future::Future<Output = Result<Vec<(i64, String)>, db::DbError>> + Send;

    fn event_name(&self) -> &'static str;
}

struct Results;

impl Feed for Results {
    async fn page(
        &self,
        state: &AppState,
        uuid: Uuid,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, db::DbError> {
        let rows = results::page(&state.pool, uuid, cursor, limit).await?;
        Ok(rows
            .iter()
            .map(|r| (r.frame_number, serde_json::to_string(&FrameView::from(r)).unwrap_or_default()))
            .collect())
    }

    fn event_name(&self) -> &'static str {
        "result"
    }
}

struct SceneEvents;

impl Feed for SceneEvents {
    async fn page(
        &self,
        state: &AppState,
        uuid: Uuid,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, db::DbError> {
        let q = scene_events::EventQuery { after: Some(cursor), limit, ..Default::default() };
        let rows = scene_events::page(&state.pool, uuid, &q).await?;
        Ok(rows.iter().map(|(seq, e)| (*seq, scene_event_json(e).to_string())).collect())
    }

    fn event_name(&self) -> &'static str {
        "scene_event"
    }
}

fn resume_from(req: &Request<Incoming>, q: &Query, param: &str) -> Option<String> {
    req.headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get(param).map(str::to_string))
}

/// Results as they are stored, after `after_frame` (or `Last-Event-ID`); without either, from
/// now on.
pub async fn stream(state: &Arc<AppState>, id: &str, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let q = Query::parse(req.uri().query());
    let after =
        match resume_from(req, &q, "after_frame") {
            None => None,
            Some(raw) => {
                Some(raw.parse::<i64>().ok().filter(|v| (-1..=MAX_FRAME_NUMBER).contains(v)).ok_or_else(|| {
                    ApiError::bad(
                "invalid_parameter",
                format!("after_frame (or Last-Event-ID) must be an integer from -1 to {MAX_FRAME_NUMBER}, got '{raw}'"),
            )
                })?)
            }
        };
    scenarios::get(&state.pool, uuid).await?.ok_or(ApiError::ScenarioNotFound(uuid))?;
    let slot = StreamSlot::take(&state.sse_streams, state.settings.max_sse_streams)
        .ok_or(ApiError::TooManyStreams(state.settings.max_sse_streams))?;
    // Subscribe before reading the starting point, so nothing stored in between is missed.
    let wake = state.results_bus.subscribe();
    let cursor = match after {
        Some(a) => a,
        None => results::last_frame(&state.pool, uuid).await?,
    };
    Ok(respond(state, Results, uuid, cursor, wake, slot))
}

/// Scene events as they are stored, after `cursor` (an events page's `next_cursor`, or
/// `Last-Event-ID`); without either, the last `tail` and then new ones, or every event from
/// the first.
pub async fn stream_events(
    state: &Arc<AppState>,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let q = Query::parse(req.uri().query());
    let cursor = match resume_from(req, &q, "cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(raw) => Some(raw.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::bad("invalid_cursor", "cursor (or Last-Event-ID) is not one this API returned")
        })?),
    };
    let tail = match q.get("tail") {
        None | Some("") => None,
        Some(raw) => Some(raw.parse::<i64>().ok().filter(|v| (1..=PAGE).contains(v)).ok_or_else(|| {
            ApiError::bad("invalid_parameter", format!("tail must be an integer from 1 to {PAGE}, got '{raw}'"))
        })?),
    };
    scenarios::get(&state.pool, uuid).await?.ok_or(ApiError::ScenarioNotFound(uuid))?;
    // A cursor (a reconnect) wins over `tail`, which only says where a new client starts.
    let cursor = match (cursor, tail) {
        (Some(c), _) => c,
        (None, Some(n)) => scene_events::cursor_before_last(&state.pool, uuid, n).await?,
        (None, None) => 0,
    };
    let slot = StreamSlot::take(&state.sse_streams, state.settings.max_sse_streams)
        .ok_or(ApiError::TooManyStreams(state.settings.max_sse_streams))?;
    let wake = state.results_bus.subscribe();
    Ok(respond(state, SceneEvents, uuid, cursor, wake, slot))
}

fn respond<F: Feed>(
    state: &Arc<AppState>,
    feed: F,
    uuid: Uuid,
    cursor: i64,
    wake: broadcast::Receiver<Uuid>,
    slot: StreamSlot,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    // The pump belongs to the response body: a client that goes away aborts it.
    let pump = AbortOnDrop(tokio::spawn(pump(Arc::clone(state), feed, uuid, cursor, wake, tx, slot)));
    let body = StreamBody::new(tokio_stream_from(rx, pump)).boxed();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| Response::new(http_body_util::Full::new(Bytes::new()).boxed()))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
    pump: AbortOnDrop,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| {
        let _owned = &pump;
        rx.poll_recv(cx)
    })
}

/// One of `max_sse_streams`, held by a pump for as long as it runs.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Self(Arc::clone(open)))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn pump<F: Feed>(
    state: Arc<AppState>,
    feed: F,
    uuid: Uuid,
    mut cursor: i64,
    mut wake: broadcast::Receiver<Uuid>,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    _slot: StreamSlot,
) {
    let send = |text: String| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_ok() }
    };
    let what = feed.event_name();
    if !send(format!("retry: 2000\n: streaming {what}s of {uuid} after {cursor}\n\n")).await {
        return;
    }
    // Streams that lost the database together do not come back in step.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        // Drain everything after the cursor.
        loop {
            let rows = match feed.page(&state, uuid, cursor, PAGE).await {
                Ok(rows) => {
                    backoff.reset();
                    rows
                }
                Err(e) if e.is_data_error() => {
                    // The database refused the question, not failed: asking again gets the same.
                    tracing::warn!(scenario_uuid = %uuid, error = %e, "SSE read refused; ending the stream");
                    send("event: error\ndata: {\"code\": \"invalid_cursor\"}\n\n".into()).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(scenario_uuid = %uuid, error = %e, "SSE read failed; retrying");
                    // Writing is how a departed client is noticed: without it, a pump would
                    // retry for a client long gone until the database came back.
                    if !send(": database unavailable; retrying\n\n".into()).await {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay().unwrap_or(Duration::from_secs(5))) => {}
                        _ = tx.closed() => return,
                        _ = state.shutdown.cancelled() => return,
                    }
                    continue;
                }
            };
            let n = rows.len() as i64;
            for (at, data) in rows {
                if !send(format!("id: {at}\nevent: {what}\ndata: {data}\n\n")).await {
                    return;
                }
                cursor = at;
            }
            if n < PAGE {
                break;
            }
        }
        // Wait for a notification that concerns us.
        loop {
            tokio::select! {
                msg = wake.recv() => match msg {
                    Ok(u) if u == uuid || u.is_nil() => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if !send(": keep-alive\n\n".into()).await { return; }
                }
                _ = tx.closed() => return,
                _ = state.shutdown.cancelled() => return,
            }
        }
    }
}
