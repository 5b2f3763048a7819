//! Runner benchmark (docs/BENCHMARKS.md): `cargo bench --bench runner [-- PART...]`,
//! PART one of `pipeline`, `inference`, `accuracy`, `produce`, `gating`, `decode` (default: all), for
//! every model of the shipped catalogue (`models/`):
//!
//! 1. pipeline: the real vap-runner on a 640x480 H.264 file, every frame analysed, 1 and 2
//!    inference threads: per-frame time split, frames/s, peak RSS;
//! 2. inference: inference alone on the same 100 prepared inputs, tract beside onnxruntime
//!    (PyPI), 1 and 2 threads;
//! 3. accuracy: precision and recall at IoU 0.5 per class on the labelled set (tests/eval);
//! 4. produce: the produce path catching up 5,000 buffered results, stock rskafka sockets
//!    beside TCP_NODELAY;
//! 5. gating: CPU-seconds per camera-hour at 2 fps (decoding included) of the real vap-runner
//!    on 25 fps H.264 at 640x480 and 1920x1080, on a mostly still clip and on vtest.avi as it
//!    is, with motion gating and without: cameras per core, and how often the detector ran;
//! 6. decode: decoding alone (OpenCV's FFmpeg backend, as the runner's capture thread reads),
//!    CPU per camera-hour of 25 fps H.264 sampled at 2 fps, per `decode` mode: every frame,
//!    reference frames only, key frames only; on an encoder's default stream (B-frames) and on
//!    a camera's (no B-frames, a key frame every 2 s).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use opencv::prelude::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use vap_core::config::KafkaSettings;
use vap_core::kafka::KafkaLink;
use vap_core::models::{Catalogue, Check, Manifest};
use vap_core::options::DecodeMode;
use vap_dev::devstack::{Broker, BrokerStorage};
use vap_runner::capture;
use vap_runner::detector::ModelDetector;
use vap_runner::engine::EngineChoice;
use vap_runner::publisher::{result_record, Publisher, ResultBuffer};

// Its test module is compiled under clippy's --all-targets too, where nothing runs it.
#[allow(dead_code)]
#[path = "../tests/integration/engines.rs"]
mod engines;
#[allow(dead_code)]
#[path = "../tests/integration/eval.rs"]
mod eval;
#[allow(dead_code)]
#[path = "../tests/integration/media.rs"]
mod media;

use media::VTEST;
const INFERENCE_FRAMES: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("runner benchmark: run with `cargo bench --bench runner`");
        return;
    }
    let parts: Vec<&str> = args.iter().map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let wanted = |part: &str| parts.is_empty() || parts.contains(&part);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runner-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let video = make_video(&dir);
    let models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let catalogue = Catalogue::load(&models_dir, "ssdlite_person_300", Check::Files).unwrap();
    let manifests: Vec<(String, PathBuf)> =
        catalogue.names().iter().map(|n| (n.to_string(), catalogue.manifest_path(n).unwrap().to_path_buf())).collect();
    // First, while this process has no other thread: it sets FFmpeg's options in the environment.
    if wanted("decode") {
        decode(&dir);
    }
    let broker = Broker::start(BrokerStorage::Memory).expect("start broker");
    println!(
        "machine: {} cores; video: 640x480 H.264, 795 frames (vtest.avi), every frame analysed; models: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        catalogue.names().join(", ")
    );
    if wanted("pipeline") {
        pipeline(&video, &manifests, &broker.addr());
    }
    if wanted("gating") {
        gating(&dir, &manifests, &broker.addr());
    }
    if wanted("inference") {
        inference(&video, &manifests, &dir);
    }
    if wanted("accuracy") {
        accuracy(&manifests);
    }
    if wanted("produce") {
        produce(&broker.addr());
    }
}

fn pipeline(video: &Path, manifests: &[(String, PathBuf)], broker: &str) {
    println!("\n== vap-runner process (release), whole pipeline");
    println!(
        "{:<22} {:<12} {:<8} {:>8} {:>8} {:>10} {:>9} {:>8} {:>9} {:>8} {:>10} {:>9}",
        "model",
        "engine",
        "threads",
        "frames/s",
        "read ms",
        "resize ms",
        "infer ms",
        "nms ms",
        "queue ms",
        "other %",
        "produce ms",
        "peak RSS"
    );
    for (name, manifest) in manifests {
        for (engine, threads) in [1, 2].into_iter().flat_map(|t| engines::engines(t).map(|e| (e, t))) {
            let run = run_runner(video, manifest, broker, &Setup::every_frame(engine.clone(), threads));
            let (done, max_rss_kb) = (run.done, run.peak_rss_kb);
            let f = |k: &str| done[k].as_f64().unwrap_or(f64::NAN);
            let per_frame = 1000.0 / f("fps");
            let outside = f("read_ms") + f("preprocess_ms") + f("postprocess_ms") + f("queue_ms");
            println!(
                "{:<22} {:<12} {:<8} {:>8.1} {:>8.2} {:>10.2} {:>9.2} {:>8.3} {:>9.3} {:>7.1}% {:>10.2} {:>6} MB",
                name,
                engine.name(),
                threads,
                f("fps"),
                f("read_ms"),
                f("preprocess_ms"),
                f("inference_ms"),
                f("postprocess_ms"),
                f("queue_ms"),
                100.0 * outside / per_frame,
                f("produce_ms_per_request"),
                max_rss_kb / 1024,
            );
        }
    }
    println!("  (other % = read + resize/normalise + decode/NMS + queueing, as a share of a frame's wall time)");
}

fn inference(video: &Path, manifests: &[(String, PathBuf)], dir: &Path) {
    println!("\n== inference alone, the same {INFERENCE_FRAMES} prepared inputs per model");
    println!("   vap's engines (Rust) beside onnxruntime's own Python API on the same library and inputs");
    let python = bench_python();
    for (name, manifest) in manifests {
        let inputs_file = dir.join(format!("inputs-{name}.f32"));
        let inputs = prepare_inputs(video, manifest, &inputs_file);
        let m = Manifest::load(manifest).unwrap();
        for threads in [1usize, 2] {
            let executor = if threads == 1 {
                tract_linalg::multithread::Executor::SingleThread
            } else {
                tract_linalg::multithread::Executor::multithread(threads)
            };
            tract_linalg::multithread::set_default_executor(executor);
            let [tract, onnxruntime] = engines::engines(threads);
            let (tract_ms, tract_cpu) = time_engine(&mut ModelDetector::load(manifest, None, &tract).unwrap(), &inputs);
            let (engine_ms, engine_cpu) =
                time_engine(&mut ModelDetector::load(manifest, None, &onnxruntime).unwrap(), &inputs);
            // onnxruntime's default (spinning threads), and as vap's engine runs it (not spinning).
            let reference = |spin: &str| {
                let out = Command::new(&python)
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ort_reference.py"))
                    .args([
                        m.onnx.to_str().unwrap(),
                        inputs_file.to_str().unwrap(),
                        &m.input.width.to_string(),
                        &m.input.height.to_string(),
                        &threads.to_string(),
                        spin,
                    ])
                    .output()
                    .expect("run onnxruntime");
                assert!(out.status.success(), "onnxruntime: {}", String::from_utf8_lossy(&out.stderr));
                serde_json::from_slice::<Value>(&out.stdout).unwrap()
            };
            let (ort, ort_still) = (reference("1"), reference("0"));
            let ort_ms = ort["mean_ms"].as_f64().unwrap();
            let still_ms = ort_still["mean_ms"].as_f64().unwrap();
            println!(
                "{name} ({}x{}), threads {threads}: tract {tract_ms:.2} ms (CPU {tract_cpu:.2}) | vap onnxruntime engine \
                 {engine_ms:.2} ms (CPU {engine_cpu:.2}) | python onnxruntime {} {ort_ms:.2} ms (CPU {:.2}), not spinning \
                 {still_ms:.2} ms (CPU {:.2}) | engine/python {:.2} (not spinning {:.2}) | tract/python {:.2}",
                m.input.width,
                m.input.height,
                ort["version"].as_str().unwrap_or("?"),
                ort["cpu_ms"].as_f64().unwrap_or(f64::NAN),
                ort_still["cpu_ms"].as_f64().unwrap_or(f64::NAN),
                engine_ms / ort_ms,
                engine_ms / still_ms,
                tract_ms / ort_ms
            );
        }
    }
    tract_linalg::multithread::set_default_executor(tract_linalg::multithread::Executor::SingleThread);
}

fn accuracy(manifests: &[(String, PathBuf)]) {
    let images = eval::labelled_images();
    println!("\n== accuracy: precision / recall at IoU 0.5, {} labelled pictures (tests/eval), each model at its own threshold", images.len());
    println!(
        "{:<22} {:<12} {:>9} {:>7} {:>11} {:>9} {:>7}",
        "model", "class", "labelled", "found", "detections", "precision", "recall"
    );
    for (name, manifest) in manifests {
        let mut detector = ModelDetector::load(manifest, None, &EngineChoice::Tract).unwrap();
        let tallies = eval::evaluate(&mut detector, &images);
        let all = eval::overall(&tallies);
        // A ratio over nothing is shown as "-": a class with no label has no recall.
        let ratio = |v: f64, of: usize| if of == 0 { "-".to_string() } else { format!("{v:.2}") };
        for (class, t) in tallies.iter().map(|(c, t)| (c.as_str(), t)).chain([("all", &all)]) {
            println!(
                "{:<22} {:<12} {:>9} {:>7} {:>11} {:>9} {:>7}",
                name,
                class,
                t.labelled,
                t.found,
                t.detections,
                ratio(t.precision(), t.detections),
                ratio(t.recall(), t.labelled)
            );
        }
    }
}

fn produce(broker: &str) {
    println!("\n== produce path: 5000 buffered results (about 330 B each) drained by the runner's publisher");
    println!("{:<14} {:>22} {:>22}", "produce_batch", "stock rskafka sockets", "with TCP_NODELAY (vap)");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // Stock sockets first: the NODELAY sweeper, once started, covers every socket of the process.
    let batches = [1usize, 50, 200];
    let stock: Vec<f64> =
        batches.iter().map(|&b| rt.block_on(drain(broker, false, if b == 1 { 1_000 } else { 5_000 }, b))).collect();
    for (i, &b) in batches.iter().enumerate() {
        let with = rt.block_on(drain(broker, true, if b == 1 { 1_000 } else { 5_000 }, b));
        println!("{:<14} {:>18.0} /s {:>18.0} /s", b, stock[i], with);
    }
}

/// 640x480 H.264 from opencv-doc's pedestrians, made once.
fn make_video(dir: &Path) -> PathBuf {
    let out = dir.join("vtest_640x480.mp4");
    if !out.exists() {
        let tmp = dir.join("vtest.tmp.mp4");
        let ok = Command::new("ffmpeg")
            .args([
                "-loglevel",
                "error",
                "-y",
                "-i",
                VTEST,
                "-vf",
                "scale=640:480",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                "-an",
            ])
            .arg(&tmp)
            .status()
            .expect("ffmpeg")
            .success();
        assert!(ok, "ffmpeg failed");
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// How a bench run sets the runner up.
struct Setup {
    engine: EngineChoice,
    threads: usize,
    /// 0: every frame.
    fps: f64,
    gating: bool,
    decode: DecodeMode,
}

impl Setup {
    fn every_frame(engine: EngineChoice, threads: usize) -> Self {
        Self { engine, threads, fps: 0.0, gating: false, decode: DecodeMode::All }
    }
}

/// What a bench run of the runner reports.
struct Run {
    /// Its "runner done" fields.
    done: Value,
    peak_rss_kb: i64,
    /// CPU seconds (user + system) in all, and until its model was loaded: a camera pays that
    /// once, not per hour.
    cpu: f64,
    startup_cpu: f64,
}

impl Run {
    /// CPU seconds per hour of stream `seconds` long, start-up left out.
    fn cpu_per_hour(&self, seconds: f64) -> f64 {
        (self.cpu - self.startup_cpu) / seconds * 3600.0
    }
}

/// CPU seconds a live process of ours used so far.
fn cpu_so_far(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 12th and 13th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<f64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / ticks
}

/// Runs the real binary to its end.
#[allow(clippy::zombie_processes)] // wait4 reaps it, for its rusage
fn run_runner(video: &Path, manifest: &Path, broker: &str, setup: &Setup) -> Run {
    let Setup { engine, threads, fps, gating, decode } = setup;
    let mut command = Command::new(env!("CARGO_BIN_EXE_vap-runner"));
    command.env_clear().env("VAP_RUNNER__ENGINE", engine.name());
    if let EngineChoice::OnnxRuntime { library, .. } = engine {
        command.env("VAP_RUNNER__ONNXRUNTIME_LIBRARY", library);
    }
    let mut child = command
        .env("VAP_KAFKA__BROKERS", broker)
        .env("VAP_KAFKA__TOPIC_RESULTS", format!("bench-results-{threads}"))
        .env("VAP_RUNNER__MODELS_DIR", manifest.parent().unwrap())
        .env("VAP_RUNNER__DEFAULT_MODEL", Manifest::load(manifest).unwrap().name)
        .env("VAP_RUNNER__SAMPLE_FPS", fps.to_string())
        .env("VAP_SCENARIO_OPTIONS", serde_json::json!({"motion_gating": gating, "decode": decode}).to_string())
        .env("VAP_RUNNER__INFERENCE_THREADS", threads.to_string())
        .env("VAP_LOG__JSON", "true")
        .env("VAP_SCENARIO_UUID", uuid::Uuid::new_v4().to_string())
        .env("VAP_CAMERA_URL", video)
        .env("VAP_RESULTS_KEY", "ab".repeat(32))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vap-runner");
    let (mut done, mut startup_cpu) = (Value::Null, f64::NAN);
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["fields"]["message"] == "model loaded" {
                startup_cpu = cpu_so_far(child.id());
            }
            if v["fields"]["message"] == "runner done" {
                done = v["fields"].clone();
            }
        }
    }
    let mut status = 0;
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` live across the call; the pid is our own child.
    unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(status, 0, "runner failed");
    Run { done, peak_rss_kb: usage.ru_maxrss, cpu: cpu_seconds(&usage), startup_cpu }
}

/// 25 fps H.264 clips at `size`: the mostly still one of the motion test, a key frame every 2 s,
/// and vtest.avi as it is (79.5 s). Returns (name, path, seconds).
fn gating_clips(dir: &Path, size: &str) -> Vec<(&'static str, PathBuf, f64)> {
    let moving = vtest_25fps(dir, size, "gating", &["-g", "50"]);
    vec![("still-heavy", media::still_heavy_clip(dir, 25, size, 50), 70.0), ("vtest.avi", moving, 79.5)]
}

/// vtest.avi at 25 fps and `size`, encoded by x264 with `extra` options; made once in `dir`.
fn vtest_25fps(dir: &Path, size: &str, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("vtest_{name}_25fps_{}.mp4", size.replace(':', "x")));
    if !out.exists() {
        let tmp = dir.join(format!("vtest_{name}_{}.{}.tmp.mp4", size.replace(':', "x"), std::process::id()));
        let ok = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-i", VTEST, "-vf"])
            .arg(format!("fps=25,scale={size},setsar=1,format=yuv420p"))
            .args(["-c:v", "libx264", "-preset", "veryfast"])
            .args(extra)
            .arg(&tmp)
            .status()
            .expect("ffmpeg")
            .success();
        assert!(ok, "ffmpeg failed making {}", out.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

fn gating(dir: &Path, manifests: &[(String, PathBuf)], broker: &str) {
    println!("\n== cost per camera: the real vap-runner at 2 fps, 1 inference thread, decoding included");
    println!(
        "{:<22} {:<12} {:<10} {:<12} {:<8} {:<10} {:>8} {:>9} {:>10} {:>17} {:>13}",
        "model",
        "engine",
        "size",
        "clip",
        "gating",
        "decode",
        "decoded",
        "detector",
        "start CPU",
        "CPU-s/camera-hour",
        "cameras/core"
    );
    let [tract, onnxruntime] = engines::engines(1);
    // Today's runner first, then one change at a time.
    let setups = [
        (tract.clone(), false, DecodeMode::All),
        (tract.clone(), true, DecodeMode::All),
        (tract, true, DecodeMode::Reference),
        (onnxruntime.clone(), false, DecodeMode::All),
        (onnxruntime.clone(), true, DecodeMode::All),
        (onnxruntime, true, DecodeMode::Reference),
    ];
    for size in ["640:480", "1920:1080"] {
        for (clip, path, seconds) in gating_clips(dir, size) {
            for (name, manifest) in manifests {
                for (engine, gating, decode) in setups.iter().cloned() {
                    let setup = Setup { engine, threads: 1, fps: 2.0, gating, decode };
                    let run = run_runner(&path, manifest, broker, &setup);
                    let done = &run.done;
                    let analysed = done["frames_analysed"].as_f64().unwrap_or(f64::NAN);
                    let still = done["frames_still"].as_f64().unwrap_or(0.0);
                    let per_hour = run.cpu_per_hour(seconds);
                    println!(
                        "{:<22} {:<12} {:<10} {:<12} {:<8} {:<10} {:>8} {:>4.0}/{:<4.0} {:>8.2} s {:>17.0} {:>13.1}",
                        name,
                        setup.engine.name(),
                        size.replace(':', "x"),
                        clip,
                        if gating { "on" } else { "off" },
                        decode.as_str(),
                        done["frames_decoded"],
                        analysed - still,
                        analysed,
                        run.startup_cpu,
                        per_hour,
                        3600.0 / per_hour
                    );
                }
            }
        }
    }
    println!(
        "  (decoded = frames decoded; detector = frames it ran on / frames sampled; start CPU = CPU until the model"
    );
    println!(
        "   was loaded, once per runner start; CPU-s/camera-hour = user + system time after it, per hour of stream)"
    );
}

/// The clips `decode` reads: vtest.avi at `size`, 25 fps, as x264 makes it by default (B-frames)
/// and as an IP camera sends it (no B-frames, a key frame every 50 frames).
fn decode_clips(dir: &Path, size: &str) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("x264 default", vtest_25fps(dir, size, "bframes", &[])),
        ("camera (IPPP)", vtest_25fps(dir, size, "camera", &["-bf", "0", "-g", "50"])),
    ]
}

fn decode(dir: &Path) {
    println!("\n== decoding alone: OpenCV's FFmpeg backend reading 25 fps H.264, sampling 2 fps as the runner does");
    println!(
        "{:<10} {:<14} {:<11} {:>9} {:>9} {:>17} {:>15}",
        "size", "stream", "decode", "decoded", "sampled", "CPU-s/camera-hour", "cameras/core"
    );
    for size in ["640:480", "1920:1080"] {
        for (stream, path) in decode_clips(dir, size) {
            for mode in DecodeMode::ALL {
                let (decoded, sampled, seconds, cpu) = decode_only(&path, mode, 2.0);
                println!(
                    "{:<10} {:<14} {:<11} {:>9} {:>9} {:>17.0} {:>15.1}",
                    size.replace(':', "x"),
                    stream,
                    mode.as_str(),
                    decoded,
                    sampled,
                    cpu / seconds * 3600.0,
                    seconds / cpu
                );
            }
        }
    }
    println!("  (CPU: this process's user + system time, FFmpeg's decoding threads included)");
}

/// Reads `path` through the runner's own capture options; returns frames decoded, frames
/// sampled, media seconds and CPU seconds.
fn decode_only(path: &Path, mode: DecodeMode, fps: f64) -> (u64, u64, f64, f64) {
    let url = vap_core::camera_url::CameraUrl::trusted(path.to_str().unwrap().into());
    std::env::set_var("OPENCV_FFMPEG_CAPTURE_OPTIONS", capture::ffmpeg_capture_options(&url, None, mode));
    let started = process_cpu();
    let mut cap =
        opencv::videoio::VideoCapture::from_file(path.to_str().unwrap(), opencv::videoio::CAP_FFMPEG).unwrap();
    let mut sampler = capture::Sampler::new(fps);
    let (mut decoded, mut sampled, mut last_ms) = (0, 0, 0.0);
    let mut frame = opencv::core::Mat::default();
    while cap.grab().unwrap() {
        decoded += 1;
        // The frames a decoder gives back at the end (B-frames held for reordering) may say 0.
        let t_ms = cap.get(opencv::videoio::CAP_PROP_POS_MSEC).unwrap();
        last_ms = f64::max(last_ms, t_ms);
        if sampler.take(t_ms) && cap.retrieve(&mut frame, 0).unwrap() {
            sampled += 1;
        }
    }
    (decoded, sampled, last_ms / 1000.0 + 0.04, process_cpu() - started)
}

/// The first frames of the video as the detector prepares them, kept and written for Python.
fn prepare_inputs(video: &Path, manifest: &Path, out: &Path) -> Vec<Vec<f32>> {
    let mut detector = ModelDetector::load(manifest, None, &EngineChoice::Tract).unwrap();
    let mut capture =
        opencv::videoio::VideoCapture::from_file(video.to_str().unwrap(), opencv::videoio::CAP_FFMPEG).unwrap();
    let mut frame = opencv::core::Mat::default();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let mut inputs = Vec::new();
    while inputs.len() < INFERENCE_FRAMES && capture.read(&mut frame).unwrap() {
        let input = detector.input_for(&frame).unwrap().to_vec();
        for v in &input {
            file.write_all(&v.to_le_bytes()).unwrap();
        }
        inputs.push(input);
    }
    file.flush().unwrap();
    inputs
}

/// CPU seconds (user + system) of this process so far, all its threads.
fn process_cpu() -> f64 {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` lives across the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    cpu_seconds(&usage)
}

/// User + system seconds of a rusage.
fn cpu_seconds(usage: &libc::rusage) -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Wall and CPU milliseconds per input, after a warm-up (the plan is built before timing).
fn time_engine(detector: &mut ModelDetector, inputs: &[Vec<f32>]) -> (f64, f64) {
    for input in inputs.iter().take(5) {
        detector.infer(input).unwrap();
    }
    let (started, cpu) = (Instant::now(), process_cpu());
    for input in inputs {
        detector.infer(input).unwrap();
    }
    let n = inputs.len() as f64;
    (started.elapsed().as_secs_f64() * 1000.0 / n, (process_cpu() - cpu) * 1000.0 / n)
}

/// The Python of the venv scripts/setup makes for the onnxruntime engine (onnxruntime, numpy).
fn bench_python() -> PathBuf {
    let library = engines::onnxruntime_library();
    library.parent().unwrap().join("bin/python")
}

/// Fills a buffer with results and times the runner's publisher draining it to the broker.
async fn drain(broker: &str, nodelay: bool, count: usize, batch: usize) -> f64 {
    let settings = KafkaSettings {
        brokers: vec![broker.to_string()],
        topic_results: format!("bench-drain-{nodelay}-{batch}"),
        tcp_nodelay: nodelay,
        ..KafkaSettings::default()
    };
    let kafka = Arc::new(KafkaLink::new(settings));
    kafka.get().await.expect("connect");
    let scenario = uuid::Uuid::new_v4();
    let buffer = Arc::new(ResultBuffer::new(count + 1));
    let value = serde_json::to_vec(&serde_json::json!({
        "scenario_uuid": scenario, "frame_number": 123456, "timestamp": "2026-11-24T12:00:00.123Z",
        "detections": [{"class": "person", "confidence": 0.93, "bbox": [412.0, 88.5, 471.2, 240.0]},
                       {"class": "person", "confidence": 0.71, "bbox": [112.0, 58.5, 171.2, 200.0]}],
        "model": "ssdlite_person_300", "inference_ms": 21.4, "frame_width": 640, "frame_height": 480, "source_frame": 57
    }))
    .unwrap();
    // Warm the partition client, so only the drain is timed.
    buffer.push(result_record(scenario, value.clone(), chrono::Utc::now()));
    let warm = Arc::new(ResultBuffer::new(2));
    warm.push(result_record(scenario, value.clone(), chrono::Utc::now()));
    warm.close();
    let signer = vap_core::signing::RecordSigner {
        key: vap_core::signing::ResultsKey::new(vec![1; 32]),
        placement: vap_core::signing::PlacementEpoch(0),
    };
    let topic = kafka.settings().topic_results.clone();
    Publisher { kafka: Arc::clone(&kafka), topic: topic.clone(), scenario, batch, signer: signer.clone() }
        .run(warm, CancellationToken::new())
        .await;
    for _ in 1..count {
        buffer.push(result_record(scenario, value.clone(), chrono::Utc::now()));
    }
    buffer.close();
    let started = Instant::now();
    let left =
        Publisher { kafka, topic, scenario, batch, signer }.run(Arc::clone(&buffer), CancellationToken::new()).await;
    assert_eq!(left, 0);
    count as f64 / started.elapsed().as_secs_f64()
}
