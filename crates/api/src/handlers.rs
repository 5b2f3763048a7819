//! Route handlers: parse and check input, call `db`, shape the answer.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::query::Query;
use super::{json_response, metrics, ApiError, AppState, Body, MAX_BODY_BYTES};
use vap_core::camera_url::CameraUrl;
use vap_core::config::ApiSettings;
use vap_core::db::results::{self, StoredResult};
use vap_core::db::scenarios::{self, Created, Idempotency, OptionsChange, Scenario, ScenarioStatus, Shutdown};
use vap_core::db::{self, outbox, positions, scene_events};
use vap_core::events::SceneEventKind;
use vap_core::options::{Defaults, ScenarioOptions};

/// The consumer name the inbox stores its positions under.
use vap_core::consumer::INBOX_CONSUMER;

/// What a bearer token may do. `Operate` includes reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Operate,
}

/// The scope the request's token grants: every scope when no token is configured, `None` for a
/// missing or wrong token. The scheme word is case-insensitive (RFC 9110); tokens are compared
/// in constant time.
pub fn granted_scope(settings: &ApiSettings, req: &Request<Incoming>) -> Option<Scope> {
    if settings.auth_token.is_empty() && settings.read_token.is_empty() {
        return Some(Scope::Operate);
    }
    let value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim().as_bytes();
    let matches = |s: &vap_core::config::Secret| {
        !s.is_empty() && bool::from(subtle::ConstantTimeEq::ct_eq(token, s.expose().as_bytes()))
    };
    // Both compared, whichever matches, so timing does not tell which scope a guess was near.
    let (operate, read) = (matches(&settings.auth_token), matches(&settings.read_token));
    if operate {
        Some(Scope::Operate)
    } else if read {
        Some(Scope::Read)
    } else {
        None
    }
}

/// A scenario as the API shows it: its camera URL redacted, its options resolved.
#[derive(serde::Serialize)]
pub struct ScenarioView<'a> {
    scenario_uuid: Uuid,
    camera_url: String,
    options: OptionsView<'a>,
    options_revision: i64,
    status: &'static str,
    error: Option<&'a str>,
    frames_processed: i64,
    health: Health,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    worker: Option<&'a vap_core::db::scenarios::Worker>,
}

/// How its camera is doing, as the stored results say.
#[derive(serde::Serialize)]
struct Health {
    last_frame_at: Option<chrono::DateTime<chrono::Utc>>,
    analysed_fps: Option<f64>,
}

impl<'a> ScenarioView<'a> {
    pub fn new(s: &'a Scenario, defaults: &'a Defaults) -> Self {
        ScenarioView {
            scenario_uuid: s.uuid,
            camera_url: s.camera_url.redacted(),
            options: OptionsView::new(&s.options, defaults),
            options_revision: s.options_revision,
            status: s.status.as_str(),
            error: s.error.as_deref(),
            frames_processed: s.frames_processed,
            health: Health {
                last_frame_at: s.last_frame_at,
                analysed_fps: s.analysed_fps.map(|f| (f64::from(f) * 100.0).round() / 100.0),
            },
            created_at: s.created_at,
            updated_at: s.updated_at,
            worker: s.worker.as_ref(),
        }
    }
}

/// A webhook's host, when an address, must be one the destination policy allows (names are
/// checked by the sender, at every connection).
fn webhook_reachable(state: &AppState, o: ScenarioOptions) -> Result<ScenarioOptions, vap_core::options::OptionError> {
    let host =
        o.webhook_url.as_deref().and_then(|u| url::Url::parse(u).ok()).and_then(|u| u.host_str().map(String::from));
    match host.map(|h| state.destinations.check_host(h.trim_start_matches('[').trim_end_matches(']'))) {
        Some(Err(e)) => Err(vap_core::options::OptionError {
            field: "webhook_url".into(),
            reason: format!("not a reachable host: {e}"),
        }),
        _ => Ok(o),
    }
}

/// The options in effect: defaults that depend on the model are shown resolved against it.
/// `classes: null` means every class of the model.
#[derive(serde::Serialize)]
pub struct OptionsView<'a> {
    name: Option<&'a str>,
    model: &'a str,
    fps: f64,
    classes: Option<&'a [String]>,
    /// As the wider float the body always carried.
    min_confidence: Option<f64>,
    mask: &'a [vap_core::options::Polygon],
    zones: &'a [vap_core::options::Zone],
    lines: &'a [vap_core::options::Line],
    /// Redacted: readers need not hold the receiver's secret.
    webhook_url: Option<String>,
    snapshot_interval_s: f64,
    retention_days: Option<u32>,
    motion_gating: bool,
    decode: &'static str,
}

impl<'a> OptionsView<'a> {
    pub fn new(o: &'a ScenarioOptions, defaults: &'a Defaults) -> Self {
        let model = o.model_name(&defaults.catalogue);
        OptionsView {
            name: o.name.as_deref(),
            model,
            fps: o.fps.unwrap_or(defaults.fps),
            classes: o.classes.as_deref(),
            min_confidence: defaults
                .catalogue
                .get(model)
                .map(|m| f64::from(o.effective_min_confidence(m, defaults.min_confidence))),
            mask: &o.mask,
            zones: &o.zones,
            lines: &o.lines,
            webhook_url: o.webhook_url.as_deref().map(vap_core::camera_url::redact_webhook_url),
            snapshot_interval_s: o.snapshot_interval_s.unwrap_or(vap_core::options::DEFAULT_SNAPSHOT_INTERVAL_S),
            retention_days: o.retention_days,
            motion_gating: o.motion_gating(),
            decode: o.decode().as_str(),
        }
    }
}

/// The catalogue: what `model` may name, and what each model can find.
#[derive(serde::Serialize)]
struct Catalogue<'a> {
    default_model: &'a str,
    models: Vec<ModelView<'a>>,
}

#[derive(serde::Serialize)]
struct ModelView<'a> {
    name: &'a str,
    default: bool,
    classes: Vec<&'a str>,
    labels: &'a [String],
    input: InputSize,
    output_format: &'static str,
    thresholds: ThresholdsView,
    sha256: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct InputSize {
    width: usize,
    height: usize,
}

/// As the wider floats the body always carried.
#[derive(serde::Serialize)]
struct ThresholdsView {
    min_confidence: f64,
    iou: f64,
    max_detections: usize,
}

pub fn models(state: &Arc<AppState>) -> Response<Body> {
    let catalogue = &state.options.catalogue;
    let models = catalogue
        .iter()
        .map(|m| ModelView {
            name: &m.name,
            default: m.name == catalogue.default_name(),
            classes: m.classes().collect(),
            labels: &m.labels,
            input: InputSize { width: m.input.width, height: m.input.height },
            output_format: m.output_format(),
            thresholds: ThresholdsView {
                min_confidence: f64::from(m.thresholds.score),
                iou: f64::from(m.thresholds.iou),
                max_detections: m.thresholds.max_detections,
            },
            sha256: m.sha256.as_deref(),
        })
        .collect();
    json_response(StatusCode::OK, &Catalogue { default_model: catalogue.default_name(), models })
}

pub fn parse_uuid(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad("invalid_uuid", format!("'{raw}' is not a valid UUID")))
}

/// The body as JSON, with the Idempotency-Key. A body that trickles in slower than
/// `timeout_ms` (a slow client holding a connection and a task) is a 408.
async fn read_json_body(req: Request<Incoming>, timeout_ms: u64) -> Result<(Value, Option<String>), ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    // A PATCH body is a JSON merge patch, which RFC 7396 labels with its own type.
    if media != "application/json" && media != "application/merge-patch+json" {
        return Err(ApiError::UnsupportedMediaType(if content_type.is_empty() {
            "nothing".into()
        } else {
            content_type.into()
        }));
    }
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) {
        if len > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
        }
    }
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => {
            let k =
                v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
            Some(
                k.ok_or_else(|| {
                    ApiError::bad(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?
                .to_string(),
            )
        }
    };
    let collect = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let bytes = tokio::time::timeout(Duration::from_millis(timeout_ms), collect)
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout_ms))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::bad("body_unreadable", format!("could not read the request body: {e}"))
            }
        })?
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad("malformed_json", format!("request body is not valid JSON: {e}")))?;
    Ok((value, key))
}

pub async fn init_scenario(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (body, key) = read_json_body(req, state.settings.body_read_timeout_ms).await?;
    let Value::Object(fields) = &body else {
        return Err(ApiError::bad("invalid_body", "request body must be a JSON object"));
    };
    let url = match fields.get("camera_url") {
        None | Some(Value::Null) => return Err(ApiError::bad("missing_camera_url", "camera_url is required")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::bad("invalid_camera_url", "camera_url must be a string")),
    };
    let url = CameraUrl::parse(url, state.settings.allow_file_urls, &state.destinations)
        .map_err(|e| ApiError::bad("invalid_camera_url", e.to_string()))?;
    let mut requested = fields.clone();
    requested.remove("camera_url");
    let options = ScenarioOptions::from_request(&requested, &state.options)
        .and_then(|o| webhook_reachable(state, o))
        .map_err(ApiError::InvalidOption)?;
    let mut digest = Sha256::new();
    digest.update(url.expose().as_bytes());
    // Only a request with options hashes them: keys stored before options existed still match.
    if !requested.is_empty() {
        digest.update(serde_json::to_vec(&requested).unwrap_or_default());
    }
    let hash = hex::encode(digest.finalize());
    let idempotency = key.as_deref().map(|key| Idempotency { key, request_hash: &hash });
    let render = |s: &Scenario| serde_json::to_value(ScenarioView::new(s, &state.options)).unwrap_or(Value::Null);
    match scenarios::create(&state.pool, &url, &options, idempotency, render).await? {
        Created::New { scenario, response } => {
            state.outbox_waker.wake();
            tracing::info!(scenario_uuid = %scenario.uuid, camera_url = %url, "scenario created");
            Ok(json_response(StatusCode::OK, &response))
        }
        Created::Replayed(response) => Ok(json_response(StatusCode::OK, &response)),
        Created::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

pub async fn get_scenario(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let scenario = scenarios::get(&state.pool, uuid).await?.ok_or(ApiError::ScenarioNotFound(uuid))?;
    Ok(json_response(StatusCode::OK, &ScenarioView::new(&scenario, &state.options)))
}

/// `PATCH /api/v1/scenario/{uuid}`: a JSON merge patch of the options. The change is stored
/// with an `update_scenario` event; the orchestrator then tells the runner.
pub async fn patch_scenario(
    state: &Arc<AppState>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let (body, _) = read_json_body(req, state.settings.body_read_timeout_ms).await?;
    let Value::Object(patch) = body else {
        return Err(ApiError::bad("invalid_body", "request body must be a JSON object (a merge patch of the options)"));
    };
    if patch.contains_key("camera_url") {
        return Err(ApiError::InvalidOption(vap_core::options::OptionError {
            field: "camera_url".into(),
            reason: "a scenario's camera can't change; create a new scenario".into(),
        }));
    }
    // The runner sets up its decoder once, before its threads start (OpenCV reads it from the
    // environment): a change could never reach a running runner.
    if patch.contains_key("decode") {
        return Err(ApiError::InvalidOption(vap_core::options::OptionError {
            field: "decode".into(),
            reason: "is set when a scenario is created and can't change; create a new scenario".into(),
        }));
    }
    let change = scenarios::change_options(&state.pool, uuid, |o| {
        o.patched(&patch, &state.options).and_then(|o| webhook_reachable(state, o))
    })
    .await?;
    match change {
        OptionsChange::Changed(s) => {
            state.outbox_waker.wake();
            tracing::info!(scenario_uuid = %uuid, revision = s.options_revision, "options changed");
            Ok(json_response(StatusCode::OK, &ScenarioView::new(&s, &state.options)))
        }
        OptionsChange::Unchanged(s) => Ok(json_response(StatusCode::OK, &ScenarioView::new(&s, &state.options))),
        OptionsChange::NotRunning(s) => Err(ApiError::Conflict(format!(
            "scenario {uuid} is {}; only a scenario that runs can change its options",
            s.status.as_str()
        ))),
        OptionsChange::Refused(e) => Err(ApiError::InvalidOption(e)),
        OptionsChange::NotFound => Err(ApiError::ScenarioNotFound(uuid)),
    }
}

pub async fn list_scenarios(state: &Arc<AppState>, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q = Query::parse(query);
    let status = match q.get("status") {
        None | Some("") => None,
        Some(s) => Some(ScenarioStatus::parse(s).ok_or_else(|| {
            let known: Vec<&str> = ScenarioStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad("invalid_parameter", format!("status must be one of {}, got '{s}'", known.join(", ")))
        })?),
    };
    let limit = q.int("limit", 1, state.settings.scenario_page_max)?.unwrap_or(state.settings.scenario_page_default);
    let cursor = cursor_param(&q)?;
    let (rows, more) = scenarios::list(&state.pool, status, cursor, limit).await?;
    let next = if more { rows.last().map(|s| s.seq.to_string()) } else { None };
    let list: Vec<ScenarioView> = rows.iter().map(|s| ScenarioView::new(s, &state.options)).collect();
    Ok(json_response(StatusCode::OK, &json!({ "scenarios": list, "next_cursor": next })))
}

pub async fn shutdown_scenario(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    match scenarios::request_shutdown(&state.pool, uuid).await? {
        Shutdown::Requested(s) => {
            state.outbox_waker.wake();
            tracing::info!(scenario_uuid = %uuid, "shutdown requested");
            Ok(json_response(StatusCode::OK, &ScenarioView::new(&s, &state.options)))
        }
        Shutdown::AlreadyShuttingDown(s) => Ok(json_response(StatusCode::OK, &ScenarioView::new(&s, &state.options))),
        Shutdown::Finished(s) => Err(ApiError::Conflict(format!(
            "scenario {uuid} is already {}; there is nothing to shut down",
            s.status.as_str()
        ))),
        Shutdown::NotFound => Err(ApiError::ScenarioNotFound(uuid)),
    }
}

/// `DELETE /api/v1/scenario/{uuid}`: a finished scenario and everything stored of it.
pub async fn delete_scenario(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    match scenarios::delete(&state.pool, uuid).await? {
        scenarios::Deletion::Deleted => {
            tracing::info!(scenario_uuid = %uuid, "scenario deleted with its results, events and snapshots");
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(http_body_util::Full::new(bytes::Bytes::new()).boxed())
                .map_err(|e| ApiError::Internal(e.to_string()))
        }
        scenarios::Deletion::Running(status) => Err(ApiError::Conflict(format!(
            "scenario {uuid} is {}; shut it down first (POST /api/v1/scenario/{uuid}/shutdown)",
            status.as_str()
        ))),
        scenarios::Deletion::NotFound => Err(ApiError::ScenarioNotFound(uuid)),
    }
}

/// A scenario's scene events in the order they were stored: `kind`, `since`/`until` (RFC 3339,
/// on the event's time), `limit`, and `cursor` (the last page's `next_cursor`).
pub async fn scene_events(state: &Arc<AppState>, id: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let q = Query::parse(query);
    let kind = match q.get("kind") {
        None | Some("") => None,
        Some(k) => Some(SceneEventKind::parse(k).ok_or_else(|| {
            let known: Vec<&str> = SceneEventKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::bad("invalid_parameter", format!("kind must be one of {}, got '{k}'", known.join(", ")))
        })?),
    };
    let (since, until) = (q.time("since")?, q.time("until")?);
    let limit =
        q.int("limit", 1, state.settings.prediction_page_max)?.unwrap_or(state.settings.prediction_page_default);
    let after = cursor_param(&q)?;
    if scenarios::get(&state.pool, uuid).await?.is_none() {
        return Err(ApiError::ScenarioNotFound(uuid));
    }
    let q = scene_events::EventQuery { kind, since, until, after, limit: limit + 1 };
    let mut rows = scene_events::page(&state.pool, uuid, &q).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(|(seq, _)| seq.to_string()) } else { None };
    let ids: Vec<uuid::Uuid> = rows.iter().map(|(_, e)| e.event_id).collect();
    let deliveries = db::webhooks::states(&state.pool, &ids).await?;
    let events: Vec<Value> = rows
        .iter()
        .map(|(_, e)| {
            let mut v = scene_event_json(e);
            if let Some(o) = v.as_object_mut() {
                let webhooks: Vec<Value> = deliveries
                    .iter()
                    .filter(|(id, _)| *id == e.event_id)
                    .map(|(_, d)| {
                        json!({"url": vap_core::camera_url::redact_webhook_url(&d.url), "delivered_at": d.delivered_at,
                               "attempts": d.attempts, "last_status": d.last_status, "last_error": d.last_error,
                               "gave_up_at": d.gave_up_at})
                    })
                    .collect();
                if !webhooks.is_empty() {
                    o.insert("webhooks".into(), Value::Array(webhooks));
                }
            }
            v
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "scenario_uuid": uuid, "events": events, "next_cursor": next })))
}

/// `cursor`: a page's `next_cursor`, a positive sequence number.
fn cursor_param(q: &Query) -> Result<Option<i64>, ApiError> {
    match q.get("cursor") {
        None | Some("") => Ok(None),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .map(Some)
            .ok_or_else(|| ApiError::bad("invalid_cursor", "cursor is not one this API returned")),
    }
}

/// Per `bucket` (`1m` or `1h`), zone or line, and class: entered, left, crossed in and out,
/// and zones' peak occupancy, computed by PostgreSQL from the stored events.
pub async fn scene_counts(state: &Arc<AppState>, id: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let q = Query::parse(query);
    let bucket = match q.get("bucket") {
        None | Some("") => scene_events::Bucket::Hour,
        Some(b) => scene_events::Bucket::parse(b)
            .ok_or_else(|| ApiError::bad("invalid_parameter", format!("bucket must be 1m or 1h, got '{b}'")))?,
    };
    let widest = bucket.length() * scene_events::MAX_COUNT_BUCKETS;
    let until = q.time("until")?;
    let (since, until) = match (q.time("since")?, until) {
        (Some(since), Some(until)) if since >= until => {
            return Err(ApiError::bad("invalid_parameter", "since must be before until"));
        }
        (Some(since), Some(until)) if until - since > widest => {
            let most = scene_events::MAX_COUNT_BUCKETS;
            return Err(ApiError::bad(
                "range_too_large",
                format!("since..until spans more than {most} buckets; narrow it"),
            ));
        }
        // An open end after a given start: as many buckets on.
        (Some(since), until) => (since, Some(until.unwrap_or(since + widest))),
        // An open start: the last MAX_COUNT_BUCKETS buckets before `until` (or now); an open
        // end stays open (a file's frames may be stamped ahead of now).
        (None, until) => (until.unwrap_or_else(chrono::Utc::now) - widest, until),
    };
    if scenarios::get(&state.pool, uuid).await?.is_none() {
        return Err(ApiError::ScenarioNotFound(uuid));
    }
    let rows = scene_events::counts(&state.pool, uuid, bucket, Some(since), until).await?;
    let counts = rows
        .iter()
        .map(|c| match &c.zone {
            Some(zone) => CountView::Zone {
                start: c.start,
                zone,
                class: c.class.as_deref(),
                entered: c.entered,
                left: c.left,
                peak_occupancy: c.peak_occupancy,
            },
            None => CountView::Line {
                start: c.start,
                line: c.line.as_deref(),
                class: c.class.as_deref(),
                crossed_in: c.crossed_in,
                crossed_out: c.crossed_out,
            },
        })
        .collect();
    let bucket = if bucket == scene_events::Bucket::Minute { "1m" } else { "1h" };
    Ok(json_response(StatusCode::OK, &CountsPage { scenario_uuid: uuid, bucket, counts }))
}

/// Counts per bucket, zone or line, and class.
#[derive(serde::Serialize)]
struct CountsPage<'a> {
    scenario_uuid: Uuid,
    bucket: &'static str,
    counts: Vec<CountView<'a>>,
}

/// A zone's entries, exits and peak occupancy, or a line's crossings each way.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum CountView<'a> {
    Zone {
        start: chrono::DateTime<chrono::Utc>,
        zone: &'a str,
        class: Option<&'a str>,
        entered: i64,
        left: i64,
        peak_occupancy: Option<i64>,
    },
    Line {
        start: chrono::DateTime<chrono::Utc>,
        line: Option<&'a str>,
        class: Option<&'a str>,
        crossed_in: i64,
        crossed_out: i64,
    },
}

/// A stored event as the API shows it (the scenario is the one asked about).
pub fn scene_event_json(e: &vap_core::events::SceneEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("scenario_uuid");
    }
    v
}

/// A stored frame, with what produced it: model, the model file's digest, the runner
/// instance, and for files the position in the media. `analysed: false` is a frame the
/// detector did not run on (nothing moved: `motion` is the picture's changed share), which is
/// not the same as one where it found nothing.
#[derive(serde::Serialize)]
pub struct FrameView<'a> {
    frame_number: i64,
    timestamp: chrono::DateTime<chrono::Utc>,
    analysed: bool,
    motion: Option<f64>,
    detections: &'a serde_json::value::RawValue,
    model: Option<&'a str>,
    model_sha256: Option<&'a str>,
    runner: Option<&'a str>,
    options_revision: Option<i64>,
    media_ms: Option<f64>,
}

impl<'a> From<&'a StoredResult> for FrameView<'a> {
    fn from(r: &'a StoredResult) -> Self {
        let d = &r.details;
        FrameView {
            frame_number: r.frame_number,
            timestamp: r.timestamp,
            analysed: d.analysed,
            motion: d.motion,
            detections: &r.detections,
            model: d.model.as_deref(),
            model_sha256: d.model_sha256.as_deref(),
            runner: d.runner.as_deref(),
            options_revision: d.options_revision,
            media_ms: d.media_ms,
        }
    }
}

/// A page of a scenario's stored frames.
#[derive(serde::Serialize)]
struct PredictionPage<'a> {
    scenario_uuid: Uuid,
    status: &'a str,
    total_frames_processed: i64,
    results: Vec<FrameView<'a>>,
    next_after_frame: Option<i64>,
}

pub async fn prediction(state: &Arc<AppState>, id: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let uuid = parse_uuid(id)?;
    let q = Query::parse(query);
    // No stored frame lies past the limit the inbox holds records to.
    let after = q.int("after_frame", -1, vap_core::events::limits::MAX_FRAME_NUMBER)?.unwrap_or(-1);
    let limit =
        q.int("limit", 1, state.settings.prediction_page_max)?.unwrap_or(state.settings.prediction_page_default);
    let range = results::TimeRange { since: q.time("since")?, until: q.time("until")? };
    if let (Some(since), Some(until)) = (range.since, range.until) {
        if since >= until {
            return Err(ApiError::bad("invalid_parameter", "since must be before until"));
        }
    }
    let scenario = scenarios::get(&state.pool, uuid).await?.ok_or(ApiError::ScenarioNotFound(uuid))?;
    let rows = results::page_in(&state.pool, uuid, after, limit, range).await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|r| r.frame_number) } else { None };
    let page = PredictionPage {
        scenario_uuid: uuid,
        status: scenario.status.as_str(),
        total_frames_processed: scenario.frames_processed,
        results: rows.iter().map(FrameView::from).collect(),
        next_after_frame: next,
    };
    Ok(json_response(StatusCode::OK, &page))
}

pub async fn ready(state: &Arc<AppState>) -> Response<Body> {
    let check = async {
        let client = state.pool.get().await.map_err(db::DbError::from)?;
        client.query_one("SELECT 1", &[]).await.map_err(db::DbError::from)
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(_)) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Ok(Err(e)) => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "unavailable", "reason": e.to_string()}))
        }
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "reason": "database did not answer in 2 s"}),
        ),
    }
}

/// Request metrics plus gauges read from the database at scrape time.
/// How long database gauges are reused: a flood of scrapes costs one query per this.
const GAUGE_TTL: Duration = Duration::from_secs(5);

pub async fn metrics(state: &Arc<AppState>) -> String {
    state.metrics.set(&metrics::SSE_STREAMS, &[], state.sse_streams.load(std::sync::atomic::Ordering::Relaxed) as f64);
    // One scrape refreshes at a time; the others (and any within the TTL) render what is known.
    let Ok(mut refreshed) = state.gauges_refreshed.try_lock() else { return state.metrics.render() };
    if refreshed.is_some_and(|at| at.elapsed() < GAUGE_TTL) {
        return state.metrics.render();
    }
    *refreshed = Some(std::time::Instant::now());
    drop(refreshed);
    let gauges = async {
        let (backlog, oldest) = outbox::backlog(&state.pool).await?;
        let lag = positions::lag(&state.pool, INBOX_CONSUMER).await?;
        Ok::<_, db::DbError>((backlog, oldest, lag))
    };
    let up = match tokio::time::timeout(Duration::from_secs(2), gauges).await {
        Ok(Ok((backlog, oldest, lag))) => {
            let m = &state.metrics;
            m.set(&metrics::OUTBOX_BACKLOG, &[], backlog as f64);
            m.set(&metrics::OUTBOX_OLDEST_UNPUBLISHED, &[], oldest);
            m.set(&metrics::INBOX_BACKLOG, &[], lag as f64);
            1.0
        }
        _ => 0.0,
    };
    state.metrics.set(&metrics::DATABASE_UP, &[], up);
    state.metrics.render()
}
