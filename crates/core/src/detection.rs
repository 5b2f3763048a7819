//! One detected object: what a runner reports in its records, what a scenario's options
//! filter and what the tracker follows.

use serde::{Deserialize, Serialize};

/// A box `[x_min, y_min, x_max, y_max]` in pixels.
pub type Bbox = [f32; 4];

/// One detected object. `bbox` is `[x_min, y_min, x_max, y_max]` in pixels of the source frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub class: String,
    pub confidence: f32,
    pub bbox: Bbox,
    /// The object this is, the same from frame to frame (analytics::tracker); never reused
    /// within its scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_id: Option<i64>,
}

/// Intersection over union of two boxes: 0 when they do not overlap or have no area.
pub fn iou(a: &Bbox, b: &Bbox) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &Bbox| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

#[cfg(test)]
mod tests {
    use super::iou;

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[10.0, 10.0, 20.0, 20.0]), 0.0);
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[5.0, 5.0, 5.0, 5.0], &[5.0, 5.0, 5.0, 5.0]), 0.0);
    }
}
