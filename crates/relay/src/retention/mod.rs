//! Results and events are kept `retention.results_days` by frame time. vap-relay owns their
//! partitions ([`partitions`]): it makes them ahead, drops whole ones past retention, and
//! deletes row by row ([`rows`]) only what a scenario keeps for a shorter time. All of
//! retention is here.

pub mod partitions;
pub mod rows;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use partitions::{Coverage, TABLES};
use vap_core::config::{DatabaseSettings, RetentionSettings};
use vap_core::db::DbError;
use vap_core::metrics::Metrics;

/// A partition is dropped this long after retention would allow it: the inbox, which stops
/// storing frames at retention, never writes into one being dropped, whatever the clocks.
const DROP_MARGIN: chrono::Duration = chrono::Duration::hours(1);

/// What the inbox keeps, and the partitions it goes into; shared by the inbox and [`Retention`].
#[derive(Debug)]
pub struct Window {
    pub keep: chrono::Duration,
    pub coverage: Coverage,
}

impl Window {
    pub fn new(settings: &RetentionSettings) -> Self {
        Self { keep: settings.keep(), coverage: Coverage::new(settings.partition_span()) }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub dropped: Vec<String>,
    pub deleted: rows::Deleted,
}

pub struct Retention {
    pub pool: Pool,
    pub database: DatabaseSettings,
    pub settings: RetentionSettings,
    pub window: Arc<Window>,
    pub metrics: Arc<Metrics>,
}

impl Retention {
    /// A pass at once (so the current partitions exist), then every `check_interval_secs`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(self.settings.check_interval_secs));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.pass().await {
                Ok(pass) => {
                    let d = &pass.deleted;
                    let m = &self.metrics;
                    m.inc(&crate::metrics::PARTITIONS_DROPPED, &[], pass.dropped.len() as u64);
                    m.inc(&crate::metrics::ROWS_DELETED, &[], d.total() as u64);
                    if !pass.dropped.is_empty() || d.total() > 0 {
                        tracing::info!(dropped = ?pass.dropped, deleted = ?d, "retention pass");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again at the next"),
            }
        }
    }

    /// Makes the partitions from now to `partitions_ahead` spans ahead, drops those past
    /// retention, deletes what scenarios keep shorter.
    pub async fn pass(&self) -> Result<Pass, DbError> {
        let now = Utc::now();
        let span = self.settings.partition_span();
        let ahead: Vec<_> =
            (0..=i32::try_from(self.settings.partitions_ahead).unwrap_or(i32::MAX)).map(|i| now + span * i).collect();
        let mut pass = Pass::default();
        for table in TABLES {
            self.window.coverage.cover(&self.pool, table, &ahead).await?;
            let cutoff = now - self.window.keep - DROP_MARGIN;
            pass.dropped.extend(partitions::drop_before(&self.database, table, cutoff).await?);
        }
        if !pass.dropped.is_empty() {
            self.window.coverage.forget();
        }
        pass.deleted = rows::delete_expired(&self.pool, self.window.keep).await?;
        let bounds = rows::DeadLetterBounds {
            keep: chrono::Duration::days(i64::from(self.settings.dead_letters_days)),
            per_scenario: self.settings.dead_letters_per_scenario,
            total: self.settings.dead_letters_max,
        };
        pass.deleted.dead_letters = rows::prune_dead_letters(&self.pool, bounds).await?;
        Ok(pass)
    }
}
