//! Process lifecycle: SIGTERM/SIGINT to a cancellation token, and systemd's notify protocol.
//!
//! The notify calls are no-ops when `NOTIFY_SOCKET` is unset, so the same binary behaves the
//! same under a unit, Nomad or a plain shell.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        cancel.cancel();
    });
    token
}

pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

pub fn notify_watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

/// Pings systemd's watchdog at half its period, when the unit set `WatchdogSec`.
pub struct Watchdog {
    interval: Option<tokio::time::Interval>,
}

impl Watchdog {
    pub fn from_env() -> Self {
        let mut usec = 0u64;
        let interval = sd_notify::watchdog_enabled(false, &mut usec).then(|| {
            let mut i = tokio::time::interval(Duration::from_micros(usec / 2).max(Duration::from_millis(10)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        Self { interval }
    }

    /// Resolves at the next ping time and sends the ping; never resolves when disabled.
    /// Call it from the main loop so a stuck loop stops the pings.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
            None => std::future::pending().await,
        }
    }
}

/// Logging to stderr, one line per event.
pub fn init_logging(settings: &crate::config::LogSettings) {
    crate::camera_url::add_secret_query_params(&settings.secret_query_params);
    let mut filter = tracing_subscriber::EnvFilter::try_new(&settings.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // At debug, tokio_postgres logs query parameters (camera URLs carry credentials): keep it
    // at info even when the operator asks for more. rskafka logs every connection at info, and
    // logs as an error every controller error it also returns to vap (which reports it itself):
    // two services creating the same topic at first start looked like a failure.
    let verbose = settings.level.contains("debug") || settings.level.contains("trace");
    let quiet: &[&str] = if verbose {
        &["tokio_postgres=info", "rskafka=info"]
    } else {
        &["rskafka=warn", "rskafka::client::controller=off"]
    };
    for directive in quiet {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if settings.json { builder.json().try_init() } else { builder.try_init() };
}
