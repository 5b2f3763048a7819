//! `vap-relay`: the only process between PostgreSQL and Kafka. It runs the outbox relay and
//! the inbox side by side, and serves its own /health, /ready and /metrics.
//!
//! | module | what |
//! |---|---|
//! | [`outbox`] | outbox rows -> Kafka, marked published only after the ack |
//! | [`inbox`] | Kafka `results`, `events`, `snapshots` -> PostgreSQL, exactly-once effects |
//! | [`webhooks`] | scene events POSTed to receivers, signed, at least once, in order per scenario |
//! | [`retention`] | results and events kept `retention.results_days`: partitions made ahead, dropped whole |

#![deny(unsafe_code)]

pub mod inbox;
pub mod metrics;
pub mod outbox;
pub mod retention;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::inbox::{Inbox, Watch};
use crate::outbox::OutboxRelay;
use vap_core::config::Settings;
use vap_core::consumer::Progress;
use vap_core::db;
use vap_core::kafka::KafkaLink;
use vap_core::lifecycle;
use vap_core::metrics::Metrics;
use vap_core::tasks::{OwnedTasks, TaskFailed};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Task(#[from] TaskFailed),
    #[error("relay metrics listener {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("configuration: {0}")]
    Config(String),
}

/// Runs until `shutdown`, then finishes the batch in hand and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), RelayError> {
    vap_core::cli::migrate_on_start(&settings).await?;
    let pool = db::pool(&settings.database)?;
    // Fail fast on a bad database address; the broker may come later.
    drop(pool.get().await.map_err(db::DbError::from)?);
    let metrics = Arc::new(Metrics::default());
    let kafka = Arc::new(KafkaLink::new(settings.kafka.clone()));
    let mut tasks = OwnedTasks::new(&shutdown);
    let progress = Arc::new(Progress::default());
    if !settings.relay.metrics_listen.is_empty() {
        let addr = settings.relay.metrics_listen.clone();
        let listener = TcpListener::bind(&addr).await.map_err(|source| RelayError::Bind { addr, source })?;
        let watch = Watch {
            progress: Arc::clone(&progress),
            stall_after: Duration::from_secs(settings.inbox.stall_after_secs),
        };
        tasks.spawn(
            "metrics server",
            vap_core::metrics::serve(listener, Arc::clone(&metrics), Arc::new(watch), tasks.token()),
        );
    }
    let relay = OutboxRelay {
        pool: pool.clone(),
        database: settings.database.clone(),
        kafka: Arc::clone(&kafka),
        settings: settings.relay.clone(),
        metrics: Arc::clone(&metrics),
    };
    tasks.spawn("outbox relay", relay.run(tasks.token()));
    let window = Arc::new(crate::retention::Window::new(&settings.retention));
    let retention = crate::retention::Retention {
        pool: pool.clone(),
        database: settings.database.clone(),
        settings: settings.retention.clone(),
        window: Arc::clone(&window),
        metrics: Arc::clone(&metrics),
    };
    tasks.spawn("retention", retention.run(tasks.token()));
    if settings.inbox.enabled {
        let inbox = Inbox {
            pool: pool.clone(),
            kafka,
            settings: settings.inbox.clone(),
            metrics: Arc::clone(&metrics),
            global_webhook: settings.webhooks.url.clone(),
            database: settings.database.clone(),
            retention: window,
            progress,
        };
        tasks.spawn_fallible("inbox", inbox.run(tasks.token()));
        let policy = vap_core::destination::DestinationPolicy::from_settings(&settings.destinations)
            .map_err(|e| RelayError::Config(e.to_string()))?;
        let sender =
            crate::webhooks::Sender { pool, settings: settings.webhooks.clone(), policy: Arc::new(policy), metrics };
        tasks.spawn("webhook sender", sender.run(tasks.token()));
    }
    lifecycle::notify_ready();
    tracing::info!("relay ready");
    let stopping = tasks.token();
    tasks.spawn("stop notifier", async move {
        stopping.cancelled().await;
        lifecycle::notify_stopping();
    });
    Ok(tasks.join().await?)
}
