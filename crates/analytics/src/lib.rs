//! What the runner derives from its detections: tracks (who is who from frame to frame) and,
//! from tracks and a scenario's zones and lines, events (entered, left, crossed, dwell). Pure
//! computation, no I/O: the runner feeds it frames, the results carry what it says.

#![deny(unsafe_code)]

pub mod regions;
pub mod tracker;
