//! The hand-labelled pictures of tests/eval/ground_truth.toml (from packages: opencv-doc,
//! darknet, and frames of clips made from them), and a model's precision and recall at IoU 0.5
//! (at its own threshold) and AP per class (COCO's, from the low score up) on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use vap_core::detection::iou;
use vap_runner::detector::{Detector, ModelDetector};

#[derive(Debug, Deserialize)]
struct GroundTruth {
    image: Vec<LabelledImage>,
}

#[derive(Debug, Deserialize)]
pub struct LabelledImage {
    pub name: String,
    source: PathBuf,
    /// A video's frame, cut with ffmpeg at this second.
    at_seconds: Option<f64>,
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

/// The labelled images of `set` (tests/eval/ground_truth.toml), as files: video frames are cut
/// once into `dir`, and a `scene:NAME` source is the clip of that [`crate::scenes`] scene.
pub fn labelled_images(set: &Path, dir: &Path) -> Vec<(LabelledImage, PathBuf)> {
    let text = std::fs::read_to_string(set).unwrap();
    let truth: GroundTruth = toml::from_str(&text).expect("tests/eval/ground_truth.toml");
    std::fs::create_dir_all(dir).unwrap();
    truth
        .image
        .into_iter()
        .map(|image| {
            let source = match image.source.to_str().and_then(|s| s.strip_prefix("scene:")) {
                Some(name) => {
                    let scene =
                        crate::scenes::all().into_iter().find(|s| s.name == name).expect("a scene of vap_eval::scenes");
                    scene.clip(dir).expect("ffmpeg makes the clip")
                }
                None => image.source.clone(),
            };
            assert!(source.exists(), "{}: scripts/setup installs opencv-doc and darknet", source.display());
            let path = match image.at_seconds {
                None => source,
                Some(at) => {
                    let frame = dir.join(format!("{}.png", image.name));
                    if !frame.exists() {
                        let tmp = dir.join(format!("{}.{}.tmp.png", image.name, std::process::id()));
                        let ok = Command::new("ffmpeg")
                            .args(["-loglevel", "error", "-y", "-ss", &at.to_string(), "-i"])
                            .arg(&source)
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

/// AP per class the model has (labels of other classes are not its misses), from the boxes it
/// reports down to its loading threshold: a label that only `also` fits the class, and a
/// label marked difficult, take their matches out of the ranking, as do `ignore` areas.
pub fn class_precision(
    detector: &mut ModelDetector,
    images: &[(LabelledImage, PathBuf)],
) -> BTreeMap<String, crate::detection::Precision> {
    use crate::detection::{precision_of, Scored};
    use crate::mot::Rect;
    let has: Vec<String> = detector.manifest().classes().map(String::from).collect();
    let mut per_class: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    for (image, path) in images {
        let frame = opencv::imgcodecs::imread(path.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
        let (detections, _) = detector.detect(&frame).unwrap();
        // Every class the picture has a label of, or an alias label of, or a box of.
        let mut classes: std::collections::BTreeSet<&String> =
            has.iter().filter(|c| image.objects.iter().any(|o| o.accepts(c))).collect();
        classes.extend(has.iter().filter(|c| detections.iter().any(|d| &&d.class == c)));
        for class in classes {
            let areas = image.ignore.iter().map(|&[x0, y0, x1, y1]| Rect::from_corners([x0, y0, x1, y1]));
            let mut scored = Scored { ignore: areas.collect(), ..Default::default() };
            for o in &image.objects {
                if &o.class == class {
                    scored.truth.push((Rect::from_corners(o.bbox), o.difficult));
                } else if o.accepts(class) {
                    scored.ignore.push(Rect::from_corners(o.bbox));
                }
            }
            let found = detections.iter().filter(|d| &d.class == class);
            scored.detections = found.map(|d| (d.confidence, Rect::from_corners(d.bbox))).collect();
            per_class.entry(class.clone()).or_default().push(scored);
        }
    }
    per_class.into_iter().map(|(class, pictures)| (class, precision_of(&pictures))).collect()
}
