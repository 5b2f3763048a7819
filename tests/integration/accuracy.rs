//! Floors on what docs/ACCURACY.md publishes: the metrics agree with py-motmetrics on its own
//! data; vap's tracker keeps its MOTA and IDF1 on TUD-Campus and TUD-Stadtmitte with stated
//! detector noise, well above the IoU tracker; the default model sees a walker who fills half
//! the height of a 16:9 street scene in nearly every frame; and two walkers crossing each other
//! in that scene keep their ids, end to end (decoder, default model, tracker).
//!
//! The clips are made here from pictures opencv-doc ships; their truth is the walkers' path.

use std::path::{Path, PathBuf};

use vap_core::config::RunnerSettings;
use vap_eval::counting::{self, count_error};
use vap_eval::mot::{self, MotBox, MotSummary};
use vap_eval::noise::Noise;
use vap_eval::report;
use vap_eval::scenes::{self, Scene};
use vap_eval::video::VideoDetections;
use vap_runner::detector::ModelDetector;
use vap_runner::engine::EngineChoice;

use super::media::models_dir;

fn clips() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("accuracy")
}

/// The default model's person boxes on every frame of `scene`'s clip (down to the tracker's
/// low score), and the model's threshold.
fn default_model_on(scene: &Scene) -> (String, VideoDetections, f32) {
    let (name, manifest) = default_model();
    let threshold = vap_core::models::Manifest::load(&manifest).unwrap().thresholds.score;
    let mut detector = ModelDetector::load(&manifest, Some(report::low_score()), &EngineChoice::Tract).unwrap();
    let mut found = vap_eval::video::detect(&scene.clip(&clips()).unwrap(), &mut detector).unwrap();
    // The picture's own car and potted plants are not the walkers.
    found.frames.iter_mut().for_each(|(_, detections)| detections.retain(|d| d.class == "person"));
    (name, found, threshold)
}

fn default_model() -> (String, PathBuf) {
    let name = RunnerSettings::default().default_model;
    let manifest = models_dir().join(format!("{name}.toml"));
    (name, manifest)
}

fn motmetrics_data() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let dir = cache.join("vap/motmetrics/motmetrics/data");
    assert!(dir.join("TUD-Campus/gt.txt").exists(), "{}: scripts/setup unpacks motmetrics' data", dir.display());
    dir
}

fn read_mot(path: &Path) -> Vec<MotBox> {
    mot::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_metrics_agree_with_py_motmetrics_on_its_own_reference_data() {
    let data = motmetrics_data();
    // py-motmetrics 1.4.0's test_motchallenge_files: idf1, idp, idr, recall, precision, objects,
    // mostly tracked, partially tracked, mostly lost, false positives, misses, switches,
    // fragmentations, mota, motp.
    let expected = [
        (
            "TUD-Campus",
            [
                0.557659, 0.729730, 0.451253, 0.582173, 0.941441, 8.0, 1.0, 6.0, 1.0, 13.0, 150.0, 7.0, 7.0, 0.526462,
                0.277201,
            ],
        ),
        (
            "TUD-Stadtmitte",
            [
                0.644619, 0.819760, 0.531142, 0.608997, 0.939920, 10.0, 5.0, 4.0, 1.0, 45.0, 452.0, 7.0, 6.0, 0.564014,
                0.345904,
            ],
        ),
    ];
    for (sequence, want) in expected {
        let s: MotSummary = mot::evaluate(
            &read_mot(&data.join(sequence).join("gt.txt")),
            &read_mot(&data.join(sequence).join("test.txt")),
        );
        let got = [
            s.idf1,
            s.idp,
            s.idr,
            s.recall,
            s.precision,
            s.unique_objects as f64,
            s.mostly_tracked as f64,
            s.partially_tracked as f64,
            s.mostly_lost as f64,
            s.false_positives as f64,
            s.misses as f64,
            s.switches as f64,
            s.fragmentations as f64,
            s.mota,
            s.motp,
        ];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-3, "{sequence}, field {i}: {g} against motmetrics' {w}; {s:?}");
        }
    }
}

/// Floors a little under docs/ACCURACY.md's tracker table (noise "typical", mean of 20 seeds).
#[test]
fn the_tracker_keeps_ids_through_detector_noise_far_better_than_the_iou_tracker() {
    let data = motmetrics_data();
    for ((sequence, fps), (mota, idf1)) in report::TUD.into_iter().zip([(0.74, 0.78), (0.75, 0.76)]) {
        let truth = read_mot(&data.join(sequence).join("gt.txt"));
        let [vap, baseline] = report::tracker_scores(&truth, fps, Noise::TYPICAL);
        assert!(vap.0 >= mota && vap.1 >= idf1, "{sequence}: vap MOTA {:.3} IDF1 {:.3}", vap.0, vap.1);
        assert!(vap.1 >= baseline.1 + 0.3, "{sequence}: IDF1 {:.3} against the IoU tracker's {:.3}", vap.1, baseline.1);
        assert!(vap.2 * 3.0 < baseline.2, "{sequence}: {} id switches against {}", vap.2, baseline.2);
    }
}

#[test]
fn the_default_model_sees_a_walker_filling_half_of_a_16_9_frame() {
    let scene = scenes::walker_scene();
    let truth = scene.truth();
    let (name, found, threshold) = default_model_on(&scene);
    let (hits, _) = scenes::walker_found(&found.frames, &truth, threshold);
    let share = hits as f64 / found.frames.len() as f64;
    println!("{name}: the walker found in {hits} of {} frames", found.frames.len());
    assert!(share >= 0.9, "{name} found the walker in {:.0}% of the frames", 100.0 * share);
}

#[test]
fn two_walkers_crossing_in_front_of_each_other_keep_their_ids_end_to_end() {
    let scene = scenes::crossing_scene();
    let (name, found, threshold) = default_model_on(&scene);
    let s = mot::evaluate(&scene.truth(), &report::track(&found, threshold));
    println!("{name}, two walkers crossing: {s:?}");
    assert!(s.mota >= 0.9 && s.idf1 >= 0.9 && s.switches <= 1, "{name}: MOTA {:.3}, IDF1 {:.3}: {s:?}", s.mota, s.idf1);
}

/// Floors a little over docs/ACCURACY.md's counting table: the default model at the default
/// fps (2) and at every frame, on the clips with a known truth.
#[test]
fn line_counts_on_the_counting_clips_stay_within_their_error() {
    for (step, most_wrong) in [(5, 2), (1, 1)] {
        let (mut wrong, mut crossings) = (0, 0);
        for scene in scenes::counting_scenes() {
            let (name, found, threshold) = default_model_on(&scene);
            let analysis = counting::Analysis { fps: scenes::FPS, step, min_confidence: threshold, size: scenes::SIZE };
            let counted = counting::count(&found.frames, analysis, &[scenes::vertical_line("middle", 0.5)]);
            for (key, &want) in &scene.crossings("middle", 480.0) {
                let got = counted[key];
                println!(
                    "{name}, {}, every {step}. frame, {key:?}: {want} -> {got}, error {:.2}",
                    scene.name,
                    count_error(got, want)
                );
                wrong += want.abs_diff(got);
                crossings += want;
            }
        }
        assert!(wrong <= most_wrong, "every {step}. frame: {wrong} of {crossings} crossings counted wrong");
    }
}

/// vtest.avi's true crossings of `report::vtest_lines()`, found from PETS09-S2L1's trajectories
/// and each checked by eye (docs/ACCURACY.md): (line, direction, count).
const VTEST_CROSSINGS: [(&str, &str, u32); 4] =
    [("lower", "in", 11), ("lower", "out", 6), ("middle", "in", 13), ("middle", "out", 15)];

#[test]
fn line_counts_on_the_demo_video_stay_within_their_error() {
    let (name, manifest) = default_model();
    let threshold = vap_core::models::Manifest::load(&manifest).unwrap().thresholds.score;
    let mut detector = ModelDetector::load(&manifest, Some(report::low_score()), &EngineChoice::Tract).unwrap();
    // The default 2 fps of a 10 fps file: every 5th frame.
    let mut found = vap_eval::video::detect_every(Path::new(super::media::VTEST), &mut detector, 5).unwrap();
    found.frames.iter_mut().for_each(|(_, detections)| detections.retain(|d| d.class == "person"));
    let analysis = counting::Analysis { fps: found.fps, step: 1, min_confidence: threshold, size: (768.0, 576.0) };
    let counted = counting::count(&found.frames, analysis, &report::vtest_lines());
    let mut wrong = 0;
    for (line, direction, want) in VTEST_CROSSINGS {
        let got = counted[&(line.to_string(), direction)];
        println!("{name}, vtest.avi at 2 fps, {line} {direction}: {want} -> {got}");
        wrong += want.abs_diff(got);
    }
    assert!(wrong <= 7, "{name}: {wrong} of 45 crossings counted wrong: {counted:?}");
}
