//! The messages on Kafka: scenario events (API -> orchestrator, through the outbox) and
//! detection results (runner -> inbox). These types are the contract between processes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::camera_url::CameraUrl;

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

/// A scenario event as published. `camera_url` is the real one (credentials included): the
/// runner needs it, so these topics must be as private as the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioEvent {
    /// The outbox row id: unique and increasing, lets consumers drop duplicates.
    pub event_id: i64,
    pub event_type: EventKind,
    pub scenario_uuid: Uuid,
    pub camera_url: CameraUrl,
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

/// One detected object. `bbox` is `[x_min, y_min, x_max, y_max]` in pixels of the source frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub class: String,
    pub confidence: f32,
    pub bbox: [f32; 4],
}

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

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResultError {
    #[error("not a result message: {0}")]
    Json(String),
    #[error("frame_number {0} is negative")]
    NegativeFrame(i64),
    #[error("detection {index}: {reason}")]
    Detection { index: usize, reason: &'static str },
}

impl FrameResult {
    /// Parses and checks a `results` record value.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let r: FrameResult = serde_json::from_slice(bytes).map_err(|e| ResultError::Json(e.to_string()))?;
        if r.frame_number < 0 {
            return Err(ResultError::NegativeFrame(r.frame_number));
        }
        for (index, d) in r.detections.iter().enumerate() {
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
            if d.class.is_empty() {
                return bad("class is empty");
            }
        }
        Ok(r)
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
            Err(e @ ResultError::Json(_)) => serde_json::from_slice(bytes).map(ResultsRecord::End).map_err(|_| e),
            Err(e) => Err(e),
        }
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
}
