//! The model manifest: a small TOML file beside an ONNX detector that says how to feed it and
//! how to read its outputs, so another detector needs a file, not code.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// The ONNX file, relative to the manifest.
    pub onnx: PathBuf,
    /// Checked at load when present, so a wrong or truncated file fails loudly.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Class names by output index.
    pub labels: Vec<String>,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub thresholds: Thresholds,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Scale each axis to the input size (aspect ratio not kept).
    Stretch,
    /// Scale to fit, keep the aspect ratio, pad the rest (grey 114, as YOLO trains).
    Letterbox,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub layout: Layout,
    pub channels: Channels,
    pub resize: Resize,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutputSpec {
    /// Decoded boxes `[1, N, 4]` (ymin, xmin, ymax, xmax, normalised) and scores `[1, N, C]`.
    Ssd {
        boxes: String,
        scores: String,
        #[serde(default)]
        background_class: Option<usize>,
    },
    /// YOLOv8 head `[1, 4 + C, N]`: cx, cy, w, h in input pixels, then C class scores.
    Yolov8 { tensor: String },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub score: f32,
    pub iou: f32,
    pub max_detections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("model manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model manifest {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("model manifest {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// darknet's label file spells six COCO classes its own way; COCO's names are the models' and
/// the API's, darknet's are accepted in options as aliases.
pub const DARKNET_NAMES: [(&str, &str); 6] = [
    ("motorbike", "motorcycle"),
    ("aeroplane", "airplane"),
    ("sofa", "couch"),
    ("pottedplant", "potted plant"),
    ("diningtable", "dining table"),
    ("tvmonitor", "tv"),
];

impl Manifest {
    /// The classes it detects: its labels without the background an SSD scores.
    pub fn classes(&self) -> impl Iterator<Item = &str> {
        let background = match &self.output {
            OutputSpec::Ssd { background_class, .. } => *background_class,
            OutputSpec::Yolov8 { .. } => None,
        };
        self.labels.iter().enumerate().filter(move |(i, _)| Some(*i) != background).map(|(_, l)| l.as_str())
    }

    pub fn has_class(&self, class: &str) -> bool {
        self.classes().any(|c| c == class)
    }

    /// The class as this model names it: `name` itself, or for darknet's spelling of a COCO
    /// class (deprecated: `motorbike`, `sofa`, ...) COCO's own name when the model has that.
    pub fn class_named(&self, name: &str) -> Option<&str> {
        let coco = DARKNET_NAMES.iter().find(|(darknet, _)| *darknet == name).map(|(_, coco)| *coco);
        self.classes().find(|c| *c == name).or_else(|| self.classes().find(|c| Some(*c) == coco))
    }

    /// The output format's name, as in the manifest.
    pub fn output_format(&self) -> &'static str {
        match &self.output {
            OutputSpec::Ssd { .. } => "ssd",
            OutputSpec::Yolov8 { .. } => "yolov8",
        }
    }

    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// A manifest's text, as read from `path` (a relative `onnx` is beside it).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let mut m: Manifest =
            toml::from_str(text).map_err(|source| ManifestError::Parse { path: path.into(), source })?;
        let invalid = |reason: String| ManifestError::Invalid { path: path.into(), reason };
        if m.labels.is_empty() {
            return Err(invalid("labels: at least one class".into()));
        }
        if m.input.width == 0 || m.input.height == 0 {
            return Err(invalid("input: width and height must be positive".into()));
        }
        if m.input.std.contains(&0.0) {
            return Err(invalid("input.std: a zero would divide by zero".into()));
        }
        let t = m.thresholds;
        if !(0.0..=1.0).contains(&t.score) || !(0.0..=1.0).contains(&t.iou) || t.max_detections == 0 {
            return Err(invalid("thresholds: score and iou in 0..1, max_detections at least 1".into()));
        }
        if m.onnx.is_relative() {
            m.onnx = path.parent().unwrap_or(Path::new(".")).join(&m.onnx);
        }
        Ok(m)
    }
}
