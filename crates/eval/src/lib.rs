//! How well vap sees: detection, tracking and counting measured on labelled data, with the
//! definitions the field publishes (docs/ACCURACY.md). The `vap-eval` command prints the tables;
//! the integration tests keep floors on them.

pub mod counting;
pub mod detection;
pub mod labelled;
pub mod mot;
pub mod noise;
pub mod report;
pub mod scenes;
pub mod trackers;
pub mod video;

pub use mot::{evaluate, MotBox, MotSummary, Rect};
