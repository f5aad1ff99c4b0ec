//! The loop that drives jobs through their life: claim → validate → call → record.
//!
//! One task polls and claims; each claimed job runs in its own task, at most `concurrency` calls
//! at a time ([`Slots`]), so a slow backend never blocks the others; a job's write-back runs
//! after its slot is freed. The poller wakes on a LIVE SELECT notification (claiming the
//! notified row by id when it can), when a call ends and the last poll was full, or every
//! `poll_interval` (live queries can miss notifications, and retries become due by the clock).
//! While a call runs, its task renews the lease every third of its length.
//!
//! Shutdown: claiming stops, in-flight jobs get `shutdown_grace` to finish, then the rest are
//! cancelled and put back to `pending` without spending an attempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::call::{CallContext, Caller};
use crate::claim::{Claimer, Job, Watermark};
use crate::config::Backend;
use crate::failure::Failure;
use crate::metrics::{Metrics, TableLabels};
use crate::record::{self, Decision, SuccessWriter, Written};
use crate::store::{DueHint, Store};
use crate::validate::Routes;

/// Tuning of the loop; defaults are in [`RunnerOptions::default`].
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Jobs running at once, across all backends.
    pub concurrency: usize,
    /// The longest the runner waits between two looks at the tables.
    pub poll_interval: Duration,
    /// How long a claim holds without renewal; a dead runner's jobs are rescued after this.
    pub lease: Duration,
    /// How long in-flight jobs may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Names this runner in the rows it claims (`assignee`).
    pub runner_id: String,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            concurrency: 32,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            runner_id: default_runner_id(),
        }
    }
}

/// `host:pid:random`, unique per process even when two runners share a host.
pub fn default_runner_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// A backend with its compiled routes.
pub struct BackendRuntime {
    pub backend: Backend,
    pub routes: Routes,
}

/// Everything a job task needs, shared.
struct Shared {
    store: Store,
    /// Successes are written through here, in batches.
    successes: SuccessWriter,
    caller: Caller,
    options: RunnerOptions,
    status: Arc<RunnerStatus>,
}

/// What the operations listener and systemd need to know about a running runner.
pub struct RunnerStatus {
    pub metrics: Metrics,
    tables: Vec<String>,
    /// Live queries currently armed; ready when every table has one.
    live_armed: AtomicUsize,
    /// When the main loop last went round, so the watchdog only pings a loop that is alive.
    last_tick: Mutex<Instant>,
}

impl RunnerStatus {
    fn new(tables: Vec<String>) -> RunnerStatus {
        RunnerStatus {
            metrics: Metrics::new(),
            tables,
            live_armed: AtomicUsize::new(0),
            last_tick: Mutex::new(Instant::now()),
        }
    }

    pub fn live_queries_armed(&self) -> bool {
        self.live_armed.load(Ordering::SeqCst) >= self.tables.len()
    }

    /// Whether the main loop went round within `within`.
    pub fn loop_alive(&self, within: Duration) -> bool {
        self.last_tick.lock().expect("tick lock").elapsed() <= within
    }

    fn tick(&self) {
        *self.last_tick.lock().expect("tick lock") = Instant::now();
    }

    /// Reads the pending and processing counts of every table into the row gauges.
    pub async fn refresh_row_counts(&self, store: &Store) {
        for table in &self.tables {
            match store.count_open(table).await {
                Ok((pending, processing)) => {
                    for (status, count) in [("pending", pending), ("processing", processing)] {
                        let labels = TableLabels {
                            table: table.clone(),
                            status: status.into(),
                        };
                        self.metrics.rows.get_or_create(&labels).set(count as i64);
                    }
                }
                Err(e) => tracing::debug!(%table, error = %e, "could not count rows for metrics"),
            }
        }
    }
}

pub struct Runner {
    shared: Arc<Shared>,
    backends: Arc<Vec<Arc<BackendRuntime>>>,
    claimer: Claimer,
}

impl Runner {
    pub fn new(store: Store, backends: Vec<BackendRuntime>, options: RunnerOptions) -> Runner {
        let claimer = Claimer {
            runner_id: options.runner_id.clone(),
            lease: options.lease,
        };
        let tables = backends.iter().map(|b| b.backend.table.clone()).collect();
        Runner {
            shared: Arc::new(Shared {
                successes: SuccessWriter::start(store.clone()),
                store,
                caller: Caller::new(),
                options,
                status: Arc::new(RunnerStatus::new(tables)),
            }),
            backends: Arc::new(backends.into_iter().map(Arc::new).collect()),
            claimer,
        }
    }

    pub fn status(&self) -> Arc<RunnerStatus> {
        self.shared.status.clone()
    }

    pub fn backends(&self) -> Arc<Vec<Arc<BackendRuntime>>> {
        self.backends.clone()
    }

    /// Runs until `shutdown` completes, then drains as described in the module docs.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let options = &self.shared.options;
        let slots = Slots::new(options.concurrency.max(1));
        let wake = Arc::new(Notify::new());
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let mut watchers = JoinSet::new();
        let hints = Arc::new(Mutex::new(Hints::default()));
        for (index, backend) in self.backends.iter().enumerate() {
            watchers.spawn(watch_table(
                self.shared.store.clone(),
                WatchTarget {
                    table: backend.backend.table.clone(),
                    backend: index,
                    hints: hints.clone(),
                },
                wake.clone(),
                self.shared.status.clone(),
            ));
        }
        watchers.spawn(count_reconnects(
            self.shared.store.clone(),
            self.shared.status.clone(),
        ));
        tracing::info!(
            runner = %options.runner_id,
            backends = self.backends.len(),
            concurrency = options.concurrency,
            "runner started"
        );

        let mut jobs: JoinSet<()> = JoinSet::new();
        let mut more_work = false;
        let mut next_backend = 0usize;
        let mut next_poll = tokio::time::Instant::now();
        let mut watermarks = vec![Watermark::new(options.poll_interval); self.backends.len()];
        let claim_batch = (options.concurrency / 4).max(1);
        tokio::pin!(shutdown);
        loop {
            self.shared.status.tick();
            let mut polled = false;
            let freed = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(next_poll) => {
                    polled = true;
                    false
                }
                () = wake.notified() => false,
                () = slots.freed.notified() => true,
                Some(_) = jobs.join_next(), if !jobs.is_empty() => true,
            };
            if freed {
                // A call ended (or its write-back did). Look again only if the last look left
                // work behind, and only once enough slots are free to make the round trip worth
                // it (or nothing else runs): claims then come in batches, not one per job.
                let free = slots.room(&jobs);
                if !more_work || (free < claim_batch && free < options.concurrency) {
                    continue;
                }
            }
            if slots.room(&jobs) == 0 {
                // Full: the next finished job triggers the next look.
                more_work = true;
                next_poll = tokio::time::Instant::now() + options.poll_interval;
                continue;
            }
            let hinted = std::mem::take(&mut *hints.lock().expect("hints lock"));
            // New rows reported by a live query, when the last look left nothing behind and they
            // all fit: claimed by id at once. Polls, backlogs and anything the hints may not
            // cover take the full round, which honours priorities.
            if !polled
                && !more_work
                && !hinted.overflowed
                && !hinted.rows.is_empty()
                && hinted.rows.len() <= slots.room(&jobs)
            {
                self.claim_hinted(hinted.rows, &slots, &mut jobs, &cancel_rx)
                    .await;
                continue;
            }
            let round = self
                .claim_round(
                    &slots,
                    &mut jobs,
                    &mut next_backend,
                    &mut watermarks,
                    &cancel_rx,
                    shutdown.as_mut(),
                )
                .await;
            let Some(more) = round else { break };
            more_work = more;
            let again_now = more_work && slots.room(&jobs) > 0;
            next_poll = tokio::time::Instant::now()
                + if again_now {
                    Duration::ZERO
                } else {
                    options.poll_interval
                };
        }

        watchers.abort_all();
        let in_flight = jobs.len();
        tracing::info!(in_flight, grace = ?options.shutdown_grace, "shutting down: no new claims");
        let drained = tokio::time::timeout(options.shutdown_grace, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = jobs.len(),
                "grace period over: cancelling and releasing the remaining jobs"
            );
            let _ = cancel_tx.send(true);
            let released = tokio::time::timeout(Duration::from_secs(10), async {
                while jobs.join_next().await.is_some() {}
            })
            .await;
            if released.is_err() {
                jobs.abort_all();
            }
        }
        tracing::info!("runner stopped");
    }

    /// Claims the hinted rows of each backend by id and starts them.
    async fn claim_hinted(
        &self,
        hinted: Vec<(usize, DueHint)>,
        slots: &Slots,
        jobs: &mut JoinSet<()>,
        cancel: &watch::Receiver<bool>,
    ) {
        let mut by_backend: Vec<Vec<DueHint>> = vec![Vec::new(); self.backends.len()];
        for (index, hint) in hinted {
            if let Some(rows) = by_backend.get_mut(index) {
                rows.push(hint);
            }
        }
        for (backend, rows) in self.backends.iter().zip(by_backend) {
            if rows.is_empty() {
                continue;
            }
            match self.claimer.take_hinted(&self.shared.store, rows).await {
                Ok(claimed) => self.start(backend, claimed, slots, jobs, cancel),
                Err(e) => {
                    tracing::debug!(backend = %backend.backend.name, error = %e, "could not claim hinted jobs; the next poll will")
                }
            }
        }
    }

    /// Spawns a task per claimed job, each holding one of the free slots until its call ends.
    fn start(
        &self,
        backend: &Arc<BackendRuntime>,
        claimed: Vec<Job>,
        slots: &Slots,
        jobs: &mut JoinSet<()>,
        cancel: &watch::Receiver<bool>,
    ) {
        for job in claimed {
            let slot = slots.take();
            let shared = self.shared.clone();
            let backend = backend.clone();
            let cancel = cancel.clone();
            jobs.spawn(async move {
                execute(&shared, &backend, job, cancel, slot).await;
            });
        }
    }

    /// Claims for every backend while there is room. Returns whether any backend had more due
    /// work than there was room for, or `None` when `shutdown` completed while looking: the
    /// read-only look is abandoned then, so an idle runner exits without waiting on the
    /// database; a claim that started writing is always seen through.
    async fn claim_round<F: std::future::Future<Output = ()>>(
        &self,
        slots: &Slots,
        jobs: &mut JoinSet<()>,
        next_backend: &mut usize,
        watermarks: &mut [Watermark],
        cancel: &watch::Receiver<bool>,
        mut shutdown: std::pin::Pin<&mut F>,
    ) -> Option<bool> {
        let mut more = false;
        let count = self.backends.len();
        for offset in 0..count {
            let room = slots.room(jobs);
            if room == 0 {
                return Some(true);
            }
            // Start with a different backend each round so one busy table cannot starve another.
            let index = (*next_backend + offset) % count;
            let backend = &self.backends[index];
            let watermark = &mut watermarks[index];
            let look = watermark.look(std::time::Instant::now());
            let store = &self.shared.store;
            // The look runs in a task of its own, so that abandoning it leaves the request to
            // finish (dropping a request in flight makes the SDK log an error about it).
            let look = tokio::spawn({
                let (claimer, store) = (self.claimer.clone(), store.clone());
                let table = backend.backend.table.clone();
                async move { claimer.find(&store, &table, room, look).await }
            });
            let found = tokio::select! {
                biased;
                () = shutdown.as_mut() => return None,
                found = look => found,
            };
            let claimed = match found {
                Ok(Ok(found)) => {
                    watermark.saw(&found, std::time::Instant::now());
                    self.claimer.take(store, found, room).await
                }
                Ok(Err(e)) => Err(e),
                Err(e) => {
                    tracing::warn!(backend = %backend.backend.name, error = %e, "looking for due jobs failed");
                    continue;
                }
            };
            match claimed {
                Ok(claimed) => {
                    more |= claimed.len() == room;
                    self.start(backend, claimed, slots, jobs, cancel);
                }
                Err(e) if e.is_conflict() => more = true,
                // While the database is away every poll fails; the store logged the outage once.
                Err(e) if self.shared.store.health().is_down() => {
                    tracing::debug!(backend = %backend.backend.name, error = %e, "could not claim jobs");
                }
                Err(e) => {
                    tracing::warn!(backend = %backend.backend.name, error = %e, "could not claim jobs");
                }
            }
        }
        *next_backend = (*next_backend + 1) % count.max(1);
        Some(more)
    }
}

/// How often a live query is re-armed even when nothing looks wrong: a server that restarted or
/// dropped the connection has forgotten it, and the client does not replay live queries, so this
/// bounds how long the runner can depend on polling alone.
const LIVE_REFRESH: Duration = Duration::from_secs(30);

/// The runner's concurrency: a slot is held from claim to the end of the backend call. The
/// write-back that follows runs outside it, so the next claim need not wait for the database's
/// commit; at most as many write-backs as slots may be pending at once.
struct Slots {
    semaphore: Arc<Semaphore>,
    freed: Arc<Notify>,
    concurrency: usize,
}

/// One held slot; dropping it frees the slot and wakes the main loop.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

impl Slots {
    fn new(concurrency: usize) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(concurrency)),
            freed: Arc::new(Notify::new()),
            concurrency,
        }
    }

    /// How many jobs may be claimed now: free slots, bounded so that calls and pending
    /// write-backs together stay within twice the concurrency.
    fn room(&self, jobs: &JoinSet<()>) -> usize {
        let tasks_left = (2 * self.concurrency).saturating_sub(jobs.len());
        self.semaphore.available_permits().min(tasks_left)
    }

    fn take(&self) -> Slot {
        Slot {
            _permit: self
                .semaphore
                .clone()
                .try_acquire_owned()
                .expect("claimed no more than the free slots"),
            freed: self.freed.clone(),
        }
    }
}

/// New due rows reported by the live queries, waiting for the main loop.
#[derive(Default)]
struct Hints {
    /// `(backend index, row)`.
    rows: Vec<(usize, DueHint)>,
    /// Some hints were dropped (too many at once): the next look must be a full round.
    overflowed: bool,
}

/// The most hints kept between two looks; a bulk insert beyond it is found by the full round.
const MAX_HINTS: usize = 1024;

/// What one live query watches, and where its hints go.
struct WatchTarget {
    table: String,
    backend: usize,
    hints: Arc<Mutex<Hints>>,
}

impl WatchTarget {
    fn hint(&self, hint: Option<DueHint>) {
        let mut hints = self.hints.lock().expect("hints lock");
        match hint {
            Some(hint) if hints.rows.len() < MAX_HINTS => hints.rows.push((self.backend, hint)),
            // A change the loop cannot act on by id (or too many): it must look properly.
            _ => hints.overflowed = true,
        }
    }
}

/// Keeps a LIVE SELECT open on `table`, on a connection of its own, and turns each notification
/// into a wake-up (with the row's id as a hint when it is due). Re-arms it when it ends, after every reconnect of the main connection, and
/// every [`LIVE_REFRESH`]; with a capped backoff while it cannot be started.
async fn watch_table(
    store: Store,
    target: WatchTarget,
    wake: Arc<Notify>,
    status: Arc<RunnerStatus>,
) {
    let table = target.table.clone();
    use futures::StreamExt;
    let mut reconnects = store.health().reconnects();
    let mut pause = Duration::from_millis(200);
    loop {
        let connection = match store.own_connection().await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::warn!(%table, error = %e, "no connection for live queries; polling only until there is one");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        loop {
            let mut watch = match connection.watch_pending(&table).await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(%table, error = %e, "live query unavailable; polling only until it can be re-armed");
                    break;
                }
            };
            pause = Duration::from_millis(200);
            status.live_armed.fetch_add(1, Ordering::SeqCst);
            // Anything may have changed while the query was down.
            wake.notify_one();
            let refresh = tokio::time::sleep(LIVE_REFRESH);
            tokio::pin!(refresh);
            let stop = loop {
                tokio::select! {
                    item = watch.hints.next() => match item {
                        Some(hint) => {
                            target.hint(hint);
                            wake.notify_one();
                        }
                        None => break false,
                    },
                    changed = reconnects.changed() => {
                        if changed.is_err() {
                            break true;
                        }
                        tracing::info!(%table, "re-arming the live query after a reconnect");
                        break false;
                    }
                    () = &mut refresh => break false,
                }
            };
            status.live_armed.fetch_sub(1, Ordering::SeqCst);
            // After a reconnect the query is gone with the old connection, and this fails.
            if let Err(e) = connection.end_watch(watch).await {
                tracing::debug!(%table, error = %e, "could not end the previous live query");
            }
            if stop {
                return;
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Counts the database's comebacks for `/metrics`.
async fn count_reconnects(store: Store, status: Arc<RunnerStatus>) {
    let mut reconnects = store.health().reconnects();
    while reconnects.changed().await.is_ok() {
        status.metrics.db_reconnects.inc();
    }
}

/// Runs one attempt of `job` and records its outcome.
async fn execute(
    shared: &Shared,
    backend: &BackendRuntime,
    job: Job,
    mut cancel: watch::Receiver<bool>,
    slot: Slot,
) {
    let started = Instant::now();
    let config = &backend.backend;
    let attempt = job.attempt();
    let metrics = &shared.status.metrics;
    if let Some(due) = job.due_at {
        let lag = (Utc::now() - due).to_std().unwrap_or_default();
        metrics.claim_lag_seconds.observe(lag.as_secs_f64());
        tracing::debug!(job = %job.display_id, lag_ms = lag.as_millis() as u64, "claimed");
    }
    metrics.in_flight.inc();
    let _in_flight = scopeguard(|| {
        metrics.in_flight.dec();
    });

    let prepared = job.row.clone().and_then(|row| {
        let timeout = match (config.timeout_overridable, row.timeout) {
            (true, Some(secs)) => Duration::from_secs(secs),
            _ => config.timeout,
        };
        backend
            .routes
            .prepare(&config.base_url, &row.path, row.payload)
            .map(|request| (request, timeout))
    });

    let result: Result<(), Failure> = match prepared {
        Err(failure) => Err(failure),
        Ok((request, timeout)) => {
            let call = shared.caller.call(
                request,
                CallContext {
                    job_id: &job.display_id,
                    attempt,
                    token: config.token.as_ref(),
                    timeout,
                },
            );
            match hold_lease_during(shared, &job, call, &mut cancel).await {
                LeaseOutcome::Finished(result) => result,
                LeaseOutcome::Lost => {
                    tracing::warn!(job = %job.display_id, "lost the lease while calling; another runner owns the job now");
                    return;
                }
                LeaseOutcome::Cancelled => {
                    match shared.store.release(&job.id, &job.token).await {
                        Ok(true) => {
                            tracing::info!(job = %job.display_id, "released unfinished job back to pending")
                        }
                        Ok(false) => {
                            tracing::warn!(job = %job.display_id, "could not release: the lease was already gone")
                        }
                        Err(e) => {
                            tracing::warn!(job = %job.display_id, error = %e, "could not release; the lease will expire")
                        }
                    }
                    return;
                }
            }
        }
    };

    // The call is over: its slot goes to the next job while this one's result is written.
    drop(slot);
    let decision = record::decide(&job, result, &config.retry, Utc::now());
    let written = record::write(
        &shared.store,
        &job,
        &decision,
        shared.options.lease,
        Some(&shared.successes),
    )
    .await;
    match written {
        Ok(Written::Recorded) => {
            let outcome = match &decision {
                Decision::Success => "success",
                Decision::Retry { .. } => "retry",
                Decision::Failed { .. } => "failed",
            };
            metrics
                .attempts
                .get_or_create(&metrics.outcome(&config.name, outcome))
                .inc();
            match &decision {
                Decision::Retry { .. } => {
                    metrics
                        .retries
                        .get_or_create(&metrics.backend(&config.name))
                        .inc();
                }
                _ => {
                    metrics
                        .jobs_finished
                        .get_or_create(&metrics.outcome(&config.name, outcome))
                        .inc();
                }
            }
            metrics
                .attempt_seconds
                .get_or_create(&metrics.backend(&config.name))
                .observe(started.elapsed().as_secs_f64());
            log_outcome(&job, &config.name, &decision, started.elapsed())
        }
        Ok(Written::LostLease) => {
            tracing::warn!(job = %job.display_id, "result not written: lost the lease to another runner, which owns the job now")
        }
        Err(e) => {
            tracing::error!(job = %job.display_id, error = %e, "could not record the outcome; the lease rescue will retry the job")
        }
    }
}

enum LeaseOutcome {
    Finished(Result<(), Failure>),
    Lost,
    Cancelled,
}

/// Drives `call` while renewing the lease every third of its length.
async fn hold_lease_during(
    shared: &Shared,
    job: &Job,
    call: impl std::future::Future<Output = Result<(), Failure>>,
    cancel: &mut watch::Receiver<bool>,
) -> LeaseOutcome {
    let lease = shared.options.lease;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    tokio::pin!(call);
    loop {
        tokio::select! {
            result = &mut call => return LeaseOutcome::Finished(result),
            _ = renew.tick() => {
                match shared.store.extend_lease(&job.id, &job.token, Utc::now() + lease).await {
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

/// Runs `f` when dropped: keeps the in-flight gauge right on every exit path.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

fn log_outcome(job: &Job, backend: &str, decision: &Decision, elapsed: Duration) {
    let elapsed_ms = elapsed.as_millis() as u64;
    match decision {
        Decision::Success => {
            tracing::info!(job = %job.display_id, backend, attempt = job.attempt(), elapsed_ms, "job succeeded")
        }
        Decision::Retry { failure, due_at } => tracing::warn!(
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
