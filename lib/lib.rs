//! vap: a video analytics platform.
//!
//! ```text
//! client -> vap-api (api) -> PostgreSQL [scenarios + outbox, one transaction] (db)
//! outbox relay (outbox_relay) -> Kafka `init_scenario` / `shutdown_scenario` (kafka, events)
//! vap-orchestrator (orchestrator) -> one runner per scenario: local process | Nomad | systemd
//! vap-runner (runner): OpenCV decode -> detect (tract or onnxruntime) -> track, zones (analytics) -> Kafka `results`, `events`
//! inbox (inbox): Kafka `results`, `events` -> PostgreSQL, idempotent -> api serves predictions, events
//! ```
//!
//! | module | part of the flow |
//! |---|---|
//! | [`api`] | the REST API (hyper), SSE of new results |
//! | [`db`] | PostgreSQL: pool, migrations, scenario/outbox/result queries |
//! | [`outbox_relay`] | outbox rows -> Kafka, marked published only after the ack |
//! | [`inbox`] | Kafka `results`, `events` -> `scenario_results`, `scenario_events`, exactly-once effects |
//! | [`webhooks`] | scene events POSTed to receivers, signed, at least once, in order per scenario |
//! | [`orchestrator`] | `vap-orchestrator`: leader, event consumer, reconcile, backends |
//! | [`relay`] | the `vap-relay` process: outbox relay + inbox + retention + its metrics |
//! | [`retention`] | results and events kept `retention.results_days`: partitions made ahead, dropped whole |
//! | [`analytics`] | tracks and zone/line events derived from detections (pure; the runner runs it) |
//! | `runner` | `vap-runner`: capture, detection, publishing (feature `runner`: the only code linking OpenCV and tract, and opening onnxruntime) |
//! | [`consumer`] | a Kafka consumer that keeps its positions in PostgreSQL (inbox, orchestrator) |
//! | [`models`] | the model catalogue: manifests beside ONNX files, checked at start, read by API and runner |
//! | [`options`] | a scenario's options (model, fps, classes, confidence, mask): checks, merge patch, digest |
//! | [`job`] | the orchestrator-runner contract: job environment, arguments, exit codes |
//! | [`kafka`] | the Kafka interface (rskafka): connect, topics, partitioner |
//! | [`events`] | the messages on Kafka: the contract between processes |
//! | [`camera_url`] | which camera URLs are accepted, and their redaction |
//! | [`destination`] | which addresses runners may connect to (SSRF policy) |
//! | [`signing`] | results signed by their scenario's runner, verified by the inbox |
//! | [`sealed`] | job secrets sealed for systemd runners, opened with a key only they get |
//! | [`config`] | typed settings: defaults < TOML < `VAP_*` |
//! | [`backoff`] | the one retry beat: exponential, full jitter, cap, deadline |
//! | [`lifecycle`] | signals, graceful shutdown, sd_notify, logging |
//! | [`metrics`] | Prometheus text exposition, and the /health + /metrics server of relay and orchestrator |
//! | [`tasks`] | owned tasks: a task that dies stops its service, nothing detached |
//! | [`sys`] | the only unsafe code (libc calls), and the one lock policy |
//! | [`devstack`] | throwaway PostgreSQL + broker for tests and the embedded default |
//! | [`embedded`] | `vap-dev`: the whole flow on one machine, no Docker |
//! | [`cli`] | the command line shared by the binaries |
//!
//! Binaries in `bin/` only parse the command line and configuration, then call in here.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod analytics;
pub mod api;
pub mod backoff;
pub mod camera_url;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod db;
pub mod destination;
pub mod devstack;
pub mod embedded;
pub mod events;
pub mod inbox;
pub mod job;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod models;
pub mod options;
pub mod orchestrator;
pub mod outbox_relay;
pub mod relay;
pub mod retention;
#[cfg(feature = "runner")]
pub mod runner;
pub mod sealed;
pub mod signing;
#[allow(unsafe_code)]
pub mod sys;
pub mod tasks;
pub mod tls;
pub mod webhooks;
