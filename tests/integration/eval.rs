//! Precision and recall at IoU 0.5 on the hand-labelled set in tests/eval/ground_truth.toml,
//! per model and class, with the detector the runner uses at each model's own threshold
//! (`vap_eval::labelled`). The runner benchmark and `vap-eval labelled` print the tables
//! (docs/BENCHMARKS.md, docs/ACCURACY.md); the test here keeps the shipped models from getting
//! worse.

use std::path::{Path, PathBuf};

pub use vap_eval::labelled::{evaluate, overall, LabelledImage};
#[cfg(test)]
use vap_runner::detector::ModelDetector;
#[cfg(test)]
use vap_runner::engine::EngineChoice;

/// The labelled images, as files (video frames cut once into target/tmp).
pub fn labelled_images() -> Vec<(LabelledImage, PathBuf)> {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/eval/ground_truth.toml");
    vap_eval::labelled::labelled_images(&set, &Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> ModelDetector {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"));
        ModelDetector::load(&manifest, None, &EngineChoice::Tract).unwrap()
    }

    /// Floors a little under what the shipped models measure (docs/ACCURACY.md: 36 pictures,
    /// 213 boxes), so a change to decoding, letterboxing or thresholds that costs accuracy
    /// fails here.
    #[test]
    fn the_shipped_models_find_what_the_labelled_pictures_hold() {
        let images = labelled_images();
        assert!(images.len() >= 30 && images.iter().map(|(i, _)| i.objects.len()).sum::<usize>() >= 150);
        let person = evaluate(&mut shipped("ssdlite_person_300"), &images);
        let p = person["person"];
        assert!(p.labelled >= 80, "{person:?}");
        assert!(p.recall() >= 0.5 && p.precision() >= 0.75, "person model: {person:?}");
        // (model, least recall, least precision) over every class it has.
        for (model, recall, precision) in [("yolov3_tiny_coco_416", 0.62, 0.9), ("yolov4_tiny_coco_416", 0.72, 0.92)] {
            let coco = evaluate(&mut shipped(model), &images);
            let all = overall(&coco);
            assert!(all.recall() >= recall && all.precision() >= precision, "{model}: {coco:?}");
            for class in ["dog", "horse", "bicycle", "truck", "bird", "car", "giraffe", "zebra"] {
                assert!(coco[class].found >= 1, "{model} finds a {class}: {coco:?}");
            }
        }
        // The person model says nothing of other classes.
        assert_eq!(person.keys().collect::<Vec<_>>(), ["person"]);
    }

    /// The default model's AP (COCO's definition, from the tracker's low score up) on people
    /// and over every labelled class, a little under docs/ACCURACY.md's 90.8% and 68.6%.
    #[test]
    fn the_default_model_keeps_its_average_precision() {
        let images = labelled_images();
        let name = vap_core::config::RunnerSettings::default().default_model;
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"));
        let low = vap_analytics::tracker::TrackerSettings::default().low_score;
        let mut detector = ModelDetector::load(&manifest, Some(low), &EngineChoice::Tract).unwrap();
        let ap = vap_eval::labelled::class_precision(&mut detector, &images);
        let labelled: Vec<_> = ap.values().filter(|p| p.truth_boxes > 0).collect();
        let mean = labelled.iter().map(|p| p.ap50).sum::<f64>() / labelled.len() as f64;
        assert!(ap["person"].ap50 >= 0.87 && ap["person"].ap50_95 >= 0.48, "{name}: {:?}", ap["person"]);
        assert!(mean >= 0.64, "{name}: mean AP50 {mean:.3} over {} classes", labelled.len());
    }
}
