//! The loop that drives jobs through their life (see [`crate::job`]).
//!
//! One task polls and claims; each claimed job runs in its own task ([`crate::job::attempt`]),
//! at most `concurrency` calls at a time ([`slots`]), so a slow backend never blocks the others;
//! a job's write-back runs after its slot is freed. Up to `claim_ahead` more jobs are claimed than
//! slots are free; they wait for a slot in claim order, holding their leases, so the next claim
//! overlaps the running calls. The poller wakes on a LIVE SELECT
//! notification ([`watch`]; it claims the notified row by id when it can), when a call ends and
//! the last poll was full, or every `poll_interval` (live queries can miss notifications, and
//! retries become due by the clock).
//!
//! Shutdown: claiming stops, jobs still waiting for a slot go back to `pending` at once, calls in
//! flight get `shutdown_grace` to finish, then the rest are cancelled and put back to `pending`
//! too; none of them spends an attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch as signal};
use tokio::task::JoinSet;

use crate::config::{Backend, limits};
use crate::job::attempt::{self, Attempts, Stops};
use crate::job::call::Caller;
use crate::job::claim::{Claimer, Watermark};
use crate::job::record::SuccessWriter;
use crate::job::row::Job;
use crate::job::validate::Routes;
use crate::store::{DueHint, Store};

pub mod activity;
pub mod metrics;
pub mod retention;
mod round;
pub mod slots;
pub mod status;
pub mod watch;

use slots::Slots;
pub use status::RunnerStatus;
use watch::{Hints, WatchTarget};

/// Tuning of the loop; defaults are in [`RunnerOptions::default`].
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Jobs running at once, across all backends.
    pub concurrency: usize,
    /// How many jobs may be claimed beyond the free slots, to wait for one (see [`Slots`]).
    pub claim_ahead: usize,
    /// The longest the runner waits between two looks at the tables.
    pub poll_interval: Duration,
    /// How long a claim holds without renewal; a dead runner's jobs are rescued after this.
    pub lease: Duration,
    /// How long in-flight jobs may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Names this runner in the rows it claims (`assignee`).
    pub runner_id: String,
    /// Added to this machine's clock where the runner reads it; see [`Claimer::clock_offset`].
    pub clock_offset: chrono::TimeDelta,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            concurrency: limits::CONCURRENCY,
            claim_ahead: 0,
            poll_interval: limits::POLL_INTERVAL.default,
            lease: limits::LEASE.default,
            shutdown_grace: limits::SHUTDOWN_GRACE.default,
            runner_id: default_runner_id(),
            clock_offset: chrono::TimeDelta::zero(),
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

pub struct Runner {
    attempts: Arc<Attempts>,
    options: RunnerOptions,
    status: Arc<RunnerStatus>,
    backends: Arc<Vec<Arc<BackendRuntime>>>,
    /// One per backend, in the same order: each applies its backend's row limits.
    claimers: Vec<Claimer>,
    /// One per backend, in the same order: its own slots when it sets `concurrency:`.
    backend_slots: Vec<Option<Arc<Semaphore>>>,
}

/// Where the main loop stands between two wake-ups.
struct Cursor {
    /// The last look filled the room it had: more work is probably due.
    more_work: bool,
    /// The last round skipped a backend whose own slots were full: a slot freeing up is worth
    /// a look, but the round is not repeated at once.
    capped: bool,
    /// The backend the next round starts with, so one busy table cannot starve another.
    next_backend: usize,
    next_poll: tokio::time::Instant,
    watermarks: Vec<Watermark>,
    /// Per backend: its last look left due work behind (it filled its room, or was granted
    /// fewer calls than it found), and when that look was.
    left_work: Vec<bool>,
    looked_at: Vec<std::time::Instant>,
    /// A rate-limited backend with work was kept out by jobs waiting ahead (see [`Runner::room_for`]).
    hold_ahead: bool,
}

impl Cursor {
    /// Whether backend `index` may have due work: its last look left some, or it has not looked
    /// for a poll interval.
    fn may_have_work(&self, index: usize, poll_interval: Duration) -> bool {
        self.left_work[index] || self.looked_at[index].elapsed() >= poll_interval
    }
}

impl Runner {
    pub fn new(store: Store, backends: Vec<BackendRuntime>, options: RunnerOptions) -> Runner {
        let claimers = backends
            .iter()
            .map(|b| Claimer {
                limits: b.backend.row_limits,
                clock_offset: options.clock_offset,
                ..Claimer::new(options.runner_id.clone(), options.lease)
            })
            .collect();
        let backend_slots = backends
            .iter()
            .map(|b| b.backend.concurrency.map(|n| Arc::new(Semaphore::new(n))))
            .collect();
        let names = backends
            .iter()
            .map(|b| (b.backend.name.clone(), b.backend.table.clone()))
            .collect();
        let status = Arc::new(RunnerStatus::new(&options, names));
        Runner {
            attempts: Arc::new(Attempts {
                successes: SuccessWriter::start(store.clone()),
                store,
                caller: Caller::new(),
                lease: options.lease,
                observer: status.clone(),
            }),
            options,
            status,
            backends: Arc::new(backends.into_iter().map(Arc::new).collect()),
            claimers,
            backend_slots,
        }
    }

    pub fn status(&self) -> Arc<RunnerStatus> {
        self.status.clone()
    }

    pub fn backends(&self) -> Arc<Vec<Arc<BackendRuntime>>> {
        self.backends.clone()
    }

    fn store(&self) -> &Store {
        &self.attempts.store
    }

    /// Runs until `shutdown` completes, then drains as described in the module docs.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let options = &self.options;
        let slots = Slots::new(options.concurrency.max(1), options.claim_ahead);
        let wake = Arc::new(Notify::new());
        let (stop_waiting, waiting) = signal::channel(false);
        let (cancel_calls, calls) = signal::channel(false);
        let stops = Stops { waiting, calls };
        let hints = Arc::new(Mutex::new(Hints::default()));
        let mut watchers = self.spawn_watchers(&wake, &hints);
        tracing::info!(
            runner = %options.runner_id,
            backends = self.backends.len(),
            concurrency = options.concurrency,
            "runner started"
        );
        let mut jobs: JoinSet<()> = JoinSet::new();
        let mut cursor = Cursor {
            more_work: false,
            capped: false,
            next_backend: 0,
            next_poll: tokio::time::Instant::now(),
            watermarks: vec![Watermark::new(options.poll_interval); self.backends.len()],
            left_work: vec![false; self.backends.len()],
            looked_at: vec![std::time::Instant::now(); self.backends.len()],
            hold_ahead: false,
        };
        tokio::pin!(shutdown);
        loop {
            self.status.tick();
            let woke = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep_until(cursor.next_poll) => Woke::Poll,
                () = wake.notified() => Woke::Notified,
                () = slots.freed.notified() => Woke::Freed,
                Some(_) = jobs.join_next(), if !jobs.is_empty() => Woke::Freed,
            };
            // A finished task stays in the set until it is joined, and every task in the set
            // counts against the room for claims: join them all, or each claim takes only what
            // the loop happened to join one by one.
            while jobs.try_join_next().is_some() {}
            if !self.worth_a_look(woke, &slots, &jobs, &mut cursor) {
                continue;
            }
            let hinted = std::mem::take(&mut *hints.lock().expect("hints lock"));
            for (index, _) in &hinted.rows {
                if let Some(left) = cursor.left_work.get_mut(*index) {
                    *left = true;
                }
            }
            // New rows reported by a live query, when the last look left nothing behind and they
            // all fit: claimed by id at once. Polls, backlogs and anything the hints may not
            // cover take the full round, which honours priorities.
            if woke != Woke::Poll
                && !cursor.more_work
                && !hinted.overflowed
                && !hinted.rows.is_empty()
                && self.hints_fit(&hinted.rows, &slots, &jobs, cursor.hold_ahead)
            {
                self.claim_hinted(hinted.rows, &slots, &mut jobs, &stops)
                    .await;
                continue;
            }
            let round = self
                .claim_round(&slots, &mut jobs, &mut cursor, &stops, shutdown.as_mut())
                .await;
            let Some(more) = round else { break };
            cursor.more_work = more || cursor.capped;
            let again_now = more && slots.room(&jobs) > 0;
            cursor.next_poll = tokio::time::Instant::now()
                + if again_now {
                    Duration::ZERO
                } else {
                    options.poll_interval
                };
        }
        watchers.abort_all();
        drain(jobs, stop_waiting, cancel_calls, options.shutdown_grace).await;
        tracing::info!("runner stopped");
    }

    /// A live query per table, and the reconnect counter.
    fn spawn_watchers(&self, wake: &Arc<Notify>, hints: &Arc<Mutex<Hints>>) -> JoinSet<()> {
        let mut watchers = JoinSet::new();
        for (index, backend) in self.backends.iter().enumerate() {
            let target = WatchTarget {
                table: backend.backend.table.clone(),
                backend: index,
                hints: hints.clone(),
            };
            let (store, status) = (self.store().clone(), self.status.clone());
            watchers.spawn(watch::watch_table(store, target, wake.clone(), status));
        }
        let (store, status) = (self.store().clone(), self.status.clone());
        watchers.spawn(watch::count_reconnects(store, status));
        watchers
    }

    /// Whether every hinted row fits in the room its backend has (a rate-limited backend's rows
    /// always take the full round, which asks for calls first).
    fn hints_fit(
        &self,
        rows: &[(usize, DueHint)],
        slots: &Slots,
        jobs: &JoinSet<()>,
        hold_ahead: bool,
    ) -> bool {
        rows.len() <= slots.room(jobs)
            && rows
                .iter()
                .all(|(b, _)| self.backends[*b].backend.rate_limit.is_none())
            && (0..self.backends.len()).all(|index| {
                let hinted = rows.iter().filter(|(b, _)| *b == index).count();
                hinted <= self.room_for(index, slots, jobs, hold_ahead)
            })
    }

    /// How many jobs backend `index` may claim now. A backend with a rate limit claims only what
    /// it can call at once; one with slots of its own, within them; the others may claim ahead
    /// of the free slots. Freed slots go to jobs waiting ahead first, so while they keep a
    /// rate-limited backend with work out (`hold_ahead`), no backend claims ahead: the waiting
    /// jobs drain, and that backend gets the next free slots, as it would with no room ahead.
    fn room_for(&self, index: usize, slots: &Slots, jobs: &JoinSet<()>, hold_ahead: bool) -> usize {
        let own = self.backend_slots[index].as_ref();
        match (
            self.backends[index].backend.rate_limit.is_some() || hold_ahead,
            own,
        ) {
            (true, _) => slots.room_now(jobs, own),
            (false, Some(own)) => slots.room_within(jobs, own),
            (false, None) => slots.room(jobs),
        }
    }

    /// Whether to look for work after waking for `woke`.
    fn worth_a_look(
        &self,
        woke: Woke,
        slots: &Slots,
        jobs: &JoinSet<()>,
        cursor: &mut Cursor,
    ) -> bool {
        let free = slots.room(jobs);
        // A call ended (or its write-back did). Look again only if the last look left work
        // behind, and only once enough slots are free to make the round trip worth it (or
        // nothing else runs): claims then come in batches, not one per job.
        let claim_batch = (self.options.concurrency / 4).max(1);
        if woke == Woke::Freed
            && (!cursor.more_work || (free < claim_batch && free < self.options.concurrency))
        {
            return false;
        }
        if free == 0 {
            // Full: the next finished job triggers the next look.
            cursor.more_work = true;
            cursor.next_poll = tokio::time::Instant::now() + self.options.poll_interval;
            return false;
        }
        true
    }

    /// Claims the hinted rows of each backend by id and starts them.
    async fn claim_hinted(
        &self,
        hinted: Vec<(usize, DueHint)>,
        slots: &Slots,
        jobs: &mut JoinSet<()>,
        stops: &Stops,
    ) {
        let mut by_backend: Vec<Vec<DueHint>> = vec![Vec::new(); self.backends.len()];
        for (index, hint) in hinted {
            if let Some(rows) = by_backend.get_mut(index) {
                rows.push(hint);
            }
        }
        for (index, rows) in by_backend.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let backend = &self.backends[index];
            match self.claimers[index].take_hinted(self.store(), rows).await {
                Ok(claimed) => self.start(index, claimed, slots, jobs, stops, Duration::ZERO),
                Err(e) => {
                    tracing::debug!(backend = %backend.backend.name, error = %e, "could not claim hinted jobs; the next poll will")
                }
            }
        }
    }

    /// Spawns a task per claimed job; each waits for a slot (in claim order) and holds it until
    /// its call ends.
    fn start(
        &self,
        index: usize,
        claimed: Vec<Job>,
        slots: &Slots,
        jobs: &mut JoinSet<()>,
        stops: &Stops,
        wait: Duration,
    ) {
        for job in claimed {
            let slot = slots.reserve(self.backend_slots[index].as_ref());
            let attempts = self.attempts.clone();
            let backend = self.backends[index].clone();
            let stops = stops.clone();
            jobs.spawn(async move {
                // A rate-limit grant for the window about to start: its calls start with it.
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let BackendRuntime { backend, routes } = &*backend;
                attempt::run(&attempts, backend, routes, job, stops, slot.acquire()).await;
            });
        }
    }
}

/// Why the main loop woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// The poll interval passed.
    Poll,
    /// A live query reported a change.
    Notified,
    /// A call or a write-back ended.
    Freed,
}

/// Puts jobs still waiting for a slot back to `pending` at once, lets calls in flight finish for
/// `grace`, then cancels the rest, which put themselves back to `pending` too.
async fn drain(
    mut jobs: JoinSet<()>,
    stop_waiting: signal::Sender<bool>,
    cancel: signal::Sender<bool>,
    grace: Duration,
) {
    let _ = stop_waiting.send(true);
    tracing::info!(
        in_flight = jobs.len(),
        ?grace,
        "shutting down: no new claims"
    );
    let drained =
        tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }).await;
    if drained.is_ok() {
        return;
    }
    tracing::warn!(
        remaining = jobs.len(),
        "grace period over: cancelling and releasing the remaining jobs"
    );
    let _ = cancel.send(true);
    let released = tokio::time::timeout(Duration::from_secs(10), async {
        while jobs.join_next().await.is_some() {}
    })
    .await;
    if released.is_err() {
        jobs.abort_all();
    }
}
