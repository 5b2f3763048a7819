//! PostgreSQL: the pool, the migrations and the queries each part of vap runs.
//!
//! The SQL schema lives in `migrations/`; this module only runs it.

pub mod migrate;
pub mod outbox;
pub mod partition_locks;
pub mod positions;
pub mod results;
pub mod scenarios;
pub mod scene_events;
pub mod snapshots;
pub mod status;
pub mod webhooks;
pub mod workers;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database pool setup: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("migration {name}: {source}")]
    Migration { name: &'static str, source: tokio_postgres::Error },
    #[error("database: no answer in time")]
    Timeout,
}

impl DbError {
    /// True when PostgreSQL refused the data itself (a value it can't hold, a constraint): the
    /// same write would fail again, so the record is set aside rather than retried.
    pub fn is_data_error(&self) -> bool {
        let DbError::Postgres(e) = self else { return false };
        e.code().is_some_and(|c| ["22", "23", "54"].iter().any(|class| c.code().starts_with(class)))
    }

    /// PostgreSQL's own words (message and SQLSTATE) when it refused something; else the error.
    pub fn server_message(&self) -> String {
        match self {
            DbError::Postgres(e) => match e.as_db_error() {
                Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }

    /// True when the failure is the database being unreachable rather than a bad query.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            // A server shutting down or starting up ends sessions with 57P01..57P03 (a
            // restart: the client may try again), a lost connection with class 08.
            DbError::Postgres(e) => {
                e.is_closed() || e.code().is_none_or(|c| c.code().starts_with("57P") || c.code().starts_with("08"))
            }
            _ => false,
        }
    }
}

pub fn pg_config(settings: &DatabaseSettings) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&settings.host)
        .port(settings.port)
        .user(&settings.user)
        .dbname(&settings.dbname)
        .application_name("vap")
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            settings.statement_timeout_ms, settings.idle_in_transaction_timeout_ms
        ));
    if !settings.password.is_empty() {
        cfg.password(settings.password.expose());
    }
    cfg
}

/// A pool; connections are opened lazily, so this succeeds while the database is down.
pub fn pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let manager =
        Manager::from_config(pg_config(settings), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .build()?)
}

/// A dedicated connection outside the pool, for state tied to one session (the leader lock).
pub async fn dedicated_connection(settings: &DatabaseSettings) -> Result<tokio_postgres::Client, DbError> {
    Ok(listen(settings, &[]).await?.0)
}

/// A dedicated connection outside the pool, for LISTEN. Notifications arrive on the returned
/// channel; the channel closes when the connection drops.
pub async fn listen(
    settings: &DatabaseSettings,
    channels: &[&str],
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>), DbError> {
    use futures::StreamExt;
    let (client, mut connection) = pg_config(settings).connect(NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost");
                    break;
                }
            }
        }
    });
    for channel in channels {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
    }
    Ok((client, rx))
}
