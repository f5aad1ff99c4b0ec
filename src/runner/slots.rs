//! The runner's concurrency: how many jobs may be claimed now, and the slot each one waits for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::plan::Room;

/// The runner's concurrency: a slot is held from the start of a call to its end. The
/// write-back that follows runs outside it, so the next call need not wait for the database's
/// commit; at most as many write-backs as slots may be pending at once.
///
/// Up to `ahead` more jobs may be claimed than there are free slots. They wait in their own
/// tasks, in claim order, holding their leases, and take a slot the moment one frees: the next
/// claim's round trips then overlap the calls that are running, instead of every slot standing
/// idle while the runner asks the database for more.
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    pub(super) freed: Arc<Notify>,
    concurrency: usize,
    ahead: usize,
    /// Claimed jobs whose task has not taken its slot yet.
    waiting: Arc<AtomicUsize>,
}

/// One held slot (and, for a backend with a `concurrency:` of its own, one of its slots);
/// dropping it frees them and wakes the main loop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _backend: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

/// A claimed job's place in the queue for a slot. Counted as waiting until it holds the slot or
/// is dropped (a job released at shutdown while it waited).
pub struct Reservation {
    global: Permit,
    backend: Option<Permit>,
    freed: Arc<Notify>,
    /// Only a job whose permits were not free at once waits; one that got them is counted by
    /// the semaphore alone (counting it twice would hide free slots from the next claim).
    _waiting: Option<Waiting>,
}

/// A semaphore permit being acquired, already in the semaphore's queue.
type Permit = Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>;

/// Takes a place in `semaphore`'s queue now. Tokio's semaphore is fair in the order its acquire
/// futures are first polled, and each claimed job waits in a task of its own, which the runtime
/// may first poll in any order; so the future is polled once here, in claim order, and the task
/// awaits it later (a later poll replaces the waker). Jobs therefore start oldest and highest
/// priority first, as they were claimed.
fn queue_for(semaphore: &Arc<Semaphore>) -> (Permit, bool) {
    let mut permit: Permit = Box::pin(
        semaphore
            .clone()
            .acquire_owned()
            .map(|permit| permit.expect("the runner's semaphores are never closed")),
    );
    let mut context = Context::from_waker(Waker::noop());
    match permit.as_mut().poll(&mut context) {
        Poll::Ready(held) => (Box::pin(std::future::ready(held)), true),
        Poll::Pending => (permit, false),
    }
}

struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Reservation {
    /// Waits for the slot.
    pub async fn acquire(self) -> Slot {
        let permit = self.global.await;
        let backend = match self.backend {
            Some(own) => Some(own.await),
            None => None,
        };
        // `_waiting` is dropped only now, after the permits are held: the main loop's count of
        // free room may run one short for a moment, never one over.
        Slot {
            _permit: permit,
            _backend: backend,
            freed: self.freed,
        }
    }
}

impl Slots {
    pub(super) fn new(concurrency: usize, ahead: usize) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(concurrency)),
            freed: Arc::new(Notify::new()),
            concurrency,
            ahead,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many jobs may be claimed now: free slots plus the room ahead, less the jobs already
    /// waiting, and bounded so that calls, waiting jobs and pending write-backs together stay
    /// within twice the concurrency plus the room ahead.
    pub(super) fn room(&self, jobs: &JoinSet<()>) -> usize {
        let tasks_left = (2 * self.concurrency + self.ahead).saturating_sub(jobs.len());
        (self.semaphore.available_permits() + self.ahead)
            .saturating_sub(self.waiting.load(Ordering::SeqCst))
            .min(tasks_left)
    }

    /// The room for claims now, for the plan ([`super::plan::lane_room`] applies a backend's
    /// own slots and rate limit to it): `claimable` as [`Slots::room`] counts it, and
    /// `callable`, the free slots once every waiting job has its own.
    pub(super) fn room_at(&self, jobs: &JoinSet<()>) -> Room {
        let free = self
            .semaphore
            .available_permits()
            .saturating_sub(self.waiting.load(Ordering::SeqCst));
        Room {
            claimable: self.room(jobs),
            callable: free,
        }
    }

    /// A place in the queue for one claimed job.
    pub(super) fn reserve(&self, backend: Option<&Arc<Semaphore>>) -> Reservation {
        let (global, mut held) = queue_for(&self.semaphore);
        let backend = backend.map(|own| {
            let (permit, own_held) = queue_for(own);
            held &= own_held;
            permit
        });
        let waiting = (!held).then(|| {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            Waiting(self.waiting.clone())
        });
        Reservation {
            global,
            backend,
            freed: self.freed.clone(),
            _waiting: waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::plan::{LaneView, lane_room};
    use proptest::prelude::*;

    /// What a backend that may not wait for a slot (a rate limit) may claim, as the plan sees it.
    fn room_now(slots: &Slots, jobs: &JoinSet<()>, own: Option<&Arc<Semaphore>>) -> usize {
        let lane = LaneView {
            rate_limited: true,
            own_free: own.map(|own| own.available_permits()),
            may_have_work: false,
        };
        lane_room(slots.room_at(jobs), lane, false)
    }

    /// What a backend with slots of its own may claim, as the plan sees it.
    fn room_within(slots: &Slots, jobs: &JoinSet<()>, own: &Arc<Semaphore>) -> usize {
        let lane = LaneView {
            rate_limited: false,
            own_free: Some(own.available_permits()),
            may_have_work: false,
        };
        lane_room(slots.room_at(jobs), lane, false)
    }

    /// One step of the main loop and its jobs' tasks, as the property below plays them.
    #[derive(Debug, Clone)]
    enum Step {
        /// The loop claims one job, if `room` (or `room_now`, for a backend that may not wait)
        /// allows it; `own` picks a backend with slots of its own.
        Claim { now: bool, own: bool },
        /// A running call ends (the `n`-th held slot, modulo how many are held).
        Finish(usize),
        /// A waiting job is released at shutdown.
        Release(usize),
        /// Every task whose slot may have freed runs.
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (any::<bool>(), any::<bool>()).prop_map(|(now, own)| Step::Claim { now, own }),
            2 => any::<usize>().prop_map(Step::Finish),
            1 => any::<usize>().prop_map(Step::Release),
            2 => Just(Step::Settle),
        ]
    }

    type Acquire = Pin<Box<dyn Future<Output = Slot> + Send>>;

    /// Polls each waiting job once, oldest first; returns which started.
    fn settle(waiting: &mut Vec<Acquire>, held: &mut Vec<Slot>) -> Vec<bool> {
        let mut context = Context::from_waker(Waker::noop());
        let started: Vec<bool> = waiting
            .iter_mut()
            .map(|job| match job.as_mut().poll(&mut context) {
                Poll::Ready(slot) => {
                    held.push(slot);
                    true
                }
                Poll::Pending => false,
            })
            .collect();
        let mut started_iter = started.iter();
        waiting.retain(|_| !started_iter.next().copied().unwrap_or(false));
        started
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever order claims, finished calls and releases come in, as long as the loop claims
        /// only the room it is given: no more calls than slots, no more jobs held than slots
        /// plus the room ahead, a job promised a slot "now" gets it at once, freed slots go to
        /// the oldest waiting jobs, no job waits while a slot is free, and once everything has
        /// ended all the room is back.
        #[test]
        fn slots_never_promise_more_than_they_hold(
            concurrency in 1usize..6,
            ahead in 0usize..6,
            own_slots in 1usize..4,
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let slots = Slots::new(concurrency, ahead);
            let own = Arc::new(Semaphore::new(own_slots));
            let jobs = JoinSet::new();
            let mut held: Vec<Slot> = Vec::new();
            let mut waiting: Vec<Acquire> = Vec::new();
            for step in steps {
                match step {
                    Step::Claim { now, own: with_own } => {
                        let backend = with_own.then_some(&own);
                        let room = match (now, backend) {
                            (true, _) => room_now(&slots, &jobs, backend),
                            (false, Some(own)) => room_within(&slots, &jobs, own),
                            (false, None) => slots.room(&jobs),
                        };
                        if room > 0 {
                            let mut job: Acquire = Box::pin(slots.reserve(backend).acquire());
                            let mut context = Context::from_waker(Waker::noop());
                            match job.as_mut().poll(&mut context) {
                                Poll::Ready(slot) => held.push(slot),
                                Poll::Pending => {
                                    prop_assert!(!now, "promised a slot now, the job waits");
                                    waiting.push(job);
                                }
                            }
                        }
                    }
                    Step::Finish(n) if !held.is_empty() => {
                        let n = n % held.len();
                        drop(held.remove(n));
                    }
                    Step::Release(n) if !waiting.is_empty() => {
                        let n = n % waiting.len();
                        drop(waiting.remove(n));
                    }
                    Step::Settle => {
                        let started = settle(&mut waiting, &mut held);
                        prop_assert!(
                            started.windows(2).all(|pair| pair[0] || !pair[1]),
                            "a job started before one claimed earlier: {:?}", started
                        );
                    }
                    Step::Finish(_) | Step::Release(_) => {}
                }
                prop_assert!(concurrency - slots.semaphore.available_permits() >= held.len());
                prop_assert!(held.len() <= concurrency, "{} calls on {} slots", held.len(), concurrency);
                prop_assert!(
                    held.len() + waiting.len() <= concurrency + ahead,
                    "{} held and {} waiting with {} slots and {} ahead", held.len(), waiting.len(), concurrency, ahead
                );
                prop_assert!(slots.room(&jobs) <= (concurrency + ahead).saturating_sub(held.len() + waiting.len()));
            }
            settle(&mut waiting, &mut held);
            if !waiting.is_empty() {
                prop_assert_eq!(held.len(), concurrency, "a job waits while a slot is free");
            }
            drop(waiting);
            drop(held);
            prop_assert_eq!(slots.room(&jobs), concurrency + ahead);
            prop_assert_eq!(room_now(&slots, &jobs, Some(&own)), concurrency.min(own_slots));
        }
    }

    #[tokio::test]
    async fn claims_run_ahead_of_the_free_slots_by_at_most_the_room_ahead() {
        let slots = Slots::new(2, 3);
        let jobs = JoinSet::new();
        assert_eq!(slots.room(&jobs), 5, "two free slots and three ahead");
        assert_eq!(
            room_now(&slots, &jobs, None),
            2,
            "only the free slots at once"
        );

        let first = slots.reserve(None).acquire().await;
        let second = slots.reserve(None).acquire().await;
        assert_eq!(
            slots.room(&jobs),
            3,
            "both slots held: the room ahead is left"
        );
        assert_eq!(room_now(&slots, &jobs, None), 0);

        let third = slots.reserve(None);
        let fourth = slots.reserve(None);
        assert_eq!(slots.room(&jobs), 1, "two jobs wait");

        // A freed slot goes to the job claimed first, and the room does not grow meanwhile.
        drop(first);
        let third = third.acquire().await;
        assert_eq!(slots.room(&jobs), 2);
        assert_eq!(
            room_now(&slots, &jobs, None),
            0,
            "the waiting job takes the next slot"
        );

        // A job dropped while it waits (released at shutdown) gives its room back.
        drop(fourth);
        assert_eq!(slots.room(&jobs), 3);
        drop((second, third));
        assert_eq!(slots.room(&jobs), 5);
        assert_eq!(room_now(&slots, &jobs, None), 2);
    }

    #[tokio::test]
    async fn waiting_jobs_take_slots_in_the_order_they_were_claimed() {
        let slots = Slots::new(1, 8);
        let held = slots.reserve(None).acquire().await;
        let mut waiting: Vec<_> = (0..4)
            .map(|_| Box::pin(slots.reserve(None).acquire()))
            .collect();
        let mut context = Context::from_waker(Waker::noop());
        // The runtime may first poll the jobs' tasks in any order: here the last claimed first.
        for job in waiting.iter_mut().rev() {
            assert!(job.as_mut().poll(&mut context).is_pending());
        }
        drop(held);
        let started: Vec<Option<Slot>> = waiting
            .iter_mut()
            .map(|job| match job.as_mut().poll(&mut context) {
                Poll::Ready(slot) => Some(slot),
                Poll::Pending => None,
            })
            .collect();
        let started: Vec<bool> = started.iter().map(Option::is_some).collect();
        assert_eq!(
            started,
            [true, false, false, false],
            "the first claimed starts"
        );
    }

    #[tokio::test]
    async fn a_backend_with_its_own_slots_claims_only_what_it_can_call_now() {
        let slots = Slots::new(4, 4);
        let own = Arc::new(Semaphore::new(1));
        let jobs = JoinSet::new();
        assert_eq!(room_now(&slots, &jobs, Some(&own)), 1);
        let held = slots.reserve(Some(&own)).acquire().await;
        assert_eq!(room_now(&slots, &jobs, Some(&own)), 0);
        assert_eq!(slots.room(&jobs), 7, "other backends still have room");
        drop(held);
        assert_eq!(room_now(&slots, &jobs, Some(&own)), 1);
    }
}
