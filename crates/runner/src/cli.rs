//! `vap-runner [--config PATH] [--scenario UUID] [--epoch RFC3339] [--camera-url URL] [--options JSON]`
//!
//! The orchestrator passes the job in the environment (`VAP_SCENARIO_UUID`,
//! `VAP_SCENARIO_EPOCH`, `VAP_PLACEMENT_EPOCH`, `VAP_SCENARIO_OPTIONS`) and its secrets (the camera URL, which may
//! hold credentials, and the results key) where only the runner reads them: `VAP_JOB_SECRETS`
//! names the place (crates/core/src/job.rs). By hand: `VAP_CAMERA_URL` and `VAP_RESULTS_KEY`, or flags.
//!
//! Exit codes: 0 the source ended or SIGTERM flushed; 1 any other error; 2 bad usage or
//! configuration; 3 the camera never opened (a unit should not restart on it:
//! `RestartPreventExitStatus=3`); 4 the model could not be loaded.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Outcome, RunnerError, RunnerJob};
use vap_core::config::{Secret, Settings};

use vap_core::camera_url::CameraUrl;
use vap_core::job::{
    exit, JobSecrets, ENV_CAMERA_URL, ENV_JOB_SECRETS, ENV_OPTIONS_REVISION, ENV_PLACEMENT_EPOCH, ENV_PLACEMENT_MOVED,
    ENV_RESULTS_KEY, ENV_SCENARIO_EPOCH, ENV_SCENARIO_OPTIONS, ENV_SCENARIO_UUID,
};
use vap_core::options::ScenarioOptions;
use vap_core::signing::{PlacementEpoch, ResultsKey};

const USAGE: &str =
    "usage: vap-runner [--config PATH] [--scenario UUID] [--epoch RFC3339] [--camera-url URL] [--options JSON]";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("{0} needs a value; {USAGE}")]
    MissingValue(String),
    #[error("unknown argument '{0}'; {USAGE}")]
    Unknown(String),
    #[error("no scenario: pass --scenario or set VAP_SCENARIO_UUID")]
    NoScenario,
    #[error("scenario '{0}' is not a UUID")]
    BadScenario(String),
    #[error("epoch '{0}' is not an RFC 3339 time")]
    BadEpoch(String),
    #[error("no camera URL: set VAP_CAMERA_URL or pass --camera-url")]
    NoCameraUrl,
    #[error("options are not scenario options JSON: {0}")]
    BadOptions(String),
    #[error("no results key: set VAP_RESULTS_KEY (hex, at least 16 bytes) or pass --results-key")]
    NoResultsKey,
    #[error("placement '{0}' is not a whole number of at least 0")]
    BadPlacement(String),
    #[error("{ENV_PLACEMENT_MOVED} is not a move (JSON with at and why): {0}")]
    BadMove(String),
    #[error("job secrets ({0}) unreadable: {1}")]
    BadSecrets(String, String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunnerArgs {
    pub config: Option<PathBuf>,
    pub scenario: Uuid,
    pub epoch: DateTime<Utc>,
    pub camera_url: CameraUrl,
    pub results_key: ResultsKey,
    pub placement: PlacementEpoch,
    /// When and why this placement moved the camera here, when it did.
    pub moved: Option<vap_core::job::Move>,
    pub options: ScenarioOptions,
    pub options_revision: i64,
    /// The broker login's password, from the job's secrets (else from the settings).
    pub kafka_password: Option<Secret>,
}

/// The secrets from where `VAP_JOB_SECRETS` says: `stdin`, `file:<path>`, or `sealed:<hex>`
/// (opened with the key systemd put in `credentials`, for `scenario`).
fn read_job_secrets(source: &str, scenario: Uuid, credentials: Option<String>) -> Result<JobSecrets, UsageError> {
    let bad = |e: String| UsageError::BadSecrets(source.split(':').next().unwrap_or_default().to_string(), e);
    let text = match source.split_once(':') {
        _ if source == "stdin" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).map_err(|e| bad(e.to_string()))?;
            text
        }
        Some(("file", path)) => std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?,
        Some(("sealed", sealed)) => {
            let dir = credentials.ok_or_else(|| bad("no CREDENTIALS_DIRECTORY (LoadCredential=)".into()))?;
            let key = vap_core::sealed::RunnerKey::load(&PathBuf::from(dir).join(vap_core::sealed::CREDENTIAL))
                .map_err(|e| bad(e.to_string()))?;
            return key.open(scenario, sealed).map_err(|e| bad(e.to_string()));
        }
        _ => return Err(bad("expected 'stdin', 'file:<path>' or 'sealed:<hex>'".into())),
    };
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}

impl RunnerArgs {
    /// Flags win over the environment.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, UsageError> {
        let (mut config, mut scenario, mut epoch, mut url, mut options) =
            (None, env(ENV_SCENARIO_UUID), env(ENV_SCENARIO_EPOCH), env(ENV_CAMERA_URL), env(ENV_SCENARIO_OPTIONS));
        let mut key = env(ENV_RESULTS_KEY);
        let mut kafka_password = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value =
                || inline.clone().or_else(|| args.next()).ok_or_else(|| UsageError::MissingValue(flag.clone()));
            match flag.as_str() {
                "--config" | "-c" => config = Some(PathBuf::from(value()?)),
                "--scenario" => scenario = Some(value()?),
                "--epoch" => epoch = Some(value()?),
                "--camera-url" => url = Some(value()?),
                "--options" => options = Some(value()?),
                "--results-key" => key = Some(value()?),
                _ => return Err(UsageError::Unknown(arg)),
            }
        }
        let scenario = scenario.filter(|s| !s.is_empty()).ok_or(UsageError::NoScenario)?;
        let scenario = Uuid::parse_str(&scenario).map_err(|_| UsageError::BadScenario(scenario))?;
        if let Some(source) = env(ENV_JOB_SECRETS).filter(|s| !s.is_empty()) {
            let secrets = read_job_secrets(&source, scenario, env("CREDENTIALS_DIRECTORY"))?;
            (url, key) = (Some(secrets.camera_url), Some(secrets.results_key));
            kafka_password = secrets.kafka_password.map(Secret::new);
        }
        // Without an epoch (a run by hand) numbers count from the Unix epoch: still unique.
        let epoch = match epoch.filter(|e| !e.is_empty()) {
            Some(e) => DateTime::parse_from_rfc3339(&e).map_err(|_| UsageError::BadEpoch(e))?.with_timezone(&Utc),
            None => DateTime::UNIX_EPOCH,
        };
        let camera_url = CameraUrl::trusted(url.filter(|u| !u.is_empty()).ok_or(UsageError::NoCameraUrl)?);
        let results_key = key.as_deref().and_then(ResultsKey::from_hex).ok_or(UsageError::NoResultsKey)?;
        // Without one (a run by hand): placement 0, whose key is the scenario's own.
        let placement = match env(ENV_PLACEMENT_EPOCH).filter(|p| !p.is_empty()) {
            Some(p) => PlacementEpoch(p.parse().ok().filter(|n: &i64| *n >= 0).ok_or(UsageError::BadPlacement(p))?),
            None => PlacementEpoch(0),
        };
        // Without options (a run by hand): the configured defaults.
        let options_revision = match env(ENV_OPTIONS_REVISION).filter(|r| !r.is_empty()) {
            Some(r) => r.parse().map_err(|_| UsageError::BadOptions(format!("revision '{r}' is not an integer")))?,
            None => 0,
        };
        let options = match options.filter(|o| !o.is_empty()) {
            Some(o) => serde_json::from_str(&o).map_err(|e| UsageError::BadOptions(e.to_string()))?,
            None => ScenarioOptions::default(),
        };
        Ok(Self {
            config,
            scenario,
            epoch,
            camera_url,
            results_key,
            placement,
            moved: match env(ENV_PLACEMENT_MOVED).filter(|m| !m.is_empty()) {
                Some(m) => Some(serde_json::from_str(&m).map_err(|e| UsageError::BadMove(e.to_string()))?),
                None => None,
            },
            options,
            options_revision,
            kafka_password,
        })
    }
}

/// The whole `vap-runner` process; the binary only calls this.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    // A panic in the capture or detect thread would leave the other, and the process, waiting
    // for it forever (deaf to SIGTERM): end the process instead, which its backend restarts.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let args = match RunnerArgs::parse(args, |k| std::env::var(k).ok()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vap-runner: error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let egress = match prepare_ffmpeg(&args) {
        Ok(egress) => egress,
        Err(e) => {
            eprintln!("vap-runner: error: egress proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vap-runner: error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if let Some(password) = &args.kafka_password {
        settings.kafka.sasl_password = password.clone();
    }
    vap_core::lifecycle::init_logging(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vap-runner: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let job = RunnerJob {
        scenario: args.scenario,
        camera_url: args.camera_url,
        results_key: args.results_key,
        placement: args.placement,
        moved: args.moved,
        epoch: args.epoch,
        options: args.options,
        options_revision: args.options_revision,
        kafka_password: args.kafka_password,
    };
    let span = tracing::info_span!("runner", scenario = %job.scenario);
    let _entered = span.enter();
    tracing::info!(camera = %job.camera_url, "runner starting");
    let result = runtime.block_on(async {
        let shutdown = vap_core::lifecycle::shutdown_on_signal();
        super::run(settings, job, egress, shutdown).await
    });
    exit_code(result)
}

/// FFmpeg reads its options from the environment when a capture opens: set before any thread
/// starts (setenv is not thread-safe). RTSP over TCP survives lossy networks and NAT; an
/// operator's options win, but not over the protocol whitelist. HTTP goes through the egress
/// proxy, every time: the proxy is returned, bound.
fn prepare_ffmpeg(args: &RunnerArgs) -> std::io::Result<Option<super::egress::EgressProxy>> {
    let egress = match super::capture::uses_http(&args.camera_url) {
        true => Some(super::egress::EgressProxy::bind()?),
        false => None,
    };
    let base = std::env::var("OPENCV_FFMPEG_CAPTURE_OPTIONS").ok();
    std::env::set_var(
        "OPENCV_FFMPEG_CAPTURE_OPTIONS",
        super::capture::ffmpeg_capture_options(&args.camera_url, base.as_deref(), args.options.decode()),
    );
    for name in ["no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY"] {
        std::env::remove_var(name);
    }
    if let Some(proxy) = &egress {
        std::env::set_var("http_proxy", proxy.url());
    }
    Ok(egress)
}

/// How the run ended, as the orchestrator reads it (`job::exit`).
fn exit_code(result: Result<super::RunReport, RunnerError>) -> ExitCode {
    match result {
        Ok(report) => match report.outcome {
            // A source that ended with results undelivered is not finished: exit 0 would mark
            // it done with them lost. A run again repeats frames, which the inbox stores once.
            Outcome::Finished if report.unsent > 0 => {
                tracing::error!(
                    unsent = report.unsent,
                    "source ended but results undelivered; exiting to be run again"
                );
                ExitCode::FAILURE
            }
            Outcome::Finished | Outcome::Stopped => ExitCode::SUCCESS,
            Outcome::SourceUnavailable(reason) => {
                tracing::error!(reason, exit_code = exit::SOURCE_UNAVAILABLE, "camera unavailable");
                ExitCode::from(exit::SOURCE_UNAVAILABLE)
            }
        },
        Err(RunnerError::Model(e)) => {
            tracing::error!(error = %e, exit_code = exit::MODEL, "model unusable");
            ExitCode::from(exit::MODEL)
        }
        Err(e) => {
            tracing::error!(error = %e, "runner failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<RunnerArgs, UsageError> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RunnerArgs::parse(args.iter().map(|s| s.to_string()), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn job_from_environment_or_flags() {
        let id = "6f1c1c52-3c8e-4d4f-9a57-0d5c2e1f6a10";
        let a = parse(
            &[],
            &[
                ("VAP_SCENARIO_UUID", id),
                ("VAP_CAMERA_URL", "rtsp://u:p@cam/1"),
                ("VAP_RESULTS_KEY", &"ab".repeat(32)),
                ("VAP_SCENARIO_EPOCH", "2026-01-01T00:00:00Z"),
            ],
        )
        .unwrap();
        assert_eq!((a.scenario.to_string().as_str(), a.camera_url.expose()), (id, "rtsp://u:p@cam/1"));
        assert_eq!(a.epoch.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        let key = "ab".repeat(32);
        let b = parse(
            &["--scenario", id, "--camera-url=file.mp4", "--config", "x.toml", "--results-key", &key],
            &[("VAP_CAMERA_URL", "env")],
        )
        .unwrap();
        assert_eq!((b.camera_url.expose(), b.epoch), ("file.mp4", DateTime::UNIX_EPOCH));
        assert_eq!(parse(&[], &[]), Err(UsageError::NoScenario));
        assert_eq!(parse(&["--scenario", "nope"], &[]), Err(UsageError::BadScenario("nope".into())));
        assert_eq!(parse(&["--scenario", id], &[]), Err(UsageError::NoCameraUrl));
        assert_eq!(parse(&["--scenario", id, "--camera-url", "f.mp4"], &[]), Err(UsageError::NoResultsKey));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("job.json");
        std::fs::write(&file, format!(r#"{{"camera_url": "rtsp://u:p@cam/2", "results_key": "{key}"}}"#)).unwrap();
        let source = format!("file:{}", file.display());
        let c = parse(&["--scenario", id], &[("VAP_JOB_SECRETS", &source), ("VAP_CAMERA_URL", "env")]).unwrap();
        assert_eq!(c.camera_url.expose(), "rtsp://u:p@cam/2");
        assert!(matches!(
            parse(&["--scenario", id], &[("VAP_JOB_SECRETS", "file:/nonexistent")]),
            Err(UsageError::BadSecrets(..))
        ));
        assert_eq!(
            parse(&["--scenario", id, "--epoch", "yesterday"], &[]),
            Err(UsageError::BadEpoch("yesterday".into()))
        );
        assert!(matches!(parse(&["--frobnicate"], &[]), Err(UsageError::Unknown(_))));
        let with =
            |o: &str| parse(&["--scenario", id, "--camera-url", "f.mp4", "--results-key", &key, "--options", o], &[]);
        assert_eq!(with(r#"{"model":"m","fps":5}"#).unwrap().options.fps, Some(5.0));
        assert!(matches!(with(r#"{"fps":"fast"}"#), Err(UsageError::BadOptions(_))));
        assert!(matches!(parse(&["--scenario"], &[]), Err(UsageError::MissingValue(_))));
    }
}
