//! Snapshots: a JPEG of an analysed frame, at most every `snapshot_interval_s` of stream time
//! and for every frame with scene events, sent on `snapshots` beside the results. Encoding
//! happens on the detection thread (a few ms at 640 px, once per interval); sending on its
//! own publisher with a small buffer, so a slow broker drops snapshots, never results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opencv::core::{Mat, Size, Vector};
use opencv::prelude::*;

use vap_core::events::{Detection, Snapshot, RECORD_VERSION};

/// Widest snapshot: enough to see what was found, small enough for a broker message.
pub const MAX_WIDTH: i32 = 640;
/// JPEG qualities tried in turn until the record fits `runner.snapshot_max_bytes`.
const QUALITIES: [i32; 3] = [80, 60, 40];

/// When to take the next snapshot, and what to do with one that is too big.
pub struct SnapshotTaker {
    interval: Duration,
    /// Stream time (s) of the last periodic snapshot.
    last_t: Option<f64>,
    max_bytes: usize,
    /// Snapshots not sent: too big at every quality, or failed to encode.
    pub dropped: AtomicU64,
}

impl SnapshotTaker {
    pub fn new(interval: Duration, max_bytes: usize) -> Self {
        Self { interval, last_t: None, max_bytes, dropped: AtomicU64::new(0) }
    }

    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Whether the frame at stream time `t` (s) is due, with or without events in it. A
    /// stream clock that steps back (a reconnect) starts the interval again.
    pub fn due(&mut self, t: f64, has_events: bool) -> bool {
        let periodic = match self.last_t {
            None => true,
            Some(last) => t - last >= self.interval.as_secs_f64() || t < last,
        };
        if periodic {
            self.last_t = Some(t);
        }
        periodic || has_events
    }

    /// The frame as a snapshot record value, or `None` (counted) when no quality fits.
    pub fn encode(&self, image: &Mat, mut header: Snapshot) -> Option<Vec<u8>> {
        let encoded = (|| -> opencv::Result<Option<Vec<u8>>> {
            let (w, h) = (image.cols(), image.rows());
            let scaled;
            let picture = if w > MAX_WIDTH {
                let size = Size::new(MAX_WIDTH, (h * MAX_WIDTH / w).max(1));
                let mut out = Mat::default();
                opencv::imgproc::resize(image, &mut out, size, 0.0, 0.0, opencv::imgproc::INTER_AREA)?;
                scaled = out;
                &scaled
            } else {
                image
            };
            header.width = picture.cols() as u32;
            header.height = picture.rows() as u32;
            for quality in QUALITIES {
                let params = Vector::from_slice(&[opencv::imgcodecs::IMWRITE_JPEG_QUALITY, quality]);
                let mut jpeg = Vector::<u8>::new();
                opencv::imgcodecs::imencode(".jpg", picture, &mut jpeg, &params)?;
                header.jpeg = jpeg.to_vec();
                let value = header.to_record_value();
                if value.len() <= self.max_bytes {
                    return Ok(Some(value));
                }
            }
            Ok(None)
        })();
        match encoded {
            Ok(Some(value)) => Some(value),
            Ok(None) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(max_bytes = self.max_bytes, "snapshot too big at every quality; dropped");
                None
            }
            Err(e) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "snapshot not encoded");
                None
            }
        }
    }
}

/// The header of a snapshot of a `width` x `height` frame (the picture's size is set when it
/// is encoded).
pub fn header(
    scenario: uuid::Uuid,
    frame_number: i64,
    timestamp: chrono::DateTime<chrono::Utc>,
    (width, height): (i32, i32),
    detections: &[Detection],
    event_ids: Vec<uuid::Uuid>,
) -> Snapshot {
    Snapshot {
        version: RECORD_VERSION,
        scenario_uuid: scenario,
        frame_number,
        timestamp,
        width: 0,
        height: 0,
        frame_width: width as u32,
        frame_height: height as u32,
        detections: detections.to_vec(),
        event_ids,
        jpeg: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_snapshots_follow_stream_time_and_events_always_get_one() {
        let mut taker = SnapshotTaker::new(Duration::from_secs(2), 1 << 20);
        assert!(taker.due(0.0, false));
        assert!(!taker.due(1.0, false));
        assert!(taker.due(1.5, true), "a frame with events");
        assert!(taker.due(2.0, false));
        assert!(!taker.due(3.9, false));
        assert!(taker.due(1.0, false), "the clock stepped back");
    }

    #[test]
    fn a_frame_is_scaled_to_640_wide_and_too_big_ones_are_dropped() {
        let frame = Mat::new_rows_cols_with_default(720, 1280, opencv::core::CV_8UC3, 90.into()).unwrap();
        let header = header(uuid::Uuid::nil(), 1, chrono::Utc::now(), (1280, 720), &[], Vec::new());
        let taker = SnapshotTaker::new(Duration::from_secs(2), 1 << 20);
        let value = taker.encode(&frame, header.clone()).unwrap();
        let snap = Snapshot::parse(&value).unwrap();
        assert_eq!((snap.width, snap.height, snap.frame_width), (640, 360, 1280));
        let tiny = SnapshotTaker::new(Duration::from_secs(2), 100);
        assert!(tiny.encode(&frame, header).is_none());
        assert_eq!(tiny.dropped.load(Ordering::Relaxed), 1);
    }
}
