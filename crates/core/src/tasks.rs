//! Tasks a service owns. Nothing is detached: a task that panics cancels its siblings and
//! comes back as an error, so the process ends non-zero and its supervisor restarts it; a
//! dropped set aborts what is left in it.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("task {task} died: {reason}")]
pub struct TaskFailed {
    pub task: &'static str,
    pub reason: String,
}

pub struct OwnedTasks {
    set: JoinSet<Result<(), TaskFailed>>,
    cancel: CancellationToken,
}

impl OwnedTasks {
    /// Tasks that stop when `parent` is cancelled, or when one of them dies.
    pub fn new(parent: &CancellationToken) -> Self {
        Self { set: JoinSet::new(), cancel: parent.child_token() }
    }

    /// The token the tasks stop on; it fires at once when one of them dies.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_fallible(name, async move {
            task.await;
            Ok(())
        });
    }

    /// A task that owns tasks of its own and passes their failure on.
    pub fn spawn_fallible(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), TaskFailed>> + Send + 'static,
    ) {
        let cancel = self.cancel.clone();
        self.set.spawn(async move {
            let outcome = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(payload) => Err(TaskFailed { task: name, reason: panic_message(payload) }),
            };
            if let Err(e) = &outcome {
                tracing::error!(task = e.task, reason = e.reason, "task died; stopping the others");
                cancel.cancel();
            }
            outcome
        });
    }

    /// Cancels the tasks and waits for them.
    pub async fn shutdown(self) -> Result<(), TaskFailed> {
        self.cancel.cancel();
        self.join().await
    }

    /// Waits for every task; the first failure, if any, once all have stopped.
    pub async fn join(mut self) -> Result<(), TaskFailed> {
        let mut failed = None;
        while let Some(done) = self.set.join_next().await {
            let outcome = done.unwrap_or_else(|e| Err(TaskFailed { task: "aborted", reason: e.to_string() }));
            if let Err(e) = outcome {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast::<&'static str>().map(|s| s.to_string()).unwrap_or_else(|_| "panic".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_its_siblings_and_is_reported() {
        let root = CancellationToken::new();
        let mut tasks = OwnedTasks::new(&root);
        let token = tasks.token();
        tasks.spawn("sibling", async move { token.cancelled().await });
        tasks.spawn("doomed", async { panic!("boom") });
        tasks.token().cancelled().await;
        let err = tasks.join().await.unwrap_err();
        assert_eq!((err.task, err.reason.as_str()), ("doomed", "boom"));
        assert!(!root.is_cancelled(), "only the set's own token is cancelled");
    }

    #[tokio::test]
    async fn shutdown_cancels_and_waits() {
        let root = CancellationToken::new();
        let mut tasks = OwnedTasks::new(&root);
        let (token, (tx, rx)) = (tasks.token(), tokio::sync::oneshot::channel());
        tasks.spawn("worker", async move {
            token.cancelled().await;
            let _ = tx.send("flushed");
        });
        tasks.shutdown().await.unwrap();
        assert_eq!(rx.await.unwrap(), "flushed");
    }
}
