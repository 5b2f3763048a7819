//! The records on Kafka: scenario events (API -> orchestrator, through the outbox), runner
//! control (orchestrator -> runner), and a runner's results, scene events and snapshots
//! (runner -> inbox). Each is one type here, shared by its producer and its consumers; golden
//! files (`tests/golden/records/`) hold one of each as it travels.
//!
//! **Versions.** Every record has a `version` ([`RECORD_VERSION`] when written; absent means 1,
//! and version 1 is not written, so version-1 records carry the fields they had before versions
//! existed). A version adds optional fields only; a change a reader of the previous version
//! would misread needs a new topic. A reader takes every version up to its own and ignores
//! fields it does not know (except `SceneEvent` and `StreamEnd`, which refuse them); a record
//! of a newer version is refused with [`ResultError::NewerVersion`], whichever of its fields
//! failed, never half-read: the inbox sets it aside (`dead_letters`) for replay after an
//! upgrade, the orchestrator and runners log it and skip it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of the records this build writes and the newest it reads.
pub const RECORD_VERSION: u16 = 1;

fn first_version() -> u16 {
    1
}

fn is_first_version(v: &u16) -> bool {
    *v == 1
}

/// Why `bytes` did not parse: a newer version's, when that is what it says it is (its new
/// fields may be what failed: records that refuse unknown fields), else the parser's error.
fn unreadable(bytes: &[u8], e: serde_json::Error) -> ResultError {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default = "first_version")]
        version: u16,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(Head { version }) if version > RECORD_VERSION => ResultError::NewerVersion(version),
        _ => ResultError::Json(e.to_string()),
    }
}

/// A record's version is one this build reads.
fn readable(version: u16) -> Result<(), ResultError> {
    match version {
        1..=RECORD_VERSION => Ok(()),
        0 => Err(ResultError::Json("version 0 does not exist".into())),
        v => Err(ResultError::NewerVersion(v)),
    }
}

/// What happened to a scenario. The Kafka topic is chosen by the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    InitScenario,
    ShutdownScenario,
    /// The scenario's options changed (a PATCH): its runner is to be told.
    UpdateScenario,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::InitScenario => "init_scenario",
            EventKind::ShutdownScenario => "shutdown_scenario",
            EventKind::UpdateScenario => "update_scenario",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "init_scenario" => Some(EventKind::InitScenario),
            "shutdown_scenario" => Some(EventKind::ShutdownScenario),
            "update_scenario" => Some(EventKind::UpdateScenario),
            _ => None,
        }
    }
}

/// A scenario event as published. It names the scenario only: its camera URL (credentials
/// included) stays in PostgreSQL, where the orchestrator reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioEvent {
    /// The record's version (see [`RECORD_VERSION`]); absent means 1.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u16,
    /// The outbox row id: unique and increasing, lets consumers drop duplicates.
    pub event_id: i64,
    pub event_type: EventKind,
    pub scenario_uuid: Uuid,
    pub occurred_at: DateTime<Utc>,
}

/// Orchestrator -> runner on `runner_control`, keyed by scenario: run with these options from
/// now on. A runner applies only a revision newer than the one it runs, so records may repeat
/// and a restarted runner may read them all again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerControl {
    /// The record's version (see [`RECORD_VERSION`]); absent means 1.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u16,
    pub scenario_uuid: Uuid,
    pub revision: i64,
    pub options: crate::options::ScenarioOptions,
}

impl ScenarioEvent {
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let e: Self = serde_json::from_slice(bytes).map_err(|e| unreadable(bytes, e))?;
        readable(e.version)?;
        Ok(e)
    }
}

impl RunnerControl {
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let c: Self = serde_json::from_slice(bytes).map_err(|e| unreadable(bytes, e))?;
        readable(c.version)?;
        Ok(c)
    }
}

pub use crate::detection::Detection;

/// One analysed frame, as the runner produces it to `results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameResult {
    /// The record's version (see [`RECORD_VERSION`]); absent means 1.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u16,
    pub scenario_uuid: Uuid,
    pub frame_number: i64,
    /// Capture time of the frame.
    pub timestamp: DateTime<Utc>,
    pub detections: Vec<Detection>,
    #[serde(flatten)]
    pub details: FrameDetails,
}

/// What a result says of its frame besides the detections: what produced it, how, and the
/// frame's size. Stored with the frame (`scenario_results.extra`); the API serves part of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameDetails {
    /// The model's catalogue name and its file's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// The runner instance: host, pid and a random tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// Which change of the scenario's options the frame was analysed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options_revision: Option<i64>,
    /// For files: the frame's position in the media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_ms: Option<f64>,
    /// Frames analysed a second, as the runner measures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysed_fps: Option<f64>,
    /// False for a frame the detector did not run on (nothing moved): its boxes are the last
    /// analysed frame's.
    #[serde(default = "analysed", skip_serializing_if = "is_analysed")]
    pub analysed: bool,
    /// The picture's changed share, when motion gating ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_width: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_height: Option<i32>,
    /// The frame's index in the source since the runner opened it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_frame: Option<u64>,
}

fn analysed() -> bool {
    true
}

fn is_analysed(v: &bool) -> bool {
    *v
}

impl Default for FrameDetails {
    fn default() -> Self {
        Self {
            model: None,
            model_sha256: None,
            runner: None,
            options_revision: None,
            media_ms: None,
            analysed_fps: None,
            analysed: true,
            motion: None,
            inference_ms: None,
            frame_width: None,
            frame_height: None,
            source_frame: None,
        }
    }
}

impl FrameDetails {
    /// The analysed rate, when it is one a camera can have (anything else is not kept).
    pub fn plausible_fps(&self) -> Option<f32> {
        self.analysed_fps.filter(|f| (0.0..=10_000.0).contains(f)).map(|f| f as f32)
    }
}

/// Bounds a result must keep to be stored: what PostgreSQL can hold, and no runner exceeds.
pub mod limits {
    pub const MAX_DETECTIONS: usize = 1_000;
    pub const MAX_CLASS_BYTES: usize = 200;
    pub const MAX_DETAIL_BYTES: usize = 4_096;
    /// About 317 years of milliseconds since a scenario's epoch.
    pub const MAX_FRAME_NUMBER: i64 = 10_000_000_000_000;
    /// A file's frames count its media time: at most this much of one file is analysed, so
    /// its frame times (and the partitions they fall in) stay within two days of its start.
    pub const MAX_MEDIA_MS: i64 = 48 * 3_600_000;
    pub const MIN_YEAR: i32 = 2000;
    pub const MAX_YEAR: i32 = 2200;
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResultError {
    #[error("not a result message: {0}")]
    Json(String),
    #[error("frame_number {0} is negative")]
    NegativeFrame(i64),
    #[error("frame_number {0} is beyond any scenario's lifetime")]
    FrameTooLarge(i64),
    #[error("timestamp {0} is outside {min}..{max}", min = limits::MIN_YEAR, max = limits::MAX_YEAR)]
    Timestamp(DateTime<Utc>),
    #[error("{0} detections; at most {max}", max = limits::MAX_DETECTIONS)]
    TooManyDetections(usize),
    #[error("detection {index}: {reason}")]
    Detection { index: usize, reason: &'static str },
    #[error("{0} holds a NUL character, which PostgreSQL cannot store")]
    Nul(&'static str),
    #[error("detail is {0} bytes; at most {max}", max = limits::MAX_DETAIL_BYTES)]
    DetailTooLong(usize),
    #[error(
        "record version {0} is newer than this reader's ({RECORD_VERSION}); set aside for replay after an upgrade"
    )]
    NewerVersion(u16),
    #[error("event_id {0} is not the id of this event (ids are derived from scenario, kind, region, track and frame)")]
    EventId(Uuid),
}

fn sane_time(t: DateTime<Utc>) -> Result<(), ResultError> {
    use chrono::Datelike;
    if (limits::MIN_YEAR..=limits::MAX_YEAR).contains(&t.year()) {
        Ok(())
    } else {
        Err(ResultError::Timestamp(t))
    }
}

impl FrameResult {
    /// Parses and checks a `results` record value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let r: FrameResult = serde_json::from_slice(bytes).map_err(|e| unreadable(bytes, e))?;
        readable(r.version)?;
        if r.frame_number < 0 {
            return Err(ResultError::NegativeFrame(r.frame_number));
        }
        if r.frame_number > limits::MAX_FRAME_NUMBER {
            return Err(ResultError::FrameTooLarge(r.frame_number));
        }
        sane_time(r.timestamp)?;
        check_detections(&r.detections)?;
        let d = &r.details;
        for text in [&d.model, &d.model_sha256, &d.runner].into_iter().flatten() {
            if text.contains('\0') {
                return Err(ResultError::Nul("a field"));
            }
            if text.len() > limits::MAX_DETAIL_BYTES {
                return Err(ResultError::DetailTooLong(text.len()));
            }
        }
        Ok(r)
    }
}

/// What a runner saw happen, derived from its tracks and the scenario's zones and lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SceneEventKind {
    ObjectEntered,
    ObjectLeft,
    LineCrossed,
    Dwell,
    CameraOffline,
    CameraOnline,
    /// The camera's runner was placed again on another host (the one it was on stopped
    /// answering); the first event of the new runner.
    CameraMoved,
}

impl SceneEventKind {
    pub const ALL: [SceneEventKind; 7] = [
        SceneEventKind::ObjectEntered,
        SceneEventKind::ObjectLeft,
        SceneEventKind::LineCrossed,
        SceneEventKind::Dwell,
        SceneEventKind::CameraOffline,
        SceneEventKind::CameraOnline,
        SceneEventKind::CameraMoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SceneEventKind::ObjectEntered => "object_entered",
            SceneEventKind::ObjectLeft => "object_left",
            SceneEventKind::LineCrossed => "line_crossed",
            SceneEventKind::Dwell => "dwell",
            SceneEventKind::CameraOffline => "camera_offline",
            SceneEventKind::CameraOnline => "camera_online",
            SceneEventKind::CameraMoved => "camera_moved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Which way a line was crossed (see `options::Line`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Direction::In, Direction::Out].into_iter().find(|d| d.as_str() == s)
    }
}

/// One event on `events`, keyed by scenario. Its id is derived from what it is (scenario, kind,
/// zone or line, track, frame), so a record replayed or produced again by a restarted runner
/// is the same event, stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneEvent {
    /// The record's version (see [`RECORD_VERSION`]); absent means 1.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u16,
    pub event_id: Uuid,
    pub scenario_uuid: Uuid,
    pub kind: SceneEventKind,
    /// The frame it was seen in (for `object_left` of a lost track: the frame it was last seen).
    pub frame_number: i64,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// How long the object had been in the zone (`dwell`, `object_left`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The namespace of event ids (UUID v5).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x7661_7065_7665_6e74_0000_0000_0000_0001);

impl SceneEvent {
    /// A camera's own event (`camera_offline`, `camera_online`, `camera_moved`): no region or track, its id
    /// derived like every other.
    pub fn camera(
        scenario: Uuid,
        kind: SceneEventKind,
        frame_number: i64,
        timestamp: DateTime<Utc>,
        detail: String,
    ) -> Self {
        SceneEvent {
            version: RECORD_VERSION,
            event_id: Self::id_for(scenario, kind, "", None, frame_number),
            scenario_uuid: scenario,
            kind,
            frame_number,
            timestamp,
            zone: None,
            line: None,
            direction: None,
            track_id: None,
            class: None,
            dwell_seconds: None,
            detail: Some(detail),
        }
    }

    /// The id of the event of `kind` at `region` (zone or line name) by `track` in `frame`.
    pub fn id_for(scenario: Uuid, kind: SceneEventKind, region: &str, track: Option<i64>, frame: i64) -> Uuid {
        let name = format!("{scenario}/{}/{region}/{}/{frame}", kind.as_str(), track.unwrap_or(-1));
        Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
    }

    /// Parses and checks an `events` record value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let e: SceneEvent = serde_json::from_slice(bytes).map_err(|err| unreadable(bytes, err))?;
        readable(e.version)?;
        if e.frame_number < 0 {
            return Err(ResultError::NegativeFrame(e.frame_number));
        }
        if e.frame_number > limits::MAX_FRAME_NUMBER {
            return Err(ResultError::FrameTooLarge(e.frame_number));
        }
        sane_time(e.timestamp)?;
        for text in [&e.zone, &e.line, &e.class, &e.detail].into_iter().flatten() {
            if text.contains('\0') {
                return Err(ResultError::Nul("a text field"));
            }
            if text.len() > limits::MAX_DETAIL_BYTES {
                return Err(ResultError::DetailTooLong(text.len()));
            }
        }
        if e.dwell_seconds.is_some_and(|d| !d.is_finite() || d < 0.0) {
            return Err(ResultError::Detection { index: 0, reason: "dwell_seconds is not a finite, positive number" });
        }
        // Derived, not trusted: a runner could otherwise store another event's id first, and
        // the real event would then be dropped as a repeat.
        let region = e.zone.as_deref().or(e.line.as_deref()).unwrap_or("");
        if e.event_id != Self::id_for(e.scenario_uuid, e.kind, region, e.track_id, e.frame_number) {
            return Err(ResultError::EventId(e.event_id));
        }
        Ok(e)
    }
}

/// Why a runner's stream ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A finite source (a file) was read to its end: the scenario is done, not to be restarted.
    Finished,
    /// The source never opened after the configured attempts (refused, 404, not a video).
    SourceUnavailable,
}

/// The last record a runner produces to `results` for its scenario. It follows every frame
/// of the scenario on the same partition, so the inbox sees it after storing them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEnd {
    /// The record's version (see [`RECORD_VERSION`]); absent means 1.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u16,
    pub scenario_uuid: Uuid,
    pub timestamp: DateTime<Utc>,
    pub end_of_stream: EndReason,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub frames_analysed: u64,
}

/// A record on `results`: an analysed frame, or the end of a scenario's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultsRecord {
    Frame(FrameResult),
    End(StreamEnd),
}

impl ResultsRecord {
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        match FrameResult::parse(bytes) {
            Ok(frame) => Ok(ResultsRecord::Frame(frame)),
            // Frames are the hot path; only a record that isn't one is tried as an end.
            Err(e @ ResultError::Json(_)) => {
                let end: StreamEnd = serde_json::from_slice(bytes).map_err(|_| e)?;
                readable(end.version)?;
                sane_time(end.timestamp)?;
                if end.detail.contains('\0') {
                    return Err(ResultError::Nul("detail"));
                }
                if end.detail.len() > limits::MAX_DETAIL_BYTES {
                    return Err(ResultError::DetailTooLong(end.detail.len()));
                }
                Ok(ResultsRecord::End(end))
            }
            Err(e) => Err(e),
        }
    }

    pub fn scenario(&self) -> Uuid {
        match self {
            ResultsRecord::Frame(f) => f.scenario_uuid,
            ResultsRecord::End(e) => e.scenario_uuid,
        }
    }
}

/// The checks every stored detection passes (results and snapshots).
fn check_detections(detections: &[Detection]) -> Result<(), ResultError> {
    if detections.len() > limits::MAX_DETECTIONS {
        return Err(ResultError::TooManyDetections(detections.len()));
    }
    for (index, d) in detections.iter().enumerate() {
        let bad = |reason| Err(ResultError::Detection { index, reason });
        if !(0.0..=1.0).contains(&d.confidence) {
            return bad("confidence outside 0..1");
        }
        if d.bbox.iter().any(|v| !v.is_finite()) {
            return bad("bbox has a non-finite value");
        }
        if d.bbox[0] > d.bbox[2] || d.bbox[1] > d.bbox[3] {
            return bad("bbox min is greater than max");
        }
        if d.class.is_empty() || d.class.len() > limits::MAX_CLASS_BYTES {
            return bad("class is empty or longer than 200 bytes");
        }
        if d.class.contains('\0') {
            return bad("class holds a NUL character");
        }
    }
    Ok(())
}

/// A picture of an analysed frame, runner -> `snapshots` -> inbox: taken every
/// `snapshot_interval_s` and for each frame with scene events. The record's value is this
/// header as one line of JSON, a newline, then the JPEG, so the signature covers both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The record's version (see [`RECORD_VERSION`]); absent means 1.
    #[serde(default = "first_version", skip_serializing_if = "is_first_version")]
    pub version: u16,
    pub scenario_uuid: Uuid,
    pub frame_number: i64,
    pub timestamp: DateTime<Utc>,
    /// The JPEG's size (scaled down to at most 640 px wide).
    pub width: u32,
    pub height: u32,
    /// The analysed frame's size: `detections` are in its pixels.
    pub frame_width: u32,
    pub frame_height: u32,
    pub detections: Vec<Detection>,
    /// The scene events seen in this frame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_ids: Vec<Uuid>,
    #[serde(skip)]
    pub jpeg: Vec<u8>,
}

/// Largest picture side a snapshot may claim (guards the API's drawing).
pub const MAX_SNAPSHOT_SIDE: u32 = 4096;

impl Snapshot {
    pub fn to_record_value(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.jpeg);
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let split = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| ResultError::Json("no header line".into()))?;
        let header = &bytes[..split];
        let mut s: Snapshot = serde_json::from_slice(header).map_err(|e| unreadable(header, e))?;
        readable(s.version)?;
        if !(0..=limits::MAX_FRAME_NUMBER).contains(&s.frame_number) {
            return Err(ResultError::FrameTooLarge(s.frame_number));
        }
        sane_time(s.timestamp)?;
        check_detections(&s.detections)?;
        let sides = [s.width, s.height, s.frame_width, s.frame_height];
        if sides.iter().any(|v| !(1..=MAX_SNAPSHOT_SIDE).contains(v)) {
            return Err(ResultError::Json(format!("picture sizes must be 1 to {MAX_SNAPSHOT_SIDE} px")));
        }
        s.jpeg = bytes[split + 1..].to_vec();
        // SOI marker: what follows the header is a JPEG, not anything else to serve as one.
        if !s.jpeg.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return Err(ResultError::Json("the picture is not a JPEG".into()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_result_with_its_details() {
        let raw = br#"{"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","frame_number":7,
            "timestamp":"2026-01-01T00:00:00Z","model":"ssdlite",
            "detections":[{"class":"person","confidence":0.9,"bbox":[1,2,30,40]}]}"#;
        let r = FrameResult::parse(raw).unwrap();
        assert_eq!(r.frame_number, 7);
        assert_eq!(r.detections[0].bbox, [1.0, 2.0, 30.0, 40.0]);
        assert_eq!(r.details.model.as_deref(), Some("ssdlite"));
        assert_eq!((r.version, r.details.analysed), (1, true), "absent: version 1, analysed");
    }

    #[test]
    fn rejects_bad_results() {
        let base = |det: &str, frame: i64| {
            format!(
                r#"{{"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","frame_number":{frame},"timestamp":"2026-01-01T00:00:00Z","detections":[{det}]}}"#
            )
        };
        assert!(matches!(FrameResult::parse(b"{}"), Err(ResultError::Json(_))));
        assert_eq!(FrameResult::parse(base("", -1).as_bytes()), Err(ResultError::NegativeFrame(-1)));
        let over = base(r#"{"class":"person","confidence":1.5,"bbox":[0,0,1,1]}"#, 1);
        assert!(matches!(FrameResult::parse(over.as_bytes()), Err(ResultError::Detection { index: 0, .. })));
        let flipped = base(r#"{"class":"person","confidence":0.5,"bbox":[5,0,1,1]}"#, 1);
        assert!(matches!(FrameResult::parse(flipped.as_bytes()), Err(ResultError::Detection { .. })));
        // What PostgreSQL can't hold, or no runner sends.
        let nul = base(r#"{"class":"per\u0000son","confidence":0.5,"bbox":[0,0,1,1]}"#, 1);
        assert!(matches!(FrameResult::parse(nul.as_bytes()), Err(ResultError::Detection { .. })));
        assert_eq!(
            FrameResult::parse(base("", 9_223_372_036_854_775_000).as_bytes()),
            Err(ResultError::FrameTooLarge(9_223_372_036_854_775_000))
        );
        let nul_extra = base("", 1).replace("\"detections\"", "\"model\":\"a\\u0000b\",\"detections\"");
        assert_eq!(FrameResult::parse(nul_extra.as_bytes()), Err(ResultError::Nul("a field")));
        let old = base("", 1).replace("2026-01-01", "1970-01-01");
        assert!(matches!(FrameResult::parse(old.as_bytes()), Err(ResultError::Timestamp(_))));
    }

    #[test]
    fn tells_frames_from_stream_ends() {
        let end = br#"{"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","timestamp":"2026-01-01T00:00:00Z",
            "end_of_stream":"finished","frames_analysed":12}"#;
        match ResultsRecord::parse(end).unwrap() {
            ResultsRecord::End(e) => assert_eq!((e.end_of_stream, e.frames_analysed), (EndReason::Finished, 12)),
            other => panic!("expected an end, got {other:?}"),
        }
        // Neither shape: the frame's error is reported, it names the missing field.
        let err = ResultsRecord::parse(br#"{"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10"}"#).unwrap_err();
        assert!(err.to_string().contains("frame_number"), "{err}");
        assert!(ResultsRecord::parse(br#"{"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","timestamp":"2026-01-01T00:00:00Z","end_of_stream":"bored"}"#).is_err());
    }

    #[test]
    fn a_snapshot_travels_as_a_json_line_and_a_jpeg() {
        let snap = Snapshot {
            scenario_uuid: Uuid::nil(),
            frame_number: 40,
            timestamp: "2026-01-01T00:00:00Z".parse().unwrap(),
            width: 320,
            height: 240,
            frame_width: 640,
            frame_height: 480,
            detections: vec![Detection {
                class: "person".into(),
                confidence: 0.9,
                bbox: [1.0, 2.0, 3.0, 4.0],
                track_id: Some(7),
            }],
            event_ids: vec![Uuid::nil()],
            jpeg: vec![0xFF, 0xD8, 0xFF, 0xE0, b'\n', 1, 2],
            version: RECORD_VERSION,
        };
        assert_eq!(Snapshot::parse(&snap.to_record_value()).unwrap(), snap);
        let mut not_jpeg = snap.clone();
        not_jpeg.jpeg = b"<html>".to_vec();
        assert!(Snapshot::parse(&not_jpeg.to_record_value()).is_err());
        let mut huge = snap;
        huge.width = 100_000;
        assert!(Snapshot::parse(&huge.to_record_value()).is_err());
        assert!(Snapshot::parse(b"no newline").is_err());
    }

    const SCENARIO: Uuid = Uuid::from_u128(0x6f1c1c52_3c8e_4d4f_9a57_0d5c2e1f6a10);

    fn at() -> DateTime<Utc> {
        "2026-11-24T10:00:01.250Z".parse().unwrap()
    }

    fn person(track_id: Option<i64>) -> Detection {
        Detection { class: "person".into(), confidence: 0.875, bbox: [12.0, 40.5, 96.0, 310.0], track_id }
    }

    /// The record as the golden file `tests/golden/records/{name}.json` holds it (written anew
    /// with `VAP_WRITE_GOLDEN=1` after a deliberate change), and the file read back.
    fn golden<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        name: &str,
        record: &T,
        parse: impl Fn(&[u8]) -> Result<T, ResultError>,
    ) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/golden/records/{name}.json"));
        let written = serde_json::to_string_pretty(record).unwrap() + "\n";
        if std::env::var("VAP_WRITE_GOLDEN").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &written).unwrap();
        }
        let file = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(written, file, "{name}: the record differs from {}", path.display());
        assert_eq!(&parse(file.as_bytes()).unwrap(), record, "{name}: the golden file reads back as the record");
    }

    #[test]
    fn every_record_matches_its_golden_file() {
        golden(
            "scenario_event",
            &ScenarioEvent {
                version: RECORD_VERSION,
                event_id: 42,
                event_type: EventKind::InitScenario,
                scenario_uuid: SCENARIO,
                occurred_at: at(),
            },
            ScenarioEvent::parse,
        );
        golden(
            "runner_control",
            &RunnerControl {
                version: RECORD_VERSION,
                scenario_uuid: SCENARIO,
                revision: 3,
                options: crate::options::ScenarioOptions {
                    model: Some("yolov3_tiny_coco_416".into()),
                    fps: Some(2.0),
                    classes: Some(vec!["person".into(), "car".into()]),
                    ..Default::default()
                },
            },
            RunnerControl::parse,
        );
        golden(
            "frame_result",
            &FrameResult {
                version: RECORD_VERSION,
                scenario_uuid: SCENARIO,
                frame_number: 1250,
                timestamp: at(),
                detections: vec![person(Some(7))],
                details: FrameDetails {
                    model: Some("ssdlite_person_300".into()),
                    model_sha256: Some("9f2c".into()),
                    runner: Some("worker-1/4242/k3x9".into()),
                    options_revision: Some(1),
                    media_ms: Some(1250.0),
                    analysed_fps: Some(2.0),
                    analysed: false,
                    motion: Some(0.0012),
                    inference_ms: Some(23.5),
                    frame_width: Some(768),
                    frame_height: Some(576),
                    source_frame: Some(12),
                },
            },
            |b| match ResultsRecord::parse(b)? {
                ResultsRecord::Frame(f) => Ok(f),
                other => panic!("read as {other:?}"),
            },
        );
        golden(
            "stream_end",
            &StreamEnd {
                version: RECORD_VERSION,
                scenario_uuid: SCENARIO,
                timestamp: at(),
                end_of_stream: EndReason::Finished,
                detail: String::new(),
                frames_analysed: 160,
            },
            |b| match ResultsRecord::parse(b)? {
                ResultsRecord::End(e) => Ok(e),
                other => panic!("read as {other:?}"),
            },
        );
        let line_crossed = SceneEvent {
            version: RECORD_VERSION,
            event_id: SceneEvent::id_for(SCENARIO, SceneEventKind::LineCrossed, "door", Some(7), 1250),
            scenario_uuid: SCENARIO,
            kind: SceneEventKind::LineCrossed,
            frame_number: 1250,
            timestamp: at(),
            zone: None,
            line: Some("door".into()),
            direction: Some(Direction::In),
            track_id: Some(7),
            class: Some("person".into()),
            dwell_seconds: None,
            detail: None,
        };
        golden("scene_event", &line_crossed, SceneEvent::parse);
        // Another event's id (the same crossing one frame later) is refused.
        let borrowed = SceneEvent { frame_number: 1251, ..line_crossed.clone() };
        let refused = SceneEvent::parse(&serde_json::to_vec(&borrowed).unwrap());
        assert_eq!(refused, Err(ResultError::EventId(line_crossed.event_id)));
        golden(
            "snapshot_header",
            &Snapshot {
                version: RECORD_VERSION,
                scenario_uuid: SCENARIO,
                frame_number: 1250,
                timestamp: at(),
                width: 640,
                height: 480,
                frame_width: 768,
                frame_height: 576,
                detections: vec![person(Some(7))],
                event_ids: vec![line_crossed.event_id],
                jpeg: Vec::new(),
            },
            |header| serde_json::from_slice(header).map_err(|e| ResultError::Json(e.to_string())),
        );
    }

    #[test]
    fn a_newer_version_is_refused_by_rule_and_an_older_read() {
        let frame = |version: &str| {
            format!(
                r#"{{{version}"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","frame_number":1,"timestamp":"2026-01-01T00:00:00Z","detections":[],"added_later":{{"x":1}}}}"#
            )
        };
        // Unknown fields of a version it reads are ignored; absent is version 1.
        assert!(FrameResult::parse(frame("").as_bytes()).is_ok());
        assert!(FrameResult::parse(frame(r#""version":1,"#).as_bytes()).is_ok());
        let newer = RECORD_VERSION + 1;
        let refused = FrameResult::parse(frame(&format!(r#""version":{newer},"#)).as_bytes());
        assert_eq!(refused, Err(ResultError::NewerVersion(newer)));
        assert!(refused.unwrap_err().to_string().contains("newer than this reader's"));
        let control = format!(
            r#"{{"version":{newer},"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","revision":2,"options":{{}}}}"#
        );
        assert_eq!(RunnerControl::parse(control.as_bytes()), Err(ResultError::NewerVersion(newer)));
        let event = format!(
            r#"{{"version":{newer},"event_id":1,"event_type":"init_scenario","scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","occurred_at":"2026-01-01T00:00:00Z"}}"#
        );
        assert_eq!(ScenarioEvent::parse(event.as_bytes()), Err(ResultError::NewerVersion(newer)));
        let end = format!(
            r#"{{"version":{newer},"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","timestamp":"2026-01-01T00:00:00Z","end_of_stream":"finished"}}"#
        );
        assert_eq!(ResultsRecord::parse(end.as_bytes()), Err(ResultError::NewerVersion(newer)));
        // Records that refuse unknown fields: a newer one's new field is not what they report.
        let end_with_more = end.replacen('{', r#"{"added_later":1,"#, 1);
        assert_eq!(ResultsRecord::parse(end_with_more.as_bytes()), Err(ResultError::NewerVersion(newer)));
        let scene = format!(
            r#"{{"version":{newer},"added_later":1,"event_id":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","kind":"dwell","frame_number":1,"timestamp":"2026-01-01T00:00:00Z"}}"#
        );
        assert_eq!(SceneEvent::parse(scene.as_bytes()), Err(ResultError::NewerVersion(newer)));
        // The same unknown field in a version this build reads is malformed, as before.
        let current = scene.replacen(&format!(r#""version":{newer}"#), r#""version":1"#, 1);
        assert!(matches!(SceneEvent::parse(current.as_bytes()), Err(ResultError::Json(_))));
        let zero = event.replacen(&format!(r#""version":{newer}"#), r#""version":0"#, 1);
        assert!(matches!(ScenarioEvent::parse(zero.as_bytes()), Err(ResultError::Json(_))));
    }
}
