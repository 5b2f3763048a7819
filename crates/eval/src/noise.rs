//! Tracking on its own: ground-truth boxes made into detections with stated, seeded noise (a
//! detector's jitter, misses, low scores and false alarms).

use std::collections::BTreeMap;

use vap_core::detection::Detection;

use crate::mot::{MotBox, Rect};

/// What a detector is assumed to get wrong, per box and per frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    /// Each object is missed with this probability in each frame.
    pub miss: f64,
    /// Standard deviation of the centre and of the size, as a share of the box's height.
    pub jitter: f64,
    /// Of the boxes found, this share scores low (0.1-0.5: partly hidden), the rest 0.5-1.
    pub low_score: f64,
    /// False alarms per frame (a person-sized box somewhere in the scene, scored 0.5-0.7).
    pub false_alarms: f64,
}

impl Noise {
    pub const NONE: Noise = Noise { miss: 0.0, jitter: 0.0, low_score: 0.0, false_alarms: 0.0 };
    /// About what the tiny COCO detectors do on pedestrians (docs/ACCURACY.md).
    pub const TYPICAL: Noise = Noise { miss: 0.1, jitter: 0.05, low_score: 0.1, false_alarms: 0.2 };
    pub const HEAVY: Noise = Noise { miss: 0.25, jitter: 0.08, low_score: 0.2, false_alarms: 0.5 };
}

/// The detections of each frame (frame number, detections), made from the truth with `noise`.
pub fn detections(truth: &[MotBox], noise: Noise, seed: u64) -> Vec<(i64, Vec<Detection>)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let normal = move |rng: &mut fastrand::Rng| {
        // Box-Muller.
        let (u, v) = (rng.f64().max(f64::MIN_POSITIVE), rng.f64());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let mut frames: BTreeMap<i64, Vec<&MotBox>> = BTreeMap::new();
    for b in truth {
        frames.entry(b.frame).or_default().push(b);
    }
    let (min_x, max_x) =
        truth.iter().fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(t.rect.x), b.max(t.rect.x + t.rect.w)));
    let (min_y, max_y) =
        truth.iter().fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(t.rect.y), b.max(t.rect.y + t.rect.h)));
    let mean_size = truth.iter().fold((0.0, 0.0), |(w, h), t| (w + t.rect.w, h + t.rect.h));
    let n = truth.len().max(1) as f64;
    let (mean_w, mean_h) = (mean_size.0 / n, mean_size.1 / n);
    let (first, last) = (frames.keys().next().copied().unwrap_or(1), frames.keys().last().copied().unwrap_or(0));
    (first..=last)
        .map(|frame| {
            let mut found = Vec::new();
            for b in frames.get(&frame).map(Vec::as_slice).unwrap_or_default() {
                if rng.f64() < noise.miss {
                    continue;
                }
                let h = b.rect.h;
                let (cx, cy) = (
                    b.rect.x + b.rect.w / 2.0 + noise.jitter * h * normal(&mut rng),
                    b.rect.y + h / 2.0 + noise.jitter * h * normal(&mut rng),
                );
                let (w, hh) = (
                    (b.rect.w * (1.0 + noise.jitter * normal(&mut rng))).max(2.0),
                    (h * (1.0 + noise.jitter * normal(&mut rng))).max(2.0),
                );
                let score = if rng.f64() < noise.low_score { 0.1 + 0.4 * rng.f64() } else { 0.5 + 0.5 * rng.f64() };
                found.push(person(Rect { x: cx - w / 2.0, y: cy - hh / 2.0, w, h: hh }, score as f32));
            }
            // Poisson arrivals, by counting uniform draws until their product falls below e^-rate.
            let (limit, mut product) = ((-noise.false_alarms).exp(), rng.f64());
            while product > limit {
                let x = min_x + (max_x - min_x - mean_w).max(0.0) * rng.f64();
                let y = min_y + (max_y - min_y - mean_h).max(0.0) * rng.f64();
                found.push(person(Rect { x, y, w: mean_w, h: mean_h }, (0.5 + 0.2 * rng.f64()) as f32));
                product *= rng.f64();
            }
            found.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
            (frame, found)
        })
        .collect()
}

fn person(rect: Rect, confidence: f32) -> Detection {
    Detection { class: "person".into(), confidence, bbox: rect.corners(), track_id: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vap_core::detection::iou;

    #[test]
    fn noise_is_seeded_and_at_its_stated_rates() {
        let at = |frame, id, x| MotBox { frame, id, rect: Rect { x, y: 100.0, w: 40.0, h: 100.0 } };
        let truth: Vec<MotBox> = (1..=2000).flat_map(|f| [at(f, 1, 100.0), at(f, 2, 1100.0)]).collect();
        let a = detections(&truth, Noise::TYPICAL, 7);
        assert_eq!(a, detections(&truth, Noise::TYPICAL, 7));
        let all: Vec<&Detection> = a.iter().flat_map(|(_, d)| d).collect();
        let on_first = all.iter().filter(|d| iou(&d.bbox, &[100.0, 100.0, 140.0, 200.0]) > 0.3).count();
        let found = on_first as f64 / 2000.0;
        assert!((found - 0.9).abs() < 0.03, "found {found}");
        let alarms = (all.len() as f64 - 2.0 * 0.9 * 2000.0) / 2000.0;
        assert!((alarms - 0.2).abs() < 0.05, "false alarms per frame {alarms}");
    }
}
