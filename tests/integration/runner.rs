//! vap-runner against real media, a real RTSP server, a real broker, PostgreSQL and the relay's
//! inbox: what a user would check is what the API serves afterwards.

use crate::common;
use crate::media;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, TestApp};
use media::{free_port, manifest, media, models_dir, serve_then_stall, RtspServer, BASKETBALL};
use serde_json::Value;
use uuid::Uuid;

// ---- the runner process ------------------------------------------------------------------------

struct Runner {
    child: Child,
    /// Its JSON log lines, as they arrive.
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Runner {
    fn start(app: &TestApp, scenario: Uuid, camera_url: &str, extra_env: &[(&str, &str)]) -> Runner {
        Self::spawn(app, scenario, camera_url, extra_env, false)
    }

    /// `as_watchdog_pid`: start through `sh` so WATCHDOG_PID can name the runner's own pid
    /// (sd_notify honours WATCHDOG_USEC only for that pid), as systemd sets it.
    fn spawn(
        app: &TestApp,
        scenario: Uuid,
        camera_url: &str,
        extra_env: &[(&str, &str)],
        as_watchdog_pid: bool,
    ) -> Runner {
        let bin = env!("CARGO_BIN_EXE_vap-runner");
        let mut cmd = if as_watchdog_pid {
            let mut sh = Command::new("sh");
            sh.args(["-c", "WATCHDOG_PID=$$ exec \"$0\"", bin]);
            sh
        } else {
            Command::new(bin)
        };
        vap_core::sys::die_with_parent(&mut cmd, vap_core::sys::SIGKILL);
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in app.env() {
            cmd.env(k, v);
        }
        cmd.env("VAP_LOG__LEVEL", "info")
            .env("VAP_LOG__JSON", "true")
            .env("VAP_RUNNER__MODELS_DIR", models_dir())
            .env("VAP_RUNNER__STATUS_INTERVAL_MS", "200")
            .env("VAP_SCENARIO_UUID", scenario.to_string())
            .env("VAP_CAMERA_URL", camera_url);
        // The key and the epoch its orchestrator would give it.
        let (key, epoch) = job_of(app, scenario);
        cmd.env("VAP_RESULTS_KEY", key).env("VAP_SCENARIO_EPOCH", epoch);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vap-runner");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => vap_core::sys::lock(&sink).push(v),
                    Err(_) => eprintln!("runner: {line}"),
                }
            }
        });
        Runner { child, logs }
    }

    /// Waits for the exit code, or panics after `timeout`.
    async fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("runner still running after {timeout:?}; logs: {:#?}", vap_core::sys::lock(&self.logs));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: libc::c_int) {
        vap_core::sys::signal(self.child.id(), sig);
    }

    /// The fields of the last log line with this message.
    fn log(&self, message: &str) -> Option<Value> {
        vap_core::sys::lock(&self.logs)
            .iter()
            .rev()
            .find(|l| l["fields"]["message"] == message)
            .map(|l| l["fields"].clone())
    }

    fn all_logs(&self) -> String {
        vap_core::sys::lock(&self.logs).iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
    }
}

/// The scenario's key and epoch, read where its runner's would come from (a scenario the test
/// never created gets a key nobody knows: its results are refused, as a stranger's would be).
fn job_of(app: &TestApp, scenario: Uuid) -> (String, String) {
    let read = async {
        let client = app.pool.get().await.unwrap();
        let row = client
            .query_opt(
                "SELECT encode(results_key, 'hex'), created_at FROM scenarios WHERE scenario_uuid = $1",
                &[&scenario],
            )
            .await
            .unwrap();
        row.map_or_else(
            || ("00".repeat(32), "2026-01-01T00:00:00Z".to_string()),
            |r| (r.get(0), r.get::<_, chrono::DateTime<chrono::Utc>>(1).to_rfc3339()),
        )
    };
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(read))
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks what a user checks in a prediction: increasing frame numbers, persons in most
/// frames, boxes inside a 640x480 frame.
/// What the default model needs to report a box.
fn default_threshold() -> f64 {
    let name = vap_core::config::RunnerSettings::default().default_model;
    let manifest = vap_core::models::Manifest::load(&models_dir().join(format!("{name}.toml"))).unwrap();
    f64::from(manifest.thresholds.score)
}

fn assert_people_found(results: &[Value], min_frames: usize) {
    assert!(results.len() >= min_frames, "only {} analysed frames", results.len());
    let frames: Vec<i64> = results.iter().map(|r| r["frame_number"].as_i64().unwrap()).collect();
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "frame numbers not increasing: {frames:?}");
    let with_people =
        results.iter().filter(|r| r["detections"].as_array().unwrap().iter().any(|d| d["class"] == "person")).count();
    assert!(with_people * 10 >= results.len() * 8, "persons in only {with_people} of {} frames", results.len());
    for r in results {
        for d in r["detections"].as_array().unwrap() {
            let b: Vec<f64> = d["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let c = d["confidence"].as_f64().unwrap();
            assert!((default_threshold()..=1.0).contains(&c), "confidence {c}");
            assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 640.0 && b[3] <= 480.0, "box outside the frame: {b:?}");
            // A pedestrian is taller than wide and neither a speck nor the whole picture.
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            assert!(w > 5.0 && h > 15.0 && h < 480.0 && w < 400.0, "implausible person box {b:?}");
        }
    }
}

// ---- the detector alone ---------------------------------------------------------------------------

#[test]
fn ssd_model_finds_the_players_and_nothing_in_colour_bars() {
    use opencv::prelude::*;
    use vap_runner::detector::{Detector, ModelDetector};
    use vap_runner::engine::EngineChoice;
    let mut detector = ModelDetector::load(&manifest(), None, &EngineChoice::Tract).expect("load the shipped model");
    let image = opencv::imgcodecs::imread(BASKETBALL, opencv::imgcodecs::IMREAD_COLOR).unwrap();
    let (detections, timing) = detector.detect(&image).unwrap();
    assert!(detections.len() >= 2, "basketball1.png has two players; got {detections:?}");
    assert!(detections.iter().all(|d| d.class == "person" && d.confidence >= 0.5));
    assert!(detections[0].confidence > 0.9, "{detections:?}");
    let (w, h) = (image.cols() as f32, image.rows() as f32);
    assert!(detections.iter().all(|d| d.bbox[0] >= 0.0 && d.bbox[2] <= w && d.bbox[1] >= 0.0 && d.bbox[3] <= h));
    assert!(timing.inference > Duration::ZERO);

    let mut bars =
        opencv::videoio::VideoCapture::from_file(media().bars.to_str().unwrap(), opencv::videoio::CAP_FFMPEG).unwrap();
    let mut frame = opencv::core::Mat::default();
    let mut frames = 0;
    while bars.read(&mut frame).unwrap() && frames < 10 {
        let (found, _) = detector.detect(&frame).unwrap();
        assert!(found.is_empty(), "colour bars are not people: {found:?}");
        frames += 1;
    }
    assert_eq!(frames, 10);
}

#[test]
fn coco_model_finds_people_and_the_parked_vehicles_in_the_pedestrian_video() {
    use opencv::prelude::*;
    use vap_runner::detector::{Detector, ModelDetector};
    use vap_runner::engine::EngineChoice;
    let coco = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/yolov3_tiny_coco_416.toml");
    let mut detector = ModelDetector::load(&coco, None, &EngineChoice::Tract).expect("load the shipped COCO model");
    let path = media().people.to_str().unwrap().to_string();
    let mut video = opencv::videoio::VideoCapture::from_file(&path, opencv::videoio::CAP_FFMPEG).unwrap();
    let mut frame = opencv::core::Mat::default();
    let (mut frames, mut with_person, mut with_car, mut with_truck) = (0, 0, 0, 0);
    let mut index = 0;
    while video.read(&mut frame).unwrap() {
        index += 1;
        // Ten frames spread over the clip.
        if index % 20 != 0 {
            continue;
        }
        let (found, _) = detector.detect(&frame).unwrap();
        let (w, h) = (frame.cols() as f32, frame.rows() as f32);
        assert!(found.iter().all(|d| d.bbox[0] >= 0.0 && d.bbox[2] <= w && d.bbox[1] >= 0.0 && d.bbox[3] <= h));
        frames += 1;
        with_person += found.iter().any(|d| d.class == "person") as usize;
        with_car += found.iter().any(|d| d.class == "car") as usize;
        with_truck += found.iter().any(|d| d.class == "truck") as usize;
    }
    // vtest.avi: pedestrians, a parked car, and a van the COCO classes call a truck.
    assert!(frames >= 8, "read {frames} sampled frames");
    assert!(with_person * 10 >= frames * 8, "persons in {with_person} of {frames} frames");
    assert!(with_car * 10 >= frames * 8, "the parked car in {with_car} of {frames} frames");
    assert!(with_truck * 2 >= frames, "the van (truck) in {with_truck} of {frames} frames");
}

/// A YOLOv8-format ONNX built here with known outputs: `[1, 6, 4]` (cx, cy, w, h, 2 classes,
/// 4 boxes), independent of the image but computed from it (`+ 0 * max(image)`).
fn yolo_fixture(dir: &Path) -> PathBuf {
    use prost::Message;
    use tract_onnx::pb::{
        self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension, type_proto,
    };
    let out: Vec<f32> = vec![
        20.0, 21.0, 20.0, 50.0, // cx
        32.0, 32.0, 32.0, 40.0, // cy
        16.0, 16.0, 16.0, 10.0, // w
        16.0, 16.0, 16.0, 8.0, // h
        0.9, 0.8, 0.2, 0.1, // class 0 ("person")
        0.1, 0.1, 0.7, 0.05, // class 1 ("bicycle")
    ];
    let tensor = |name: &str, dims: Vec<i64>, data: Vec<f32>| pb::TensorProto {
        name: name.into(),
        dims,
        data_type: DataType::Float as i32,
        float_data: data,
        ..Default::default()
    };
    let value_info = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            value: Some(dimension::Value::DimValue(*d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    };
    let ints = |name: &str, v: Vec<i64>| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v,
        ..Default::default()
    };
    let int = |name: &str, v: i64| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "yolo_fixture".into(),
        node: vec![
            node("ReduceMax", &["images"], "image_max", vec![ints("axes", vec![1, 2, 3]), int("keepdims", 0)]),
            node("Mul", &["image_max", "zero"], "nothing", vec![]),
            node("Add", &["head", "nothing"], "output0", vec![]),
        ],
        initializer: vec![tensor("head", vec![1, 6, 4], out), tensor("zero", vec![1], vec![0.0])],
        input: vec![value_info("images", &[1, 3, 64, 64])],
        output: vec![value_info("output0", &[1, 6, 4])],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        producer_name: "vap tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(dir.join("yolo_fixture.onnx"), model.encode_to_vec()).unwrap();
    let manifest = dir.join("yolo_fixture.toml");
    std::fs::write(
        &manifest,
        r#"
name = "yolo_fixture"
onnx = "yolo_fixture.onnx"
labels = ["person", "bicycle"]

[input]
name = "images"
width = 64
height = 64
layout = "nchw"
channels = "rgb"
resize = "letterbox"
scale = 0.00392156862
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[output]
format = "yolov8"
tensor = "output0"

[thresholds]
score = 0.5
iou = 0.5
max_detections = 10
"#,
    )
    .unwrap();
    manifest
}

#[test]
fn yolov8_format_decodes_letterboxed_boxes_with_nms_per_class() {
    use vap_runner::detector::{Detector, ModelDetector};
    use vap_runner::engine::EngineChoice;
    let dir = tempfile::tempdir().unwrap();
    let mut detector =
        ModelDetector::load(&yolo_fixture(dir.path()), None, &EngineChoice::Tract).expect("load the fixture");
    // 128x64 into 64x64: scale 0.5, the picture sits 16 px down (letterbox), so a box at
    // input (12..28, 24..40) is (24..56, 16..48) in the frame.
    let frame =
        opencv::core::Mat::new_rows_cols_with_default(64, 128, opencv::core::CV_8UC3, opencv::core::Scalar::all(80.0))
            .unwrap();
    let (found, _) = detector.detect(&frame).unwrap();
    let got: Vec<(String, f32, [f32; 4])> =
        found.iter().map(|d| (d.class.clone(), (d.confidence * 100.0).round() / 100.0, d.bbox)).collect();
    assert_eq!(
        got,
        vec![
            // 0.8 overlaps it by IoU 0.88 in the same class: suppressed. 0.1 is under the threshold.
            ("person".to_string(), 0.9, [24.0, 16.0, 56.0, 48.0]),
            // The same place in another class survives NMS.
            ("bicycle".to_string(), 0.7, [24.0, 16.0, 56.0, 48.0]),
        ]
    );
    // The manifest's threshold can be overridden by configuration.
    let mut strict =
        ModelDetector::load(&dir.path().join("yolo_fixture.toml"), Some(0.8), &EngineChoice::Tract).unwrap();
    assert_eq!(strict.detect(&frame).unwrap().0.len(), 1);
}

#[test]
fn a_bad_manifest_is_a_clear_error() {
    use vap_runner::detector::ModelDetector;
    use vap_runner::engine::EngineChoice;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        std::fs::read_to_string(manifest()).unwrap().replace("layout = \"nchw\"", "layout = \"sideways\""),
    )
    .unwrap();
    let err = ModelDetector::load(&path, None, &EngineChoice::Tract).err().expect("a bad layout must fail").to_string();
    assert!(err.contains("m.toml") && err.contains("sideways"), "{err}");
    // A wrong checksum names both sums.
    std::fs::write(
        &path,
        std::fs::read_to_string(manifest())
            .unwrap()
            .replace("849c858f", "00000000")
            .replace("onnx = \"", &format!("onnx = \"{}/", manifest().parent().unwrap().display())),
    )
    .unwrap();
    let err =
        ModelDetector::load(&path, None, &EngineChoice::Tract).err().expect("a wrong sha256 must fail").to_string();
    assert!(err.contains("sha256") && err.contains("849c858f"), "{err}");
}

// ---- the runner process, end to end --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_is_analysed_stored_served_and_ends_inactive() {
    let app = TestApp::spawn_for_runners().await;
    let path = media().people.to_str().unwrap().to_string();
    let scenario = app.create_scenario(&path).await;
    let mut runner = Runner::start(&app, scenario, &path, &[]);
    assert_eq!(runner.wait(Duration::from_secs(120)).await, 0, "{}", runner.all_logs());

    // 20 s of video sampled at 2 fps by media time: 40 frames.
    let done = runner.log("runner done").expect("a final log line");
    assert_eq!(done["frames_analysed"], 40, "{done}");
    assert_eq!(done["published"], 41, "40 frames and the end-of-stream record: {done}");
    let p = eventually(Duration::from_secs(30), "the scenario to end inactive with 40 frames", || async {
        let p = app.prediction(scenario).await;
        (p["status"] == "inactive" && p["total_frames_processed"] == 40).then_some(p)
    })
    .await;
    let results = p["results"].as_array().unwrap();
    assert_eq!(results.len(), 40);
    assert_people_found(results, 40);
    // The log line carries the scenario, never credentials.
    assert!(
        vap_core::sys::lock(&runner.logs)
            .iter()
            .all(|l| l["span"]["scenario"] == scenario.to_string()
                || l["spans"].to_string().contains(&scenario.to_string())),
        "{}",
        runner.all_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_onnxruntime_engine_runs_a_scenario_end_to_end() {
    let app = TestApp::spawn_for_runners().await;
    let path = media().people.to_str().unwrap().to_string();
    let scenario = app.create_scenario(&path).await;
    let library = crate::engines::onnxruntime_library();
    let env = [("VAP_RUNNER__ENGINE", "onnxruntime"), ("VAP_RUNNER__ONNXRUNTIME_LIBRARY", library.to_str().unwrap())];
    let mut runner = Runner::start(&app, scenario, &path, &env);
    assert_eq!(runner.wait(Duration::from_secs(120)).await, 0, "{}", runner.all_logs());
    let loaded = runner.log("model loaded").expect("a model loaded line");
    assert_eq!(loaded["engine"], "onnxruntime", "{loaded}");
    assert_eq!(runner.log("runner done").expect("a final log line")["frames_analysed"], 40);
    let p = eventually(Duration::from_secs(30), "the scenario to end inactive with 40 frames", || async {
        let p = app.prediction(scenario).await;
        (p["status"] == "inactive" && p["total_frames_processed"] == 40).then_some(p)
    })
    .await;
    assert_people_found(p["results"].as_array().unwrap(), 40);

    // Chosen without its library: the runner names the missing setting and exits as
    // misconfigured (not restarted), before opening the camera.
    let out = Command::new(env!("CARGO_BIN_EXE_vap-runner"))
        .env_clear()
        .envs(app.env())
        .env("VAP_RUNNER__MODELS_DIR", models_dir())
        .env("VAP_RUNNER__ENGINE", "onnxruntime")
        .env("VAP_SCENARIO_UUID", scenario.to_string())
        .env("VAP_CAMERA_URL", &path)
        .env("VAP_RESULTS_KEY", "ab".repeat(32))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(vap_core::job::exit::USAGE)), "{stderr}");
    assert!(stderr.contains("runner.onnxruntime_library"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_only_reference_or_key_frames_reads_fewer_and_still_finds_the_people() {
    let app = TestApp::spawn_for_runners().await;
    let path = media().people.to_str().unwrap().to_string();
    // What the file holds, counted by ffprobe: frames, and key frames.
    let count = |skip: &[&str]| {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v"])
            .args(skip)
            .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0", &path])
            .output()
            .expect("ffprobe");
        String::from_utf8_lossy(&out.stdout).lines().count() as u64
    };
    let (frames, key_frames) = (count(&[]), count(&["-skip_frame", "nokey"]));
    // 20 s at 10 fps, a key frame every 10 frames (and where the scene cuts).
    assert!(
        (195..=205).contains(&frames) && (20..40).contains(&key_frames),
        "{frames} frames, {key_frames} key frames"
    );
    let mut seen = Vec::new();
    for mode in ["all", "reference", "keyframes"] {
        let options = serde_json::json!({"decode": mode});
        let scenario = app.create_scenario_with(&path, options.clone()).await;
        let mut runner = Runner::start(&app, scenario, &path, &[("VAP_SCENARIO_OPTIONS", &options.to_string())]);
        assert_eq!(runner.wait(Duration::from_secs(120)).await, 0, "{}", runner.all_logs());
        let done = runner.log("runner done").expect("a final log line");
        let (decoded, analysed) = (done["frames_decoded"].as_u64().unwrap(), done["frames_analysed"].as_u64().unwrap());
        let p = eventually(Duration::from_secs(30), "the scenario to end inactive", || async {
            let p = app.prediction(scenario).await;
            (p["status"] == "inactive" && p["total_frames_processed"] == analysed).then_some(p)
        })
        .await;
        assert_people_found(p["results"].as_array().unwrap(), analysed as usize);
        assert_eq!(app.scenario(scenario).await["options"]["decode"], mode);
        seen.push((mode, decoded, analysed));
    }
    let [(_, all, all_analysed), (_, reference, reference_analysed), (_, keys, keys_analysed)] = seen[..] else {
        unreachable!()
    };
    // Every frame (OpenCV may leave the last), sampled at 2 fps; B-frames skipped, the same
    // 2 fps; key frames only, about 1 s apart, most analysed (two within 0.5 s share a slot).
    assert!(all.abs_diff(frames) <= 1 && (40..=41).contains(&all_analysed), "{seen:?}");
    assert!(reference < all * 3 / 4 && reference_analysed >= 38, "{seen:?}");
    assert!(keys.abs_diff(key_frames) <= 1 && keys_analysed * 4 >= keys * 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_source_is_read_like_a_file() {
    let app = TestApp::spawn_for_runners().await;
    let server = serve_file(media().people.clone()).await;
    let url = format!("http://{server}/people.mp4");
    let scenario = app.create_scenario(&url).await;
    let mut runner = Runner::start(&app, scenario, &url, &[("VAP_RUNNER__SAMPLE_FPS", "1")]);
    assert_eq!(runner.wait(Duration::from_secs(120)).await, 0, "{}", runner.all_logs());
    let mut last = Value::Null;
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            last = app.prediction(scenario).await;
            if last["status"] == "inactive" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "not at rest 60 s after the runner's exit: status {}, {} frames stored; runner logs:\n{}",
        last["status"],
        last["total_frames_processed"],
        runner.all_logs()
    );
    let p = last;
    assert_people_found(p["results"].as_array().unwrap(), 20);
    assert_eq!(p["results"].as_array().unwrap().len(), 20, "1 fps over 20 s");
}

/// A camera the API accepted leads FFmpeg elsewhere: HLS playlists naming a local file or a
/// refused address, a redirect to a refused address, a local playlist naming a network segment.
/// None is followed: the refused address (127.0.0.2 here, a listener that counts connections)
/// is never reached, and the local file (a real clip) is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlists_and_redirects_cannot_lead_the_runner_past_the_destination_policy() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut app = TestApp::spawn_with(|s| {
        s.destinations.allow = vec!["127.0.0.1/32".into()];
        s.api.allow_file_urls = true;
    })
    .await;
    app.start_relay();
    let trap = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("bind 127.0.0.2");
    let trap_addr = trap.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&reached);
    tokio::spawn(async move {
        while let Ok((conn, _)) = trap.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.ts");
    let made = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&media().short)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(&secret)
        .status()
        .unwrap();
    assert!(made.success());
    let playlist = |segment: String| {
        format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:5\n#EXTINF:5.0,\n{segment}\n#EXT-X-ENDLIST\n")
    };
    let routes = vec![
        ("/local.m3u8", 200, String::new(), playlist(format!("file://{}", secret.display()))),
        ("/away.m3u8", 200, String::new(), playlist(format!("http://{trap_addr}/seg.ts"))),
        ("/moved.mp4", 302, format!("http://{trap_addr}/v.mp4"), String::new()),
    ];
    let (server, served) = serve_routes(routes).await;
    // A local playlist (files allowed here) naming a network segment. This and the HTTP playlist
    // naming a file are refused by FFmpeg 5.1's own default whitelists too; the runner's
    // explicit whitelist keeps it so whatever the FFmpeg build or the operator's options.
    let local_playlist = dir.path().join("cam.m3u8");
    std::fs::write(&local_playlist, playlist(format!("http://{trap_addr}/seg.ts"))).unwrap();
    let cameras = [
        (format!("http://{server}/local.m3u8"), Some("/local.m3u8")),
        (format!("http://{server}/away.m3u8"), Some("/away.m3u8")),
        (format!("http://{server}/moved.mp4"), Some("/moved.mp4")),
        (local_playlist.display().to_string(), None),
    ];
    for (url, path) in &cameras {
        let scenario = app.create_scenario(url).await;
        let mut runner = Runner::start(&app, scenario, url, &[("VAP_RUNNER__OPEN_ATTEMPTS", "1")]);
        assert_eq!(runner.wait(Duration::from_secs(60)).await, 3, "{url}: {}", runner.all_logs());
        assert_eq!(reached.load(Ordering::SeqCst), 0, "{url}: the refused address was reached");
        if let Some(path) = path {
            assert!(vap_core::sys::lock(&served).iter().any(|p| p == path), "{path} was never asked for");
        }
        let p = eventually(Duration::from_secs(20), "the scenario to fail", || async {
            let p = app.prediction(scenario).await;
            (p["status"] == "failed").then_some(p)
        })
        .await;
        assert_eq!(p["results"].as_array().map(Vec::len), Some(0), "{url}: frames were analysed: {p}");
    }
    // The same redirect with 127.0.0.2 allowed reaches the listener: the check above can fail.
    let url = format!("http://{server}/moved.mp4");
    let scenario = app.create_scenario(&url).await;
    let mut runner = Runner::start(
        &app,
        scenario,
        &url,
        &[("VAP_RUNNER__OPEN_ATTEMPTS", "1"), ("VAP_DESTINATIONS__ALLOW", "127.0.0.0/8")],
    );
    runner.wait(Duration::from_secs(60)).await;
    assert!(reached.load(Ordering::SeqCst) >= 1, "allowed, the redirect was not followed: {}", runner.all_logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_that_never_opens_exits_3_and_fails_the_scenario() {
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    let not_video = dir.path().join("notes.mp4");
    std::fs::write(&not_video, "this is not a video").unwrap();
    let server = serve_file(media().people.clone()).await;
    let refused = format!("rtsp://user:secret@127.0.0.1:{}/cam", free_port());
    for url in [refused.as_str(), &format!("http://{server}/missing.mp4"), not_video.to_str().unwrap()] {
        let scenario = app.create_scenario(url).await;
        let mut runner = Runner::start(
            &app,
            scenario,
            url,
            &[("VAP_RUNNER__OPEN_ATTEMPTS", "2"), ("VAP_RUNNER__RECONNECT_MIN_MS", "100")],
        );
        assert_eq!(runner.wait(Duration::from_secs(60)).await, 3, "{url}: {}", runner.all_logs());
        let s = eventually(Duration::from_secs(20), "the scenario to fail", || async {
            let s = app.scenario(scenario).await;
            (s["status"] == "failed").then_some(s)
        })
        .await;
        assert!(s["error"].as_str().unwrap_or_default().contains("camera unavailable"), "{s}");
        let logs = runner.all_logs();
        assert!(logs.contains("camera never opened"), "{logs}");
        assert!(!logs.contains("secret") && !s.to_string().contains("secret"), "credentials leaked: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_stream_survives_a_server_restart_and_sigterm_flushes() {
    let app = TestApp::spawn_for_runners().await;
    let port = free_port();
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let mut server = RtspServer::start(port, &media().people);
    let scenario = app.create_scenario(&url).await;
    let mut runner = Runner::start(
        &app,
        scenario,
        &url,
        &[("VAP_RUNNER__RECONNECT_MIN_MS", "500"), ("VAP_RUNNER__RECONNECT_MAX_MS", "2000")],
    );
    let stored = |n: i64| {
        let app = &app;
        async move {
            eventually(Duration::from_secs(60), &format!("{n} stored frames"), || async {
                let p = app.prediction(scenario).await;
                (p["results"].as_array().unwrap().len() as i64 >= n).then_some(p)
            })
            .await
        }
    };
    let before = stored(4).await;
    assert_eq!(before["status"], "active");

    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted_at = chrono::Utc::now();
    let _server = RtspServer::start(port, &media().people);
    let after = eventually(Duration::from_secs(60), "frames after the server restart", || async {
        let p = app.prediction(scenario).await;
        let late = p["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["timestamp"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap() > restarted_at
            })
            .count();
        (late >= 4).then_some(p)
    })
    .await;
    assert_people_found(after["results"].as_array().unwrap(), 8);

    runner.signal(libc::SIGTERM);
    assert_eq!(runner.wait(Duration::from_secs(15)).await, 0);
    let done = runner.log("runner done").unwrap();
    let analysed = done["frames_analysed"].as_i64().unwrap();
    assert_eq!(done["published"].as_i64(), Some(analysed), "every analysed frame was flushed: {done}");
    let p = eventually(Duration::from_secs(20), "every analysed frame stored", || async {
        let p = app.prediction(scenario).await;
        (p["total_frames_processed"].as_i64() == Some(analysed)).then_some(p)
    })
    .await;
    assert_people_found(p["results"].as_array().unwrap(), analysed as usize);
    assert!(runner.all_logs().contains("reconnecting"), "{}", runner.all_logs());
    // Stopped, not ended: the scenario stays as it was (the orchestrator decides).
    assert_eq!(p["status"], "active");

    // The outage as events: offline once before the server came back, online once after.
    let events = app.get(&format!("/api/v1/scenario/{scenario}/events")).await.json();
    let health: Vec<(String, chrono::DateTime<chrono::Utc>)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap().to_string(), e["timestamp"].as_str().unwrap().parse().unwrap()))
        .collect();
    let kinds: Vec<&str> = health.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["camera_offline", "camera_online"], "{events}");
    assert!(health[0].1 < restarted_at && health[1].1 > restarted_at, "{health:?} around {restarted_at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_analysing_and_delivers_afterwards() {
    let mut app = TestApp::spawn_for_runners().await;
    let port = free_port();
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let _server = RtspServer::start(port, &media().people);
    let scenario = app.create_scenario(&url).await;
    let mut runner = Runner::start(&app, scenario, &url, &[("VAP_KAFKA__REQUEST_DEADLINE_MS", "500")]);
    eventually(Duration::from_secs(60), "first frames stored", || async {
        (app.prediction(scenario).await["results"].as_array().unwrap().len() >= 2).then_some(())
    })
    .await;

    let down_at = chrono::Utc::now();
    app.broker.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let up_at = chrono::Utc::now();
    app.broker.resume().expect("broker back");

    // Frames captured while the broker was down arrive once it is back.
    let p = eventually(Duration::from_secs(60), "frames captured during the outage", || async {
        let p = app.prediction(scenario).await;
        let during = p["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                let t: chrono::DateTime<chrono::Utc> = r["timestamp"].as_str().unwrap().parse().unwrap();
                t > down_at && t < up_at
            })
            .count();
        (during >= 6).then_some(p)
    })
    .await;
    assert_people_found(p["results"].as_array().unwrap(), 8);
    runner.signal(libc::SIGTERM);
    assert_eq!(runner.wait(Duration::from_secs(15)).await, 0);
    let done = runner.log("runner done").unwrap();
    assert_eq!(done["published"], done["frames_analysed"], "nothing lost: {done}");
}

/// A file that ends while the broker is down: the runner must not exit 0 (which marks the
/// scenario done with its results lost) but 1, so its backend runs it again; the second run,
/// with the broker back, stores every frame once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_ends_with_results_undelivered_exits_to_be_run_again_and_nothing_is_lost() {
    let mut app = TestApp::spawn_for_runners().await;
    let path = media().short.to_str().unwrap().to_string();
    let scenario = app.create_scenario(&path).await;
    app.broker.stop();
    let quick_flush = [("VAP_KAFKA__REQUEST_DEADLINE_MS", "500"), ("VAP_RUNNER__FLUSH_TIMEOUT_MS", "1000")];
    let mut first = Runner::start(&app, scenario, &path, &quick_flush);
    assert_eq!(first.wait(Duration::from_secs(60)).await, 1, "{}", first.all_logs());
    assert!(first.all_logs().contains("results undelivered"), "{}", first.all_logs());
    assert_ne!(app.prediction(scenario).await["status"], "inactive", "marked done with nothing stored");

    app.broker.resume().unwrap();
    let mut again = Runner::start(&app, scenario, &path, &[]);
    assert_eq!(again.wait(Duration::from_secs(60)).await, 0, "{}", again.all_logs());
    let p = eventually(Duration::from_secs(30), "the file's frames stored", || async {
        let p = app.prediction(scenario).await;
        (p["status"] == "inactive").then_some(p)
    })
    .await;
    assert_eq!(p["total_frames_processed"], 10, "5 s at 2 fps, each frame once: {p}");
}

/// The sd_notify messages a runner sends until it exits, and its exit code. With
/// `stop_on_ready` it gets SIGTERM once it is ready and has reported its status.
async fn notify_messages(app: &TestApp, camera_url: &str, stop_on_ready: bool) -> (Vec<String>, i32) {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let scenario = app.create_scenario(camera_url).await;
    let mut runner = Runner::spawn(
        app,
        scenario,
        camera_url,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")],
        true,
    );
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    let mut stopped = false;
    while Instant::now() < deadline && runner.child.try_wait().unwrap().is_none() {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let ready_and_status = messages.iter().any(|m| m.contains("READY=1"))
            && messages.iter().filter(|m| m.contains("STATUS=")).count() >= 2;
        if stop_on_ready && !stopped && ready_and_status {
            runner.signal(libc::SIGTERM);
            stopped = true;
        }
    }
    let code = runner.wait(Duration::from_secs(30)).await;
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    (messages, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervision_ready_watchdog_status_stopping() {
    let app = TestApp::spawn_for_runners().await;
    let first = |messages: &[String], what: &str| {
        messages.iter().position(|m| m.contains(what)).unwrap_or_else(|| panic!("no {what} in {messages:?}"))
    };
    // A file that plays to its end: READY, watchdog pings, STATUS lines, and no STOPPING=1. The
    // runner ends by itself, so systemd keeps the unit as active (exited) and the orchestrator
    // sees how it ended (a unit stopped by notification is collected at once, gone before the
    // inbox has stored the end, and the scenario would be started again).
    let (messages, code) = notify_messages(&app, media().people.to_str().unwrap(), false).await;
    assert_eq!(code, 0);
    first(&messages, "READY=1");
    first(&messages, "WATCHDOG=1");
    let status = &messages[first(&messages, "STATUS=")];
    assert!(
        status.contains("fps")
            && status.contains("frames analysed")
            && status.contains("dropped")
            && status.contains("last error"),
        "{status}"
    );
    assert!(!messages.iter().any(|m| m.contains("STOPPING=1")), "a finished source is not a stop: {messages:?}");

    // A stop asked for (SIGTERM) is announced after READY, then the runner flushes and exits 0.
    let port = free_port();
    let _server = RtspServer::start(port, &media().people);
    let (messages, code) = notify_messages(&app, &format!("rtsp://127.0.0.1:{port}/cam"), true).await;
    assert_eq!(code, 0);
    assert!(first(&messages, "READY=1") < first(&messages, "STOPPING=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_decoder_stops_the_watchdog_pings() {
    use std::os::unix::net::UnixDatagram;
    let app = TestApp::spawn_for_runners().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // A server that sends the first third of the video, then holds the connection silently;
    // with a read timeout longer than the watchdog, the decoder hangs in its read.
    let url = format!("http://{}/people.mp4", serve_then_stall(media().people.clone()).await);
    let scenario = app.create_scenario(&url).await;
    let env = [
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
        ("VAP_RUNNER__READ_TIMEOUT_MS", "600000"),
        ("VAP_RUNNER__SAMPLE_FPS", "0"),
    ];
    let _runner = Runner::spawn(&app, scenario, &url, &env, true);
    let mut buf = [0u8; 4096];
    let mut pings: Vec<Instant> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                pings.push(Instant::now());
            }
        }
        // Pinging at first, then silent for 4 watchdog periods: systemd would kill it.
        if let Some(last) = pings.last() {
            if pings.len() >= 2 && last.elapsed() > Duration::from_secs(4) {
                return;
            }
        }
    }
    panic!("watchdog pings never stopped ({} pings, last {:?} ago)", pings.len(), pings.last().map(|p| p.elapsed()));
}

// ---- helpers: an HTTP file server with ranges, a GStreamer RTSP server ---------------------------

/// Serves fixed answers by path: (path, status, Location, body). Returns the address and the
/// paths asked for, in order.
async fn serve_routes(
    routes: Vec<(&'static str, u16, String, String)>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let (routes, log) = (Arc::new(routes), Arc::clone(&served));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (routes, log) = (Arc::clone(&routes), Arc::clone(&log));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let path = req.uri().path().to_string();
                    vap_core::sys::lock(&log).push(path.clone());
                    let route = routes.iter().find(|r| r.0 == path);
                    let mut resp = hyper::Response::builder().status(route.map_or(404, |r| r.1));
                    if let Some(r) = route.filter(|r| !r.2.is_empty()) {
                        resp = resp.header("location", r.2.as_str());
                    }
                    if path.ends_with(".m3u8") {
                        resp = resp.header("content-type", "application/vnd.apple.mpegurl");
                    }
                    let body = route.map_or_else(String::new, |r| r.3.clone());
                    async move { Ok::<_, std::convert::Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap()) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, served)
}

/// Serves one file at any path ending in its name, with byte ranges (FFmpeg seeks in MP4s);
/// anything else is a 404.
async fn serve_file(path: PathBuf) -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    let data = Bytes::from(std::fs::read(&path).unwrap());
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (data, name) = (data.clone(), name.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (data, name) = (data.clone(), name.clone());
                    async move {
                        let len = data.len();
                        if !req.uri().path().ends_with(&name) {
                            return Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::from("not found")))
                                    .unwrap(),
                            );
                        }
                        let range = req
                            .headers()
                            .get("range")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bytes="))
                            .and_then(|r| {
                                let (a, b) = r.split_once('-')?;
                                let start: usize = a.parse().ok()?;
                                let end: usize = if b.is_empty() { len - 1 } else { b.parse().ok()? };
                                (start <= end && end < len).then_some((start, end))
                            });
                        let resp = match range {
                            Some((start, end)) => Response::builder()
                                .status(StatusCode::PARTIAL_CONTENT)
                                .header("content-range", format!("bytes {start}-{end}/{len}"))
                                .header("accept-ranges", "bytes")
                                .body(Full::new(data.slice(start..=end))),
                            None => Response::builder().header("accept-ranges", "bytes").body(Full::new(data)),
                        };
                        Ok(resp.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
