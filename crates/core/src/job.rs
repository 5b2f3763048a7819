//! The contract between vap-orchestrator and vap-runner, the same on every backend: what a
//! runner is given (its job, in the environment, so credentials stay out of the process
//! list), how it is started, and what its exit codes mean.

use std::path::Path;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::camera_url::CameraUrl;
use crate::options::ScenarioOptions;
use crate::secret::Secret;
use crate::signing::{PlacementEpoch, ResultsKey};

pub const ENV_SCENARIO_UUID: &str = "VAP_SCENARIO_UUID";
pub const ENV_SCENARIO_EPOCH: &str = "VAP_SCENARIO_EPOCH";
/// Which placement of the scenario this runner is (crates/core/src/signing.rs): its records say it.
pub const ENV_PLACEMENT_EPOCH: &str = "VAP_PLACEMENT_EPOCH";
/// Set when this placement moved the camera off a host that is down: when and why (JSON,
/// [`Move`]). The runner says so in a `camera_moved` event, the same one at every restart.
pub const ENV_PLACEMENT_MOVED: &str = "VAP_PLACEMENT_MOVED";
pub const ENV_CAMERA_URL: &str = "VAP_CAMERA_URL";
/// The scenario's options (crates/core/src/options.rs) as JSON.
pub const ENV_SCENARIO_OPTIONS: &str = "VAP_SCENARIO_OPTIONS";
/// Which change of the options those are: the runner applies only newer ones.
pub const ENV_OPTIONS_REVISION: &str = "VAP_OPTIONS_REVISION";
/// The scenario's results key (crates/core/src/signing.rs), hex: only for runs by hand, like the URL.
pub const ENV_RESULTS_KEY: &str = "VAP_RESULTS_KEY";
/// Where a runner started by a backend finds its secrets (camera URL, results key), which
/// stay out of its environment and arguments: `stdin` (one JSON object, [`JobSecrets`]),
/// `file:<path>` (the same JSON in a file only the runner reads), or `sealed:<hex>` (sealed
/// with the runner key, which systemd hands the unit as credential `vap-runner-key`).
pub const ENV_JOB_SECRETS: &str = "VAP_JOB_SECRETS";
/// Given per process, not configuration: the settings loader leaves them alone.
pub const JOB_ENV: [&str; 9] = [
    ENV_SCENARIO_UUID,
    ENV_SCENARIO_EPOCH,
    ENV_PLACEMENT_EPOCH,
    ENV_PLACEMENT_MOVED,
    ENV_CAMERA_URL,
    ENV_SCENARIO_OPTIONS,
    ENV_OPTIONS_REVISION,
    ENV_RESULTS_KEY,
    ENV_JOB_SECRETS,
];

/// What only the runner of a scenario may know, as it receives it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobSecrets {
    pub camera_url: String,
    /// Hex.
    pub results_key: String,
    /// The broker login's password (`kafka.sasl_password`), when the broker wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_password: Option<String>,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecrets(***)")
    }
}

/// The settings a runner reads (`[kafka]`, `[runner]`, `[destinations]`, `[log]`), as `VAP_*` prefixes: all a
/// backend passes on from its own environment. The database's and the API's settings, and
/// their secrets, stay with the orchestrator.
pub const RUNNER_SETTINGS_ENV: [&str; 4] = ["VAP_KAFKA__", "VAP_RUNNER__", "VAP_DESTINATIONS__", "VAP_LOG__"];
/// Settings among those that are secrets: runners get them with their job's secrets.
pub const RUNNER_SECRET_ENV: [&str; 1] = ["VAP_KAFKA__SASL_PASSWORD"];

/// What a runner process may inherit besides its settings: how to find programs and libraries,
/// locale and time zone, logging, and OpenCV's and FFmpeg's own knobs.
pub fn is_process_env(name: &str) -> bool {
    matches!(name, "PATH" | "HOME" | "LANG" | "TZ" | "TMPDIR" | "RUST_LOG" | "RUST_BACKTRACE" | "LD_LIBRARY_PATH")
        || name.starts_with("LC_")
        || name.starts_with("OPENCV_")
}

/// Which of `vars` a runner may be given.
pub fn runner_settings_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter(|(k, _)| {
            RUNNER_SETTINGS_ENV.iter().any(|p| k.starts_with(p)) && !RUNNER_SECRET_ENV.contains(&k.as_str())
        })
        .collect()
}

/// A runner's exit codes.
pub mod exit {
    /// The source ended, or SIGTERM flushed.
    pub const FINISHED: u8 = 0;
    /// Bad usage or configuration.
    pub const USAGE: u8 = 2;
    /// The camera never opened.
    pub const SOURCE_UNAVAILABLE: u8 = 3;
    /// The model could not be loaded.
    pub const MODEL: u8 = 4;
    /// Ends that a restart cannot fix: backends do not restart a runner on them.
    pub const NOT_RESTARTED: [u8; 3] = [USAGE, SOURCE_UNAVAILABLE, MODEL];

    /// Whether a runner that exited with `code` is done for good (finished, or not restartable).
    pub fn is_permanent(code: i32) -> bool {
        code == i32::from(FINISHED) || NOT_RESTARTED.iter().any(|&c| i32::from(c) == code)
    }
}

/// A placement that moved its camera off a host that is down: when, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Move {
    pub at: DateTime<Utc>,
    pub why: String,
}

/// What a runner works on.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerJob {
    pub scenario: Uuid,
    pub camera_url: CameraUrl,
    /// The scenario's creation time: the runner's frame numbers count from it.
    pub epoch: DateTime<Utc>,
    /// Model, fps, classes, confidence, mask: what the API stored for the scenario.
    pub options: ScenarioOptions,
    pub options_revision: i64,
    /// Which placement this is: a later one fences every earlier one.
    pub placement: PlacementEpoch,
    /// When and why this placement moved the camera, when it did (its host was down).
    pub moved: Option<Move>,
    /// Signs the runner's results: the key of this placement, never the scenario's own (the
    /// inbox stores only what verifies under the current placement's key).
    pub results_key: ResultsKey,
    /// The broker login's password, delivered with the other secrets.
    pub kafka_password: Option<Secret>,
}

impl RunnerJob {
    /// The part of the job a process listing or a unit's properties may show: no secrets.
    fn public_env(&self) -> Vec<(String, String)> {
        let moved =
            self.moved.iter().map(|m| (ENV_PLACEMENT_MOVED.to_string(), serde_json::to_string(m).unwrap_or_default()));
        let mut env = vec![
            (ENV_SCENARIO_UUID.into(), self.scenario.to_string()),
            (ENV_SCENARIO_EPOCH.into(), self.epoch.to_rfc3339()),
            (ENV_PLACEMENT_EPOCH.into(), self.placement.to_string()),
            (ENV_SCENARIO_OPTIONS.into(), serde_json::to_string(&self.options).unwrap_or_default()),
            (ENV_OPTIONS_REVISION.into(), self.options_revision.to_string()),
        ];
        env.extend(moved);
        env
    }

    /// The secrets, as [`ENV_JOB_SECRETS`] delivers them.
    pub fn secrets(&self) -> JobSecrets {
        JobSecrets {
            camera_url: self.camera_url.expose().to_string(),
            results_key: self.results_key.to_hex(),
            kafka_password: self.kafka_password.as_ref().map(|p| p.expose().to_string()),
        }
    }

    /// The runner's arguments after the program: its scenario (so `ps` and a restarted
    /// orchestrator can tell runners apart) and the operator's configuration file.
    pub fn args(&self, runner_config: Option<&Path>) -> Vec<String> {
        let mut args = vec!["--scenario".to_string(), self.scenario.to_string()];
        if let Some(config) = runner_config {
            args.push("--config".into());
            args.push(config.display().to_string());
        }
        args
    }

    /// The operator's extra `KEY=VALUE` entries, then the job's own (which win): the public
    /// part, and where its secrets are (`VAP_JOB_SECRETS`, `secrets_at`), never the secrets.
    pub fn env_with(&self, extra: &[String], secrets_at: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            extra.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.retain(|(k, _)| !JOB_ENV.contains(&k.as_str()));
        env.extend(self.public_env());
        env.push((ENV_JOB_SECRETS.into(), secrets_at.into()));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_exits_are_finished_and_the_not_restarted_ones() {
        assert!([0, 2, 3, 4].into_iter().all(exit::is_permanent));
        assert!(![1, 137, -1].into_iter().any(exit::is_permanent));
    }

    #[test]
    fn runners_get_only_the_settings_they_read() {
        let vars = [
            "VAP_KAFKA__BROKERS",
            "VAP_KAFKA__SASL_PASSWORD",
            "VAP_RUNNER__SAMPLE_FPS",
            "VAP_LOG__LEVEL",
            "VAP_DATABASE__PASSWORD",
            "VAP_API__AUTH_TOKEN",
        ]
        .map(|k| (k.to_string(), "x".to_string()));
        let kept: Vec<String> = runner_settings_env(vars).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kept, ["VAP_KAFKA__BROKERS", "VAP_RUNNER__SAMPLE_FPS", "VAP_LOG__LEVEL"]);
    }

    #[test]
    fn the_job_wins_over_extra_env_and_args_name_the_scenario() {
        let job = RunnerJob {
            scenario: Uuid::nil(),
            camera_url: CameraUrl::trusted("rtsp://u:p@cam/1".into()),
            epoch: DateTime::UNIX_EPOCH,
            options: ScenarioOptions::default(),
            options_revision: 0,
            placement: PlacementEpoch(3),
            moved: None,
            results_key: ResultsKey::new(vec![7; 32]),
            kafka_password: Some(Secret::new("kpw")),
        };
        let env = job.env_with(&["RUST_LOG=info".into(), "VAP_CAMERA_URL=other".into(), "junk".into()], "stdin");
        assert_eq!(env[0], ("RUST_LOG".into(), "info".into()));
        // The operator's entry for a job variable is dropped; the job's secrets are not there.
        assert!(
            !env.iter().any(|(k, v)| k == ENV_CAMERA_URL || k == ENV_RESULTS_KEY || v.contains("u:p@") || v == "kpw"),
            "{env:?}"
        );
        assert_eq!(job.secrets().kafka_password.as_deref(), Some("kpw"));
        assert_eq!(env.last(), Some(&(ENV_JOB_SECRETS.into(), "stdin".into())));
        let args = job.args(Some(Path::new("/etc/vap/vap.toml")));
        assert_eq!(args, ["--scenario", &Uuid::nil().to_string(), "--config", "/etc/vap/vap.toml"]);
    }
}
