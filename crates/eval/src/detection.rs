//! Average precision of one class as COCO defines it: detections of every frame ranked by
//! score, each matched to the unmatched truth box it overlaps most (IoU at least the
//! threshold), precision made monotone and read at 101 recall points; AP50-95 is the mean over
//! IoU thresholds 0.50, 0.55, ..., 0.95.

use std::collections::BTreeMap;

use vap_core::detection::Detection;

use crate::mot::{MotBox, Rect};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Precision {
    pub ap50: f64,
    pub ap50_95: f64,
    /// The share of truth boxes any detection finds at IoU 0.5 (the most any threshold gives).
    pub max_recall: f64,
    pub truth_boxes: usize,
}

/// One picture's part of an evaluation of one class.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// The class's objects; `true`: difficult (finding it neither counts nor costs).
    pub truth: Vec<(Rect, bool)>,
    /// The model's boxes of the class and their scores.
    pub detections: Vec<(f32, Rect)>,
    /// Areas (and objects of a name the class also fits) where an unmatched box costs nothing.
    pub ignore: Vec<Rect>,
}

/// AP over `pictures` at IoU `threshold`, and the recall of all boxes: COCO's definition, with
/// difficult objects and ignored areas taking their matches out of the ranking.
pub fn ap_at(pictures: &[Scored], threshold: f64) -> (f64, f64) {
    let mut ranked: Vec<(f32, bool)> = Vec::new();
    let mut total = 0usize;
    for p in pictures {
        total += p.truth.iter().filter(|(_, difficult)| !difficult).count();
        let mut taken = vec![false; p.truth.len()];
        let mut sorted: Vec<&(f32, Rect)> = p.detections.iter().collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (score, r) in sorted {
            // The best free object, a counted one before a difficult one.
            let best = (0..p.truth.len())
                .filter(|&i| !taken[i])
                .map(|i| (i, p.truth[i].0.iou(r)))
                .filter(|&(_, v)| v >= threshold)
                .max_by(|a, b| p.truth[b.0].1.cmp(&p.truth[a.0].1).then(a.1.total_cmp(&b.1)));
            match best {
                Some((i, _)) => {
                    taken[i] = true;
                    if !p.truth[i].1 {
                        ranked.push((*score, true));
                    }
                }
                None => {
                    let (cx, cy) = (r.x + r.w / 2.0, r.y + r.h / 2.0);
                    let ignored = p.ignore.iter().any(|g| {
                        (cx >= g.x && cx <= g.x + g.w && cy >= g.y && cy <= g.y + g.h) || g.iou(r) >= threshold
                    });
                    if !ignored {
                        ranked.push((*score, false));
                    }
                }
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total = total.max(1) as f64;
    let (mut found, mut points) = (0usize, Vec::with_capacity(ranked.len()));
    for (n, (_, hit)) in ranked.iter().enumerate() {
        found += usize::from(*hit);
        points.push((found as f64 / total, found as f64 / (n + 1) as f64));
    }
    // Monotone precision: the best precision at this recall or any higher one.
    for i in (0..points.len().saturating_sub(1)).rev() {
        points[i].1 = points[i].1.max(points[i + 1].1);
    }
    let ap = (0..=100)
        .map(|k| {
            let recall = k as f64 / 100.0;
            points.iter().find(|p| p.0 >= recall).map_or(0.0, |p| p.1)
        })
        .sum::<f64>()
        / 101.0;
    (ap, points.last().map_or(0.0, |p| p.0))
}

/// AP50, AP50-95 and recall over `pictures`.
pub fn precision_of(pictures: &[Scored]) -> Precision {
    let (ap50, max_recall) = ap_at(pictures, 0.5);
    let ap50_95 = (0..10).map(|k| ap_at(pictures, 0.5 + 0.05 * k as f64).0).sum::<f64>() / 10.0;
    let truth_boxes = pictures.iter().map(|p| p.truth.iter().filter(|t| !t.1).count()).sum();
    Precision { ap50, ap50_95, max_recall, truth_boxes }
}

/// `frames`: each frame's detections of the class (numbered as `truth`).
pub fn average_precision(truth: &[MotBox], frames: &[(i64, Vec<Detection>)]) -> Precision {
    let mut by_frame: BTreeMap<i64, Scored> = BTreeMap::new();
    for b in truth {
        by_frame.entry(b.frame).or_default().truth.push((b.rect, false));
    }
    for (frame, detections) in frames {
        let p = by_frame.entry(*frame).or_default();
        p.detections.extend(detections.iter().map(|d| (d.confidence, Rect::from_corners(d.bbox))));
    }
    precision_of(&by_frame.into_values().collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(x: f32, score: f32) -> Detection {
        Detection { class: "person".into(), confidence: score, bbox: [x, 0.0, x + 10.0, 20.0], track_id: None }
    }

    #[test]
    fn a_perfect_ranking_scores_one_and_a_false_alarm_above_the_hits_costs() {
        let truth: Vec<MotBox> =
            (1..=2).map(|f| MotBox { frame: f, id: 1, rect: Rect { x: 0.0, y: 0.0, w: 10.0, h: 20.0 } }).collect();
        let perfect = average_precision(&truth, &[(1, vec![person(0.0, 0.9)]), (2, vec![person(0.0, 0.8)])]);
        assert!((perfect.ap50 - 1.0).abs() < 1e-9 && (perfect.ap50_95 - 1.0).abs() < 1e-9, "{perfect:?}");
        // The most confident box is wrong: precision 1/2 at recall 0.5, 2/3 at recall 1.
        let worse =
            average_precision(&truth, &[(1, vec![person(50.0, 0.95), person(0.0, 0.9)]), (2, vec![person(0.0, 0.8)])]);
        assert!((worse.ap50 - 2.0 / 3.0).abs() < 1e-9, "{worse:?}");
        assert_eq!(worse.max_recall, 1.0);
    }
}
