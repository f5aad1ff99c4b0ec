//! Step 5 of a job's life: **record** the outcome of an attempt in the row.
//!
//! [`decide`] turns an attempt's result into the write: `success`; back to `pending` with the
//! next attempt's time in `due_at` (so the retry survives a restart); or `failed` once the
//! failure is permanent or `1 + max_retries` attempts are spent. [`write`] sends it, fenced by
//! the claim's token, and keeps trying through a database outage for as long as the lease
//! could still hold; after that the lease rescue owns the job. Successes go through a
//! [`SuccessWriter`] first, which writes the ones that finish together in one statement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use surrealdb::types::RecordId;
use tokio::sync::{mpsc, oneshot};

use crate::job::failure::{Failure, TrimPlan};
use crate::job::retry::{RetryPolicy, Strategy};
use crate::job::row::Job;
use crate::store::{JobStatus, Store, StoreError, WriteBack};

/// What an attempt ends as, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Success,
    Retry {
        failure: Failure,
        /// When the next attempt is due, by this runner's clock (for logs).
        due_at: DateTime<Utc>,
        /// How long after the write the next attempt is due: the row's `due_at` is set from the
        /// database's clock plus this, so runners whose clocks disagree agree on it.
        delay: Duration,
    },
    Failed {
        failure: Failure,
    },
}

impl Decision {
    /// The row's `retries` after this write: one more only when another attempt is scheduled.
    pub fn retries_after(&self, job: &Job) -> u32 {
        match self {
            Decision::Retry { .. } => job.retries + 1,
            _ => job.retries,
        }
    }

    /// The row's `status` after this write: what the activity feed shows and what the metrics
    /// count as finished. A retry puts the job back to `pending`.
    pub fn status(&self) -> JobStatus {
        match self {
            Decision::Success => JobStatus::Success,
            Decision::Retry { .. } => JobStatus::Pending,
            Decision::Failed { .. } => JobStatus::Failed,
        }
    }
}

/// Decides how an attempt of `job` that ended in `result` is recorded.
pub fn decide(
    job: &Job,
    result: Result<(), Failure>,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Decision {
    let failure = match result {
        Ok(()) => return Decision::Success,
        Err(failure) => failure,
    };
    if !failure.is_retryable() || job.retries >= job.max_retries() {
        return Decision::Failed { failure };
    }
    let strategy = job
        .row
        .as_ref()
        .map_or(Strategy::Linear, |row| row.strategy);
    let delay = policy.delay(
        strategy,
        job.retries + 1,
        failure.retry_after,
        fastrand::f64(),
    );
    let due_at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    Decision::Retry {
        failure,
        due_at,
        delay,
    }
}

/// How a write-back ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Recorded,
    /// The lease was taken over: another runner owns the job, nothing was written.
    LostLease,
}

/// Writes `decision` for `job`, retrying database errors until `give_up_after`. A success is
/// offered to `successes` first; when its batch cannot be written it is written here on its own.
pub async fn write(
    store: &Store,
    job: &Job,
    decision: &Decision,
    give_up_after: Duration,
    successes: Option<&SuccessWriter>,
) -> Result<Written, StoreError> {
    if let (Decision::Success, Some(writer)) = (decision, successes)
        && let Some(written) = writer.write(job).await
    {
        return Ok(written);
    }
    let attempt = job.attempt();
    let trim = job.history.plan();
    let trim = trim.as_ref().map(TrimPlan::as_trim);
    let outcome = match decision {
        Decision::Success => WriteBack::Success,
        Decision::Retry { failure, delay, .. } => WriteBack::Retry {
            error: failure.entry(attempt).with_trim(trim),
            delay: *delay,
        },
        Decision::Failed { failure } => WriteBack::Failed {
            error: failure.entry(attempt).with_trim(trim),
        },
    };
    let deadline = tokio::time::Instant::now() + give_up_after;
    let mut pause = Duration::from_millis(50);
    loop {
        match store
            .write_back(
                &job.id,
                &job.token,
                decision.retries_after(job),
                outcome.clone(),
            )
            .await
        {
            Ok(true) => return Ok(Written::Recorded),
            Ok(false) => return Ok(Written::LostLease),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(job = %job.display_id, error = %e, "could not record the outcome yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The most successes written by one statement.
const SUCCESS_BATCH: usize = 128;

/// Writes successes that finish close together in one fenced statement ([`Store::write_successes`]):
/// every commit is a sync on SurrealKV and a round trip to a server, so a burst of 32 finished
/// calls costs one of each instead of 32. Nothing waits to fill a batch: a batch is whatever
/// finished while the previous one was being written, so a lone job is written at once.
#[derive(Clone)]
pub struct SuccessWriter {
    queue: mpsc::UnboundedSender<QueuedSuccess>,
}

struct QueuedSuccess {
    id: RecordId,
    token: String,
    /// `None` when the batch failed; the job then writes its own result.
    reply: oneshot::Sender<Option<Written>>,
}

impl SuccessWriter {
    /// Starts the writing task. It ends when every clone of the writer is dropped.
    pub fn start(store: Store) -> SuccessWriter {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, rx));
        SuccessWriter { queue }
    }

    /// `None` when the batch could not be written (or the writer is gone).
    pub async fn write(&self, job: &Job) -> Option<Written> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(QueuedSuccess {
                id: job.id.clone(),
                token: job.token.clone(),
                reply,
            })
            .ok()?;
        answer.await.ok().flatten()
    }
}

async fn write_batches(store: Store, mut queue: mpsc::UnboundedReceiver<QueuedSuccess>) {
    let mut carried: Option<QueuedSuccess> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < SUCCESS_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            // One row twice in a statement (a stale attempt beside the current one) would make
            // both look written; the second goes into the next batch instead.
            if batch.iter().any(|queued| queued.id == next.id) {
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        let fences = batch
            .iter()
            .map(|queued| (queued.id.clone(), queued.token.clone()))
            .collect();
        match store.write_successes(fences).await {
            Ok(written) => {
                for queued in batch {
                    let outcome = if written.contains(&queued.id) {
                        Written::Recorded
                    } else {
                        Written::LostLease
                    };
                    let _ = queued.reply.send(Some(outcome));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, jobs = batch.len(), "batched success write failed; writing one by one");
                for queued in batch {
                    let _ = queued.reply.send(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::failure::FailureKind;
    use crate::job::row::JobRow;
    use surrealdb::types::RecordId;

    fn job(retries: u32, max_retries: u32, strategy: Strategy) -> Job {
        Job {
            id: RecordId::new("job", "a"),
            display_id: "job:a".into(),
            token: "t".into(),
            retries,
            row: Ok(JobRow {
                path: "/x".into(),
                payload: serde_json::Value::Null,
                payload_withheld: false,
                max_retries,
                strategy,
                timeout: None,
            }),
            due_at: None,
            history: Default::default(),
            rescued: false,
            asker: Default::default(),
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(10),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn success_keeps_the_retry_count() {
        let job = job(2, 3, Strategy::Linear);
        let decision = decide(&job, Ok(()), &POLICY, Utc::now());
        assert_eq!(decision, Decision::Success);
        assert_eq!(decision.retries_after(&job), 2);
        assert_eq!(decision.status(), JobStatus::Success);
    }

    #[test]
    fn retryable_failures_are_scheduled_until_the_budget_is_spent() {
        let now = Utc::now();
        let failure = Failure::http(503, "down", None);
        let first = decide(
            &job(0, 2, Strategy::Exponential),
            Err(failure.clone()),
            &POLICY,
            now,
        );
        let Decision::Retry { due_at, .. } = first else {
            panic!("{first:?}")
        };
        let wait = (due_at - now).to_std().unwrap();
        assert!(
            wait >= Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );

        let second = decide(
            &job(1, 2, Strategy::Exponential),
            Err(failure.clone()),
            &POLICY,
            now,
        );
        let Decision::Retry { due_at, .. } = second else {
            panic!("{second:?}")
        };
        let wait = (due_at - now).to_std().unwrap();
        assert!(
            wait >= Duration::from_secs(16) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );

        let last = decide(
            &job(2, 2, Strategy::Exponential),
            Err(failure),
            &POLICY,
            now,
        );
        assert!(matches!(last, Decision::Failed { .. }), "{last:?}");
        assert_eq!(
            first.status(),
            JobStatus::Pending,
            "a retry waits as pending"
        );
        assert_eq!(last.status(), JobStatus::Failed);
    }

    #[test]
    fn max_retries_zero_means_one_attempt() {
        let decision = decide(
            &job(0, 0, Strategy::Linear),
            Err(Failure::http(500, "", None)),
            &POLICY,
            Utc::now(),
        );
        assert!(matches!(decision, Decision::Failed { .. }));
    }

    #[test]
    fn permanent_failures_end_at_once() {
        let decision = decide(
            &job(0, 5, Strategy::Linear),
            Err(Failure::http(404, "", None)),
            &POLICY,
            Utc::now(),
        );
        assert!(matches!(decision, Decision::Failed { .. }));
        let invalid = Failure::new(FailureKind::Validation, "bad");
        assert!(matches!(
            decide(
                &job(0, 5, Strategy::Linear),
                Err(invalid),
                &POLICY,
                Utc::now()
            ),
            Decision::Failed { .. }
        ));
    }

    #[test]
    fn retry_after_stretches_the_delay() {
        let now = Utc::now();
        let failure = Failure::http(429, "slow down", Some(Duration::from_secs(45)));
        let Decision::Retry { due_at, .. } =
            decide(&job(0, 3, Strategy::Linear), Err(failure), &POLICY, now)
        else {
            panic!()
        };
        assert_eq!((due_at - now).to_std().unwrap(), Duration::from_secs(45));
    }
}
