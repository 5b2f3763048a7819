//! One detected object: what a runner reports in its records, what a scenario's options
//! filter and what the tracker follows.

use serde::{Deserialize, Serialize};

/// One detected object. `bbox` is `[x_min, y_min, x_max, y_max]` in pixels of the source frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    pub class: String,
    pub confidence: f32,
    pub bbox: [f32; 4],
    /// The object this is, the same from frame to frame (analytics::tracker); never reused
    /// within its scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_id: Option<i64>,
}
