//! vap's integration tests: one binary (so OpenCV and tract are linked once), one module per
//! part of the flow, each test against real services it starts itself (a throwaway PostgreSQL
//! cluster, the nisshi broker, an RTSP server, a systemd booted in a container).
//!
//! Run one part with `cargo test --features runner --test integration -- systemd::`.

// Helpers shared by the modules; each module uses a different part of them.
#[allow(dead_code)]
mod common;
#[cfg(feature = "runner")]
#[allow(dead_code)]
mod container;
#[cfg(feature = "runner")]
#[allow(dead_code)]
mod fleet;
#[cfg(feature = "runner")]
#[allow(dead_code)]
mod media;
#[cfg(feature = "runner")]
#[allow(dead_code)]
mod nomad_double;

mod api;
mod config;
mod inbox;
mod relay;
mod retention;

#[cfg(feature = "runner")]
mod console;
#[cfg(feature = "runner")]
mod deploy;
#[cfg(feature = "runner")]
mod engines;
#[cfg(feature = "runner")]
mod eval;
#[cfg(feature = "runner")]
mod events;
#[cfg(feature = "runner")]
mod motion;
#[cfg(feature = "runner")]
mod nomad;
#[cfg(feature = "runner")]
mod options;
#[cfg(feature = "runner")]
mod orchestrator;
#[cfg(feature = "runner")]
mod runner;
#[cfg(feature = "runner")]
mod systemd;
