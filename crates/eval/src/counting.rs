//! Line counts as the runner makes them (tracker, then zones and lines on the tracked boxes),
//! against counted truth; the count error of a line and direction is |counted - true| / true.

use std::collections::BTreeMap;

use vap_analytics::regions::{FrameAt, Regions};
use vap_analytics::tracker::{Tracker, TrackerSettings};
use vap_core::detection::Detection;
use vap_core::events::{Direction, SceneEvent, SceneEventKind};
use vap_core::options::Line;

/// Crossings per line and direction (`"in"`, `"out"`).
pub type Counts = BTreeMap<(String, &'static str), u32>;

/// How a clip is analysed: every `step`-th frame (a scenario's fps below the clip's), and the
/// confidence a box needs (the model's threshold).
#[derive(Debug, Clone, Copy)]
pub struct Analysis {
    pub fps: f64,
    pub step: usize,
    pub min_confidence: f32,
    pub size: (f32, f32),
}

/// The crossings of `lines` counted from the detections of every analysed frame.
pub fn count(frames: &[(i64, Vec<Detection>)], analysis: Analysis, lines: &[Line]) -> Counts {
    let mut tracker = Tracker::new(TrackerSettings::for_confidence(analysis.min_confidence));
    let mut regions = Regions::new(uuid::Uuid::nil(), Vec::new(), lines.to_vec());
    let mut counts = none_yet(lines.iter().map(|l| l.name.as_str()));
    for (frame, detections) in frames.iter().step_by(analysis.step.max(1)) {
        let mut detections = detections.clone();
        let t = (*frame - 1) as f64 / analysis.fps;
        let ended = tracker.track(*frame, t, &mut detections, analysis.min_confidence, analysis.size);
        let at = FrameAt { number: *frame, t, timestamp: chrono::DateTime::UNIX_EPOCH };
        tally(&mut counts, regions.frame_events(&at, &ended, &detections, analysis.size));
    }
    counts
}

/// Every line's count, both ways, at 0.
pub fn none_yet<'a>(lines: impl IntoIterator<Item = &'a str>) -> Counts {
    let pairs =
        lines.into_iter().flat_map(|l| [Direction::In, Direction::Out].map(|d| ((l.to_string(), d.as_str()), 0)));
    pairs.collect()
}

/// Adds the line crossings among `events` to `counts`.
pub fn tally(counts: &mut Counts, events: impl IntoIterator<Item = SceneEvent>) {
    for event in events {
        if let (SceneEventKind::LineCrossed, Some(line), Some(direction)) = (event.kind, event.line, event.direction) {
            *counts.entry((line, direction.as_str())).or_default() += 1;
        }
    }
}

/// |counted - true| / true, or the count itself when the truth is 0.
pub fn count_error(counted: u32, truth: u32) -> f64 {
    if truth == 0 {
        f64::from(counted)
    } else {
        (f64::from(counted) - f64::from(truth)).abs() / f64::from(truth)
    }
}
