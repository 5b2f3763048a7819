//! vap's integration tests: one binary (so OpenCV and tract are linked once), one module per
//! part of the flow, each test against real services it starts itself (a throwaway PostgreSQL
//! cluster, the nisshi broker, an RTSP server, a systemd booted in a container).
//!
//! Run one part with `cargo test --test integration -- systemd::`.

// Helpers shared by the modules; each module uses a different part of them.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod container;
#[allow(dead_code)]
mod fleet;
#[allow(dead_code)]
mod media;
#[allow(dead_code)]
mod nomad_double;

mod api;
mod config;
mod inbox;
mod kafka_compat;
mod layout;
mod relay;
mod retention;
mod webhooks;

mod accuracy;
mod console;
mod deploy;
mod engines;
mod eval;
mod events;
mod motion;
mod nomad;
mod options;
mod orchestrator;
mod runner;
mod systemd;
