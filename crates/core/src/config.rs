//! Typed configuration: built-in defaults < TOML file < `VAP_*` environment.
//!
//! Every struct denies unknown fields, so a typo in a key stops the binary at start with the
//! key's name instead of being silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::destination::DestinationSettings;
pub use crate::secret::Secret;

/// Where an operator puts the file when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vap/vap.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    File { path: PathBuf, source: Box<config::ConfigError> },
    #[error("invalid configuration: {0}")]
    Invalid(Box<config::ConfigError>),
    #[error("invalid configuration: {key}: {reason}")]
    Value { key: &'static str, reason: String },
}

impl From<crate::destination::PolicyError> for ConfigError {
    fn from(e: crate::destination::PolicyError) -> Self {
        ConfigError::Value { key: e.key, reason: e.reason }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub api: ApiSettings,
    pub relay: RelaySettings,
    pub inbox: InboxSettings,
    pub runner: RunnerSettings,
    pub orchestrator: OrchestratorSettings,
    pub destinations: DestinationSettings,
    pub log: LogSettings,
    pub webhooks: WebhookSettings,
    pub retention: RetentionSettings,
}

/// Scene events POSTed to receivers (crates/relay/src/webhooks.rs), by the relay.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Receives every scenario's events, besides a scenario's own `webhook_url`; empty: none.
    pub url: String,
    /// The key receivers verify with, shared with them: `whsec_<base64>` as Standard Webhooks
    /// libraries take it (the key is the decoded bytes), or any other text (its bytes). Empty:
    /// nothing is sent (deliveries wait, saying so).
    pub secret: Secret,
    /// One POST, connect to last byte.
    pub timeout_ms: u64,
    /// Retries back off from 1 s up to this, with jitter.
    pub retry_max_ms: u64,
    pub poll_interval_ms: u64,
    /// Deliveries in flight at once (one per scenario at a time: in event order).
    pub concurrency: usize,
    /// Deliveries in flight to one receiver (scheme, host and port) at once: a slow or silent
    /// receiver holds no more than this of `concurrency`.
    pub per_receiver_concurrency: usize,
    /// A delivery not made within this after its event is given up (shown on the event).
    pub max_age_secs: u64,
    /// CAs trusted for https receivers (PEM); default Debian's bundle.
    pub ca_file: PathBuf,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: Secret::default(),
            timeout_ms: 5_000,
            retry_max_ms: 300_000,
            poll_interval_ms: 500,
            concurrency: 8,
            per_receiver_concurrency: 2,
            max_age_secs: 86_400,
            ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub dbname: String,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// PostgreSQL cancels a statement that runs longer (0: never).
    pub statement_timeout_ms: u64,
    /// PostgreSQL ends a session left idle inside a transaction this long, so a process stuck
    /// elsewhere (a broker that stopped answering) can't hold row locks forever (0: never).
    pub idle_in_transaction_timeout_ms: u64,
    /// Apply pending migrations at start (safe with concurrent starters: they serialise on a lock).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Partition count for topics vap creates when they are missing.
    pub partitions: i32,
    pub replication_factor: i16,
    pub topic_init_scenario: String,
    pub topic_shutdown_scenario: String,
    /// Option changes (PATCH), API -> orchestrator through the outbox.
    pub topic_update_scenario: String,
    pub topic_results: String,
    /// Runners -> inbox: what they saw happen (zones, lines, camera health).
    pub topic_events: String,
    /// Runners -> inbox: JPEG snapshots of analysed frames with their detections.
    pub topic_snapshots: String,
    /// Orchestrator -> runners: options to switch to (events::RunnerControl).
    pub topic_runner_control: String,
    /// How long one produce may retry before it fails and the batch is retried later.
    pub request_deadline_ms: u64,
    /// How long one request may go unanswered (a broker that stops answering without closing
    /// the connection). Must exceed the consumers' fetch wait.
    pub request_timeout_ms: u64,
    /// Set TCP_NODELAY on the client's sockets (rskafka doesn't); off only to measure why.
    pub tcp_nodelay: bool,
    /// How clients log in to the broker; `none` for a broker without `--authentication`.
    pub sasl_mechanism: SaslMechanism,
    pub sasl_username: String,
    /// Runners get it with their other secrets, never in their environment.
    pub sasl_password: Secret,
    /// PEM file of the CA that signed the brokers' certificates: set, clients speak TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// How vap compresses the batches it produces (Kafka's `compression.type`); batches in
    /// any codec are read whatever this says.
    pub compression: KafkaCompression,
}

/// Named as Kafka clients name them (`compression.type`). Snappy by default: on results it
/// sent a quarter fewer bytes than none one per request, two thirds fewer a hundred per
/// request, at the same rate and broker CPU (docs/BENCHMARKS.md, "codecs").
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    None,
    Gzip,
    #[default]
    Snappy,
    Lz4,
    Zstd,
}

/// Named as Kafka clients name them (`sasl.mechanism`), lower case.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// Bearer token of scope `operate`: everything, POST and PATCH included.
    pub auth_token: Secret,
    /// Bearer token of scope `read`: GETs and streams only. With neither token set the API is
    /// open, which vap-api allows only on a loopback address or with `allow_anonymous`.
    pub read_token: Secret,
    /// Serve without tokens on a non-loopback address (behind a proxy that authenticates).
    pub allow_anonymous: bool,
    /// Whether /metrics answers without a token (scrapers on a private network usually do).
    pub metrics_public: bool,
    /// Accept `file://` URLs and absolute paths as camera URLs (operator opt-in).
    pub allow_file_urls: bool,
    pub prediction_page_default: i64,
    pub prediction_page_max: i64,
    pub scenario_page_default: i64,
    pub scenario_page_max: i64,
    /// How long SIGTERM waits for in-flight requests before closing them.
    pub drain_timeout_ms: u64,
    /// Open connections at most; one more is answered 503 and closed (file descriptors).
    pub max_connections: usize,
    /// Open prediction streams (SSE) at most; one more is answered 429.
    pub max_sse_streams: usize,
    /// A request body not received within this is answered 408.
    pub body_read_timeout_ms: u64,
    /// Host names the API answers to (`*`: any), besides addresses and localhost names: a name
    /// not listed is refused, so a page cannot reach the API by DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySettings {
    /// Rows claimed per transaction.
    pub batch_size: i64,
    /// Fallback poll when no NOTIFY arrives (NOTIFY is the normal wake-up).
    pub poll_interval_ms: u64,
    /// Published outbox rows older than this are deleted.
    pub retention_secs: u64,
    /// `Idempotency-Key`s older than this are forgotten (a retry after it creates anew).
    pub idempotency_key_retention_secs: u64,
    pub prune_interval_secs: u64,
    /// Where vap-relay serves /health and /metrics; empty string disables it.
    pub metrics_listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboxSettings {
    pub enabled: bool,
    /// Upper bound of bytes one fetch asks for.
    pub fetch_max_bytes: i32,
    pub fetch_max_wait_ms: i32,
    /// Largest number of results written in one transaction.
    pub batch_max_records: usize,
    /// Snapshots of events kept per scenario (the oldest go first); besides them only the
    /// latest periodic one is kept.
    pub snapshots_per_scenario: i64,
    /// Divide the partitions among the relays running (advisory locks); false: every relay
    /// reads every partition (positions still store each record once).
    pub share_partitions: bool,
    /// How often a relay re-divides: a relay that died loses its partitions within about this.
    pub rebalance_interval_ms: u64,
    /// A partition whose position has not moved this long while records wait is stalled:
    /// vap-relay's /ready says degraded and names it.
    pub stall_after_secs: u64,
}

/// How long results and events are kept (crates/relay/src/retention/, run by vap-relay).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Results, events, their snapshots and webhook deliveries older than this (by frame time)
    /// go; a scenario's `retention_days` may shorten it for that scenario.
    pub results_days: u32,
    /// Frame time each partition spans (whole hours, aligned to midnight UTC).
    pub partition_hours: u32,
    /// Partitions made ahead of the current one.
    pub partitions_ahead: u32,
    pub check_interval_secs: u64,
    /// Records set aside (`dead_letters`) are kept this long, at most this many per scenario
    /// and in all (the newest stay).
    pub dead_letters_days: u32,
    pub dead_letters_per_scenario: i64,
    pub dead_letters_max: i64,
}

/// vap-orchestrator: placement of one runner per scenario.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorSettings {
    /// Where runners run: `local`, `nomad` or `systemd`.
    pub backend: String,
    /// Most runners placed at once, across the cluster (only the leader places).
    pub max_workers: usize,
    /// A reconcile round runs on every event and at least this often.
    pub reconcile_interval_ms: u64,
    /// How often a standby tries to take the lead.
    pub leader_poll_ms: u64,
    /// A systemd host that has not answered for this long is down: its runners are placed
    /// again on the hosts that answer, in a new placement (the old ones are fenced). Shorter
    /// moves cameras sooner; longer rides out a slow link or a host's reboot without a move.
    pub host_down_after_secs: u64,
    /// A host that was down takes new runners again only after answering for this long, so a
    /// flapping host is not declared down and up every few seconds.
    pub host_up_after_secs: u64,
    /// Where the orchestrator serves /health and /metrics; empty disables it.
    pub metrics_listen: String,
    pub local: LocalBackendSettings,
    pub nomad: NomadBackendSettings,
    pub systemd: SystemdBackendSettings,
}

/// The systemd backend: one transient unit per scenario over systemd's D-Bus API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SystemdBackendSettings {
    /// D-Bus address of the host's system bus; empty: this host's (`/run/dbus/system_bus_socket`).
    pub bus_address: String,
    /// Reported as the worker's node.
    pub node_name: String,
    /// Several hosts: runners go to the one with the fewest. When set, `bus_address` and
    /// `node_name` are not used.
    pub nodes: Vec<SystemdNode>,
    pub runner_bin: PathBuf,
    pub runner_config: Option<PathBuf>,
    /// `KEY=VALUE` pairs for the runner's environment.
    pub runner_env: Vec<String>,
    pub slice: String,
    pub watchdog_sec: u64,
    pub restart_sec: u64,
    /// Starts within `start_limit_interval_secs` before systemd gives up (unit failed).
    pub start_limit_burst: u32,
    pub start_limit_interval_secs: u64,
    pub stop_timeout_secs: u64,
    /// 0: no limit.
    pub memory_max_mb: u64,
    /// Percent of one CPU; 0: no limit.
    pub cpu_quota_percent: u64,
    pub tasks_max: u64,
    /// Run runners as this user; empty: a user made for each runner (DynamicUser=, which
    /// also gives it a private /tmp). Never root by default.
    pub user: String,
    /// The runner key (at least 32 characters; crates/core/src/sealed.rs): read here to seal each runner's
    /// secrets, and loaded by systemd on the runner's host from the same path (LoadCredential=).
    /// Readable by root (and this orchestrator) only.
    pub runner_key_file: PathBuf,
    /// Give each runner its own /tmp (PrivateTmp). Off only where the runner binary or its
    /// inputs live under /tmp, which a private /tmp would hide.
    pub private_tmp: bool,
}

/// A host whose systemd runs runners: its name (reported as the worker's node) and the D-Bus
/// address of its system bus, e.g. `unixexec:path=ssh,argv1=-xT,argv2=root@worker-1,argv3=systemd-stdio-bridge`;
/// empty for the orchestrator's own host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SystemdNode {
    pub name: String,
    #[serde(default)]
    pub bus_address: String,
}

impl SystemdBackendSettings {
    /// The hosts runners go to: `nodes`, or this one host.
    pub fn effective_nodes(&self) -> Vec<SystemdNode> {
        if self.nodes.is_empty() {
            vec![SystemdNode { name: self.node_name.clone(), bus_address: self.bus_address.clone() }]
        } else {
            self.nodes.clone()
        }
    }
}

/// The Nomad backend: one service job per scenario (docs/ARCHITECTURE.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NomadBackendSettings {
    /// The agent's HTTP API, `http://` or `https://`.
    pub address: String,
    /// ACL token, sent as `X-Nomad-Token`; empty when ACLs are off.
    pub token: Secret,
    pub namespace: String,
    /// Empty: the agent's own region.
    pub region: String,
    /// PEM CA bundle that signs the agent's certificate (https addresses).
    pub ca_file: Option<PathBuf>,
    pub datacenters: Vec<String>,
    /// `raw_exec`, `exec` or `docker`.
    pub driver: String,
    /// The runner binary on the clients (raw_exec, exec).
    pub command: String,
    /// The runner image (docker).
    pub image: String,
    /// Passed to runners as `--config` (a path on the client hosts).
    pub runner_config: Option<PathBuf>,
    /// `KEY=VALUE` pairs for the runner's environment (broker addresses, model path...).
    pub runner_env: Vec<String>,
    pub cpu_mhz: u32,
    pub memory_mb: u32,
    /// Restarts in place within the interval before the allocation fails.
    pub restart_attempts: u32,
    pub restart_interval_secs: u64,
    pub restart_delay_secs: u64,
    /// New allocations (possibly on other nodes) after failures, before the job gives up.
    pub reschedule_attempts: u32,
    pub reschedule_interval_secs: u64,
    /// How long a stopping runner gets to flush before SIGKILL.
    pub kill_timeout_secs: u64,
    pub request_timeout_ms: u64,
    /// How long one blocking query on a job's allocations waits.
    pub blocking_wait_ms: u64,
}

/// The local backend: runners as child processes of the orchestrator's host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalBackendSettings {
    pub runner_bin: PathBuf,
    /// Passed to runners as `--config`; without it they get the orchestrator's `VAP_*` only.
    pub runner_config: Option<PathBuf>,
    /// Crashes within `restart_window_secs` after which the runner is given up (scenario failed).
    pub restart_limit: u32,
    pub restart_window_secs: u64,
    pub restart_delay_min_ms: u64,
    pub restart_delay_max_ms: u64,
    /// Stop every runner when the orchestrator stops (the embedded default); otherwise runners
    /// outlive it and the next orchestrator adopts them.
    pub stop_runners_on_exit: bool,
}

/// The engine that runs a runner's models.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InferenceEngine {
    #[default]
    Tract,
    Onnxruntime,
}

/// vap-runner: capture, detection and publishing of one scenario.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerSettings {
    /// The model catalogue: manifests (TOML beside the ONNX files they name). The API reads it
    /// too, to check and list what a scenario may ask for.
    pub models_dir: PathBuf,
    /// The model of a scenario that names none.
    pub default_model: String,
    /// Frames analysed per second of stream time, for a scenario that sets no `fps`; 0
    /// analyses every frame.
    pub sample_fps: f64,
    /// The confidence a detection needs, for a scenario that sets no `min_confidence`; unset:
    /// each model's own threshold (0..1).
    pub score_threshold: Option<f32>,
    /// Threads for inference; 1 leaves the other cores to other runners.
    pub inference_threads: usize,
    /// What runs the models: `tract` (built in) or `onnxruntime` (faster; its library file is
    /// `onnxruntime_library`, from PyPI's `onnxruntime` wheel).
    pub engine: InferenceEngine,
    pub onnxruntime_library: Option<PathBuf>,
    pub open_timeout_ms: u64,
    /// No frame for this long counts as a lost stream: reconnect.
    pub read_timeout_ms: u64,
    /// Failed opens before a source that never opened is given up as unavailable.
    pub open_attempts: u32,
    /// Reconnect back-off after a lost stream: from min, doubling with jitter, up to max.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Analysed frames kept while the broker is unreachable; beyond it the oldest are dropped.
    pub buffer_frames: usize,
    /// Most records in one produce request (when catching up).
    pub produce_batch: usize,
    /// How long SIGTERM waits for buffered results to reach the broker.
    pub flush_timeout_ms: u64,
    /// How often STATUS= and the progress log line are refreshed.
    pub status_interval_ms: u64,
    /// Largest snapshot record sent; a bigger one is sent at a lower JPEG quality, or dropped
    /// (counted). Below the broker's largest message (Kafka's default is 1 MiB).
    pub snapshot_max_bytes: usize,
    /// Motion gating (scenario option `motion_gating`, on by default; crates/runner/src/motion.rs):
    /// the changed share of the picture (0..1) that counts as motion,
    pub motion_min_area: f64,
    /// how far a pixel must change (0..255) to count,
    pub motion_pixel_delta: f64,
    /// and the stream seconds after which the detector runs on a still picture anyway.
    pub detect_interval_s: f64,
}

impl RunnerSettings {
    /// The catalogue in `models_dir`, every model file checked, and the option defaults.
    pub fn option_defaults(&self) -> Result<crate::options::Defaults, crate::models::CatalogueError> {
        Ok(crate::options::Defaults {
            catalogue: crate::models::Catalogue::load(
                &self.models_dir,
                &self.default_model,
                crate::models::Check::Files,
            )?,
            fps: self.sample_fps,
            min_confidence: self.score_threshold,
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `vap=debug,info`.
    pub level: String,
    pub json: bool,
    /// Query parameters of camera URLs whose values are secrets, beyond the built-in ones
    /// (password, token, key, ...): shown as `***` in answers and logs.
    pub secret_query_params: Vec<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "vap".into(),
            password: Secret::default(),
            dbname: "vap".into(),
            pool_size: 16,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            idle_in_transaction_timeout_ms: 60_000,
            migrate_on_start: true,
        }
    }
}

impl KafkaSettings {
    /// Every topic vap uses; each process creates the missing ones when it connects.
    pub fn topics(&self) -> [&String; 5] {
        [
            &self.topic_init_scenario,
            &self.topic_shutdown_scenario,
            &self.topic_update_scenario,
            &self.topic_results,
            &self.topic_runner_control,
        ]
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            partitions: 4,
            replication_factor: 1,
            topic_init_scenario: "init_scenario".into(),
            topic_shutdown_scenario: "shutdown_scenario".into(),
            topic_update_scenario: "update_scenario".into(),
            topic_results: "results".into(),
            topic_events: "events".into(),
            topic_snapshots: "snapshots".into(),
            topic_runner_control: "runner_control".into(),
            request_deadline_ms: 5_000,
            request_timeout_ms: 10_000,
            tcp_nodelay: true,
            sasl_mechanism: SaslMechanism::None,
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            tls_ca_file: None,
            compression: KafkaCompression::default(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth_token: Secret::default(),
            read_token: Secret::default(),
            allow_anonymous: false,
            metrics_public: true,
            allow_file_urls: false,
            prediction_page_default: 100,
            prediction_page_max: 1_000,
            scenario_page_default: 50,
            scenario_page_max: 500,
            drain_timeout_ms: 10_000,
            max_connections: 4_096,
            max_sse_streams: 1_024,
            body_read_timeout_ms: 10_000,
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval_ms: 1_000,
            retention_secs: 7 * 24 * 3600,
            idempotency_key_retention_secs: 24 * 3600,
            prune_interval_secs: 300,
            metrics_listen: "127.0.0.1:9181".into(),
        }
    }
}

impl Default for InboxSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            fetch_max_bytes: 4 * 1024 * 1024,
            fetch_max_wait_ms: 200,
            batch_max_records: 2_000,
            snapshots_per_scenario: 200,
            share_partitions: true,
            rebalance_interval_ms: 1_000,
            stall_after_secs: 60,
        }
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            results_days: 30,
            partition_hours: 24,
            partitions_ahead: 2,
            check_interval_secs: 600,
            dead_letters_days: 14,
            dead_letters_per_scenario: 1_000,
            dead_letters_max: 100_000,
        }
    }
}

impl RetentionSettings {
    pub fn partition_span(&self) -> chrono::Duration {
        chrono::Duration::hours(i64::from(self.partition_hours))
    }

    pub fn keep(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.results_days))
    }
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            max_workers: 4,
            reconcile_interval_ms: 2_000,
            leader_poll_ms: 1_000,
            host_down_after_secs: 30,
            host_up_after_secs: 30,
            metrics_listen: "127.0.0.1:9182".into(),
            local: LocalBackendSettings::default(),
            nomad: NomadBackendSettings::default(),
            systemd: SystemdBackendSettings::default(),
        }
    }
}

impl Default for SystemdBackendSettings {
    fn default() -> Self {
        Self {
            bus_address: String::new(),
            node_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            nodes: Vec::new(),
            runner_bin: PathBuf::from("/usr/local/bin/vap-runner"),
            runner_config: None,
            runner_env: Vec::new(),
            slice: "vap-runners.slice".into(),
            watchdog_sec: 30,
            restart_sec: 2,
            start_limit_burst: 5,
            start_limit_interval_secs: 300,
            stop_timeout_secs: 15,
            memory_max_mb: 1024,
            cpu_quota_percent: 100,
            tasks_max: 64,
            user: String::new(),
            runner_key_file: PathBuf::from("/etc/vap/runner.key"),
            private_tmp: true,
        }
    }
}

impl Default for NomadBackendSettings {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:4646".into(),
            token: Secret::default(),
            namespace: "default".into(),
            region: String::new(),
            ca_file: None,
            datacenters: vec!["*".into()],
            driver: "exec".into(),
            command: "/usr/local/bin/vap-runner".into(),
            image: String::new(),
            runner_config: None,
            runner_env: Vec::new(),
            cpu_mhz: 500,
            memory_mb: 512,
            restart_attempts: 3,
            restart_interval_secs: 300,
            restart_delay_secs: 5,
            reschedule_attempts: 2,
            reschedule_interval_secs: 3600,
            kill_timeout_secs: 10,
            request_timeout_ms: 10_000,
            blocking_wait_ms: 30_000,
        }
    }
}

impl Default for LocalBackendSettings {
    fn default() -> Self {
        Self {
            runner_bin: PathBuf::from("/usr/local/bin/vap-runner"),
            runner_config: None,
            restart_limit: 5,
            restart_window_secs: 300,
            restart_delay_min_ms: 1_000,
            restart_delay_max_ms: 30_000,
            stop_runners_on_exit: false,
        }
    }
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            default_model: "yolov4_tiny_coco_416".into(),
            sample_fps: 2.0,
            score_threshold: None,
            inference_threads: 1,
            engine: InferenceEngine::Tract,
            onnxruntime_library: None,
            open_timeout_ms: 10_000,
            read_timeout_ms: 5_000,
            open_attempts: 5,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 30_000,
            buffer_frames: 1_000,
            produce_batch: 200,
            flush_timeout_ms: 5_000,
            status_interval_ms: 5_000,
            snapshot_max_bytes: 512 * 1024,
            motion_min_area: 0.002,
            motion_pixel_delta: 25.0,
            detect_interval_s: 10.0,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into(), json: false, secret_query_params: Vec::new() }
    }
}

impl Settings {
    /// Loads defaults, then `path` (or [`DEFAULT_CONFIG_PATH`] when it exists), then `VAP_*`.
    ///
    /// Nested keys use `__` in the environment: `VAP_DATABASE__PORT=5433`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// Same as [`Settings::load`] with an explicit environment (tests use this).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = config::Config::try_from(&Settings::default()).map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        let mut builder = config::Config::builder().add_source(defaults);
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        if let Some(file) = &file {
            let source = config::File::from(file.as_path()).format(config::FileFormat::Toml).required(true);
            // Read the file alone first so its errors name the file.
            config::Config::builder()
                .add_source(source.clone())
                .build()
                .map_err(|e| ConfigError::File { path: file.clone(), source: Box::new(e) })?;
            builder = builder.add_source(source);
        }
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("VAP_") && !crate::job::JOB_ENV.contains(&k.as_str()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("VAP")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("kafka.brokers")
                .with_list_parse_key("destinations.allow")
                .with_list_parse_key("destinations.deny")
                .with_list_parse_key("log.secret_query_params")
                .source(Some(env)),
        );
        let settings: Settings =
            builder.build().and_then(|c| c.try_deserialize()).map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| Err(ConfigError::Value { key, reason: reason.into() });
        if self.database.pool_size == 0 {
            return bad("database.pool_size", "must be at least 1");
        }
        if self.kafka.brokers.is_empty() {
            return bad("kafka.brokers", "needs at least one host:port");
        }
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions", "must be at least 1");
        }
        // The orchestrator's fetches wait up to 500 ms for records.
        let longest_fetch_wait = u64::try_from(self.inbox.fetch_max_wait_ms).unwrap_or(0).max(500);
        if self.kafka.request_timeout_ms <= longest_fetch_wait {
            return bad("kafka.request_timeout_ms", "must exceed inbox.fetch_max_wait_ms (and 500 ms)");
        }
        if self.kafka.sasl_mechanism != SaslMechanism::None && self.kafka.sasl_username.is_empty() {
            return bad("kafka.sasl_username", "must be set when kafka.sasl_mechanism is");
        }
        if self.kafka.sasl_mechanism == SaslMechanism::Plain && self.kafka.tls_ca_file.is_none() {
            return bad("kafka.sasl_mechanism", "plain sends the password as is: set kafka.tls_ca_file (TLS) too");
        }
        if !self.webhooks.url.is_empty()
            && !url::Url::parse(&self.webhooks.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return bad("webhooks.url", "must be an http(s) URL or empty");
        }
        if self.relay.batch_size < 1 {
            return bad("relay.batch_size", "must be at least 1");
        }
        if self.inbox.batch_max_records == 0 {
            return bad("inbox.batch_max_records", "must be at least 1");
        }
        if self.inbox.rebalance_interval_ms < 100 {
            return bad("inbox.rebalance_interval_ms", "must be at least 100");
        }
        if !(1..=36_500).contains(&self.retention.results_days) {
            return bad("retention.results_days", "must be from 1 to 36500");
        }
        if !(1..=24 * 31).contains(&self.retention.partition_hours) {
            return bad("retention.partition_hours", "must be from 1 to 744");
        }
        if self.retention.dead_letters_days == 0 {
            return bad("retention.dead_letters_days", "must be at least 1");
        }
        if self.retention.dead_letters_per_scenario < 1 || self.retention.dead_letters_max < 1 {
            return bad("retention.dead_letters_per_scenario", "and dead_letters_max must be at least 1");
        }
        if self.retention.check_interval_secs == 0 {
            return bad("retention.check_interval_secs", "must be at least 1");
        }
        if self.api.prediction_page_default < 1 || self.api.prediction_page_default > self.api.prediction_page_max {
            return bad("api.prediction_page_default", "must be between 1 and api.prediction_page_max");
        }
        if self.api.scenario_page_default < 1 || self.api.scenario_page_default > self.api.scenario_page_max {
            return bad("api.scenario_page_default", "must be between 1 and api.scenario_page_max");
        }
        if !self.relay.metrics_listen.is_empty() && self.relay.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad("relay.metrics_listen", "must be host:port or empty");
        }
        crate::destination::DestinationPolicy::from_settings(&self.destinations)?;
        self.validate_runner()?;
        self.validate_orchestrator()
    }

    fn validate_runner(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| Err(ConfigError::Value { key, reason: reason.into() });
        let r = &self.runner;
        if !(r.sample_fps >= 0.0 && r.sample_fps.is_finite()) {
            return bad("runner.sample_fps", "must be 0 (every frame) or a positive number");
        }
        if r.default_model.is_empty() {
            return bad("runner.default_model", "must name a model of runner.models_dir");
        }
        if r.score_threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return bad("runner.score_threshold", "must be between 0 and 1");
        }
        if r.inference_threads == 0 {
            return bad("runner.inference_threads", "must be at least 1");
        }
        if r.engine == InferenceEngine::Onnxruntime
            && r.onnxruntime_library.as_deref().is_none_or(|p| p.as_os_str().is_empty())
        {
            return bad("runner.onnxruntime_library", "must name libonnxruntime.so when runner.engine is onnxruntime");
        }
        if r.open_attempts == 0 {
            return bad("runner.open_attempts", "must be at least 1");
        }
        if r.reconnect_min_ms == 0 || r.reconnect_min_ms > r.reconnect_max_ms {
            return bad("runner.reconnect_min_ms", "must be at least 1 and at most runner.reconnect_max_ms");
        }
        if r.buffer_frames == 0 || r.produce_batch == 0 {
            return bad("runner.buffer_frames", "buffer_frames and produce_batch must be at least 1");
        }
        if !(0.0..=1.0).contains(&r.motion_min_area) {
            return bad("runner.motion_min_area", "must be between 0 and 1");
        }
        if !(0.0..=255.0).contains(&r.motion_pixel_delta) {
            return bad("runner.motion_pixel_delta", "must be between 0 and 255");
        }
        if !(r.detect_interval_s > 0.0 && r.detect_interval_s.is_finite()) {
            return bad("runner.detect_interval_s", "must be a positive number of seconds");
        }
        Ok(())
    }

    fn validate_orchestrator(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| Err(ConfigError::Value { key, reason: reason.into() });
        let o = &self.orchestrator;
        if !["local", "nomad", "systemd"].contains(&o.backend.as_str()) {
            return bad("orchestrator.backend", "must be local, nomad or systemd");
        }
        if o.max_workers == 0 {
            return bad("orchestrator.max_workers", "must be at least 1");
        }
        if o.reconcile_interval_ms == 0 || o.leader_poll_ms == 0 {
            return bad(
                "orchestrator.reconcile_interval_ms",
                "reconcile_interval_ms and leader_poll_ms must be at least 1",
            );
        }
        if o.host_down_after_secs == 0 {
            return bad("orchestrator.host_down_after_secs", "must be at least 1");
        }
        if o.systemd.user.is_empty() && !o.systemd.private_tmp {
            return bad(
                "orchestrator.systemd.private_tmp",
                "false needs orchestrator.systemd.user: a dynamic user (user empty) always has a private /tmp",
            );
        }
        let names: std::collections::HashSet<&str> = o.systemd.nodes.iter().map(|n| n.name.as_str()).collect();
        if names.contains("") || names.len() < o.systemd.nodes.len() {
            return bad("orchestrator.systemd.nodes", "every node needs a name of its own");
        }
        if !["raw_exec", "exec", "docker"].contains(&o.nomad.driver.as_str()) {
            return bad("orchestrator.nomad.driver", "must be raw_exec, exec or docker");
        }
        if o.nomad.driver == "docker" && o.nomad.image.is_empty() {
            return bad("orchestrator.nomad.image", "the docker driver needs an image");
        }
        if !(o.nomad.address.starts_with("http://") || o.nomad.address.starts_with("https://")) {
            return bad("orchestrator.nomad.address", "must start with http:// or https://");
        }
        // Both backends hand these to the runner through `job::RunnerJob::env_with`.
        for (key, list) in [
            ("orchestrator.nomad.runner_env", &o.nomad.runner_env),
            ("orchestrator.systemd.runner_env", &o.systemd.runner_env),
        ] {
            if let Some(bad_pair) = list.iter().find(|kv| !kv.contains('=')) {
                return Err(ConfigError::Value { key, reason: format!("'{bad_pair}' is not KEY=VALUE") });
            }
        }
        if !o.metrics_listen.is_empty() && o.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad("orchestrator.metrics_listen", "must be host:port or empty");
        }
        Ok(())
    }
}
