//! A detector over every frame of a video, as the runner sees it (OpenCV's decoder, the model's
//! own pre- and post-processing), numbered from 1 as MOTChallenge numbers frames.

use std::path::Path;

use opencv::prelude::*;
use opencv::videoio::{VideoCapture, CAP_ANY, CAP_PROP_FPS};
use serde::{Deserialize, Serialize};
use vap_core::detection::Detection;
use vap_runner::detector::Detector;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoDetections {
    pub fps: f64,
    pub width: i32,
    pub height: i32,
    /// Frame number (1 = the first frame) and its detections, best first.
    pub frames: Vec<(i64, Vec<Detection>)>,
    /// Mean inference time per frame (pre- and post-processing included), milliseconds.
    pub ms_per_frame: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("{0}: cannot be opened")]
    Open(String),
    #[error(transparent)]
    OpenCv(#[from] opencv::Error),
    #[error(transparent)]
    Detector(#[from] vap_runner::detector::DetectorError),
}

pub fn detect(video: &Path, detector: &mut impl Detector) -> Result<VideoDetections, VideoError> {
    detect_every(video, detector, 1)
}

/// Only every `step`-th frame is analysed (a scenario's fps below the video's); the others are
/// decoded and left out.
pub fn detect_every(video: &Path, detector: &mut impl Detector, step: usize) -> Result<VideoDetections, VideoError> {
    let name = video.display().to_string();
    let mut capture = VideoCapture::from_file(&name, CAP_ANY)?;
    if !capture.is_opened()? {
        return Err(VideoError::Open(name));
    }
    let fps = capture.get(CAP_PROP_FPS)?;
    let mut frame = Mat::default();
    let mut frames = Vec::new();
    let (mut width, mut height) = (0, 0);
    let started = std::time::Instant::now();
    let mut number = 0;
    while capture.read(&mut frame)? && !frame.empty() {
        (width, height) = (frame.cols(), frame.rows());
        number += 1;
        if (number - 1) % step.max(1) as i64 == 0 {
            let (detections, _) = detector.detect(&frame)?;
            frames.push((number, detections));
        }
    }
    let ms_per_frame = started.elapsed().as_secs_f64() * 1000.0 / frames.len().max(1) as f64;
    Ok(VideoDetections { fps: if fps > 0.0 { fps } else { 25.0 }, width, height, frames, ms_per_frame })
}
