//! The messages on Kafka: scenario events (API -> orchestrator, through the outbox) and
//! detection results (runner -> inbox). These types are the contract between processes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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
    pub scenario_uuid: Uuid,
    pub revision: i64,
    pub options: crate::options::ScenarioOptions,
}

pub use crate::detection::Detection;

/// One analysed frame, as the runner produces it to `results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameResult {
    pub scenario_uuid: Uuid,
    pub frame_number: i64,
    /// Capture time of the frame.
    pub timestamp: DateTime<Utc>,
    pub detections: Vec<Detection>,
    /// Anything else the runner adds (model, inference_ms, frame size); stored as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Bounds a result must keep to be stored: what PostgreSQL can hold, and no runner exceeds.
pub mod limits {
    pub const MAX_DETECTIONS: usize = 1_000;
    pub const MAX_CLASS_BYTES: usize = 200;
    pub const MAX_DETAIL_BYTES: usize = 4_096;
    /// About 317 years of milliseconds since a scenario's epoch.
    pub const MAX_FRAME_NUMBER: i64 = 10_000_000_000_000;
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
}

fn sane_time(t: DateTime<Utc>) -> Result<(), ResultError> {
    use chrono::Datelike;
    if (limits::MIN_YEAR..=limits::MAX_YEAR).contains(&t.year()) {
        Ok(())
    } else {
        Err(ResultError::Timestamp(t))
    }
}

/// Whether any string in a JSON value holds a NUL (jsonb refuses `\u0000`).
fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(holds_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

impl FrameResult {
    /// Parses and checks a `results` record value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let r: FrameResult = serde_json::from_slice(bytes).map_err(|e| ResultError::Json(e.to_string()))?;
        if r.frame_number < 0 {
            return Err(ResultError::NegativeFrame(r.frame_number));
        }
        if r.frame_number > limits::MAX_FRAME_NUMBER {
            return Err(ResultError::FrameTooLarge(r.frame_number));
        }
        sane_time(r.timestamp)?;
        check_detections(&r.detections)?;
        if r.extra.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)) {
            return Err(ResultError::Nul("a field"));
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
}

impl SceneEventKind {
    pub const ALL: [SceneEventKind; 6] = [
        SceneEventKind::ObjectEntered,
        SceneEventKind::ObjectLeft,
        SceneEventKind::LineCrossed,
        SceneEventKind::Dwell,
        SceneEventKind::CameraOffline,
        SceneEventKind::CameraOnline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SceneEventKind::ObjectEntered => "object_entered",
            SceneEventKind::ObjectLeft => "object_left",
            SceneEventKind::LineCrossed => "line_crossed",
            SceneEventKind::Dwell => "dwell",
            SceneEventKind::CameraOffline => "camera_offline",
            SceneEventKind::CameraOnline => "camera_online",
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
    /// The id of the event of `kind` at `region` (zone or line name) by `track` in `frame`.
    pub fn id_for(scenario: Uuid, kind: SceneEventKind, region: &str, track: Option<i64>, frame: i64) -> Uuid {
        let name = format!("{scenario}/{}/{region}/{}/{frame}", kind.as_str(), track.unwrap_or(-1));
        Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes())
    }

    /// Parses and checks an `events` record value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let e: SceneEvent = serde_json::from_slice(bytes).map_err(|err| ResultError::Json(err.to_string()))?;
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
        let mut s: Snapshot = serde_json::from_slice(&bytes[..split]).map_err(|e| ResultError::Json(e.to_string()))?;
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
    fn parses_a_result_and_keeps_extra_fields() {
        let raw = br#"{"scenario_uuid":"6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10","frame_number":7,
            "timestamp":"2026-01-01T00:00:00Z","model":"ssdlite",
            "detections":[{"class":"person","confidence":0.9,"bbox":[1,2,30,40]}]}"#;
        let r = FrameResult::parse(raw).unwrap();
        assert_eq!(r.frame_number, 7);
        assert_eq!(r.detections[0].bbox, [1.0, 2.0, 30.0, 40.0]);
        assert_eq!(r.extra["model"], "ssdlite");
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
}
