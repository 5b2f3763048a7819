//! `GET /api/v1/scenario/{uuid}/snapshot` (what the latest snapshot shows, as JSON),
//! `.../snapshot.jpg` and `.../events/{event_id}/snapshot.jpg` (`?boxes=1` draws the boxes).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use serde_json::json;
use uuid::Uuid;

use super::handlers::parse_uuid;
use super::query::Query;
use super::{json_response, ApiError, AppState, Body};
use vap_core::db::scenarios;
use vap_core::db::snapshots::{self, StoredSnapshot};

/// What the latest snapshot shows, with the address of its picture.
pub async fn latest_info(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let s = found(state, uuid, snapshots::latest(&state.pool, uuid).await?).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "scenario_uuid": uuid,
            "frame_number": s.frame_number,
            "captured_at": s.captured_at,
            "width": s.width,
            "height": s.height,
            "frame_width": s.frame_width,
            "frame_height": s.frame_height,
            "detections": s.detections,
            "event_ids": s.event_ids,
            "image": format!("/api/v1/scenario/{uuid}/snapshot.jpg"),
            "etag": etag(&s, false),
        }),
    ))
}

/// The latest snapshot's picture: revalidated on every use (`no-cache`), so a client asking
/// with its `ETag` gets 304 until a newer one is stored.
pub async fn latest_jpeg(state: &Arc<AppState>, id: &str, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let boxes = Query::parse(req.uri().query()).flag("boxes")?;
    let s = found(state, uuid, snapshots::latest(&state.pool, uuid).await?).await?;
    picture(state, req, s, boxes, "private, no-cache").await
}

/// The snapshot taken when an event happened: it never changes.
pub async fn event_jpeg(
    state: &Arc<AppState>,
    id: &str,
    event: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let event = Uuid::parse_str(event)
        .map_err(|_| ApiError::bad("invalid_uuid", format!("'{event}' is not a valid event id")))?;
    let boxes = Query::parse(req.uri().query()).flag("boxes")?;
    let Some(s) = snapshots::of_event(&state.pool, uuid, event).await? else {
        scenarios::get(&state.pool, uuid).await?.ok_or(ApiError::ScenarioNotFound(uuid))?;
        return Err(ApiError::NoSnapshot(format!(
            "event {event} of scenario {uuid} has no snapshot (camera events have none; older ones are pruned)"
        )));
    };
    picture(state, req, s, boxes, "private, max-age=86400").await
}

/// The snapshot, or why there is none: no such scenario, or none stored yet.
async fn found(state: &AppState, uuid: Uuid, s: Option<StoredSnapshot>) -> Result<StoredSnapshot, ApiError> {
    match s {
        Some(s) => Ok(s),
        None => {
            scenarios::get(&state.pool, uuid).await?.ok_or(ApiError::ScenarioNotFound(uuid))?;
            Err(ApiError::NoSnapshot(format!(
                "scenario {uuid} has no snapshot yet; its runner sends one every few seconds"
            )))
        }
    }
}

fn etag(s: &StoredSnapshot, boxes: bool) -> String {
    format!("\"{}-{}\"", s.frame_number, if boxes { "boxes" } else { "plain" })
}

async fn picture(
    state: &AppState,
    req: &Request<Incoming>,
    s: StoredSnapshot,
    boxes: bool,
    cache_control: &'static str,
) -> Result<Response<Body>, ApiError> {
    let (tag, frame) = (etag(&s, boxes), s.frame_number);
    let head = |status| {
        Response::builder()
            .status(status)
            .header(header::ETAG, &tag)
            .header(header::CACHE_CONTROL, cache_control)
            .header("x-frame-number", frame)
    };
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if unchanged {
        return head(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()).boxed())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let jpeg = if boxes {
        // As many drawings at once as the machine has cores; more wait for none of them.
        let permit =
            Arc::clone(&state.drawing).try_acquire_owned().map_err(|_| ApiError::Busy("snapshots with boxes"))?;
        let drawn = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            super::picture::with_boxes(&s)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        match drawn {
            Ok(jpeg) => jpeg,
            Err(e @ super::picture::PictureError::TooLarge(..)) => return Err(ApiError::Unprocessable(e.to_string())),
            Err(e) => return Err(ApiError::Internal(format!("snapshot of frame {frame}: {e}"))),
        }
    } else {
        s.jpeg.clone()
    };
    head(StatusCode::OK)
        .header(header::CONTENT_TYPE, "image/jpeg")
        .body(Full::new(Bytes::from(jpeg)).boxed())
        .map_err(|e| ApiError::Internal(e.to_string()))
}
