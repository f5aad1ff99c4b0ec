//! One backend's lane through the runner: its claimer, where its next look starts, its own
//! slots, and what its last look left. The loop keeps one per backend, in config order, and
//! the plan ([`super::plan`]) sees each as a [`LaneView`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::plan::LaneView;
use super::{BackendRuntime, RunnerOptions};
use crate::config::limits;
use crate::job::claim::{Claimer, Found, Watermark};
use crate::job::row::Job;
use crate::store::{DueHint, Look, Store, StoreError, TableName};

pub(super) struct Lane {
    pub(super) runtime: Arc<BackendRuntime>,
    claimer: Claimer,
    /// Its own slots, when the backend sets `concurrency:`.
    own_slots: Option<Arc<Semaphore>>,
    watermark: Watermark,
    /// Its last look left due work behind (it filled its room, or was granted fewer calls than
    /// it found).
    left_work: bool,
    looked_at: Instant,
}

impl Lane {
    pub(super) fn new(runtime: Arc<BackendRuntime>, options: &RunnerOptions) -> Lane {
        let backend = &runtime.backend;
        Lane {
            claimer: Claimer {
                limits: backend.row_limits,
                clock_offset: options.clock_offset,
                ..Claimer::new(options.runner_id.clone(), options.lease)
            },
            own_slots: backend.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            watermark: Watermark::new(options.poll_interval),
            left_work: false,
            looked_at: Instant::now(),
            runtime,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.runtime.backend.name
    }

    pub(super) fn table(&self) -> &TableName {
        &self.runtime.backend.table
    }

    pub(super) fn own_slots(&self) -> Option<&Arc<Semaphore>> {
        self.own_slots.as_ref()
    }

    /// The lane as the plan sees it now. It may have work when its last look left some, or
    /// when it has not looked for a poll interval.
    pub(super) fn view(&self, poll_interval: Duration) -> LaneView {
        LaneView {
            rate_limited: self.runtime.backend.rate_limit.is_some(),
            own_free: self.own_slots.as_ref().map(|own| own.available_permits()),
            may_have_work: self.left_work || self.looked_at.elapsed() >= poll_interval,
        }
    }

    /// A live query reported a new row of this lane: work is due.
    pub(super) fn hinted(&mut self) {
        self.left_work = true;
    }

    /// The look its watermark asks for now.
    pub(super) fn next_look(&self) -> Look {
        self.watermark.look(Instant::now())
    }

    /// Its turn came (or the loop started): the look that follows counts as its last look.
    pub(super) fn mark_looked(&mut self) {
        self.looked_at = Instant::now();
    }

    /// Looks and claims in one request; the watermark moves as after any look. `None` when rows
    /// of another priority were due, so the two-step claim, which orders them, must run
    /// instead, or when the request failed other than by a conflict.
    pub(super) async fn take_at_once(
        &mut self,
        store: &Store,
        room: usize,
        look: Look,
    ) -> Option<Result<Vec<Job>, StoreError>> {
        let table = self.runtime.backend.table.clone();
        match self.claimer.look_and_take(store, &table, room, look).await {
            Ok(Some((found, claimed))) => {
                self.watermark.saw(&found, Instant::now());
                self.left_work = Claimer::found(&found) >= room;
                Some(Ok(claimed))
            }
            Ok(None) => None,
            Err(e) if e.is_conflict() => Some(Err(e)),
            // Whatever failed, the two-step claim may still work (its compare-and-set makes a
            // second try safe): a request this runner cannot send must not stall the backlog.
            Err(e) => {
                tracing::debug!(backend = %self.name(), error = %e, "one-request claim failed; claiming in two steps");
                None
            }
        }
    }

    /// The first of the two steps, as a task of its own: abandoning it at shutdown leaves the
    /// request to finish (dropping a request in flight makes the SDK log an error about it).
    pub(super) fn find(
        &self,
        store: &Store,
        room: usize,
        look: Look,
    ) -> tokio::task::JoinHandle<Result<Found, StoreError>> {
        let (claimer, store) = (self.claimer.clone(), store.clone());
        let table = self.runtime.backend.table.clone();
        tokio::spawn(async move { claimer.find(&store, &table, room, look).await })
    }

    /// Moves the watermark past what a look `found`, as the look ends.
    pub(super) fn saw(&mut self, found: &Found) {
        self.watermark.saw(found, Instant::now());
    }

    /// Notes what a look that `found` rows left, with `granted` of `room` calls; returns
    /// whether it was capped (granted fewer calls than it found).
    pub(super) fn granted(&mut self, found: &Found, room: usize, granted: usize) -> bool {
        let (capped, left_work) = super::plan::after_look(Claimer::found(found), room, granted);
        self.left_work = left_work;
        capped
    }

    /// How many of the rows `found` may be claimed (at most `room`), and how long their calls
    /// must wait: all of them, at once, without a `rateLimit:`; otherwise what the shared
    /// budget grants (none when runners asked at the same moment: the next look asks again).
    pub(super) async fn grant(
        &self,
        store: &Store,
        room: usize,
        found: &Found,
    ) -> (usize, Duration) {
        let backend = &self.runtime.backend;
        let Some(limit) = backend.rate_limit else {
            return (room, Duration::ZERO);
        };
        let want = room.min(Claimer::found(found));
        if want == 0 {
            return (0, Duration::ZERO);
        }
        match store
            .grant_calls(
                &backend.table,
                limit.per,
                limit.calls,
                want,
                limits::RATE_LEAD,
            )
            .await
        {
            Ok(grant) => (grant.calls, grant.wait),
            Err(e) if e.is_conflict() => (0, Duration::ZERO),
            Err(e) => {
                tracing::warn!(backend = %backend.name, error = %e, "could not ask for calls under the rate limit");
                (0, Duration::ZERO)
            }
        }
    }

    /// The second step: claims `calls` of the rows `found`.
    pub(super) async fn take(
        &self,
        store: &Store,
        found: Found,
        calls: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.claimer.take(store, found, calls).await
    }

    /// Claims rows a live query reported, by id.
    pub(super) async fn take_hinted(
        &self,
        store: &Store,
        rows: Vec<DueHint>,
    ) -> Result<Vec<Job>, StoreError> {
        self.claimer.take_hinted(store, rows).await
    }

    /// The jobs a claim took, or none after logging why not; `true` when it lost a race with
    /// another runner (more is due: look again soon).
    pub(super) fn took(
        &self,
        store: &Store,
        claimed: Result<Vec<Job>, StoreError>,
    ) -> (Vec<Job>, bool) {
        match claimed {
            Ok(claimed) => (claimed, false),
            Err(e) if e.is_conflict() => (Vec::new(), true),
            // While the database is away every poll fails; the store logged the outage once.
            Err(e) if store.health().is_down() => {
                tracing::debug!(backend = %self.name(), error = %e, "could not claim jobs");
                (Vec::new(), false)
            }
            Err(e) => {
                tracing::warn!(backend = %self.name(), error = %e, "could not claim jobs");
                (Vec::new(), false)
            }
        }
    }
}
