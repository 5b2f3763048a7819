//! The trackers compared: vap's, as the runner runs it, and a plain IoU tracker as the baseline
//! (Bochinski et al. 2017: each box joins the track whose last box overlaps it most, at least
//! `IOU_TRACKER_MIN`; no motion model, no memory).

use vap_analytics::tracker::{Tracker, TrackerSettings};
use vap_core::detection::{iou, Detection};

use crate::mot::{MotBox, Rect};

/// vap's tracker over the frames, as the runner runs it: boxes from `settings.low_score` are
/// tracked, those from `settings.high_score` are reported with their track.
pub fn track_with_vap(
    frames: &[(i64, Vec<Detection>)],
    fps: f64,
    settings: TrackerSettings,
    picture: (f32, f32),
) -> Vec<MotBox> {
    let mut tracker = Tracker::new(settings);
    let mut out = Vec::new();
    for (frame, detections) in frames {
        let mut detections: Vec<Detection> =
            detections.iter().filter(|d| d.confidence >= settings.low_score).cloned().collect();
        tracker.track(*frame, *frame as f64 / fps, &mut detections, settings.high_score, picture);
        out.extend(
            detections
                .iter()
                .filter_map(|d| d.track_id.map(|id| MotBox { frame: *frame, id, rect: Rect::from_corners(d.bbox) })),
        );
    }
    out
}

/// The IoU tracker's least overlap with a track's last box.
pub const IOU_TRACKER_MIN: f32 = 0.5;

/// The baseline: boxes from `min_score`, each frame's joined greedily (best overlap first) to
/// the tracks of the previous frame; an unmatched box starts a track, an unmatched track ends.
pub fn track_with_iou(frames: &[(i64, Vec<Detection>)], min_score: f32) -> Vec<MotBox> {
    let mut live: Vec<(i64, [f32; 4])> = Vec::new();
    let mut next_id = 1;
    let mut out = Vec::new();
    for (frame, detections) in frames {
        let boxes: Vec<[f32; 4]> = detections.iter().filter(|d| d.confidence >= min_score).map(|d| d.bbox).collect();
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, (_, last)) in live.iter().enumerate() {
            for (bi, b) in boxes.iter().enumerate() {
                let overlap = iou(last, b);
                if overlap >= IOU_TRACKER_MIN {
                    pairs.push((overlap, ti, bi));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ids: Vec<Option<i64>> = vec![None; boxes.len()];
        let mut used = vec![false; live.len()];
        for (_, ti, bi) in pairs {
            if !used[ti] && ids[bi].is_none() {
                used[ti] = true;
                ids[bi] = Some(live[ti].0);
            }
        }
        live = boxes
            .iter()
            .zip(ids)
            .map(|(b, id)| {
                let id = id.unwrap_or_else(|| {
                    next_id += 1;
                    next_id - 1
                });
                out.push(MotBox { frame: *frame, id, rect: Rect::from_corners(*b) });
                (id, *b)
            })
            .collect();
    }
    out
}
