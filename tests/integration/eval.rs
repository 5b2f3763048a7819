//! Precision and recall at IoU 0.5 on the hand-labelled set in tests/eval/ground_truth.toml,
//! per model and class, with the detector the runner uses at each model's own threshold. The
//! runner benchmark prints the full table (docs/BENCHMARKS.md); the test here keeps the shipped
//! models from getting worse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use vap_core::detection::iou;
use vap_runner::detector::{Detector, ModelDetector};
use vap_runner::engine::EngineChoice;

#[derive(Debug, Deserialize)]
struct GroundTruth {
    image: Vec<LabelledImage>,
}

#[derive(Debug, Deserialize)]
pub struct LabelledImage {
    pub name: String,
    source: PathBuf,
    /// A video's frame, cut with ffmpeg at this second.
    at_seconds: Option<u32>,
    pub objects: Vec<Labelled>,
    #[serde(default)]
    ignore: Vec<[f32; 4]>,
}

#[derive(Debug, Deserialize)]
pub struct Labelled {
    pub class: String,
    #[serde(default)]
    also: Vec<String>,
    #[serde(rename = "box")]
    bbox: [f32; 4],
    #[serde(default)]
    difficult: bool,
}

impl Labelled {
    fn accepts(&self, class: &str) -> bool {
        self.class == class || self.also.iter().any(|a| a == class)
    }
}

/// The labelled images, as files (video frames cut once into target/tmp).
pub fn labelled_images() -> Vec<(LabelledImage, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/eval/ground_truth.toml")).unwrap();
    let truth: GroundTruth = toml::from_str(&text).expect("tests/eval/ground_truth.toml");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval");
    std::fs::create_dir_all(&dir).unwrap();
    truth
        .image
        .into_iter()
        .map(|image| {
            assert!(image.source.exists(), "{}: scripts/setup installs opencv-doc and darknet", image.source.display());
            let path = match image.at_seconds {
                None => image.source.clone(),
                Some(at) => {
                    let frame = dir.join(format!("{}.png", image.name));
                    if !frame.exists() {
                        let tmp = dir.join(format!("{}.{}.tmp.png", image.name, std::process::id()));
                        let ok = Command::new("ffmpeg")
                            .args(["-loglevel", "error", "-y", "-ss", &at.to_string(), "-i"])
                            .arg(&image.source)
                            .args(["-frames:v", "1"])
                            .arg(&tmp)
                            .status()
                            .expect("ffmpeg")
                            .success();
                        assert!(ok, "ffmpeg cutting {}", image.name);
                        std::fs::rename(&tmp, &frame).unwrap();
                    }
                    frame
                }
            };
            (image, path)
        })
        .collect()
}

/// Counts of one class.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Labelled objects that count (not difficult).
    pub labelled: usize,
    /// Of those, found.
    pub found: usize,
    /// Detections that count (not on a difficult object, not unmatched in an ignored area).
    pub detections: usize,
    /// Of those, on a labelled object.
    pub correct: usize,
}

impl Tally {
    pub fn precision(&self) -> f64 {
        self.correct as f64 / self.detections.max(1) as f64
    }
    pub fn recall(&self) -> f64 {
        self.found as f64 / self.labelled.max(1) as f64
    }
}

/// Per class, over every image: only the classes the model has (labels of other classes are
/// not its misses). Detections match greedily, most confident first, the unmatched label of
/// an accepted class with the highest IoU, at least 0.5.
pub fn evaluate(detector: &mut ModelDetector, images: &[(LabelledImage, PathBuf)]) -> BTreeMap<String, Tally> {
    let has: Vec<String> = detector.manifest().classes().map(String::from).collect();
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for (image, path) in images {
        let frame = opencv::imgcodecs::imread(path.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
        let (mut detections, _) = detector.detect(&frame).unwrap();
        detections.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        let labels: Vec<&Labelled> = image.objects.iter().filter(|o| has.contains(&o.class)).collect();
        for l in labels.iter().filter(|l| !l.difficult) {
            tallies.entry(l.class.clone()).or_default().labelled += 1;
        }
        let mut taken = vec![false; labels.len()];
        for d in &detections {
            let best = labels
                .iter()
                .enumerate()
                .filter(|(i, l)| !taken[*i] && l.accepts(&d.class))
                .map(|(i, l)| (i, iou(&l.bbox, &d.bbox)))
                .filter(|(_, v)| *v >= 0.5)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => {
                    taken[i] = true;
                    if !labels[i].difficult {
                        tallies.entry(labels[i].class.clone()).or_default().found += 1;
                        let t = tallies.entry(d.class.clone()).or_default();
                        t.detections += 1;
                        t.correct += 1;
                    }
                }
                None => {
                    let (cx, cy) = ((d.bbox[0] + d.bbox[2]) / 2.0, (d.bbox[1] + d.bbox[3]) / 2.0);
                    let ignored = image.ignore.iter().any(|r| cx >= r[0] && cx <= r[2] && cy >= r[1] && cy <= r[3]);
                    if !ignored {
                        tallies.entry(d.class.clone()).or_default().detections += 1;
                    }
                }
            }
        }
    }
    tallies
}

/// All classes together.
pub fn overall(tallies: &BTreeMap<String, Tally>) -> Tally {
    tallies.values().fold(Tally::default(), |a, t| Tally {
        labelled: a.labelled + t.labelled,
        found: a.found + t.found,
        detections: a.detections + t.detections,
        correct: a.correct + t.correct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> ModelDetector {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"));
        ModelDetector::load(&manifest, None, &EngineChoice::Tract).unwrap()
    }

    /// Floors a little under what the shipped models measure (docs/BENCHMARKS.md), so a change
    /// to decoding, letterboxing or thresholds that costs accuracy fails here.
    #[test]
    fn the_shipped_models_find_what_the_labelled_pictures_hold() {
        let images = labelled_images();
        let person = evaluate(&mut shipped("ssdlite_person_300"), &images);
        let p = person["person"];
        assert!(p.labelled >= 20, "{person:?}");
        assert!(p.recall() >= 0.6 && p.precision() >= 0.8, "person model: {person:?}");
        for model in ["yolov3_tiny_coco_416", "yolov4_tiny_coco_416"] {
            let coco = evaluate(&mut shipped(model), &images);
            let all = overall(&coco);
            assert!(all.recall() >= 0.7 && all.precision() >= 0.8, "{model}: {coco:?}");
            for class in ["dog", "horse", "bicycle", "truck", "bird"] {
                assert!(coco[class].found >= 1, "{model} finds a {class}: {coco:?}");
            }
        }
        // The person model says nothing of other classes.
        assert_eq!(person.keys().collect::<Vec<_>>(), ["person"]);
    }
}
