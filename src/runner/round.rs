//! One claim round: each backend in turn gets the room it has, looks for due rows and claims
//! them. While a backlog drains, the look and the claim go to the database in one request
//! ([`Claimer::look_and_take`]); a full look (expired leases, once per poll interval), a backend
//! with a `rateLimit:` (it asks for calls between the two) and due rows of another priority take
//! the two steps.

use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinSet;

use super::{Cursor, Runner, Slots};
use crate::config::limits;
use crate::job::attempt::Stops;
use crate::job::claim::{Claimer, Found};
use crate::job::row::Job;
use crate::store::{Look, StoreError};

impl Runner {
    /// How many of the rows `found` for backend `index` may be claimed (at most `room`), and how
    /// long their calls must wait: all of them, at once, unless the backend has a `rateLimit:`;
    /// then what the shared budget grants. `None`: nothing now.
    async fn calls_allowed(
        &self,
        index: usize,
        room: usize,
        found: &Found,
    ) -> Option<(usize, Duration)> {
        let backend = &self.backends[index].backend;
        let Some(limit) = backend.rate_limit else {
            return Some((room, Duration::ZERO));
        };
        let want = room.min(Claimer::found(found));
        if want == 0 {
            return Some((0, Duration::ZERO));
        }
        let key = &backend.table;
        match self
            .store()
            .grant_calls(key, limit.per, limit.calls, want, limits::RATE_LEAD)
            .await
        {
            Ok(grant) if grant.calls > 0 => Some((grant.calls, grant.wait)),
            Ok(_) => None,
            // Runners asking at the same moment: the next look asks again.
            Err(e) if e.is_conflict() => None,
            Err(e) => {
                tracing::warn!(backend = %backend.name, error = %e, "could not ask for calls under the rate limit");
                None
            }
        }
    }

    /// The room backend `index` has on its turn in a round. None: its own slots are full, or
    /// jobs waiting ahead hold the free ones; a slot freeing up wakes the loop, and a
    /// rate-limited backend with work holds further claims ahead until its turn comes.
    fn turn_room(
        &self,
        index: usize,
        slots: &Slots,
        jobs: &JoinSet<()>,
        cursor: &mut Cursor,
    ) -> usize {
        let rate_limited = self.backends[index].backend.rate_limit.is_some();
        let room = self.room_for(index, slots, jobs, cursor.hold_ahead);
        if room == 0 {
            cursor.capped = true;
            if rate_limited
                && slots.room(jobs) > 0
                && cursor.may_have_work(index, self.options.poll_interval)
            {
                cursor.hold_ahead = true;
            }
            return 0;
        }
        if rate_limited {
            cursor.hold_ahead = false;
        }
        cursor.looked_at[index] = std::time::Instant::now();
        room
    }

    /// Claims for every backend while there is room. Returns whether any backend had more due
    /// work than there was room for, or `None` when `shutdown` completed while looking: the
    /// read-only look is abandoned then, so an idle runner exits without waiting on the
    /// database; a claim that started writing (the one-request claim included) is always seen
    /// through, and none starts once the shutdown has.
    pub(super) async fn claim_round<F: std::future::Future<Output = ()>>(
        &self,
        slots: &Slots,
        jobs: &mut JoinSet<()>,
        cursor: &mut Cursor,
        stops: &Stops,
        mut shutdown: std::pin::Pin<&mut F>,
    ) -> Option<bool> {
        let mut more = false;
        cursor.capped = false;
        let count = self.backends.len();
        // A different backend first each round (set now: a round that fills the slots ends early).
        let first = cursor.next_backend;
        cursor.next_backend = (first + 1) % count.max(1);
        for offset in 0..count {
            let room = slots.room(jobs);
            if room == 0 {
                return Some(true);
            }
            let index = (first + offset) % count;
            let backend = &self.backends[index];
            let room = self.turn_room(index, slots, jobs, cursor);
            if room == 0 {
                continue;
            }
            let look = cursor.watermarks[index].look(std::time::Instant::now());
            let store = self.store();
            if backend.backend.rate_limit.is_none() && !look.expired {
                // It writes, so unlike a look it cannot be abandoned: none starts after a shutdown.
                if shutdown.as_mut().now_or_never().is_some() {
                    return None;
                }
                if let Some(claimed) = self.take_at_once(index, room, look, cursor).await {
                    let (claimed, conflict) = self.took(index, claimed);
                    more |= conflict || claimed.len() == room;
                    self.start(index, claimed, slots, jobs, stops, Duration::ZERO);
                    continue;
                }
            }
            let watermark = &mut cursor.watermarks[index];
            // The look runs in a task of its own, so that abandoning it leaves the request to
            // finish (dropping a request in flight makes the SDK log an error about it).
            let look = tokio::spawn({
                let (claimer, store) = (self.claimers[index].clone(), store.clone());
                let table = backend.backend.table.clone();
                async move { claimer.find(&store, &table, room, look).await }
            });
            let found = tokio::select! {
                biased;
                () = shutdown.as_mut() => return None,
                found = look => found,
            };
            let mut wait = Duration::ZERO;
            let claimed = match found {
                Ok(Ok(found)) => {
                    watermark.saw(&found, std::time::Instant::now());
                    let Some((calls, after)) = self.calls_allowed(index, room, &found).await else {
                        cursor.capped = true;
                        cursor.left_work[index] = Claimer::found(&found) > 0;
                        continue;
                    };
                    // Fewer calls granted than rows found: look again when a slot frees.
                    let short = calls < room.min(Claimer::found(&found));
                    cursor.capped |= short;
                    cursor.left_work[index] = short || Claimer::found(&found) >= room;
                    wait = after;
                    self.claimers[index].take(store, found, calls).await
                }
                Ok(Err(e)) => Err(e),
                Err(e) => {
                    tracing::warn!(backend = %backend.backend.name, error = %e, "looking for due jobs failed");
                    continue;
                }
            };
            let (claimed, conflict) = self.took(index, claimed);
            more |= conflict || claimed.len() == room;
            self.start(index, claimed, slots, jobs, stops, wait);
        }
        Some(more)
    }

    /// Looks and claims for backend `index` in one request; the watermark moves as
    /// after any look. `None` when rows of another priority were due, so the two-step claim,
    /// which orders them, must run instead, or when the request failed other than by a conflict.
    async fn take_at_once(
        &self,
        index: usize,
        room: usize,
        look: Look,
        cursor: &mut Cursor,
    ) -> Option<Result<Vec<Job>, StoreError>> {
        let table = &self.backends[index].backend.table;
        let quick = self.claimers[index]
            .look_and_take(self.store(), table, room, look)
            .await;
        match quick {
            Ok(Some((found, claimed))) => {
                cursor.watermarks[index].saw(&found, std::time::Instant::now());
                cursor.left_work[index] = Claimer::found(&found) >= room;
                Some(Ok(claimed))
            }
            Ok(None) => None,
            Err(e) if e.is_conflict() => Some(Err(e)),
            // Whatever failed, the two-step claim may still work (its compare-and-set makes a
            // second try safe): a request this runner cannot send must not stall the backlog.
            Err(e) => {
                let name = &self.backends[index].backend.name;
                tracing::debug!(backend = %name, error = %e, "one-request claim failed; claiming in two steps");
                None
            }
        }
    }

    /// The jobs a claim of backend `index` took, or none after logging why not; `true` when it
    /// lost a race with another runner (more is due: look again soon).
    fn took(&self, index: usize, claimed: Result<Vec<Job>, StoreError>) -> (Vec<Job>, bool) {
        let name = &self.backends[index].backend.name;
        match claimed {
            Ok(claimed) => (claimed, false),
            Err(e) if e.is_conflict() => (Vec::new(), true),
            // While the database is away every poll fails; the store logged the outage once.
            Err(e) if self.store().health().is_down() => {
                tracing::debug!(backend = %name, error = %e, "could not claim jobs");
                (Vec::new(), false)
            }
            Err(e) => {
                tracing::warn!(backend = %name, error = %e, "could not claim jobs");
                (Vec::new(), false)
            }
        }
    }
}
