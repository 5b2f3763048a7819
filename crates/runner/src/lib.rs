//! `vap-runner`: one process per scenario. Capture (OpenCV) -> detection (tract) -> Kafka
//! `results` (rskafka), each stage on its own thread so a slow detector never stalls the
//! camera and a dead broker never stalls the detector.
//!
//! ```text
//! capture thread ──FrameSlot (newest frame)──> detector thread ──ResultBuffer──> publisher task
//! ```
//!
//! | module | role |
//! |---|---|
//! | [`capture`] | the camera interface, its OpenCV backend, sampling and reconnects |
//! | [`control`] | options changed while running: the orchestrator's control records |
//! | [`detector`] | the model interface: input preparation, decoding and NMS |
//! | [`engine`] | what runs the model: tract, or onnxruntime loaded at run time |
//! | [`publisher`] | the bounded buffer and the producer to `results` |
//! | [`snapshot`] | JPEG snapshots of analysed frames, to `snapshots` |
//! | [`cli`] | the command line and exit codes |

#![deny(unsafe_code)]

pub mod capture;
pub mod cli;
pub mod control;
pub mod detector;
pub mod egress;
pub mod engine;
pub mod motion;
pub mod publisher;
pub mod snapshot;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use opencv::prelude::MatTraitConst;
use tokio_util::sync::CancellationToken;

use capture::{CameraHealth, CaptureEnd, CaptureLoop, CaptureStats, FrameSlot, HealthHook, OpenCvSource, SampleRate};
use detector::{Detector, DetectorError, ModelDetector};
use engine::EngineChoice;
use publisher::{result_record, Publisher, ResultBuffer};
use vap_analytics::regions::{FrameAt, Regions};
use vap_analytics::tracker::{Tracker, TrackerSettings};
use vap_core::config::Settings;
use vap_core::events::{
    Detection, EndReason, FrameDetails, FrameResult, SceneEvent, SceneEventKind, StreamEnd, RECORD_VERSION,
};
use vap_core::kafka::KafkaLink;
use vap_core::models::{Catalogue, Check};
use vap_core::options::ScenarioOptions;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Model(#[from] DetectorError),
    #[error("runner thread failed: {0}")]
    Thread(String),
    #[error(transparent)]
    Config(Box<vap_core::config::ConfigError>),
}

/// The scenario a runner works for. Frame numbers count milliseconds from its `epoch`, so they
/// keep increasing across reconnects, restarts and moves to another host, without any state.
pub use vap_core::job::RunnerJob;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The source (a file) ended; its end was reported on `results`.
    Finished,
    /// Stopped by a signal after flushing.
    Stopped,
    /// The source never opened; reported on `results` too.
    SourceUnavailable(String),
}

/// Counters of a run, for STATUS, logs and the benchmark.
#[derive(Default)]
pub struct RunnerStats {
    pub frames_analysed: AtomicU64,
    /// Sampled frames the detector was spared: nothing moved (motion gating).
    pub frames_still: AtomicU64,
    pub detect_errors: AtomicU64,
    pub read_micros: AtomicU64,
    pub preprocess_micros: AtomicU64,
    pub inference_micros: AtomicU64,
    pub postprocess_micros: AtomicU64,
    /// Building and queueing the record.
    pub publish_micros: AtomicU64,
    pub heartbeat_ms: AtomicU64,
    /// Frames analysed per second over the last status interval (f64 bits), sent with results.
    pub analysed_fps: AtomicU64,
    /// Snapshots too big at every quality, or not encoded.
    pub snapshots_dropped: AtomicU64,
    pub ready: AtomicBool,
    /// Wakes the supervising loop for READY=1 the moment the first frame is in.
    pub became_ready: tokio::sync::Notify,
}

pub struct RunReport {
    pub outcome: Outcome,
    pub stats: Arc<RunnerStats>,
    pub capture: Arc<CaptureStats>,
    pub buffer: Arc<ResultBuffer>,
    /// Results still unsent when the flush deadline passed.
    pub unsent: usize,
    pub elapsed: Duration,
}

/// Frame numbers: milliseconds since the scenario epoch at capture, and always above the
/// previous one (two frames in one millisecond, or a clock step back within a run). For a local
/// file, milliseconds of media time instead: a file analysed again after a crash numbers its
/// frames as before, so its results, tracks and events are stored once.
pub struct FrameNumbers {
    epoch: DateTime<Utc>,
    by_media_time: bool,
    last: i64,
}

impl FrameNumbers {
    pub fn new(epoch: DateTime<Utc>, by_media_time: bool) -> Self {
        Self { epoch, by_media_time, last: -1 }
    }

    pub fn next(&mut self, captured_at: DateTime<Utc>, media_ms: Option<f64>) -> i64 {
        let ms = match media_ms.filter(|_| self.by_media_time) {
            Some(media) => media.round().max(0.0) as i64,
            None => (captured_at - self.epoch).num_milliseconds().max(0),
        };
        self.last = ms.max(self.last + 1);
        self.last
    }
}

/// Runs one scenario until its source ends, never opens, or `shutdown`. `egress`: the proxy
/// FFmpeg's `http_proxy` names, for HTTP cameras.
pub async fn run(
    settings: Settings,
    job: RunnerJob,
    egress: Option<egress::EgressProxy>,
    shutdown: CancellationToken,
) -> Result<RunReport, RunnerError> {
    let started = Instant::now();
    let rs = settings.runner.clone();
    let policy = Arc::new(
        vap_core::destination::DestinationPolicy::from_settings(&settings.destinations)
            .map_err(|e| RunnerError::Config(Box::new(e.into())))?,
    );
    let egress_stop = CancellationToken::new();
    let _egress_guard = egress_stop.clone().drop_guard();
    if let Some(proxy) = egress {
        tokio::spawn(tracing::Instrument::instrument(
            proxy.serve(Arc::clone(&policy), egress_stop),
            tracing::Span::current(),
        ));
    }
    if rs.inference_threads > 1 && rs.engine == vap_core::config::InferenceEngine::Tract {
        tract_linalg::multithread::set_default_executor(tract_linalg::multithread::Executor::multithread(
            rs.inference_threads,
        ));
    }
    let (detector, provenance, min_confidence) = load_detector(&rs, &job.options).await?;
    let kafka = Arc::new(KafkaLink::new(settings.kafka.clone()));
    let publishing = Publishing::start(&settings, &job, &kafka);
    if let Some(moved) = &job.moved {
        say_moved(&publishing.outputs.events, &job, moved);
    }
    let threads = Threads {
        slot: Arc::new(FrameSlot::default()),
        capture: Arc::new(CaptureStats::default()),
        stats: Arc::new(RunnerStats::default()),
        sample_rate: Arc::new(SampleRate::new(job.options.fps.unwrap_or(rs.sample_fps))),
        started,
    };
    let capture = threads.spawn_capture(&job, &rs, policy, &publishing.outputs.events, &shutdown)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (reload_tx, reloads) = std::sync::mpsc::channel();
    let following = CancellationToken::new();
    let control = tokio::spawn(tracing::Instrument::instrument(
        follow_option_changes(
            kafka,
            rs.clone(),
            (job.scenario, job.options_revision, job.results_key.clone()),
            reload_tx,
            following.clone(),
        ),
        tracing::Span::current(),
    ));
    let current =
        Current { detector, provenance, options: job.options.clone(), revision: job.options_revision, min_confidence };
    let detecting = threads.spawn_detect(current, reloads, publishing.outputs.clone(), &job, &rs, done_tx)?;
    let buffer = Arc::clone(&publishing.outputs.results);
    let end = threads.supervise(done_rx, &buffer, Duration::from_millis(rs.status_interval_ms.max(100))).await;
    following.cancel();
    let _ = control.await;
    let _ = capture.join();
    let _ = detecting.join();
    let outcome = match end {
        CaptureEnd::Finished => Outcome::Finished,
        CaptureEnd::Stopped => Outcome::Stopped,
        CaptureEnd::Unavailable(reason) => Outcome::SourceUnavailable(reason),
    };
    // STOPPING=1 only for a stop that was asked for: a source that ended exits on its own, so
    // systemd keeps the unit as active (exited) and the orchestrator sees how it ended, rather
    // than a unit gone before the inbox has stored the end (which would start it again).
    if outcome == Outcome::Stopped {
        vap_core::lifecycle::notify_stopping();
    }
    push_stream_end(&buffer, &job, &outcome, threads.stats.frames_analysed.load(Ordering::Relaxed));
    let flush_started = Instant::now();
    let unsent = publishing.finish(Duration::from_millis(rs.flush_timeout_ms), &threads.stats).await;
    log_summary(&outcome, &threads, &buffer, flush_started.elapsed());
    let Threads { stats, capture, .. } = threads;
    Ok(RunReport { outcome, stats, capture, buffer, unsent, elapsed: started.elapsed() })
}

/// A runner placed on another host after the camera's own went down says so first: numbered
/// by the move's time, so a restart of this placement sends the same event again (stored once).
fn say_moved(events: &ResultBuffer, job: &RunnerJob, moved: &vap_core::job::Move) {
    let frame_number = (moved.at - job.epoch).num_milliseconds().max(0);
    let detail: String = moved.why.chars().take(500).collect();
    let event = SceneEvent::camera(job.scenario, SceneEventKind::CameraMoved, frame_number, moved.at, detail);
    tracing::info!(placement = %job.placement, detail = moved.why, "camera moved here");
    events.push(result_record(job.scenario, serde_json::to_vec(&event).unwrap_or_default(), moved.at));
}

/// The run's three publishers (results, events, snapshots), each draining its buffer to Kafka.
struct Publishing {
    outputs: Outputs,
    results: tokio::task::JoinHandle<usize>,
    events: tokio::task::JoinHandle<usize>,
    snapshots: tokio::task::JoinHandle<usize>,
    /// Cancelled when the flush at the end runs out of time.
    abandon: CancellationToken,
}

impl Publishing {
    fn start(settings: &Settings, job: &RunnerJob, kafka: &Arc<KafkaLink>) -> Self {
        let rs = &settings.runner;
        let outputs = Outputs {
            results: Arc::new(ResultBuffer::new(rs.buffer_frames)),
            events: Arc::new(ResultBuffer::new(rs.buffer_frames)),
            // A few: a snapshot that waits longer than that for the broker is stale anyway.
            snapshots: Arc::new(ResultBuffer::new(SNAPSHOTS_BUFFERED)),
        };
        let abandon = CancellationToken::new();
        let publish = |topic: &str, buffer: &Arc<ResultBuffer>, batch: usize| {
            let publisher = Publisher {
                kafka: Arc::clone(kafka),
                topic: topic.to_string(),
                scenario: job.scenario,
                batch,
                signer: vap_core::signing::RecordSigner { key: job.results_key.clone(), placement: job.placement },
            };
            // Spawned tasks don't inherit the span: give it back, so every line names the scenario.
            tokio::spawn(tracing::Instrument::instrument(
                publisher.run(Arc::clone(buffer), abandon.clone()),
                tracing::Span::current(),
            ))
        };
        let kafka = &settings.kafka;
        Self {
            results: publish(&kafka.topic_results, &outputs.results, rs.produce_batch),
            events: publish(&kafka.topic_events, &outputs.events, rs.produce_batch),
            // One per request: each may be up to `snapshot_max_bytes`.
            snapshots: publish(&kafka.topic_snapshots, &outputs.snapshots, 1),
            outputs,
            abandon,
        }
    }

    /// Closes the buffers and sends what they hold within `flush`: results and events (what
    /// is returned left unsent), and snapshots (one left unsent is not a result lost).
    async fn finish(self, flush: Duration, stats: &RunnerStats) -> usize {
        let Self { outputs, results, events, snapshots, abandon } = self;
        outputs.results.close();
        outputs.events.close();
        outputs.snapshots.close();
        // All within the one deadline: events first is no better than results first.
        let (unsent, unsent_events, _) = tokio::join!(
            flush_results(results, &abandon, flush, "results"),
            flush_results(events, &abandon, flush, "events"),
            flush_results(snapshots, &abandon, flush, "snapshots")
        );
        stats
            .snapshots_dropped
            .fetch_add(outputs.snapshots.stats.dropped_unsent.load(Ordering::Relaxed), Ordering::Relaxed);
        unsent + unsent_events
    }
}

/// The scenario's detector, what produced its results, and the confidence a box needs to be
/// stored (the detector itself reports less sure ones too, for the tracker).
async fn load_detector(
    rs: &vap_core::config::RunnerSettings,
    options: &ScenarioOptions,
) -> Result<(ModelDetector, Provenance, f32), RunnerError> {
    let (rs, options) = (rs.clone(), options.clone());
    let detector = tokio::task::spawn_blocking(move || {
        // Manifests only: the detector checks the digest of the one model it loads.
        let catalogue = Catalogue::load(&rs.models_dir, &rs.default_model, Check::Manifests)?;
        let name = options.model_name(&catalogue);
        let unknown = || DetectorError::UnknownModel { name: name.into(), dir: rs.models_dir.display().to_string() };
        let path = catalogue.manifest_path(name).ok_or_else(unknown)?;
        let manifest = catalogue.get(name).ok_or_else(unknown)?;
        let threshold = options.effective_min_confidence(manifest, rs.score_threshold);
        // Boxes down to the tracker's low score keep tracks alive through partial occlusion;
        // only sure ones are stored.
        let low = threshold.min(TrackerSettings::default().low_score);
        ModelDetector::load(path, Some(low), &EngineChoice::from_settings(&rs)).map(|d| (d, threshold))
    })
    .await
    .map_err(|e| RunnerError::Thread(e.to_string()))??;
    let (detector, min_confidence) = detector;
    let manifest = detector.manifest();
    let provenance = Provenance {
        model: manifest.name.clone(),
        model_sha256: manifest.sha256.clone().unwrap_or_default(),
        runner: instance(),
    };
    tracing::info!(
        model = provenance.model,
        engine = detector.engine_name(),
        runner = provenance.runner,
        "model loaded"
    );
    Ok((detector, provenance, min_confidence))
}

/// What the detection thread works with; replaced whole when the options change.
pub struct Current<D> {
    pub detector: D,
    pub provenance: Provenance,
    pub options: ScenarioOptions,
    /// Which change of the options these are.
    pub revision: i64,
    /// A detection this sure is stored (and may start a track).
    pub min_confidence: f32,
}

/// Loads the model of each newer revision of the options beside the running one, then hands
/// it to the detection thread, which switches between two frames: no frame is skipped for it.
async fn follow_option_changes(
    kafka: Arc<KafkaLink>,
    rs: vap_core::config::RunnerSettings,
    (scenario, revision, key): (uuid::Uuid, i64, vap_core::signing::ResultsKey),
    reloads: std::sync::mpsc::Sender<Current<ModelDetector>>,
    stop: CancellationToken,
) {
    let (tx, mut changes) = tokio::sync::mpsc::channel(4);
    let follower = control::ControlFollower { kafka, scenario, revision, key };
    let following =
        tokio::spawn(tracing::Instrument::instrument(follower.run(tx, stop.clone()), tracing::Span::current()));
    while let Some(Some(mut change)) = stop.run_until_cancelled(changes.recv()).await {
        // Checked as the API checks a request's: a signed record may still come from a newer
        // vap with rules this runner does not share.
        let checked = rs
            .option_defaults()
            .map_err(|e| e.to_string())
            .and_then(|d| change.options.checked(&d).map_err(|e| e.to_string()));
        match checked {
            Ok(options) => change.options = options,
            Err(e) => {
                tracing::error!(revision = change.revision, error = %e, "new options refused; keeping the running ones");
                continue;
            }
        }
        match load_detector(&rs, &change.options).await {
            Ok((detector, provenance, min_confidence)) => {
                tracing::info!(revision = change.revision, model = provenance.model, "switching to new options");
                let next = Current {
                    detector,
                    provenance,
                    options: change.options,
                    revision: change.revision,
                    min_confidence,
                };
                if reloads.send(next).is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(revision = change.revision, error = %e, "new options unusable; keeping the running ones")
            }
        }
    }
    following.abort();
}

/// This runner process: host, pid and a random tag (pids are reused), made once.
fn instance() -> String {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE
        .get_or_init(|| format!("{}/{}/{:08x}", vap_core::sys::hostname(), std::process::id(), fastrand::u32(..)))
        .clone()
}

/// What produced a result, stored with each one.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub model: String,
    /// The manifest's digest of the model file (checked when it loaded).
    pub model_sha256: String,
    /// This runner process: host, pid and a random tag (pids are reused).
    pub runner: String,
}

/// What the capture and detection threads share with the supervising task.
struct Threads {
    slot: Arc<FrameSlot>,
    capture: Arc<CaptureStats>,
    stats: Arc<RunnerStats>,
    sample_rate: Arc<SampleRate>,
    started: Instant,
}

impl Threads {
    fn spawn_capture(
        &self,
        job: &RunnerJob,
        rs: &vap_core::config::RunnerSettings,
        policy: Arc<vap_core::destination::DestinationPolicy>,
        events: &Arc<ResultBuffer>,
        shutdown: &CancellationToken,
    ) -> Result<std::thread::JoinHandle<()>, RunnerError> {
        let (slot, cstats, stop, span) =
            (Arc::clone(&self.slot), Arc::clone(&self.capture), shutdown.clone(), tracing::Span::current());
        let started = self.started;
        let (events, scenario, epoch) = (Arc::clone(events), job.scenario, job.epoch);
        let health: HealthHook = Box::new(move |change, at, why| {
            let kind = match change {
                CameraHealth::Offline => SceneEventKind::CameraOffline,
                CameraHealth::Online => SceneEventKind::CameraOnline,
            };
            // Numbered on the frames' clock (ms since the scenario's epoch): unique per change.
            let frame_number = (at - epoch).num_milliseconds().max(0);
            let event = SceneEvent::camera(scenario, kind, frame_number, at, why.chars().take(500).collect());
            tracing::info!(event = kind.as_str(), detail = why, "camera health");
            events.push(result_record(scenario, serde_json::to_vec(&event).unwrap_or_default(), at));
        });
        let capture_loop = CaptureLoop {
            source: OpenCvSource::new(&job.camera_url, rs, policy),
            sample_fps: Arc::clone(&self.sample_rate),
            open_attempts: rs.open_attempts,
            reconnect_min: Duration::from_millis(rs.reconnect_min_ms),
            reconnect_max: Duration::from_millis(rs.reconnect_max_ms),
            health: Some(health),
        };
        std::thread::Builder::new()
            .name("vap-capture".into())
            .spawn(move || span.in_scope(|| capture_loop.run(&slot, &cstats, started, &stop)))
            .map_err(|e| RunnerError::Thread(e.to_string()))
    }

    fn spawn_detect(
        &self,
        current: Current<ModelDetector>,
        reloads: std::sync::mpsc::Receiver<Current<ModelDetector>>,
        outputs: Outputs,
        job: &RunnerJob,
        rs: &vap_core::config::RunnerSettings,
        done: tokio::sync::oneshot::Sender<CaptureEnd>,
    ) -> Result<std::thread::JoinHandle<()>, RunnerError> {
        let (slot, stats, job, span) =
            (Arc::clone(&self.slot), Arc::clone(&self.stats), job.clone(), tracing::Span::current());
        let (started, rate) = (self.started, Arc::clone(&self.sample_rate));
        let (default_fps, snapshot_max_bytes) = (rs.sample_fps, rs.snapshot_max_bytes);
        let motion = motion::MotionSettings {
            min_area: rs.motion_min_area,
            pixel_delta: rs.motion_pixel_delta,
            detect_interval_s: rs.detect_interval_s,
            ..motion::MotionSettings::default()
        };
        std::thread::Builder::new()
            .name("vap-detect".into())
            .spawn(move || {
                let detect = Detect {
                    slot: &slot,
                    stats: &stats,
                    buffer: &outputs.results,
                    events: &outputs.events,
                    snapshots: &outputs.snapshots,
                    snapshot_max_bytes,
                    job: &job,
                    started,
                    rate: &rate,
                    default_fps,
                    motion,
                };
                let end = span.in_scope(|| detect.run(current, &reloads));
                let _ = done.send(end);
            })
            .map_err(|e| RunnerError::Thread(e.to_string()))
    }

    /// Until the threads end: READY=1 after the first frame, watchdog pings while both
    /// threads make progress, STATUS lines.
    async fn supervise(
        &self,
        mut done: tokio::sync::oneshot::Receiver<CaptureEnd>,
        buffer: &ResultBuffer,
        status_every: Duration,
    ) -> CaptureEnd {
        let watchdog = watchdog_period();
        let mut watchdog_tick = tokio::time::interval(watchdog.map(|p| p / 2).unwrap_or(Duration::from_secs(3600)));
        let mut status_tick = tokio::time::interval(status_every);
        let mut ready_sent = false;
        let mut last_status = (Instant::now(), 0u64);
        loop {
            tokio::select! {
                end = &mut done => return end.unwrap_or(CaptureEnd::Stopped),
                _ = self.stats.became_ready.notified(), if !ready_sent => {}
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    // Ping only while both threads make progress: a decoder stuck in a read (or
                    // a hung inference) stops the pings and systemd restarts the runner.
                    let now = self.started.elapsed().as_millis() as u64;
                    let oldest = self.capture.heartbeat_ms.load(Ordering::Relaxed).min(self.stats.heartbeat_ms.load(Ordering::Relaxed));
                    if now.saturating_sub(oldest) < watchdog.unwrap_or_default().as_millis() as u64 / 2 {
                        vap_core::lifecycle::notify_watchdog();
                    }
                }
                _ = status_tick.tick() => {
                    let analysed = self.stats.frames_analysed.load(Ordering::Relaxed);
                    let fps = (analysed - last_status.1) as f64 / last_status.0.elapsed().as_secs_f64().max(1e-3);
                    last_status = (Instant::now(), analysed);
                    self.stats.analysed_fps.store(fps.to_bits(), Ordering::Relaxed);
                    let line = status_line(fps, &self.stats, &self.capture, buffer);
                    vap_core::lifecycle::notify_status(&line);
                    tracing::debug!(status = line, "progress");
                }
            }
            // READY once the first frame is in (became_ready wakes the loop for it).
            if !ready_sent && self.stats.ready.load(Ordering::Relaxed) {
                ready_sent = true;
                vap_core::lifecycle::notify_ready();
                tracing::info!("ready: model loaded and first frame decoded");
            }
        }
    }
}

/// A finished or unavailable source is recorded on `results`, after the last frame, so the
/// inbox moves the scenario to rest; a stop asked for by the orchestrator is not.
fn push_stream_end(buffer: &ResultBuffer, job: &RunnerJob, outcome: &Outcome, frames_analysed: u64) {
    let (reason, detail) = match outcome {
        Outcome::Finished => (EndReason::Finished, "end of media".to_string()),
        Outcome::SourceUnavailable(reason) => (EndReason::SourceUnavailable, reason.clone()),
        Outcome::Stopped => return,
    };
    let end = StreamEnd {
        version: RECORD_VERSION,
        scenario_uuid: job.scenario,
        timestamp: Utc::now(),
        end_of_stream: reason,
        detail,
        frames_analysed,
    };
    buffer.push(result_record(job.scenario, serde_json::to_vec(&end).unwrap_or_default(), end.timestamp));
}

/// Waits for the publisher to drain the closed buffer, at most `flush`; returns how many
/// results were left unsent.
async fn flush_results(
    publishing: tokio::task::JoinHandle<usize>,
    abandon: &CancellationToken,
    flush: Duration,
    what: &'static str,
) -> usize {
    let deadline = tokio::time::sleep(flush);
    tokio::pin!(deadline);
    tokio::pin!(publishing);
    let unsent = tokio::select! {
        r = &mut publishing => r.unwrap_or(0),
        _ = &mut deadline => {
            abandon.cancel();
            publishing.await.unwrap_or(0)
        }
    };
    if unsent > 0 {
        tracing::warn!(
            unsent,
            flush_ms = flush.as_millis() as u64,
            what,
            "broker unreachable at shutdown: records not delivered"
        );
    }
    unsent
}

fn log_summary(outcome: &Outcome, threads: &Threads, buffer: &ResultBuffer, flushed_in: Duration) {
    let (stats, capture) = (&threads.stats, &threads.capture);
    let analysed = stats.frames_analysed.load(Ordering::Relaxed);
    let still = stats.frames_still.load(Ordering::Relaxed);
    let per_frame = |micros: &AtomicU64| micros.load(Ordering::Relaxed) as f64 / 1000.0 / analysed.max(1) as f64;
    let per_run = |micros: &AtomicU64| {
        micros.load(Ordering::Relaxed) as f64 / 1000.0 / analysed.saturating_sub(still).max(1) as f64
    };
    let b = &buffer.stats;
    let produce_requests = b.produce_requests.load(Ordering::Relaxed);
    tracing::info!(
        outcome = ?outcome,
        frames_decoded = capture.frames_read.load(Ordering::Relaxed),
        frames_analysed = analysed,
        frames_still = still,
        published = b.published.load(Ordering::Relaxed),
        frames_dropped = capture.frames_dropped.load(Ordering::Relaxed),
        unsent_dropped = b.dropped_unsent.load(Ordering::Relaxed),
        snapshots_dropped = stats.snapshots_dropped.load(Ordering::Relaxed),
        fps = analysed as f64 / threads.started.elapsed().as_secs_f64(),
        read_ms = per_frame(&stats.read_micros),
        preprocess_ms = per_run(&stats.preprocess_micros),
        inference_ms = per_run(&stats.inference_micros),
        postprocess_ms = per_run(&stats.postprocess_micros),
        queue_ms = per_frame(&stats.publish_micros),
        produce_ms_per_request = b.produce_micros.load(Ordering::Relaxed) as f64 / 1000.0 / produce_requests.max(1) as f64,
        produce_requests,
        flush_ms = flushed_in.as_millis() as u64,
        "runner done"
    );
}

/// Snapshots waiting for the broker; older ones are dropped.
const SNAPSHOTS_BUFFERED: usize = 4;

/// Where the detection thread's records go.
#[derive(Clone)]
struct Outputs {
    results: Arc<ResultBuffer>,
    events: Arc<ResultBuffer>,
    snapshots: Arc<ResultBuffer>,
}

/// The detection thread's view of the run.
struct Detect<'a> {
    slot: &'a FrameSlot,
    stats: &'a RunnerStats,
    buffer: &'a ResultBuffer,
    /// Scene events, for `events`.
    events: &'a ResultBuffer,
    snapshots: &'a ResultBuffer,
    snapshot_max_bytes: usize,
    job: &'a RunnerJob,
    started: Instant,
    /// The capture thread's analysis rate, set here when the options change.
    rate: &'a SampleRate,
    /// The rate of options that set none.
    default_fps: f64,
    motion: motion::MotionSettings,
}

/// What the detection thread carries from frame to frame.
struct Analysis<D> {
    current: Current<D>,
    numbers: FrameNumbers,
    tracker: Tracker,
    regions: Regions,
    snapshots: snapshot::SnapshotTaker,
    motion: motion::MotionGate,
    /// The detector's last boxes, carried over still frames.
    last_seen: Vec<Detection>,
}

/// One analysed frame on its way out.
struct Analysed {
    frame_number: i64,
    /// The stream's clock in seconds: media time for files (analysed faster than real time).
    t: f64,
    gate: motion::Gate,
    detections: Vec<Detection>,
    timing: detector::DetectTiming,
    /// The scene events this frame caused.
    event_ids: Vec<uuid::Uuid>,
}

impl Detect<'_> {
    fn run<D: Detector>(&self, current: Current<D>, reloads: &std::sync::mpsc::Receiver<Current<D>>) -> CaptureEnd {
        let job = self.job;
        let mut run = Analysis {
            numbers: FrameNumbers::new(job.epoch, job.camera_url.is_local_file()),
            tracker: Tracker::new(TrackerSettings::for_confidence(current.min_confidence)),
            regions: Regions::new(job.scenario, current.options.zones.clone(), current.options.lines.clone()),
            snapshots: snapshot::SnapshotTaker::new(current.options.snapshot_interval(), self.snapshot_max_bytes),
            motion: motion::MotionGate::new(self.motion),
            last_seen: Vec::new(),
            current,
        };
        loop {
            self.stats.heartbeat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            // Between two frames: the next one is analysed with the new options.
            while let Ok(next) = reloads.try_recv() {
                self.switch_options(&mut run, next);
            }
            let frame = match self.slot.take(Duration::from_millis(250)) {
                Ok(Some(frame)) => frame,
                Ok(None) => continue,
                Err(end) => return self.end(&mut run, end),
            };
            if !self.stats.ready.swap(true, Ordering::Relaxed) {
                self.stats.became_ready.notify_one();
            }
            let Some(analysed) = self.analyse(&mut run, &frame) else { continue };
            self.publish(&mut run, &frame, analysed);
        }
    }

    fn switch_options<D>(&self, run: &mut Analysis<D>, next: Current<D>) {
        self.rate.set(next.options.fps.unwrap_or(self.default_fps));
        run.tracker.set_settings(TrackerSettings::for_confidence(next.min_confidence));
        run.snapshots.set_interval(next.options.snapshot_interval());
        // New zones or lines start afresh: the visits of the old ones end here.
        let (old, new) = (&run.current.options, &next.options);
        if (&new.zones, &new.lines) != (&old.zones, &old.lines) {
            self.close_visits(&mut run.regions);
            run.regions = Regions::new(self.job.scenario, new.zones.clone(), new.lines.clone());
        }
        run.current = next;
    }

    /// The stream ends: so does every visit (zone occupancy comes back to zero).
    fn end<D>(&self, run: &mut Analysis<D>, end: CaptureEnd) -> CaptureEnd {
        self.close_visits(&mut run.regions);
        self.stats.snapshots_dropped.fetch_add(run.snapshots.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
        end
    }

    /// Gate, detect, filter, track and place one frame; `None` when the detector failed on it.
    fn analyse<D: Detector>(&self, run: &mut Analysis<D>, frame: &capture::SampledFrame) -> Option<Analysed> {
        let frame_number = run.numbers.next(frame.captured_at, frame.media_ms);
        let t = frame.media_ms.unwrap_or_else(|| ms_since(self.job.epoch, frame.captured_at)) / 1000.0;
        let gate = match run.current.options.motion_gating() {
            // A gate that fails (it should not) lets the frame through.
            true => run.motion.decide(&frame.image, t).unwrap_or(motion::Gate::Start),
            false => motion::Gate::Start,
        };
        let (mut detections, timing) = self.detect(run, frame, gate)?;
        let (width, height) = (frame.image.cols() as f32, frame.image.rows() as f32);
        let options = &run.current.options;
        detections.retain(|d| options.keeps(d, width, height));
        let ended = run.tracker.track(frame_number, t, &mut detections, run.current.min_confidence, (width, height));
        let at = FrameAt { number: frame_number, t, timestamp: frame.captured_at };
        let event_ids = self.place(&mut run.regions, &at, &ended, &detections, (width, height));
        Some(Analysed { frame_number, t, gate, detections, timing, event_ids })
    }

    /// The detector's boxes, or on a still frame those it last gave while objects are followed.
    fn detect<D: Detector>(
        &self,
        run: &mut Analysis<D>,
        frame: &capture::SampledFrame,
        gate: motion::Gate,
    ) -> Option<(Vec<Detection>, detector::DetectTiming)> {
        if !gate.analyse() {
            // Nothing moved: still objects are where the last analysed frame had them.
            self.stats.frames_still.fetch_add(1, Ordering::Relaxed);
            let followed = run.tracker.tracks().next().is_some();
            return Some((if followed { run.last_seen.clone() } else { Vec::new() }, Default::default()));
        }
        match run.current.detector.detect(&frame.image) {
            Ok((d, timing)) => {
                run.last_seen.clone_from(&d);
                Some((d, timing))
            }
            Err(e) => {
                self.stats.detect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "frame not analysed");
                None
            }
        }
    }

    /// Tracks in the scenario's zones and lines: the scene events they cause, pushed to
    /// `events`; their ids.
    fn place(
        &self,
        regions: &mut Regions,
        at: &FrameAt,
        ended: &[vap_analytics::tracker::TrackView],
        detections: &[Detection],
        size: (f32, f32),
    ) -> Vec<uuid::Uuid> {
        regions
            .frame_events(at, ended, detections, size)
            .iter()
            .map(|event| {
                self.push_event(event);
                event.event_id
            })
            .collect()
    }

    /// The frame's result to `results`, a snapshot when one is due, and the frame's timings.
    fn publish<D>(&self, run: &mut Analysis<D>, frame: &capture::SampledFrame, analysed: Analysed) {
        let Analysed { frame_number, t, gate, detections, timing, event_ids } = analysed;
        let job = self.job;
        let publish_started = Instant::now();
        let size = (frame.image.cols(), frame.image.rows());
        let fps = f64::from_bits(self.stats.analysed_fps.load(Ordering::Relaxed));
        let details = frame_details(&run.current, frame, size, gate, timing, fps);
        if run.snapshots.due(t, !event_ids.is_empty()) {
            let header = snapshot::header(job.scenario, frame_number, frame.captured_at, size, &detections, event_ids);
            if let Some(value) = run.snapshots.encode(&frame.image, header) {
                self.snapshots.push(result_record(job.scenario, value, frame.captured_at));
            }
        }
        let result = FrameResult {
            version: RECORD_VERSION,
            scenario_uuid: job.scenario,
            frame_number,
            timestamp: frame.captured_at,
            detections,
            details,
        };
        self.buffer.push(result_record(
            job.scenario,
            serde_json::to_vec(&result).unwrap_or_default(),
            frame.captured_at,
        ));
        let stats = self.stats;
        let micros = |d: Duration| d.as_micros() as u64;
        stats.read_micros.fetch_add(micros(frame.read_time), Ordering::Relaxed);
        stats.preprocess_micros.fetch_add(micros(timing.preprocess), Ordering::Relaxed);
        stats.inference_micros.fetch_add(micros(timing.inference), Ordering::Relaxed);
        stats.postprocess_micros.fetch_add(micros(timing.postprocess), Ordering::Relaxed);
        stats.publish_micros.fetch_add(micros(publish_started.elapsed()), Ordering::Relaxed);
        stats.frames_analysed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a result says of its frame besides the detections: provenance, timing, frame size.
fn frame_details<D>(
    current: &Current<D>,
    frame: &capture::SampledFrame,
    (width, height): (i32, i32),
    gate: motion::Gate,
    timing: detector::DetectTiming,
    analysed_fps: f64,
) -> FrameDetails {
    let provenance = &current.provenance;
    FrameDetails {
        model: Some(provenance.model.clone()),
        model_sha256: Some(provenance.model_sha256.clone()),
        runner: Some(provenance.runner.clone()),
        options_revision: Some(current.revision),
        media_ms: frame.media_ms.map(f64::round),
        analysed_fps: (analysed_fps > 0.0).then(|| (analysed_fps * 100.0).round() / 100.0),
        analysed: gate.analyse(),
        motion: gate.motion().map(|m| (m * 1e4).round() / 1e4),
        inference_ms: Some(timing.inference.as_secs_f64() * 1000.0),
        frame_width: Some(width),
        frame_height: Some(height),
        source_frame: Some(frame.source_index),
    }
}

impl Detect<'_> {
    /// Every followed object leaves the zones it is in, as of the frame it was last seen in.
    fn close_visits(&self, regions: &mut Regions) {
        let tracked: Vec<i64> = regions.tracked().collect();
        for id in tracked {
            for event in regions.ended(id) {
                self.push_event(&event);
            }
        }
    }

    fn push_event(&self, event: &SceneEvent) {
        let value = serde_json::to_vec(event).unwrap_or_default();
        self.events.push(result_record(self.job.scenario, value, event.timestamp));
    }
}

/// Milliseconds from `epoch` to `t`, as a float.
fn ms_since(epoch: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (t - epoch).num_microseconds().map_or(0.0, |us| us as f64 / 1000.0)
}

fn status_line(fps: f64, stats: &RunnerStats, capture: &CaptureStats, buffer: &ResultBuffer) -> String {
    let last_error = vap_core::sys::lock(&buffer.stats.last_error)
        .clone()
        .or_else(|| vap_core::sys::lock(&capture.last_error).clone())
        .unwrap_or_else(|| "none".into());
    format!(
        "{fps:.1} fps, {} frames analysed, {} dropped, {} unsent dropped, {} buffered, {} reconnects, last error: {last_error}",
        stats.frames_analysed.load(Ordering::Relaxed),
        capture.frames_dropped.load(Ordering::Relaxed),
        buffer.stats.dropped_unsent.load(Ordering::Relaxed),
        buffer.len(),
        capture.reconnects.load(Ordering::Relaxed),
    )
}

/// The unit's `WatchdogSec`, when set and meant for this process.
fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_numbers_are_ms_since_the_epoch_and_always_increase() {
        let epoch: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut n = FrameNumbers::new(epoch, false);
        assert_eq!(n.next("2026-01-01T00:00:01.500Z".parse().unwrap(), Some(40.0)), 1500);
        // Same millisecond, or a clock step back: still increasing.
        assert_eq!(n.next("2026-01-01T00:00:01.500Z".parse().unwrap(), None), 1501);
        assert_eq!(n.next("2026-01-01T00:00:01.000Z".parse().unwrap(), None), 1502);
        // A restarted runner starts later, so above every number the last one used.
        let mut restarted = FrameNumbers::new(epoch, false);
        assert_eq!(restarted.next("2026-01-01T00:00:09Z".parse().unwrap(), None), 9000);
        assert_eq!(FrameNumbers::new(epoch, false).next("2025-12-31T23:00:00Z".parse().unwrap(), None), 0);
        // A file: media time, the same on every run.
        let run = || {
            let mut f = FrameNumbers::new(epoch, true);
            [0.0, 99.6, 200.0].map(|m| f.next(Utc::now(), Some(m)))
        };
        assert_eq!(run(), [0, 100, 200]);
        assert_eq!(run(), run());
    }
}
