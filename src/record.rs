//! Step 5 of a job's life: **record** the outcome of an attempt in the row.
//!
//! [`decide`] turns an attempt's result into the write: `success`; back to `pending` with the
//! next attempt's time in `due_at` (so the retry survives a restart); or `failed` once the
//! failure is permanent or `1 + max_retries` attempts are spent. [`write`] sends it, fenced by
//! the claim's token, and keeps trying through a database outage for as long as the lease
//! could still hold; after that the lease rescue owns the job.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::claim::Job;
use crate::failure::Failure;
use crate::retry::{RetryPolicy, Strategy};
use crate::store::{Store, StoreError, WriteBack};

/// What an attempt ends as, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Success,
    Retry {
        failure: Failure,
        due_at: DateTime<Utc>,
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

    pub fn status(&self) -> &'static str {
        match self {
            Decision::Success => "success",
            Decision::Retry { .. } => "pending",
            Decision::Failed { .. } => "failed",
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
    Decision::Retry { failure, due_at }
}

/// How a write-back ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Recorded,
    /// The lease was taken over: another runner owns the job, nothing was written.
    LostLease,
}

/// Writes `decision` for `job`, retrying database errors until `give_up_after`.
pub async fn write(
    store: &Store,
    job: &Job,
    decision: &Decision,
    give_up_after: Duration,
) -> Result<Written, StoreError> {
    let attempt = job.attempt();
    let outcome = match decision {
        Decision::Success => WriteBack::Success,
        Decision::Retry { failure, due_at } => WriteBack::Retry {
            failure,
            attempt,
            due_at: *due_at,
        },
        Decision::Failed { failure } => WriteBack::Failed { failure, attempt },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claim::JobRow;
    use crate::failure::FailureKind;
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
                max_retries,
                strategy,
                timeout: None,
            }),
            due_at: None,
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
