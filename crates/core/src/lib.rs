//! vap-core: what every vap process shares. The contracts between processes (the records on
//! Kafka, a scenario's options, the job a runner is started with, camera URLs and where runners
//! may connect, signatures), typed configuration, PostgreSQL (pool, migrations, queries), the
//! Kafka client and its positioned consumer, and the service plumbing (owned tasks, retries,
//! signals, metrics exposition).
//!
//! | module | what |
//! |---|---|
//! | [`events`] | the records on Kafka: the contract between processes |
//! | [`detection`] | one detected object, as a runner reports it |
//! | [`options`] | a scenario's options (model, fps, classes, confidence, mask): checks, merge patch, digest |
//! | [`job`] | the orchestrator-runner contract: job environment, arguments, exit codes |
//! | [`camera_url`] | which camera URLs are accepted, and their redaction |
//! | [`destination`] | which addresses runners may connect to (SSRF policy) |
//! | [`signing`] | results signed by their scenario's runner, verified by the inbox |
//! | [`sealed`] | job secrets sealed for systemd runners, opened with a key only they get |
//! | [`secret`] | a value that never reaches a log line |
//! | [`models`] | the model catalogue: manifests beside ONNX files, checked at start, read by API and runner |
//! | [`config`] | typed settings: defaults < TOML < `VAP_*` |
//! | [`db`] | PostgreSQL: pool, migrations, queries |
//! | [`kafka`] | the Kafka interface (rskafka): connect, topics, partitioner |
//! | [`consumer`] | a Kafka consumer that keeps its positions in PostgreSQL (inbox, orchestrator) |
//! | [`backoff`] | the one retry beat: exponential, full jitter, cap, deadline |
//! | [`tasks`] | owned tasks: a task that dies stops its service, nothing detached |
//! | [`lifecycle`] | signals, graceful shutdown, sd_notify, logging |
//! | [`metrics`] | Prometheus text exposition, and the /health + /metrics server of relay and orchestrator |
//! | [`cli`] | the command line shared by the binaries |
//! | [`sys`] | the only unsafe code (libc calls), and the one lock policy |

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backoff;
pub mod camera_url;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod db;
pub mod destination;
pub mod detection;
pub mod events;
pub mod job;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod models;
pub mod options;
pub mod sealed;
pub mod secret;
pub mod signing;
#[allow(unsafe_code)]
pub mod sys;
pub mod tasks;
pub mod tls;
