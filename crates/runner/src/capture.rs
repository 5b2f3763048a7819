//! The camera interface and its OpenCV backend (FFmpeg), plus the capture loop: open with
//! timeouts, sample by time, keep only the newest frame of a live source, reconnect with
//! jittered back-off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use opencv::core::{Mat, Vector};
use opencv::prelude::*;
use opencv::videoio;
use tokio_util::sync::CancellationToken;

use vap_core::backoff::Backoff;
use vap_core::camera_url::CameraUrl;
use vap_core::config::RunnerSettings;
use vap_core::destination::{DestinationError, DestinationPolicy};
use vap_core::options::DecodeMode;

/// FFmpeg's `OPENCV_FFMPEG_CAPTURE_OPTIONS` for `url`: `base` (the operator's, or RTSP over TCP)
/// then the protocols the scheme needs and nothing else, so a playlist or a redirect can't pull
/// `file:` or another scheme, then which frames to decode (OpenCV's `avdiscard`, the decoder's
/// `skip_frame`: the one decoder setting OpenCV 4.6 passes on). Set once, before any thread starts.
pub fn ffmpeg_capture_options(url: &CameraUrl, base: Option<&str>, decode: DecodeMode) -> String {
    let scheme = url::Url::parse(url.expose()).map(|u| u.scheme().to_string()).unwrap_or_else(|_| "file".into());
    let protocols = match scheme.as_str() {
        "rtsp" | "rtsps" => "tcp,udp,rtp,srtp,tls",
        "http" | "https" => "http,https,tcp,tls,httpproxy,crypto",
        _ => "file",
    };
    let base = base.filter(|b| !b.trim().is_empty()).unwrap_or("rtsp_transport;tcp");
    let discard = match decode {
        DecodeMode::All => "",
        DecodeMode::Reference => "|avdiscard;nonref",
        DecodeMode::Keyframes => "|avdiscard;nonkey",
    };
    // Later keys win in FFmpeg's dictionary parse: the whitelist is always the one given here.
    format!("{base}|protocol_whitelist;{protocols}{discard}")
}

/// Whether FFmpeg reaches this URL over HTTP, and so through the egress proxy.
pub fn uses_http(url: &CameraUrl) -> bool {
    url::Url::parse(url.expose()).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open {0}")]
    Open(String),
    #[error("camera host refused: {0}")]
    Destination(#[from] DestinationError),
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
}

/// What an opened source says about itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceInfo {
    /// A live stream (RTSP, MJPEG) rather than media with an end (a file).
    pub live: bool,
    pub fps: f64,
    pub width: i32,
    pub height: i32,
}

/// The camera interface: frames, one at a time.
pub trait FrameSource: Send {
    /// Opens or reopens the source.
    fn open(&mut self) -> Result<SourceInfo, CaptureError>;
    /// Advances to the next frame. `Ok(None)`: no frame (end of media, or a lost stream).
    /// Returns the frame's position in the media, in milliseconds.
    fn grab(&mut self) -> Result<Option<f64>, CaptureError>;
    /// Decodes the frame last grabbed into `into` (8-bit BGR).
    fn retrieve(&mut self, into: &mut Mat) -> Result<bool, CaptureError>;
}

/// OpenCV's FFmpeg backend.
pub struct OpenCvSource {
    url: CameraUrl,
    policy: std::sync::Arc<DestinationPolicy>,
    open_timeout_ms: u64,
    read_timeout_ms: u64,
    capture: Option<videoio::VideoCapture>,
}

impl OpenCvSource {
    pub fn new(url: &CameraUrl, settings: &RunnerSettings, policy: std::sync::Arc<DestinationPolicy>) -> Self {
        // OpenCV takes paths, not file:// URLs.
        let url = CameraUrl::trusted(url.expose().strip_prefix("file://").unwrap_or(url.expose()).to_string());
        Self {
            url,
            policy,
            open_timeout_ms: settings.open_timeout_ms,
            read_timeout_ms: settings.read_timeout_ms,
            capture: None,
        }
    }

    fn is_stream_url(&self) -> bool {
        let lower = self.url.expose().to_ascii_lowercase();
        lower.starts_with("rtsp://") || lower.starts_with("rtsps://")
    }

    /// The URL FFmpeg opens. An RTSP host is resolved and every address checked first; plain
    /// RTSP is then opened at the checked address, so a name can't resolve elsewhere a moment
    /// later. HTTP is checked per connection by the egress proxy; files need no check.
    fn checked_url(&self) -> Result<String, CaptureError> {
        let Ok(mut url) = url::Url::parse(self.url.expose()) else { return Ok(self.url.expose().to_string()) };
        if !matches!(url.scheme(), "rtsp" | "rtsps") {
            return Ok(self.url.expose().to_string());
        }
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let addresses = self.policy.resolve(&host, url.port().unwrap_or(554))?;
        if url.scheme() == "rtsp" {
            let ip = addresses[0].ip();
            let pinned = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
            if url.set_host(Some(&pinned)).is_err() {
                return Err(CaptureError::Open(self.url.redacted()));
            }
        }
        Ok(url.to_string())
    }
}

impl FrameSource for OpenCvSource {
    fn open(&mut self) -> Result<SourceInfo, CaptureError> {
        self.capture = None;
        // Without these a stalled stream blocks a read for about 30 s.
        let params = Vector::<i32>::from_slice(&[
            videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.open_timeout_ms.min(i32::MAX as u64) as i32,
            videoio::CAP_PROP_READ_TIMEOUT_MSEC,
            self.read_timeout_ms.min(i32::MAX as u64) as i32,
        ]);
        let url = self.checked_url()?;
        let cap = videoio::VideoCapture::from_file_with_params(&url, videoio::CAP_FFMPEG, &params)?;
        // A URL that can't be opened gives a closed capture, not an error.
        if !cap.is_opened()? {
            return Err(CaptureError::Open(self.url.redacted()));
        }
        let frames = cap.get(videoio::CAP_PROP_FRAME_COUNT)?;
        let info = SourceInfo {
            live: self.is_stream_url() || frames <= 0.0,
            fps: cap.get(videoio::CAP_PROP_FPS)?,
            width: cap.get(videoio::CAP_PROP_FRAME_WIDTH)? as i32,
            height: cap.get(videoio::CAP_PROP_FRAME_HEIGHT)? as i32,
        };
        self.capture = Some(cap);
        Ok(info)
    }

    fn grab(&mut self) -> Result<Option<f64>, CaptureError> {
        let Some(cap) = self.capture.as_mut() else { return Ok(None) };
        if !cap.grab()? {
            return Ok(None);
        }
        Ok(Some(cap.get(videoio::CAP_PROP_POS_MSEC)?))
    }

    fn retrieve(&mut self, into: &mut Mat) -> Result<bool, CaptureError> {
        let Some(cap) = self.capture.as_mut() else { return Ok(false) };
        Ok(cap.retrieve(into, 0)? && !into.empty())
    }
}

/// A frame chosen for analysis.
pub struct SampledFrame {
    pub image: Mat,
    pub captured_at: DateTime<Utc>,
    /// Index of the frame in the current connection to the source.
    pub source_index: u64,
    /// Position in the media, for sources with an end (files): finds the frame in the file.
    pub media_ms: Option<f64>,
    /// Time spent grabbing and decoding it.
    pub read_time: Duration,
}

/// How the capture loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureEnd {
    /// A finite source was read to its end.
    Finished,
    /// The source never opened: the reason of the last attempt.
    Unavailable(String),
    /// Shutdown was requested.
    Stopped,
}

#[derive(Default)]
struct SlotState {
    frame: Option<SampledFrame>,
    end: Option<CaptureEnd>,
}

/// Hands frames from the capture thread to the detector: one slot. A live source overwrites an
/// unread frame (counted as dropped), so the detector always gets the newest picture; a finite
/// source waits instead, so no frame of a file is lost.
#[derive(Default)]
pub struct FrameSlot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

/// Counters the capture loop keeps; read by STATUS and the benchmark.
#[derive(Default)]
pub struct CaptureStats {
    pub frames_read: AtomicU64,
    /// Sampled frames overwritten before the detector took them.
    pub frames_dropped: AtomicU64,
    pub reconnects: AtomicU64,
    /// Last progress of the capture loop, ms since start: the watchdog checks it.
    pub heartbeat_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl FrameSlot {
    fn put(
        &self,
        frame: SampledFrame,
        overwrite: bool,
        stats: &CaptureStats,
        shutdown: &CancellationToken,
        beat: &dyn Fn(),
    ) {
        let mut s = vap_core::sys::lock(&self.state);
        if overwrite {
            if s.frame.replace(frame).is_some() {
                stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            while s.frame.is_some() && !shutdown.is_cancelled() {
                beat();
                s = self.changed.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
            }
            s.frame = Some(frame);
        }
        self.changed.notify_all();
    }

    fn finish(&self, end: CaptureEnd) {
        let mut s = vap_core::sys::lock(&self.state);
        s.end = Some(end);
        self.changed.notify_all();
    }

    /// The next frame, waiting up to `wait`. `Err(end)` once the source is done and drained.
    pub fn take(&self, wait: Duration) -> Result<Option<SampledFrame>, CaptureEnd> {
        let mut s = vap_core::sys::lock(&self.state);
        if s.frame.is_none() && s.end.is_none() {
            s = self.changed.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
        if let Some(f) = s.frame.take() {
            self.changed.notify_all();
            return Ok(Some(f));
        }
        match &s.end {
            Some(end) => Err(end.clone()),
            None => Ok(None),
        }
    }
}

/// Decides which frames to analyse: one per `1 / fps` of stream time (media time for files,
/// wall-clock time for live streams), not every n-th frame, so a camera's frame rate doesn't
/// change the analysis rate.
pub struct Sampler {
    interval_ms: f64,
    next_due_ms: Option<f64>,
}

impl Sampler {
    pub fn new(fps: f64) -> Self {
        Self { interval_ms: Self::interval(fps), next_due_ms: None }
    }

    fn interval(fps: f64) -> f64 {
        if fps > 0.0 {
            1000.0 / fps
        } else {
            0.0
        }
    }

    /// A new rate from the next frame on (the scenario's options changed).
    pub fn set_fps(&mut self, fps: f64) {
        self.interval_ms = Self::interval(fps);
        self.next_due_ms = None;
    }

    pub fn reset(&mut self) {
        self.next_due_ms = None;
    }

    /// Whether the frame at `t_ms` is analysed.
    pub fn take(&mut self, t_ms: f64) -> bool {
        if self.interval_ms == 0.0 {
            return true;
        }
        match self.next_due_ms {
            Some(due) if t_ms + 0.5 < due => false,
            Some(due) => {
                // Skip whole intervals missed (a stall) instead of bursting to catch up.
                let missed = ((t_ms - due) / self.interval_ms).floor().max(0.0);
                self.next_due_ms = Some(due + (missed + 1.0) * self.interval_ms);
                true
            }
            None => {
                self.next_due_ms = Some(t_ms + self.interval_ms);
                true
            }
        }
    }
}

/// The analysis rate, changed by the detection thread when the options change.
pub struct SampleRate(AtomicU64);

impl SampleRate {
    pub fn new(fps: f64) -> Self {
        Self(AtomicU64::new(fps.to_bits()))
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub fn set(&self, fps: f64) {
        self.0.store(fps.to_bits(), Ordering::Relaxed);
    }
}

/// A live camera went away (its stream was lost) or came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraHealth {
    Offline,
    Online,
}

/// Told of each change, with when and why.
pub type HealthHook = Box<dyn Fn(CameraHealth, chrono::DateTime<Utc>, &str) + Send>;

pub struct CaptureLoop<S: FrameSource> {
    pub source: S,
    pub sample_fps: Arc<SampleRate>,
    pub open_attempts: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub health: Option<HealthHook>,
}

impl<S: FrameSource> CaptureLoop<S> {
    /// Runs until the source ends, never opens, or `shutdown`; then marks the slot finished.
    pub fn run(mut self, slot: &FrameSlot, stats: &CaptureStats, started: Instant, shutdown: &CancellationToken) {
        let end = self.capture(slot, stats, started, shutdown);
        slot.finish(end);
    }

    fn capture(
        &mut self,
        slot: &FrameSlot,
        stats: &CaptureStats,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> CaptureEnd {
        let beat = || stats.heartbeat_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let cx = Context { slot, stats, shutdown, beat: &beat };
        let mut backoff = Backoff::new(self.reconnect_min, self.reconnect_max);
        let mut ever_opened = false;
        let mut offline = false;
        let mut failed_opens = 0u32;
        let mut sampler = Sampler::new(self.sample_fps.get());
        loop {
            beat();
            if shutdown.is_cancelled() {
                return CaptureEnd::Stopped;
            }
            let info = match self.source.open() {
                Ok(info) => info,
                Err(e) => {
                    failed_opens += 1;
                    let reason = e.to_string();
                    *vap_core::sys::lock(&stats.last_error) = Some(reason.clone());
                    if !ever_opened && failed_opens >= self.open_attempts {
                        tracing::error!(attempts = failed_opens, error = reason, "camera never opened; giving up");
                        return CaptureEnd::Unavailable(reason);
                    }
                    let delay = backoff.next_delay().unwrap_or(self.reconnect_max);
                    tracing::warn!(error = reason, retry_in_ms = delay.as_millis() as u64, "camera open failed");
                    if sleep_unless_cancelled(delay, shutdown, &beat) {
                        return CaptureEnd::Stopped;
                    }
                    continue;
                }
            };
            if ever_opened {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            if std::mem::take(&mut offline) {
                self.tell(CameraHealth::Online, "stream back");
            }
            ever_opened = true;
            failed_opens = 0;
            tracing::info!(live = info.live, fps = info.fps, width = info.width, height = info.height, "camera opened");
            sampler.reset();
            let Some(frames) = self.read_until_lost(&info, &mut sampler, &cx) else { return CaptureEnd::Stopped };
            if !info.live {
                // Media with an end: reaching it is the normal way out.
                tracing::info!(frames, "end of media");
                return CaptureEnd::Finished;
            }
            if frames > 0 {
                backoff.reset();
            }
            let delay = backoff.next_delay().unwrap_or(self.reconnect_max);
            let reason = vap_core::sys::lock(&stats.last_error).clone().unwrap_or_else(|| "stream ended".into());
            *vap_core::sys::lock(&stats.last_error) = Some("stream lost".into());
            tracing::warn!(frames, retry_in_ms = delay.as_millis() as u64, "stream lost; reconnecting");
            offline = true;
            self.tell(CameraHealth::Offline, &reason);
            if sleep_unless_cancelled(delay, shutdown, &beat) {
                return CaptureEnd::Stopped;
            }
        }
    }

    fn tell(&self, change: CameraHealth, why: &str) {
        if let Some(hook) = &self.health {
            hook(change, Utc::now(), why);
        }
    }

    /// Reads an opened source until it ends or fails, handing sampled frames to the slot.
    /// Returns how many frames were read; `None` on shutdown.
    fn read_until_lost(&mut self, info: &SourceInfo, sampler: &mut Sampler, cx: &Context<'_>) -> Option<u64> {
        let clock = Instant::now();
        let mut index = 0u64;
        let mut fps = self.sample_fps.get();
        let mut image = Mat::default();
        loop {
            (cx.beat)();
            if cx.shutdown.is_cancelled() {
                return None;
            }
            let read_started = Instant::now();
            let position = match self.source.grab() {
                Ok(p) => p,
                Err(e) => {
                    *vap_core::sys::lock(&cx.stats.last_error) = Some(e.to_string());
                    None
                }
            };
            let Some(media_ms) = position else { return Some(index) };
            let captured_at = Utc::now();
            cx.stats.frames_read.fetch_add(1, Ordering::Relaxed);
            index += 1;
            let t_ms = if info.live { clock.elapsed().as_secs_f64() * 1000.0 } else { media_ms };
            if self.sample_fps.get() != fps {
                fps = self.sample_fps.get();
                sampler.set_fps(fps);
            }
            if !sampler.take(t_ms) {
                continue;
            }
            match self.source.retrieve(&mut image) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    *vap_core::sys::lock(&cx.stats.last_error) = Some(e.to_string());
                    continue;
                }
            }
            let frame = SampledFrame {
                image: std::mem::take(&mut image),
                captured_at,
                source_index: index - 1,
                media_ms: (!info.live).then_some(media_ms),
                read_time: read_started.elapsed(),
            };
            cx.slot.put(frame, info.live, cx.stats, cx.shutdown, cx.beat);
        }
    }
}

/// What the capture thread reports to while it reads.
struct Context<'a> {
    slot: &'a FrameSlot,
    stats: &'a CaptureStats,
    shutdown: &'a CancellationToken,
    beat: &'a dyn Fn(),
}

/// Sleeps in short steps, beating the heartbeat (waiting is not hanging). True if cancelled.
fn sleep_unless_cancelled(total: Duration, shutdown: &CancellationToken, beat: &dyn Fn()) -> bool {
    let until = Instant::now() + total;
    while Instant::now() < until {
        if shutdown.is_cancelled() {
            return true;
        }
        beat();
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    shutdown.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffmpeg_may_use_only_the_protocols_of_the_camera_scheme() {
        let opts = |u: &str, base| ffmpeg_capture_options(&CameraUrl::trusted(u.into()), base, DecodeMode::All);
        assert_eq!(opts("rtsp://cam/1", None), "rtsp_transport;tcp|protocol_whitelist;tcp,udp,rtp,srtp,tls");
        assert_eq!(
            opts("https://cam/a.m3u8", None),
            "rtsp_transport;tcp|protocol_whitelist;http,https,tcp,tls,httpproxy,crypto"
        );
        assert_eq!(opts("/srv/v.mp4", Some("fflags;nobuffer")), "fflags;nobuffer|protocol_whitelist;file");
        assert_eq!(
            opts("file:///srv/v.mp4", Some("protocol_whitelist;file,http")),
            "protocol_whitelist;file,http|protocol_whitelist;file"
        );
        let decode = |mode| ffmpeg_capture_options(&CameraUrl::trusted("rtsp://cam/1".into()), None, mode);
        assert!(decode(DecodeMode::Reference).ends_with("|protocol_whitelist;tcp,udp,rtp,srtp,tls|avdiscard;nonref"));
        assert!(decode(DecodeMode::Keyframes).ends_with("|avdiscard;nonkey"));
        assert!(
            uses_http(&CameraUrl::trusted("HTTPS://cam/x".into()))
                && !uses_http(&CameraUrl::trusted("rtsp://cam".into()))
        );
    }

    #[test]
    fn samples_by_time_not_by_frame_count() {
        // A 25 fps camera sampled at 2 fps: frames every 40 ms, one taken per 500 ms.
        let mut s = Sampler::new(2.0);
        let taken: Vec<u32> = (0..100).filter(|i| s.take(*i as f64 * 40.0)).collect();
        assert_eq!(taken, vec![0, 13, 25, 38, 50, 63, 75, 88]);
        // A stall: the next frame after a 3 s gap is taken, then the grid goes on from there.
        let mut s = Sampler::new(2.0);
        assert!(s.take(0.0));
        assert!(s.take(3_010.0));
        assert!(!s.take(3_400.0));
        assert!(s.take(3_500.0));
        let mut every = Sampler::new(0.0);
        assert!((0..10).all(|i| every.take(i as f64)));
    }
}
