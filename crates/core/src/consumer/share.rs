//! Divides a consumer's partitions among the processes running it (several relays). Each joins
//! a group with a session advisory lock under a random member id and takes, each under a lock
//! of its own, the partitions that fall to its rank among the members' ids (round robin). A
//! process that dies frees its locks with its connection; the others take its partitions at
//! their next round. The locks only divide the work: stored positions keep every effect
//! exactly once even while two processes briefly read the same partition.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{PositionedConsumer, RecordHandler};
use crate::backoff::Backoff;
use crate::config::DatabaseSettings;
use crate::db::{self, partition_locks, DbError};
use crate::tasks::TaskFailed;

/// A database that takes longer than this to answer counts as lost: the share is given up.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The partitions that fall to `me`: those at `me`'s rank among `members`, round robin.
pub(super) fn share_of(partitions: &[i32], members: &[i32], me: i32) -> BTreeSet<i32> {
    let Some(rank) = members.iter().position(|m| *m == me) else { return BTreeSet::new() };
    partitions.iter().enumerate().filter(|(i, _)| i % members.len() == rank).map(|(_, p)| *p).collect()
}

impl<H: RecordHandler> PositionedConsumer<H> {
    /// Consumes this process's share of `partitions` until `stop`, re-dividing every `every`.
    pub(super) async fn run_divided(
        self: Arc<Self>,
        topic: String,
        mut partitions: Vec<i32>,
        database: &DatabaseSettings,
        every: Duration,
        stop: CancellationToken,
    ) -> Result<(), TaskFailed> {
        partitions.sort_unstable();
        let group = format!("{}/{topic}", self.name);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !stop.is_cancelled() {
            if backoff.failures() > 0 && !backoff.wait(&stop).await {
                break;
            }
            let session = match db::dedicated_connection(database).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, consumer = self.name, topic, "cannot open the share's session");
                    backoff.next_delay();
                    continue;
                }
            };
            let me = fastrand::i32(1..);
            match bounded(partition_locks::join(&session, &group, me)).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, consumer = self.name, topic, "cannot join the share");
                    backoff.next_delay();
                    continue;
                }
            }
            backoff.reset();
            let mut held = Held::default();
            let outcome = self.hold_share(&session, &group, me, &topic, &partitions, every, &stop, &mut held).await;
            self.handler.held(&topic, 0);
            for p in held.partitions() {
                self.progress.released(&topic, p);
            }
            let released = held.release_all().await;
            outcome.and(released)?;
            if !stop.is_cancelled() {
                tracing::warn!(consumer = self.name, topic, "lost the share's session; its partitions are free");
                backoff.next_delay();
            }
        }
        Ok(())
    }

    /// Holds and re-divides the share until `stop` (Ok) or until the session fails (Ok, the
    /// caller joins again); Err when a partition's task died.
    #[allow(clippy::too_many_arguments)]
    async fn hold_share(
        self: &Arc<Self>,
        session: &Client,
        group: &str,
        me: i32,
        topic: &str,
        partitions: &[i32],
        every: Duration,
        stop: &CancellationToken,
        held: &mut Held,
    ) -> Result<(), TaskFailed> {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            held.reap().await?;
            let members = match bounded(partition_locks::members(session, group)).await {
                Ok(m) => m,
                Err(e) => return session_lost(self.name, topic, e),
            };
            let mine = share_of(partitions, &members, me);
            let before = held.partitions();
            for p in before.difference(&mine) {
                held.stop(*p).await?;
                self.progress.released(topic, *p);
                if let Err(e) = bounded(partition_locks::release(session, group, *p)).await {
                    return session_lost(self.name, topic, e);
                }
            }
            for p in mine.difference(&before) {
                match bounded(partition_locks::try_take(session, group, *p)).await {
                    Ok(true) => held.start(self, topic, *p, stop),
                    // Its last holder has not let go yet: the next round.
                    Ok(false) => {}
                    Err(e) => return session_lost(self.name, topic, e),
                }
            }
            let after = held.partitions();
            if after != before {
                tracing::info!(consumer = self.name, topic, partitions = ?after, members = members.len(), "partitions held");
                self.handler.held(topic, after.len());
            }
        }
    }
}

fn session_lost(consumer: &str, topic: &str, e: DbError) -> Result<(), TaskFailed> {
    tracing::warn!(error = %e, consumer, topic, "the share's session failed");
    Ok(())
}

async fn bounded<T>(f: impl Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    tokio::time::timeout(SESSION_TIMEOUT, f).await.unwrap_or(Err(DbError::Timeout))
}

/// The partitions this process consumes, each a task with a token of its own.
#[derive(Default)]
struct Held(BTreeMap<i32, (CancellationToken, JoinHandle<()>)>);

impl Held {
    fn partitions(&self) -> BTreeSet<i32> {
        self.0.keys().copied().collect()
    }

    fn start<H: RecordHandler>(
        &mut self,
        consumer: &Arc<PositionedConsumer<H>>,
        topic: &str,
        partition: i32,
        stop: &CancellationToken,
    ) {
        let token = stop.child_token();
        let (consumer, topic, t) = (Arc::clone(consumer), topic.to_string(), token.clone());
        let task = tokio::spawn(async move { consumer.consume(&topic, partition, t).await });
        self.0.insert(partition, (token, task));
    }

    /// Stops a partition's task and waits for it (a transaction under way finishes).
    async fn stop(&mut self, partition: i32) -> Result<(), TaskFailed> {
        match self.0.remove(&partition) {
            Some((token, task)) => {
                token.cancel();
                joined(task.await)
            }
            None => Ok(()),
        }
    }

    /// A task ends only when stopped: one that ended on its own died, and that is passed on.
    async fn reap(&mut self) -> Result<(), TaskFailed> {
        let ended: Vec<i32> = self.0.iter().filter(|(_, (_, t))| t.is_finished()).map(|(p, _)| *p).collect();
        for p in ended {
            self.stop(p).await?;
        }
        Ok(())
    }

    async fn release_all(&mut self) -> Result<(), TaskFailed> {
        for (token, _) in self.0.values() {
            token.cancel();
        }
        let mut failed = None;
        for (_, (_, task)) in std::mem::take(&mut self.0) {
            if let Err(e) = joined(task.await) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for (token, task) in self.0.values() {
            token.cancel();
            task.abort();
        }
    }
}

fn joined(outcome: Result<(), JoinError>) -> Result<(), TaskFailed> {
    outcome.map_err(|e| TaskFailed {
        task: "partition consumer",
        reason: if e.is_panic() { crate::tasks::panic_message(e.into_panic()) } else { e.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use super::share_of;

    #[test]
    fn partitions_are_dealt_round_robin_by_rank() {
        let parts = [0, 1, 2, 3];
        assert_eq!(share_of(&parts, &[7], 7), [0, 1, 2, 3].into());
        assert_eq!(share_of(&parts, &[3, 9], 3), [0, 2].into());
        assert_eq!(share_of(&parts, &[3, 9], 9), [1, 3].into());
        assert_eq!(share_of(&parts, &[1, 2, 3], 3), [2].into());
        assert!(share_of(&parts, &[1, 2], 5).is_empty(), "not a member: nothing");
        assert!(share_of(&parts, &[1, 2, 3, 4, 5], 5).is_empty(), "more members than partitions");
        // Every partition falls to exactly one member.
        let members = [4, 8, 15];
        let mut all: Vec<i32> = members.iter().flat_map(|m| share_of(&parts, &members, *m)).collect();
        all.sort_unstable();
        assert_eq!(all, parts);
    }
}
