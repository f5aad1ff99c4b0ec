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
//! Each backend has a [`lane::Lane`] (its claimer, watermark, own slots and what its last look
//! left); what to do on each wake-up and on each lane's turn is decided by the pure functions
//! of [`plan`], and [`round`] does the claiming they decide on.
//!
//! Shutdown: one [`CancellationToken`] stops the loop and the live queries (which end their
//! queries on the server on the way out). Claiming stops, jobs still waiting for a slot go back
//! to `pending` at once, calls in flight get `shutdown_grace` to finish, then the rest are
//! cancelled and put back to `pending` too; none of them spends an attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch as signal};
use tokio::task::JoinSet;

use crate::config::{Backend, limits};
use tokio_util::sync::CancellationToken;

use crate::job::attempt::{self, Attempts, Stops};
use crate::job::call::Caller;
use crate::job::record::SuccessWriter;
use crate::job::row::Job;
use crate::job::validate::Routes;
use crate::store::{DueHint, Store};

pub mod activity;
mod lane;
pub mod metrics;
mod plan;
pub mod retention;
mod round;
pub mod slots;
pub mod status;
pub mod watch;

use lane::Lane;
use plan::{HintCount, LaneView, RoundEnd, Wake, Woke};
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
    /// One per backend, in config order (the index a live query's hints name).
    lanes: Vec<Lane>,
}

/// Where the main loop stands between two wake-ups.
struct LoopState {
    /// The last look filled the room it had, or was capped: more work is probably due.
    more_work: bool,
    /// A rate-limited lane with work was kept out by jobs waiting ahead (see
    /// [`plan::lane_room`]).
    hold_ahead: bool,
    /// The lane the next round starts with.
    next_lane: usize,
    next_poll: tokio::time::Instant,
}

/// What the loop holds while it runs: the slots, the task of every claimed job, and what stops
/// those tasks at shutdown.
struct Holding {
    slots: Slots,
    jobs: JoinSet<()>,
    stops: Stops,
}

impl Runner {
    pub fn new(store: Store, backends: Vec<BackendRuntime>, options: RunnerOptions) -> Runner {
        let backends: Vec<Arc<BackendRuntime>> = backends.into_iter().map(Arc::new).collect();
        let lanes = backends
            .iter()
            .map(|runtime| Lane::new(runtime.clone(), &options))
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
            backends: Arc::new(backends),
            lanes,
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

    /// Runs until `shutdown` completes; see [`Runner::run_until`].
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = CancellationToken::new();
        let trigger = async {
            shutdown.await;
            stop.cancel();
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = self.run_until(stop.clone()) => {}
            () = trigger => {}
        }
    }

    /// Runs until `stop` is cancelled, then drains as described in the module docs. The same
    /// token stops the live queries, which end their queries on the way out.
    pub async fn run_until(mut self, stop: CancellationToken) {
        let options = self.options.clone();
        let (stop_waiting, waiting) = signal::channel(false);
        let (cancel_calls, calls) = signal::channel(false);
        let mut holding = Holding {
            slots: Slots::new(options.concurrency.max(1), options.claim_ahead),
            jobs: JoinSet::new(),
            stops: Stops { waiting, calls },
        };
        let wake = Arc::new(Notify::new());
        let hints = Arc::new(Mutex::new(Hints::default()));
        let watchers = self.spawn_watchers(&wake, &hints, &stop);
        tracing::info!(
            runner = %options.runner_id,
            backends = self.lanes.len(),
            concurrency = options.concurrency,
            "runner started"
        );
        for lane in &mut self.lanes {
            lane.mark_looked();
        }
        let mut state = LoopState {
            more_work: false,
            hold_ahead: false,
            next_lane: 0,
            next_poll: tokio::time::Instant::now(),
        };
        loop {
            self.status.tick();
            let woke = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(state.next_poll) => Woke::Poll,
                () = wake.notified() => Woke::Notified,
                () = holding.slots.freed.notified() => Woke::Freed,
                Some(_) = holding.jobs.join_next(), if !holding.jobs.is_empty() => Woke::Freed,
            };
            // A finished task stays in the set until it is joined, and every task in the set
            // counts against the room for claims: join them all, or each claim takes only what
            // the loop happened to join one by one.
            while holding.jobs.try_join_next().is_some() {}
            if self
                .go_round(woke, &mut state, &mut holding, &hints, &stop)
                .await
                == RoundEnd::Shutdown
            {
                break;
            }
        }
        let Holding { jobs, .. } = holding;
        let drained = drain(jobs, stop_waiting, cancel_calls, options.shutdown_grace);
        tokio::join!(drained, join_watchers(watchers));
        tracing::info!("runner stopped");
    }

    /// Decides what waking for `woke` is worth and does it: nothing, a claim of hinted rows by
    /// id, or a full round; then sets when the loop looks next.
    async fn go_round(
        &mut self,
        woke: Woke,
        state: &mut LoopState,
        holding: &mut Holding,
        hints: &Mutex<Hints>,
        stop: &CancellationToken,
    ) -> RoundEnd {
        let poll = self.options.poll_interval;
        let room = holding.slots.room_at(&holding.jobs);
        match plan::wake(woke, room, state.more_work, self.options.concurrency) {
            Wake::Ignore => return RoundEnd::Idle,
            Wake::Full => {
                state.more_work = true;
                state.next_poll = tokio::time::Instant::now() + poll;
                return RoundEnd::Capped;
            }
            Wake::Look => {}
        }
        let hinted = std::mem::take(&mut *hints.lock().expect("hints lock"));
        let mut count = HintCount {
            per_lane: vec![0; self.lanes.len()],
            overflowed: hinted.overflowed,
        };
        for (index, _) in &hinted.rows {
            if let (Some(lane), Some(n)) =
                (self.lanes.get_mut(*index), count.per_lane.get_mut(*index))
            {
                lane.hinted();
                *n += 1;
            }
        }
        let views: Vec<LaneView> = self.lanes.iter().map(|lane| lane.view(poll)).collect();
        if plan::look(
            woke,
            state.more_work,
            &count,
            room,
            &views,
            state.hold_ahead,
        ) == plan::Look::Hinted
        {
            self.claim_hinted(hinted.rows, holding).await;
            return RoundEnd::Idle;
        }
        let end = self.claim_round(state, holding, stop).await;
        let now = tokio::time::Instant::now();
        match end {
            RoundEnd::Shutdown => {}
            RoundEnd::MoreDue => (state.more_work, state.next_poll) = (true, now),
            RoundEnd::Capped => (state.more_work, state.next_poll) = (true, now + poll),
            RoundEnd::Idle => (state.more_work, state.next_poll) = (false, now + poll),
        }
        end
    }

    /// A live query per table, and the reconnect counter, each until `stop`.
    fn spawn_watchers(
        &self,
        wake: &Arc<Notify>,
        hints: &Arc<Mutex<Hints>>,
        stop: &CancellationToken,
    ) -> JoinSet<()> {
        let mut watchers = JoinSet::new();
        for (index, lane) in self.lanes.iter().enumerate() {
            let target = WatchTarget {
                table: lane.table().clone(),
                backend: index,
                hints: hints.clone(),
            };
            let (store, status) = (self.store().clone(), self.status.clone());
            let watch = watch::watch_table(store, target, wake.clone(), status, stop.clone());
            watchers.spawn(watch);
        }
        let (store, status) = (self.store().clone(), self.status.clone());
        watchers.spawn(watch::count_reconnects(store, status, stop.clone()));
        watchers
    }

    /// Claims the hinted rows of each lane by id and starts them.
    async fn claim_hinted(&self, hinted: Vec<(usize, DueHint)>, holding: &mut Holding) {
        let mut by_lane: Vec<Vec<DueHint>> = vec![Vec::new(); self.lanes.len()];
        for (index, hint) in hinted {
            if let Some(rows) = by_lane.get_mut(index) {
                rows.push(hint);
            }
        }
        for (index, rows) in by_lane.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let lane = &self.lanes[index];
            match lane.take_hinted(self.store(), rows).await {
                Ok(claimed) => self.start(index, claimed, holding, Duration::ZERO),
                Err(e) => {
                    tracing::debug!(backend = %lane.name(), error = %e, "could not claim hinted jobs; the next poll will")
                }
            }
        }
    }

    /// Spawns a task per claimed job of lane `index`; each waits for a slot (in claim order)
    /// and holds it until its call ends. `wait`: a rate-limit grant for the window about to
    /// start, whose calls start with it.
    fn start(&self, index: usize, claimed: Vec<Job>, holding: &mut Holding, wait: Duration) {
        let lane = &self.lanes[index];
        for job in claimed {
            let slot = holding.slots.reserve(lane.own_slots());
            let attempts = self.attempts.clone();
            let runtime = lane.runtime.clone();
            let stops = holding.stops.clone();
            holding.jobs.spawn(async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let BackendRuntime { backend, routes } = &*runtime;
                attempt::run_caught(&attempts, backend, routes, job, stops, slot.acquire()).await;
            });
        }
    }
}

/// Waits for the watchers, which end their live queries once the stop is cancelled; a watcher
/// stuck on an unreachable database is aborted after a few seconds.
async fn join_watchers(mut watchers: JoinSet<()>) {
    let joined = tokio::time::timeout(Duration::from_secs(5), async {
        while watchers.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tracing::warn!("live queries did not end within 5 s; leaving them to the server");
        watchers.abort_all();
    }
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
