//! One claim round: each lane in turn ([`plan::turns`]) gets what [`plan::turn`] decides with
//! the room it has then, and claims by the path the plan names. While a backlog drains, the
//! look and the claim go to the database in one request ([`Lane::take_at_once`]); a full look
//! (expired leases, once per poll interval), a lane with a `rateLimit:` (it asks for calls
//! between the two) and due rows of another priority take the two steps.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::plan::{self, ClaimPath, RoundEnd, Turn};
use super::{Holding, LoopState, Runner};
use crate::job::row::Job;
use crate::store::{Look, StoreError};

/// What a lane's turn took.
struct Taken {
    claimed: Result<Vec<Job>, StoreError>,
    /// How long the calls wait for their rate-limit window.
    wait: Duration,
    /// The rate limit granted fewer calls than rows were found: a freed slot is worth a look.
    capped: bool,
}

impl Taken {
    fn nothing(capped: bool) -> Taken {
        Taken {
            claimed: Ok(Vec::new()),
            wait: Duration::ZERO,
            capped,
        }
    }
}

/// The shutdown began during a claim.
struct Shutdown;

impl Runner {
    /// Claims for every lane while there is room. The read-only look is abandoned when `stop`
    /// is cancelled, so an idle runner exits without waiting on the database; a claim that
    /// started writing (the one-request claim included) is always seen through, and none
    /// starts once the shutdown has.
    pub(super) async fn claim_round(
        &mut self,
        state: &mut LoopState,
        holding: &mut Holding,
        stop: &CancellationToken,
    ) -> RoundEnd {
        let (order, next) = plan::turns(state.next_lane, self.lanes.len());
        state.next_lane = next;
        let (mut more, mut capped) = (false, false);
        for index in order {
            let room = holding.slots.room_at(&holding.jobs);
            let lane = &mut self.lanes[index];
            let view = lane.view(self.options.poll_interval);
            // One look decides the path and is the one sent: the watermark moves with the clock.
            let look = lane.next_look();
            let (room, path) = match plan::turn(room, view, state.hold_ahead, look.expired) {
                Turn::Full => {
                    more = true;
                    break;
                }
                Turn::Skip { hold_ahead } => {
                    capped = true;
                    state.hold_ahead |= hold_ahead;
                    continue;
                }
                Turn::Claim {
                    room,
                    path,
                    releases_hold,
                } => {
                    if releases_hold {
                        state.hold_ahead = false;
                    }
                    (room, path)
                }
            };
            lane.mark_looked();
            let Ok(taken) = self.claim_turn(index, room, path, look, stop).await else {
                return RoundEnd::Shutdown;
            };
            capped |= taken.capped;
            let (claimed, wait) = (taken.claimed, taken.wait);
            let (claimed, conflict) = self.lanes[index].took(self.store(), claimed);
            more |= conflict || claimed.len() == room;
            self.start(index, claimed, holding, wait);
        }
        plan::after_round(more, capped, holding.slots.room_at(&holding.jobs).claimable)
    }

    /// Lane `index`'s claim of up to `room` rows by `path`. A one-request claim that cannot
    /// serve (rows of another priority are due, or it failed) falls back to the two steps.
    async fn claim_turn(
        &mut self,
        index: usize,
        room: usize,
        path: ClaimPath,
        look: Look,
        stop: &CancellationToken,
    ) -> Result<Taken, Shutdown> {
        if path == ClaimPath::AtOnce {
            // It writes, so unlike a look it cannot be abandoned: none starts after a shutdown.
            if stop.is_cancelled() {
                return Err(Shutdown);
            }
            let store = self.store().clone();
            if let Some(claimed) = self.lanes[index].take_at_once(&store, room, look).await {
                return Ok(Taken {
                    claimed,
                    ..Taken::nothing(false)
                });
            }
        }
        self.two_steps(index, room, look, stop).await
    }

    /// Looks, asks for calls when the lane is rate limited, then claims what was granted.
    async fn two_steps(
        &mut self,
        index: usize,
        room: usize,
        look: Look,
        stop: &CancellationToken,
    ) -> Result<Taken, Shutdown> {
        let store = self.store().clone();
        let lane = &mut self.lanes[index];
        let found = match stop
            .run_until_cancelled(lane.find(&store, room, look))
            .await
        {
            None => return Err(Shutdown),
            Some(Ok(Ok(found))) => found,
            Some(Ok(Err(e))) => {
                return Ok(Taken {
                    claimed: Err(e),
                    ..Taken::nothing(false)
                });
            }
            Some(Err(e)) => {
                tracing::warn!(backend = %lane.name(), error = %e, "looking for due jobs failed");
                return Ok(Taken::nothing(false));
            }
        };
        lane.saw(&found);
        let (calls, wait) = lane.grant(&store, room, &found).await;
        let capped = lane.granted(&found, room, calls);
        if calls == 0 {
            return Ok(Taken::nothing(capped));
        }
        Ok(Taken {
            claimed: lane.take(&store, found, calls).await,
            wait,
            capped,
        })
    }
}
