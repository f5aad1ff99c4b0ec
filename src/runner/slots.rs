//! The runner's concurrency: how many jobs may be claimed now.

use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// The runner's concurrency: a slot is held from claim to the end of the backend call. The
/// write-back that follows runs outside it, so the next claim need not wait for the database's
/// commit; at most as many write-backs as slots may be pending at once.
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    pub(super) freed: Arc<Notify>,
    concurrency: usize,
}

/// One held slot (and, for a backend with a `concurrency:` of its own, one of its slots);
/// dropping it frees them and wakes the main loop.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _backend: Option<tokio::sync::OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.freed.notify_one();
    }
}

impl Slots {
    pub(super) fn new(concurrency: usize) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(concurrency)),
            freed: Arc::new(Notify::new()),
            concurrency,
        }
    }

    /// How many jobs may be claimed now: free slots, bounded so that calls and pending
    /// write-backs together stay within twice the concurrency.
    pub(super) fn room(&self, jobs: &JoinSet<()>) -> usize {
        let tasks_left = (2 * self.concurrency).saturating_sub(jobs.len());
        self.semaphore.available_permits().min(tasks_left)
    }

    /// How many jobs of a backend with its own slots `backend` may be claimed now.
    pub(super) fn room_within(
        &self,
        jobs: &JoinSet<()>,
        backend: Option<&Arc<Semaphore>>,
    ) -> usize {
        let room = self.room(jobs);
        backend.map_or(room, |own| room.min(own.available_permits()))
    }

    pub(super) fn take(&self, backend: Option<&Arc<Semaphore>>) -> Slot {
        let claimed_within = "claimed no more than the free slots";
        Slot {
            _permit: self
                .semaphore
                .clone()
                .try_acquire_owned()
                .expect(claimed_within),
            _backend: backend.map(|own| own.clone().try_acquire_owned().expect(claimed_within)),
            freed: self.freed.clone(),
        }
    }
}
