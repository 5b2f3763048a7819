//! The model interface: a frame in, detections out. An ONNX detector described by a
//! [`Manifest`], run by an [`engine`] (tract or onnxruntime): the preparation of the input and
//! the decoding of the outputs are the runner's own, the same for both.

use std::path::Path;
use std::time::{Duration, Instant};

use opencv::core::{Mat, Scalar, Size, BORDER_CONSTANT};
use opencv::prelude::*;
use tract_onnx::prelude::tract_ndarray;

use super::engine::{self, Engine, EngineChoice, Output};

use vap_core::detection::iou;
use vap_core::events::Detection;
use vap_core::models::manifest::{Channels, Layout, Manifest, ManifestError, OutputSpec, Resize};

#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Catalogue(#[from] vap_core::models::CatalogueError),
    #[error("model '{name}' is not in the catalogue {dir}")]
    UnknownModel { name: String, dir: String },
    #[error("model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("model file {path} has sha256 {actual}, the manifest expects {expected}")]
    Checksum { path: String, actual: String, expected: String },
    #[error("image: {0}")]
    Image(#[from] opencv::Error),
    #[error("frame is {0}; expected 8-bit BGR")]
    FrameFormat(String),
    #[error("inference: {0}")]
    Inference(String),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// Where a frame's time went, for STATUS and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetectTiming {
    pub preprocess: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

/// The model interface the runner uses.
pub trait Detector: Send {
    /// Detections in pixels of `frame` (8-bit BGR), best first.
    fn detect(&mut self, frame: &Mat) -> Result<(Vec<Detection>, DetectTiming), DetectorError>;
    fn model_name(&self) -> &str;
}

/// How a frame maps into the model input, to map boxes back.
#[derive(Debug, Clone, Copy)]
struct Placement {
    scale_x: f32,
    scale_y: f32,
    pad_x: f32,
    pad_y: f32,
}

pub struct ModelDetector {
    manifest: Manifest,
    engine: Box<dyn Engine>,
    score_threshold: f32,
    resized: Mat,
    padded: Mat,
    input: Vec<f32>,
}

impl ModelDetector {
    /// Loads the manifest and its model on `engine`, optimised and planned for a fixed input size.
    pub fn load(
        manifest_path: &Path,
        score_threshold: Option<f32>,
        engine: &EngineChoice,
    ) -> Result<Self, DetectorError> {
        let manifest = Manifest::load(manifest_path)?;
        let path = manifest.onnx.display().to_string();
        let bytes = std::fs::read(&manifest.onnx)
            .map_err(|e| DetectorError::Load { path: path.clone(), reason: e.to_string() })?;
        if let Some(expected) = &manifest.sha256 {
            use sha2::Digest;
            let actual = format!("{:x}", sha2::Sha256::digest(&bytes));
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(DetectorError::Checksum { path, actual, expected: expected.clone() });
            }
        }
        let i = &manifest.input;
        let shape: [usize; 4] = match i.layout {
            Layout::Nchw => [1, 3, i.height, i.width],
            Layout::Nhwc => [1, i.height, i.width, 3],
        };
        let outputs: Vec<&str> = match &manifest.output {
            OutputSpec::Ssd { boxes, scores, .. } => vec![boxes, scores],
            OutputSpec::Yolov8 { tensor } => vec![tensor],
        };
        let loaded = engine::load(engine, &bytes, &manifest.onnx, shape, &outputs)?;
        let score_threshold = score_threshold.unwrap_or(manifest.thresholds.score);
        Ok(Self {
            input: vec![0.0; shape.iter().product()],
            manifest,
            engine: loaded,
            score_threshold,
            resized: Mat::default(),
            padded: Mat::default(),
        })
    }

    /// Which engine runs the model: "tract" or "onnxruntime".
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model input for `frame`, as `detect` builds it (the benchmark feeds it elsewhere).
    pub fn input_for(&mut self, frame: &Mat) -> Result<&[f32], DetectorError> {
        self.preprocess(frame)?;
        Ok(&self.input)
    }

    /// Runs the model alone on a prepared input.
    pub fn infer(&mut self, input: &[f32]) -> Result<(), DetectorError> {
        Ok(self.engine.run(input).map(drop)?)
    }

    /// Resizes (or letterboxes) and normalises `frame` into `self.input`.
    fn preprocess(&mut self, frame: &Mat) -> Result<Placement, DetectorError> {
        if frame.typ() != opencv::core::CV_8UC3 {
            return Err(DetectorError::FrameFormat(format!("type {} with {} channels", frame.typ(), frame.channels())));
        }
        let placement = self.resize(frame)?;
        self.normalise()?;
        Ok(placement)
    }

    /// Resizes (stretch) or letterboxes `frame` to the model's input size, into `self.padded`.
    fn resize(&mut self, frame: &Mat) -> Result<Placement, DetectorError> {
        let spec = &self.manifest.input;
        let (fw, fh) = (frame.cols() as f32, frame.rows() as f32);
        let (w, h) = (spec.width as i32, spec.height as i32);
        let interp = opencv::imgproc::INTER_LINEAR;
        Ok(match spec.resize {
            Resize::Stretch => {
                opencv::imgproc::resize(frame, &mut self.padded, Size::new(w, h), 0.0, 0.0, interp)?;
                Placement { scale_x: w as f32 / fw, scale_y: h as f32 / fh, pad_x: 0.0, pad_y: 0.0 }
            }
            Resize::Letterbox => {
                let scale = (w as f32 / fw).min(h as f32 / fh);
                let (nw, nh) = (((fw * scale).round() as i32).clamp(1, w), ((fh * scale).round() as i32).clamp(1, h));
                opencv::imgproc::resize(frame, &mut self.resized, Size::new(nw, nh), 0.0, 0.0, interp)?;
                let (left, top) = ((w - nw) / 2, (h - nh) / 2);
                let grey = Scalar::new(114.0, 114.0, 114.0, 0.0);
                opencv::core::copy_make_border(
                    &self.resized,
                    &mut self.padded,
                    top,
                    h - nh - top,
                    left,
                    w - nw - left,
                    BORDER_CONSTANT,
                    grey,
                )?;
                Placement { scale_x: scale, scale_y: scale, pad_x: left as f32, pad_y: top as f32 }
            }
        })
    }

    /// `self.padded` (BGR bytes) into `self.input` in the model's channel order, layout and scale.
    fn normalise(&mut self) -> Result<(), DetectorError> {
        let spec = &self.manifest.input;
        let (w, h) = (spec.width as i32, spec.height as i32);
        let src = if self.padded.is_continuous() {
            self.padded.data_bytes()?
        } else {
            return Err(DetectorError::FrameFormat("not continuous".into()));
        };
        let order: [usize; 3] = match spec.channels {
            Channels::Rgb => [2, 1, 0],
            Channels::Bgr => [0, 1, 2],
        };
        // One multiply-add per value: (p * scale - mean) / std == p * a + b.
        let a: [f32; 3] = std::array::from_fn(|c| spec.scale / spec.std[c]);
        let b: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
        let plane = (w * h) as usize;
        match spec.layout {
            Layout::Nchw => {
                for (px, bgr) in src.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        self.input[c * plane + px] = bgr[order[c]] as f32 * a[c] + b[c];
                    }
                }
            }
            Layout::Nhwc => {
                for (px, bgr) in src.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        self.input[px * 3 + c] = bgr[order[c]] as f32 * a[c] + b[c];
                    }
                }
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        outputs: &[Output],
        placement: Placement,
        frame: (f32, f32),
    ) -> Result<Vec<Detection>, DetectorError> {
        let candidates = match &self.manifest.output {
            OutputSpec::Ssd { background_class, .. } => {
                self.ssd_candidates(output(outputs, 0)?, output(outputs, 1)?, *background_class, placement, frame)?
            }
            OutputSpec::Yolov8 { .. } => self.yolov8_candidates(output(outputs, 0)?, placement, frame)?,
        };
        let t = self.manifest.thresholds;
        let labels = &self.manifest.labels;
        let kept = non_max_suppression(candidates, t.iou, t.max_detections);
        Ok(kept
            .into_iter()
            .map(|c| Detection {
                class: labels[c.class].clone(),
                confidence: c.score.clamp(0.0, 1.0),
                bbox: c.bbox,
                track_id: None,
            })
            .collect())
    }

    /// SSD: boxes `[1, N, 4]` (y0, x0, y1, x1, normalised to the input) and scores `[1, N, C]`.
    fn ssd_candidates(
        &self,
        boxes: tract_ndarray::ArrayViewD<'_, f32>,
        scores: tract_ndarray::ArrayViewD<'_, f32>,
        background_class: Option<usize>,
        placement: Placement,
        (fw, fh): (f32, f32),
    ) -> Result<Vec<Candidate>, DetectorError> {
        let (bs, ss) = (boxes.shape(), scores.shape());
        if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[1] != bs[1] {
            return Err(DetectorError::Inference(format!("ssd outputs have shapes {bs:?} and {ss:?}")));
        }
        let input = &self.manifest.input;
        let to_frame = |x: f32, y: f32| {
            let (ix, iy) = (x * input.width as f32, y * input.height as f32);
            ((ix - placement.pad_x) / placement.scale_x, (iy - placement.pad_y) / placement.scale_y)
        };
        let mut candidates = Vec::new();
        for n in 0..bs[1] {
            for class in 0..ss[2].min(self.manifest.labels.len()) {
                let score = scores[[0, n, class]];
                if Some(class) == background_class || score < self.score_threshold {
                    continue;
                }
                let (y0, x0, y1, x1) = (boxes[[0, n, 0]], boxes[[0, n, 1]], boxes[[0, n, 2]], boxes[[0, n, 3]]);
                let (a, b) = (to_frame(x0, y0), to_frame(x1, y1));
                candidates.push(Candidate { class, score, bbox: clamp_box([a.0, a.1, b.0, b.1], fw, fh) });
            }
        }
        Ok(candidates)
    }

    /// YOLOv8: one output `[1, 4 + C, N]`, boxes as (cx, cy, w, h) in input pixels.
    fn yolov8_candidates(
        &self,
        out: tract_ndarray::ArrayViewD<'_, f32>,
        placement: Placement,
        (fw, fh): (f32, f32),
    ) -> Result<Vec<Candidate>, DetectorError> {
        let s = out.shape();
        if s.len() != 3 || s[1] < 5 {
            return Err(DetectorError::Inference(format!("yolov8 output has shape {s:?}; expected [1, 4+C, N]")));
        }
        let classes = (s[1] - 4).min(self.manifest.labels.len());
        let mut candidates = Vec::new();
        for n in 0..s[2] {
            // YOLOv8 scores each box for every class; keep its best class.
            let (class, score) =
                (0..classes)
                    .map(|c| (c, out[[0, 4 + c, n]]))
                    .fold((0, f32::MIN), |best, c| if c.1 > best.1 { c } else { best });
            if score < self.score_threshold {
                continue;
            }
            let (cx, cy, w, h) = (out[[0, 0, n]], out[[0, 1, n]], out[[0, 2, n]], out[[0, 3, n]]);
            let x0 = (cx - w / 2.0 - placement.pad_x) / placement.scale_x;
            let y0 = (cy - h / 2.0 - placement.pad_y) / placement.scale_y;
            let x1 = (cx + w / 2.0 - placement.pad_x) / placement.scale_x;
            let y1 = (cy + h / 2.0 - placement.pad_y) / placement.scale_y;
            candidates.push(Candidate { class, score, bbox: clamp_box([x0, y0, x1, y1], fw, fh) });
        }
        Ok(candidates)
    }
}

fn output(outputs: &[Output], i: usize) -> Result<tract_ndarray::ArrayViewD<'_, f32>, DetectorError> {
    Ok(outputs.get(i).ok_or_else(|| DetectorError::Inference(format!("model gave no output {i}")))?.view()?)
}

impl Detector for ModelDetector {
    fn detect(&mut self, frame: &Mat) -> Result<(Vec<Detection>, DetectTiming), DetectorError> {
        let started = Instant::now();
        let placement = self.preprocess(frame)?;
        let preprocessed = Instant::now();
        let outputs = self.engine.run(&self.input)?;
        let inferred = Instant::now();
        let detections = self.decode(&outputs, placement, (frame.cols() as f32, frame.rows() as f32))?;
        let timing = DetectTiming {
            preprocess: preprocessed - started,
            inference: inferred - preprocessed,
            postprocess: inferred.elapsed(),
        };
        Ok((detections, timing))
    }

    fn model_name(&self) -> &str {
        &self.manifest.name
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub class: usize,
    pub score: f32,
    pub bbox: [f32; 4],
}

fn clamp_box(b: [f32; 4], w: f32, h: f32) -> [f32; 4] {
    let (x0, x1) = (b[0].clamp(0.0, w), b[2].clamp(0.0, w));
    let (y0, y1) = (b[1].clamp(0.0, h), b[3].clamp(0.0, h));
    [x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)]
}

/// Greedy NMS per class: best score first, drop boxes of the same class overlapping a kept one
/// by more than `iou_threshold`. Returns at most `max` boxes, best first.
pub fn non_max_suppression(mut candidates: Vec<Candidate>, iou_threshold: f32, max: usize) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() == max {
            break;
        }
        if kept.iter().all(|k| k.class != c.class || iou(&k.bbox, &c.bbox) <= iou_threshold) {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(class: usize, score: f32, bbox: [f32; 4]) -> Candidate {
        Candidate { class, score, bbox }
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_per_class() {
        let kept = non_max_suppression(
            vec![
                c(0, 0.8, [0.0, 0.0, 10.0, 10.0]),
                c(0, 0.9, [1.0, 1.0, 11.0, 11.0]), // overlaps the first (IoU 0.68): wins
                c(1, 0.7, [0.0, 0.0, 10.0, 10.0]), // same place, other class: kept
                c(0, 0.6, [20.0, 20.0, 30.0, 30.0]), // elsewhere: kept
            ],
            0.5,
            10,
        );
        assert_eq!(
            kept,
            vec![
                c(0, 0.9, [1.0, 1.0, 11.0, 11.0]),
                c(1, 0.7, [0.0, 0.0, 10.0, 10.0]),
                c(0, 0.6, [20.0, 20.0, 30.0, 30.0])
            ]
        );
        assert_eq!(non_max_suppression(kept, 0.5, 1).len(), 1);
    }
}
