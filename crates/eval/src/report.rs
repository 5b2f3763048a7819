//! The tables `vap-eval` prints (docs/ACCURACY.md), as Markdown.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vap_analytics::tracker::TrackerSettings;
use vap_core::config::RunnerSettings;
use vap_core::models::{Catalogue, Check};
use vap_core::options::Line;
use vap_runner::detector::ModelDetector;
use vap_runner::engine::EngineChoice;

use crate::counting;
use crate::detection;
use crate::mot::{self, MotSummary};
use crate::noise::{self, Noise};
use crate::scenes;
use crate::trackers;
use crate::video::{self, VideoDetections};

/// opencv-doc's demo video: PETS2009 S2.L1, MOTChallenge's PETS09-S2L1.
pub const VTEST: &str = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";

/// The detector reports boxes down to the tracker's low score, for its second pass.
pub fn low_score() -> f32 {
    TrackerSettings::default().low_score
}

/// MOTChallenge ground truth, as `eval_motchallenge` reads it.
fn read_truth(path: &Path) -> Result<Vec<mot::MotBox>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(mot::parse_truth(&text)?)
}

/// The catalogue of `dir`, and the models asked for (none: all of them).
fn catalogue(dir: &Path, wanted: &[String]) -> Result<(Catalogue, Vec<String>)> {
    let all = Catalogue::load(dir, &RunnerSettings::default().default_model, Check::Manifests)?;
    let names = if wanted.is_empty() { all.names().iter().map(|s| s.to_string()).collect() } else { wanted.to_vec() };
    Ok((all, names))
}

pub struct MotRun {
    pub truth: PathBuf,
    pub video: PathBuf,
    pub models_dir: PathBuf,
    /// Empty: every model of the catalogue.
    pub models: Vec<String>,
    pub engine: EngineChoice,
    /// Detections are kept here per model and video, so the trackers can be compared quickly.
    pub cache: PathBuf,
    /// Where to write each model's tracks as MOTChallenge files (`MODEL.txt`), if anywhere.
    pub tracks_out: Option<PathBuf>,
}

/// The person detections of `model` on every frame of `video` (from the cache when there).
pub fn person_detections(
    models_dir: &Path,
    model: &str,
    video: &Path,
    engine: &EngineChoice,
    cache: &Path,
) -> Result<VideoDetections> {
    let catalogue = Catalogue::load(models_dir, model, Check::Files)?;
    let manifest = catalogue.get(model).context("model")?;
    let digest = manifest.sha256.clone().unwrap_or_default();
    let stem = video.file_stem().and_then(|s| s.to_str()).unwrap_or("video");
    let file = cache.join(format!("{model}-{}-{stem}.json", &digest[..digest.len().min(12)]));
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(found) = serde_json::from_str(&text) {
            return Ok(found);
        }
    }
    let path = catalogue.manifest_path(model).context("manifest")?;
    let mut detector = ModelDetector::load(path, Some(low_score()), engine)?;
    let mut found = video::detect(video, &mut detector)?;
    for (_, detections) in &mut found.frames {
        detections.retain(|d| d.class == "person");
    }
    std::fs::create_dir_all(cache)?;
    std::fs::write(&file, serde_json::to_vec(&found)?)?;
    eprintln!(
        "{}: {} frames, {:.1} ms per frame with {}",
        model,
        found.frames.len(),
        found.ms_per_frame,
        detector.engine_name()
    );
    Ok(found)
}

/// vap's tracker on a model's detections, at the model's own threshold, as the runner runs it.
pub fn track(found: &VideoDetections, min_confidence: f32) -> Vec<mot::MotBox> {
    let picture = (found.width as f32, found.height as f32);
    trackers::track_with_vap(&found.frames, found.fps, TrackerSettings::for_confidence(min_confidence), picture)
}

pub fn mot_table(run: &MotRun) -> Result<String> {
    let truth = read_truth(&run.truth)?;
    let (all, names) = catalogue(&run.models_dir, &run.models)?;
    let mut out = String::new();
    writeln!(out, "| model | tracker | MOTA | IDF1 | id switches | false positives | misses | recall | precision | mostly tracked | mostly lost | detect ms/frame |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for name in &names {
        let manifest = all.get(name).with_context(|| format!("no model {name}"))?;
        let found = person_detections(&run.models_dir, name, &run.video, &run.engine, &run.cache)?;
        let threshold = manifest.thresholds.score;
        let tracks = track(&found, threshold);
        if let Some(dir) = &run.tracks_out {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("{name}.txt")), mot::write(&tracks))?;
        }
        let vap = mot::evaluate(&truth, &tracks);
        let iou = mot::evaluate(&truth, &trackers::track_with_iou(&found.frames, threshold));
        // The default 2 fps of a 10 fps video: every 5th frame, scored on those frames.
        let analysed = |frame: i64| (frame - 1) % 5 == 0;
        let sampled = VideoDetections {
            frames: found.frames.iter().filter(|(f, _)| analysed(*f)).cloned().collect(),
            ..found.clone()
        };
        let sampled_truth: Vec<mot::MotBox> = truth.iter().filter(|b| analysed(b.frame)).copied().collect();
        let at_2_fps = mot::evaluate(&sampled_truth, &track(&sampled, threshold));
        for (tracker, s) in [("vap", vap), ("IoU (baseline)", iou), ("vap, every 5th frame", at_2_fps)] {
            writeln!(out, "{}", mot_row(name, tracker, &s, found.ms_per_frame))?;
        }
    }
    Ok(out)
}

fn mot_row(model: &str, tracker: &str, s: &MotSummary, ms: f64) -> String {
    format!(
        "| {model} | {tracker} | {:.1}% | {:.1}% | {} | {} | {} | {:.1}% | {:.1}% | {}/{} | {}/{} | {:.1} |",
        100.0 * s.mota,
        100.0 * s.idf1,
        s.switches,
        s.false_positives,
        s.misses,
        100.0 * s.recall,
        100.0 * s.precision,
        s.mostly_tracked,
        s.unique_objects,
        s.mostly_lost,
        s.unique_objects,
        ms
    )
}

/// The sequences of py-motmetrics' data and their frame rates (MOTChallenge's seqinfo).
pub const TUD: [(&str, f64); 2] = [("TUD-Campus", 25.0), ("TUD-Stadtmitte", 25.0)];
pub const SEEDS: u64 = 20;
/// Both TUD sequences are 640x480.
const TUD_PICTURE: (f32, f32) = (640.0, 480.0);

/// Mean MOTA, IDF1 and switches of vap's tracker and the IoU tracker over `SEEDS` noisy runs.
pub fn tracker_scores(truth: &[mot::MotBox], fps: f64, noise: Noise) -> [(f64, f64, f64); 2] {
    let mut sums = [(0.0, 0.0, 0.0); 2];
    for seed in 1..=SEEDS {
        let frames = noise::detections(truth, noise, seed);
        let settings = TrackerSettings::default();
        let runs = [
            trackers::track_with_vap(&frames, fps, settings, TUD_PICTURE),
            trackers::track_with_iou(&frames, settings.high_score),
        ];
        for (sum, hyps) in sums.iter_mut().zip(runs) {
            let s = mot::evaluate(truth, &hyps);
            *sum = (sum.0 + s.mota, sum.1 + s.idf1, sum.2 + s.switches as f64);
        }
    }
    sums.map(|(a, b, c)| (a / SEEDS as f64, b / SEEDS as f64, c / SEEDS as f64))
}

/// The table; with `tracks_out`, vap's tracks of the first seed as `SEQUENCE-NOISE.txt`.
pub fn tracker_table(data: &Path, tracks_out: Option<&Path>) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "| sequence | noise | vap MOTA | vap IDF1 | vap id switches | IoU MOTA | IoU IDF1 | IoU id switches |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    for (sequence, fps) in TUD {
        let path = data.join(sequence).join("gt.txt");
        let truth = mot::parse(&std::fs::read_to_string(&path).with_context(|| path.display().to_string())?)?;
        for (label, noise) in [("none", Noise::NONE), ("typical", Noise::TYPICAL), ("heavy", Noise::HEAVY)] {
            let [vap, iou] = tracker_scores(&truth, fps, noise);
            if let Some(dir) = tracks_out {
                std::fs::create_dir_all(dir)?;
                let tracks = trackers::track_with_vap(
                    &noise::detections(&truth, noise, 1),
                    fps,
                    TrackerSettings::default(),
                    TUD_PICTURE,
                );
                std::fs::write(dir.join(format!("{sequence}-{label}.txt")), mot::write(&tracks))?;
            }
            writeln!(
                out,
                "| {sequence} | {label} | {:.1}% | {:.1}% | {:.1} | {:.1}% | {:.1}% | {:.1} |",
                100.0 * vap.0,
                100.0 * vap.1,
                vap.2,
                100.0 * iou.0,
                100.0 * iou.1,
                iou.2
            )?;
        }
    }
    Ok(out)
}

/// The fps a counting clip is analysed at: every frame (10), the default (2) and 1.
pub const COUNT_STEPS: [(usize, &str); 3] = [(1, "10"), (5, "2 (default)"), (10, "1")];

/// The lines counted on vtest.avi (PETS09-S2L1): across the middle, and across the lower half.
pub fn vtest_lines() -> Vec<Line> {
    vec![
        Line { name: "middle".into(), points: [[0.5, 0.2], [0.5, 0.8]], classes: None },
        Line { name: "lower".into(), points: [[0.2, 0.55], [0.8, 0.55]], classes: None },
    ]
}

/// Where the annotated people's feet crossed `lines` (MOTChallenge truth of a
/// `width` x `height` video).
pub fn truth_crossings(truth: &[mot::MotBox], lines: &[Line], (width, height): (f32, f32)) -> counting::Counts {
    let mut frames: std::collections::BTreeMap<i64, Vec<vap_core::detection::Detection>> = Default::default();
    for b in truth {
        frames.entry(b.frame).or_default().push(vap_core::detection::Detection {
            class: "person".into(),
            confidence: 1.0,
            bbox: b.rect.corners(),
            track_id: Some(b.id),
        });
    }
    let mut regions = vap_analytics::regions::Regions::new(uuid::Uuid::nil(), Vec::new(), lines.to_vec()).exact();
    let mut counts = counting::none_yet(lines.iter().map(|l| l.name.as_str()));
    for (frame, detections) in frames {
        let at =
            vap_analytics::regions::FrameAt { number: frame, t: frame as f64, timestamp: chrono::DateTime::UNIX_EPOCH };
        counting::tally(&mut counts, regions.frame_events(&at, &[], &detections, (width, height)));
    }
    counts
}

pub struct CountRun {
    pub models_dir: PathBuf,
    pub models: Vec<String>,
    pub engine: EngineChoice,
    pub cache: PathBuf,
    /// Where the synthetic clips are made.
    pub clips: PathBuf,
    /// PETS09-S2L1's MOTChallenge truth, for the vtest.avi rows.
    pub vtest_truth: Option<PathBuf>,
}

/// A clip, its lines and how often they are truly crossed.
struct CountedClip {
    name: String,
    path: PathBuf,
    lines: Vec<Line>,
    truth: counting::Counts,
    size: (f32, f32),
}

/// Per model, clip and fps: the true and counted crossings of each line and direction.
pub fn counting_table(run: &CountRun) -> Result<String> {
    let (all, names) = catalogue(&run.models_dir, &run.models)?;
    let mut clips: Vec<CountedClip> = Vec::new();
    for scene in scenes::counting_scenes() {
        clips.push(CountedClip {
            name: scene.name.into(),
            path: scene.clip(&run.clips)?,
            lines: vec![scenes::vertical_line("middle", 0.5)],
            truth: scene.crossings("middle", 480.0),
            size: scenes::SIZE,
        });
    }
    if let Some(path) = &run.vtest_truth {
        let truth = read_truth(path)?;
        let size = (768.0, 576.0);
        let truth = truth_crossings(&truth, &vtest_lines(), size);
        clips.push(CountedClip { name: "vtest".into(), path: VTEST.into(), lines: vtest_lines(), truth, size });
    }
    let mut out = String::new();
    writeln!(out, "| model | clip | fps | line, direction: true -> counted | count error |")?;
    writeln!(out, "|---|---|---:|---|---:|")?;
    for name in &names {
        let manifest = all.get(name).with_context(|| format!("no model {name}"))?;
        let mut totals: Vec<(u32, f64)> = vec![(0, 0.0); COUNT_STEPS.len()];
        for CountedClip { name: clip_name, path: clip, lines, truth, size } in &clips {
            let found = person_detections(&run.models_dir, name, clip, &run.engine, &run.cache)?;
            for (si, (step, fps)) in COUNT_STEPS.iter().enumerate() {
                let analysis = counting::Analysis {
                    fps: found.fps,
                    step: *step,
                    min_confidence: manifest.thresholds.score,
                    size: *size,
                };
                let counted = counting::count(&found.frames, analysis, lines);
                let mut cells = Vec::new();
                let (mut wrong, mut all_true) = (0u32, 0u32);
                for (key, &want) in truth {
                    let got = counted.get(key).copied().unwrap_or(0);
                    cells.push(format!("{} {}: {want} -> {got}", key.0, key.1));
                    wrong += want.abs_diff(got);
                    all_true += want;
                }
                totals[si].0 += all_true;
                totals[si].1 += f64::from(wrong);
                let error = f64::from(wrong) / f64::from(all_true.max(1));
                writeln!(out, "| {name} | {clip_name} | {fps} | {} | {:.0}% |", cells.join("; "), 100.0 * error)?;
            }
        }
        for ((_, fps), (all_true, wrong)) in COUNT_STEPS.iter().zip(&totals) {
            writeln!(
                out,
                "| {name} | **all** | {fps} | {all_true} crossings | **{:.0}%** |",
                100.0 * wrong / f64::from((*all_true).max(1))
            )?;
        }
    }
    Ok(out)
}

/// Person AP50 and AP50-95 of each model on a video's MOTChallenge truth (boxes the model
/// reports from the tracker's low score up).
pub fn detection_table(run: &MotRun) -> Result<String> {
    let truth = read_truth(&run.truth)?;
    let (all, names) = catalogue(&run.models_dir, &run.models)?;
    let mut out = String::new();
    writeln!(out, "| model | input | person AP50 | person AP50-95 | recall at 0.1 | truth boxes | detect ms/frame |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
    for name in &names {
        let manifest = all.get(name).with_context(|| format!("no model {name}"))?;
        let found = person_detections(&run.models_dir, name, &run.video, &run.engine, &run.cache)?;
        let p = detection::average_precision(&truth, &found.frames);
        writeln!(
            out,
            "| {name} | {}x{} {} | {:.1}% | {:.1}% | {:.1}% | {} | {:.1} |",
            manifest.input.width,
            manifest.input.height,
            format!("{:?}", manifest.input.resize).to_lowercase(),
            100.0 * p.ap50,
            100.0 * p.ap50_95,
            100.0 * p.max_recall,
            p.truth_boxes,
            found.ms_per_frame
        )?;
    }
    Ok(out)
}

/// In how many frames each model finds the walker of the 16:9 street clip (at its threshold).
pub fn walker_table(models_dir: &Path, models: &[String], engine: &EngineChoice, cache: &Path) -> Result<String> {
    let (all, names) = catalogue(models_dir, models)?;
    let scene = scenes::walker_scene();
    let clip = scene.clip(&cache.join("clips"))?;
    let truth = scene.truth();
    let mut out = String::new();
    writeln!(out, "| model | frames with the walker found (IoU 0.5) | best score |")?;
    writeln!(out, "|---|---:|---:|")?;
    for name in &names {
        let threshold = all.get(name).with_context(|| format!("no model {name}"))?.thresholds.score;
        let found = person_detections(models_dir, name, &clip, engine, cache)?;
        let (hits, best) = scenes::walker_found(&found.frames, &truth, threshold);
        writeln!(out, "| {name} | {hits} of {} | {best:.2} |", found.frames.len())?;
    }
    Ok(out)
}

/// Per model and class on the hand-labelled pictures: AP50 and AP50-95 (from the tracker's low
/// score up), and precision and recall at the model's own threshold.
pub fn labelled_table(models_dir: &Path, models: &[String], set: &Path, dir: &Path) -> Result<String> {
    let (all, names) = catalogue(models_dir, models)?;
    let images = crate::labelled::labelled_images(set, dir);
    let boxes: usize = images.iter().map(|(i, _)| i.objects.len()).sum();
    let mut out = String::new();
    writeln!(out, "{} pictures, {boxes} labelled boxes\n", images.len())?;
    writeln!(out, "| model | class | labelled | AP50 | AP50-95 | precision | recall |")?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|")?;
    for name in &names {
        let manifest = all.manifest_path(name).with_context(|| format!("no model {name}"))?;
        let engine = EngineChoice::Tract;
        let mut low = ModelDetector::load(manifest, Some(low_score()), &engine)?;
        let precision = crate::labelled::class_precision(&mut low, &images);
        let mut own = ModelDetector::load(manifest, None, &engine)?;
        let tallies = crate::labelled::evaluate(&mut own, &images);
        let mut weighted = (0.0, 0.0, 0usize);
        for (class, p) in precision.iter().filter(|(_, p)| p.truth_boxes > 0) {
            let t = tallies.get(class).copied().unwrap_or_default();
            writeln!(
                out,
                "| {name} | {class} | {} | {:.1}% | {:.1}% | {:.2} | {:.2} |",
                p.truth_boxes,
                100.0 * p.ap50,
                100.0 * p.ap50_95,
                t.precision(),
                t.recall()
            )?;
            weighted = (weighted.0 + p.ap50, weighted.1 + p.ap50_95, weighted.2 + 1);
        }
        let all_classes = crate::labelled::overall(&tallies);
        let n = weighted.2.max(1) as f64;
        writeln!(
            out,
            "| {name} | **mean over {} classes** | {} | **{:.1}%** | **{:.1}%** | {:.2} | {:.2} |",
            weighted.2,
            all_classes.labelled,
            100.0 * weighted.0 / n,
            100.0 * weighted.1 / n,
            all_classes.precision(),
            all_classes.recall()
        )?;
    }
    Ok(out)
}
