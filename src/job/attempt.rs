//! One attempt of one claimed job, as named steps: wait for a slot, then [`prepare`] (validate
//! the row and build the request) → call the backend, both under [`holding_lease`] (renewing the
//! lease) → decide and write
//! ([`crate::job::record`]) → observe (metrics and one log line). [`run`] chains them and returns
//! an [`Outcome`]; tests can call each step on its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use crate::config::Backend;
use crate::job::call::{CallContext, Caller};
use crate::job::failure::Failure;
use crate::job::record::{self, Decision, SuccessWriter, Written};
use crate::job::row::{self, Job};
use crate::job::validate::{Request, Routes};
use crate::store::{Store, StoreError};

/// What every attempt shares: the database, the HTTP client, and where results are counted.
pub struct Attempts {
    pub store: Store,
    /// Successes are written through here, in batches.
    pub successes: SuccessWriter,
    pub caller: Caller,
    /// The claim's length; renewed every third of it while a call runs.
    pub lease: Duration,
    pub observer: Arc<dyn Observer>,
}

/// Where an attempt reports what happened: the runner's metrics and its activity feed (what the
/// dashboard shows live). A trait, so that the job's life depends on nothing that watches it.
pub trait Observer: Send + Sync {
    /// A claimed job started, `lag` after it became due.
    fn started(&self, backend: &str, job: &Job, lag: Option<Duration>);
    /// The job's task ended, however.
    fn ended(&self);
    /// `decision` was written for an attempt that took `elapsed`.
    fn recorded(&self, backend: &str, job: &Job, decision: &Decision, elapsed: Duration);
    /// An attempt of a job of `backend` panicked (a defect of the runner, never of the job).
    fn panicked(&self, backend: &str);
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// The decision is in the row.
    Recorded(Decision),
    /// Another runner took the job over (this one's lease ran out): nothing was written.
    LostLease,
    /// Shutdown cancelled the call: the job went back to `pending` without spending an attempt
    /// (or, if even that failed, its lease will run out and any runner rescues it).
    Released,
    /// The decision could not be written in time; the lease rescue will run the job again.
    Unrecorded(StoreError),
}

/// What [`holding_lease`] ended with.
#[derive(Debug)]
pub enum LeaseOutcome<T> {
    Finished(T),
    Lost,
    Cancelled,
}

/// What stops an attempt at shutdown. A job still waiting for its slot has not called anyone, so
/// it goes back to `pending` as soon as draining starts (`waiting`): the grace period is for calls
/// in flight, and a waiting job that took a freed slot during it would start a call only to have
/// it cancelled. A call stops when the grace period ends (`calls`).
#[derive(Debug, Clone)]
pub struct Stops {
    pub waiting: watch::Receiver<bool>,
    pub calls: watch::Receiver<bool>,
}

/// Runs one attempt of `job` and records its outcome. `slot` resolves to the job's slot, at once
/// or once a running call ends (a job claimed ahead of the free slots), while the lease is held.
/// The slot is held until the backend call ends and dropped before the write-back, so the next
/// job need not wait for the database's commit.
pub async fn run<S>(
    attempts: &Attempts,
    backend: &Backend,
    routes: &Routes,
    mut job: Job,
    stops: Stops,
    slot: impl std::future::Future<Output = S>,
) -> Outcome {
    let Stops {
        waiting: mut stop_waiting,
        calls: mut cancel,
    } = stops;
    let slot = match holding_lease(attempts, &job, slot, &mut stop_waiting).await {
        LeaseOutcome::Finished(slot) => slot,
        LeaseOutcome::Lost => {
            tracing::warn!(job = %job.display_id, "lost the lease while waiting for a slot; another runner owns the job now");
            return Outcome::LostLease;
        }
        LeaseOutcome::Cancelled => return release(&attempts.store, &job).await,
    };
    let started = Instant::now();
    let observer = attempts.observer.as_ref();
    let lag = job
        .due_at
        .map(|due| (Utc::now() - due).to_std().unwrap_or_default());
    if let Some(lag) = lag {
        tracing::debug!(job = %job.display_id, lag_ms = lag.as_millis() as u64, "claimed");
    }
    observer.started(&backend.name, &job, lag);
    let _ended = Ended(observer);
    if let Err(outcome) = read_withheld(&attempts.store, &mut job, backend).await {
        return outcome;
    }

    let result = match prepare(backend, routes, &job) {
        Err(failure) => Err(failure),
        Ok((request, timeout)) => {
            let context = CallContext {
                job_id: &job.display_id,
                asker: &job.asker,
                attempt: job.attempt(),
                token: backend.token.as_ref(),
                timeout,
            };
            let call = attempts.caller.call(request, context);
            match holding_lease(attempts, &job, call, &mut cancel).await {
                LeaseOutcome::Finished(result) => result,
                LeaseOutcome::Lost => {
                    tracing::warn!(job = %job.display_id, "lost the lease while calling; another runner owns the job now");
                    return Outcome::LostLease;
                }
                LeaseOutcome::Cancelled => return release(&attempts.store, &job).await,
            }
        }
    };
    drop(slot);

    let decision = record::decide(&job, result, &backend.retry, Utc::now());
    let written = record::write(
        &attempts.store,
        &job,
        &decision,
        attempts.lease,
        Some(&attempts.successes),
    )
    .await;
    let outcome = match written {
        Ok(Written::Recorded) => Outcome::Recorded(decision),
        Ok(Written::LostLease) => Outcome::LostLease,
        Err(e) => Outcome::Unrecorded(e),
    };
    observe(observer, &backend.name, &job, &outcome, started.elapsed());
    outcome
}

/// Validates the row against the backend's spec and builds the request, with the call's timeout:
/// the backend's, or the row's own when the backend lets rows override it.
pub fn prepare(
    backend: &Backend,
    routes: &Routes,
    job: &Job,
) -> Result<(Request, Duration), Failure> {
    let row = job.row.clone()?;
    let timeout = match (backend.timeout_overridable, row.timeout) {
        (true, Some(secs)) => Duration::from_secs(secs),
        _ => backend.timeout,
    };
    let request = routes.prepare(&backend.base_url, &row.path, row.payload)?;
    Ok((request, timeout))
}

/// Drives `work` (the wait for a slot, or the call) while renewing the lease every third of its
/// length; stops early when the lease is lost or shutdown cancels the work. A job claimed ahead
/// therefore keeps its lease however long the calls before it take, and no other runner rescues
/// it meanwhile. `work` is polled first: most slots are free at once, and a finished call must not
/// lose a race to a renewal or a cancel that arrived with it.
pub async fn holding_lease<T>(
    attempts: &Attempts,
    job: &Job,
    work: impl std::future::Future<Output = T>,
    cancel: &mut watch::Receiver<bool>,
) -> LeaseOutcome<T> {
    let lease = attempts.lease;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            result = &mut work => return LeaseOutcome::Finished(result),
            _ = renew.tick() => {
                match attempts.store.extend_lease(&job.id, &job.token, lease).await {
                    Ok(true) => {}
                    Ok(false) => return LeaseOutcome::Lost,
                    // The database may be back before the lease ends; keep calling.
                    Err(e) => tracing::warn!(job = %job.display_id, error = %e, "could not renew the lease"),
                }
            }
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    return LeaseOutcome::Cancelled;
                }
            }
        }
    }
}

/// [`run`], with a panic inside the attempt caught: it is logged with the job's id, counted,
/// and the row is released at once instead of waiting for its lease to run out. (A panic is a
/// defect of the runner, not of the job, so it spends no attempt.)
pub async fn run_caught<S>(
    attempts: &Attempts,
    backend: &Backend,
    routes: &Routes,
    job: Job,
    stops: Stops,
    slot: impl std::future::Future<Output = S>,
) {
    use futures::FutureExt;
    let held = Held::of(&job);
    let attempt = std::panic::AssertUnwindSafe(run(attempts, backend, routes, job, stops, slot));
    let Err(panic) = attempt.catch_unwind().await else {
        return;
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(job = %held.display_id, backend = %backend.name, panic = %message, "the attempt panicked; releasing the job");
    attempts.observer.panicked(&backend.name);
    release_held(&attempts.store, &held).await;
}

/// Reads a payload the claim's reply left out (see [`crate::store::INLINE_CHARS`]), within the
/// backend's limit; a payload that fails the limit or does not parse fails the job as the
/// claim would have. `Err`: the outcome of an attempt that cannot go on (the lease is gone, or
/// the database did not answer: the job goes back to `pending` without spending an attempt).
async fn read_withheld(store: &Store, job: &mut Job, backend: &Backend) -> Result<(), Outcome> {
    let Ok(row) = &mut job.row else {
        return Ok(());
    };
    if !row.payload_withheld {
        return Ok(());
    }
    match store.withheld_payload(&job.id, &job.token).await {
        Ok(Some(payload)) => {
            match row::read_payload(Some(&payload), &backend.row_limits) {
                Ok(payload) => {
                    row.payload = payload;
                    row.payload_withheld = false;
                }
                Err(failure) => job.row = Err(failure),
            }
            Ok(())
        }
        Ok(None) => {
            tracing::warn!(job = %job.display_id, "lost the lease before reading the payload; another runner owns the job now");
            Err(Outcome::LostLease)
        }
        Err(e) => {
            tracing::warn!(job = %job.display_id, error = %e, "could not read the payload; releasing the job");
            Err(release(store, job).await)
        }
    }
}

/// What releasing a claimed row needs, kept apart from the [`Job`] an attempt consumes.
struct Held {
    id: surrealdb::types::RecordId,
    token: String,
    display_id: String,
}

impl Held {
    fn of(job: &Job) -> Held {
        Held {
            id: job.id.clone(),
            token: job.token.clone(),
            display_id: job.display_id.clone(),
        }
    }
}

/// Puts a job whose call shutdown cancelled back to `pending`, without spending an attempt.
async fn release(store: &Store, job: &Job) -> Outcome {
    release_held(store, &Held::of(job)).await;
    Outcome::Released
}

async fn release_held(store: &Store, held: &Held) {
    match store.release(&held.id, &held.token).await {
        Ok(true) => {
            tracing::info!(job = %held.display_id, "released unfinished job back to pending")
        }
        Ok(false) => {
            tracing::warn!(job = %held.display_id, "could not release: the lease was already gone")
        }
        Err(e) => {
            tracing::warn!(job = %held.display_id, error = %e, "could not release; the lease will expire")
        }
    }
}

/// Tells the observer the task ended, on every exit path.
struct Ended<'a>(&'a dyn Observer);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.ended();
    }
}

/// Reports the outcome and logs one line for it.
fn observe(
    observer: &dyn Observer,
    backend: &str,
    job: &Job,
    outcome: &Outcome,
    elapsed: Duration,
) {
    match outcome {
        Outcome::Recorded(decision) => {
            observer.recorded(backend, job, decision, elapsed);
            log_decision(job, backend, decision, elapsed);
        }
        Outcome::LostLease => {
            tracing::warn!(job = %job.display_id, "result not written: lost the lease to another runner, which owns the job now")
        }
        Outcome::Unrecorded(e) => {
            tracing::error!(job = %job.display_id, error = %e, "could not record the outcome; the lease rescue will retry the job")
        }
        Outcome::Released => {}
    }
}

fn log_decision(job: &Job, backend: &str, decision: &Decision, elapsed: Duration) {
    let elapsed_ms = elapsed.as_millis() as u64;
    match decision {
        Decision::Success => {
            tracing::info!(job = %job.display_id, backend, attempt = job.attempt(), elapsed_ms, "job succeeded")
        }
        Decision::Retry {
            failure, due_at, ..
        } => tracing::warn!(
            job = %job.display_id, backend, attempt = job.attempt(), elapsed_ms,
            kind = failure.kind.as_str(), code = failure.code, reason = %failure.reason, retry_at = %due_at,
            "attempt failed; retry scheduled"
        ),
        Decision::Failed { failure } => tracing::warn!(
            job = %job.display_id, backend, attempt = job.attempt(), elapsed_ms,
            kind = failure.kind.as_str(), code = failure.code, reason = %failure.reason,
            "job failed"
        ),
    }
}
