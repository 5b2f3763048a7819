//! Both inference engines on every shipped model give the detections of the golden file
//! tests/golden/detections.json, on the labelled pictures (tests/eval). onnxruntime, the ONNX
//! reference runtime, made the file (`VAP_WRITE_GOLDEN=1` writes it anew); the runner's own
//! input preparation and decoding are under test with both engines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vap_core::events::Detection;
use vap_runner::detector::{Detector, ModelDetector};
use vap_runner::engine::EngineChoice;

/// libonnxruntime.so of PyPI's wheel, where scripts/setup installs it.
pub fn onnxruntime_library() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|_| Path::new(&home).join(".cache"));
    let library = cache.join("vap/onnxruntime-venv/libonnxruntime.so");
    assert!(
        library.exists(),
        "{}: scripts/setup installs it (VAP_SETUP_TESTS=1 or VAP_ONNXRUNTIME=1)",
        library.display()
    );
    library
}

/// tract, then onnxruntime, each with `threads`.
pub fn engines(threads: usize) -> [EngineChoice; 2] {
    [EngineChoice::Tract, EngineChoice::OnnxRuntime { library: onnxruntime_library(), threads }]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GoldenBox {
    class: String,
    confidence: f32,
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

/// model -> picture -> its detections, best first.
type Golden = BTreeMap<String, BTreeMap<String, Vec<GoldenBox>>>;

const GOLDEN: &str = "tests/golden/detections.json";
/// Engines round differently: a box may move this much (pixels of the picture) and a score
/// this much. A wrong channel order, scale or box decoding moves them far more.
const BOX_TOLERANCE: f32 = 1.0;
const SCORE_TOLERANCE: f32 = 0.01;

fn shipped_models() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let catalogue =
        vap_core::models::Catalogue::load(&dir, "ssdlite_person_300", vap_core::models::Check::Files).unwrap();
    catalogue.names().iter().map(|n| (n.to_string(), catalogue.manifest_path(n).unwrap().to_path_buf())).collect()
}

fn detect_all(engine: &EngineChoice, manifest: &Path) -> (f32, BTreeMap<String, Vec<Detection>>) {
    let mut detector = ModelDetector::load(manifest, None, engine).unwrap();
    let threshold = detector.manifest().thresholds.score;
    let found = crate::eval::labelled_images()
        .into_iter()
        .map(|(image, path)| {
            let frame = opencv::imgcodecs::imread(path.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
            (image.name, detector.detect(&frame).unwrap().0)
        })
        .collect();
    (threshold, found)
}

/// What differs between `golden` and `found`, ignoring boxes whose score is within the
/// tolerance of the threshold (one engine may keep them, the other not).
fn differences(threshold: f32, golden: &[GoldenBox], found: &[Detection]) -> Vec<String> {
    let clear = |score: f32| score >= threshold + SCORE_TOLERANCE;
    let close = |g: &GoldenBox, d: &Detection| {
        g.class == d.class
            && (g.confidence - d.confidence).abs() <= SCORE_TOLERANCE
            && g.bbox.iter().zip(d.bbox).all(|(a, b)| (a - b).abs() <= BOX_TOLERANCE)
    };
    let mut out = Vec::new();
    for g in golden.iter().filter(|g| clear(g.confidence)) {
        if !found.iter().any(|d| close(g, d)) {
            out.push(format!("missing {g:?}"));
        }
    }
    for d in found.iter().filter(|d| clear(d.confidence)) {
        if !golden.iter().any(|g| close(g, d)) {
            out.push(format!("unexpected {} {:.3} {:?}", d.class, d.confidence, d.bbox));
        }
    }
    out
}

/// One line a box, so a change reads as a diff of boxes.
fn golden_text(golden: &Golden) -> String {
    fn json(v: &impl Serialize) -> String {
        serde_json::to_string(v).unwrap()
    }
    let models: Vec<String> = golden
        .iter()
        .map(|(model, pictures)| {
            let pictures: Vec<String> = pictures
                .iter()
                .map(|(picture, boxes)| {
                    let boxes: Vec<String> = boxes.iter().map(|b| format!("      {}", json(b))).collect();
                    let inner = if boxes.is_empty() { String::new() } else { format!("\n{}\n    ", boxes.join(",\n")) };
                    format!("    {}: [{inner}]", json(picture))
                })
                .collect();
            format!("  {}: {{\n{}\n  }}", json(model), pictures.join(",\n"))
        })
        .collect();
    format!("{{\n{}\n}}\n", models.join(",\n"))
}

#[test]
fn both_engines_give_the_golden_detections_on_every_shipped_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    let models = shipped_models();
    if std::env::var("VAP_WRITE_GOLDEN").is_ok_and(|v| v == "1") {
        let [_, reference] = engines(1);
        let golden: Golden = models
            .iter()
            .map(|(name, manifest)| {
                let (_, found) = detect_all(&reference, manifest);
                let boxes = found
                    .into_iter()
                    .map(|(image, ds)| {
                        let round = |v: f32| (v * 100.0).round() / 100.0;
                        let gs = ds
                            .into_iter()
                            .map(|d| GoldenBox {
                                class: d.class,
                                confidence: (d.confidence * 10_000.0).round() / 10_000.0,
                                bbox: d.bbox.map(round),
                            })
                            .collect();
                        (image, gs)
                    })
                    .collect();
                (name.clone(), boxes)
            })
            .collect();
        std::fs::write(&path, golden_text(&golden)).unwrap();
    }
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        golden.keys().collect::<Vec<_>>(),
        models.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "{GOLDEN} covers the catalogue"
    );
    let mut failures = Vec::new();
    let mut compared = 0;
    for engine in engines(1) {
        for (name, manifest) in &models {
            let (threshold, found) = detect_all(&engine, manifest);
            let expected = &golden[name];
            assert_eq!(expected.keys().collect::<Vec<_>>(), found.keys().collect::<Vec<_>>(), "{name}: pictures");
            for (image, detections) in &found {
                compared += expected[image].iter().filter(|g| g.confidence >= threshold + SCORE_TOLERANCE).count();
                for d in differences(threshold, &expected[image], detections) {
                    failures.push(format!("{} {name} {image}: {d}", engine.name()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} differences from {GOLDEN}:\n{}", failures.len(), failures.join("\n"));
    // The file is not empty of what matters: every model finds something on these pictures.
    assert!(golden.values().all(|pictures| pictures.values().map(Vec::len).sum::<usize>() >= 10), "{golden:?}");
    // Each engine compared with every clear golden box (about 80 of them).
    assert!(compared >= 2 * 70, "only {compared} golden boxes compared");
}

#[test]
fn a_missing_onnxruntime_library_is_a_clear_error_and_a_right_one_works_after_it() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ssdlite_person_300.toml");
    let wrong = EngineChoice::OnnxRuntime { library: "/nonexistent/libonnxruntime.so".into(), threads: 1 };
    let err = ModelDetector::load(&manifest, None, &wrong).err().expect("a missing library must fail").to_string();
    assert!(err.contains("/nonexistent/libonnxruntime.so") && err.contains("runner.onnxruntime_library"), "{err}");
    let [_, right] = engines(1);
    let detector = ModelDetector::load(&manifest, None, &right).expect("the right library loads after a wrong one");
    assert_eq!(detector.engine_name(), "onnxruntime");
    // One library serves a process: another one is refused, not silently ignored.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("libonnxruntime.so");
    std::os::unix::fs::symlink(onnxruntime_library(), &other).unwrap();
    let engine = EngineChoice::OnnxRuntime { library: other, threads: 1 };
    let err = ModelDetector::load(&manifest, None, &engine).err().expect("a second library must fail").to_string();
    assert!(err.contains("already runs onnxruntime from"), "{err}");
}
