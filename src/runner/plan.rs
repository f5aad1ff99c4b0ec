//! The runner loop's decisions, as pure functions of what the loop sees: why it woke, the room
//! the slots report, and a [`LaneView`] of each backend. The loop ([`super::Runner::run_until`])
//! and a round ([`super::round`]) do the I/O these functions ask for; nothing here reads a clock
//! or a semaphore, so each rule is a row in a table-driven test below.

/// Why the main loop woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woke {
    /// The poll interval passed.
    Poll,
    /// A live query reported a change.
    Notified,
    /// A call or a write-back ended.
    Freed,
}

/// The room for claims at one moment, as [`super::slots::Slots::room`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Room {
    /// Jobs that may be claimed now, counting the room ahead of the free slots.
    pub(super) claimable: usize,
    /// Free slots that no job waiting ahead will take: calls that could start at once.
    pub(super) callable: usize,
}

/// What one backend's lane brings to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LaneView {
    /// It has a `rateLimit:`: it claims only what it can call at once (its calls belong to the
    /// window they were granted in), asking for calls between its look and its claim.
    pub(super) rate_limited: bool,
    /// Free slots of its own `concurrency:`, when it sets one.
    pub(super) own_free: Option<usize>,
    /// Its last look left due work behind, or it has not looked for a poll interval.
    pub(super) may_have_work: bool,
}

/// How many jobs a lane may claim now. A rate-limited lane claims only what it can call at
/// once; so does every lane while `hold_ahead` is set (freed slots go to jobs waiting ahead
/// first, so claiming ahead then would keep a rate-limited backend with work out for good);
/// one with slots of its own claims within them; the others may claim ahead of the free slots.
pub(super) fn lane_room(room: Room, lane: LaneView, hold_ahead: bool) -> usize {
    let shared = match lane.rate_limited || hold_ahead {
        true => room.claimable.min(room.callable),
        false => room.claimable,
    };
    lane.own_free.map_or(shared, |own| shared.min(own))
}

/// What waking for a reason is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// Nothing: go back to waiting.
    Ignore,
    /// No room at all: more work is probably due, and the next freed slot looks for it.
    Full,
    /// Look for work.
    Look,
}

/// Whether to look for work after waking for `woke`. A freed slot is worth a look only if the
/// last look left work behind, and only once enough slots are free to make the round trip
/// worth it (a quarter of the concurrency, or all of it): claims then come in batches, not one
/// per job.
pub(super) fn wake(woke: Woke, room: Room, more_work: bool, concurrency: usize) -> Wake {
    let free = room.claimable;
    let batch = (concurrency / 4).max(1);
    if woke == Woke::Freed && (!more_work || (free < batch && free < concurrency)) {
        return Wake::Ignore;
    }
    match free {
        0 => Wake::Full,
        _ => Wake::Look,
    }
}

/// The rows a live query reported since the last look, as the plan sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HintCount {
    /// Hinted rows per lane, in lane order.
    pub(super) per_lane: Vec<usize>,
    /// Some were dropped, or a change could not be named by id.
    pub(super) overflowed: bool,
}

/// How a look claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// Claim the hinted rows by id, at once.
    Hinted,
    /// A full round over every lane, which honours priorities and finds what hints miss.
    Round,
}

/// New rows reported by a live query are claimed by id when the last look left nothing behind
/// and they all fit; polls, backlogs, rate-limited lanes and anything the hints may not cover
/// take the full round.
pub(super) fn look(
    woke: Woke,
    more_work: bool,
    hints: &HintCount,
    room: Room,
    lanes: &[LaneView],
    hold_ahead: bool,
) -> Look {
    let total: usize = hints.per_lane.iter().sum();
    let fits = total <= room.claimable
        && hints.per_lane.iter().zip(lanes).all(|(&hinted, lane)| {
            hinted == 0 || (!lane.rate_limited && hinted <= lane_room(room, *lane, hold_ahead))
        });
    match woke != Woke::Poll && !more_work && !hints.overflowed && total > 0 && fits {
        true => Look::Hinted,
        false => Look::Round,
    }
}

/// The order lanes take their turns in a round starting with lane `first`, and the lane the
/// next round starts with: a different one each round, so one busy table cannot starve another
/// (decided before claiming, since a round that fills the slots ends early).
pub(super) fn turns(first: usize, lanes: usize) -> (Vec<usize>, usize) {
    if lanes == 0 {
        return (Vec::new(), 0);
    }
    let first = first % lanes;
    (
        (0..lanes).map(|n| (first + n) % lanes).collect(),
        (first + 1) % lanes,
    )
}

/// How a lane's claim reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimPath {
    /// Look and claim in one request, while a backlog drains.
    AtOnce,
    /// Look, then claim what was found: for a full look (expired leases) and for a rate-limited
    /// lane, which asks for calls between the two.
    TwoSteps,
}

/// A lane's turn in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// No room is left at all: the round ends, with more work probably due.
    Full,
    /// This lane cannot claim now (its own slots are full, or jobs waiting ahead hold the free
    /// ones): a freed slot is worth a look. `hold_ahead`: it is rate limited and has work, so
    /// no lane claims ahead until its turn comes.
    Skip { hold_ahead: bool },
    /// Claim up to `room`. `releases_hold`: a rate-limited lane got its turn, so the hold ends.
    Claim {
        room: usize,
        path: ClaimPath,
        releases_hold: bool,
    },
}

/// What lane `lane` does on its turn, with `room` as it stands now and `full_look` whether its
/// watermark asks for a full look.
pub(super) fn turn(room: Room, lane: LaneView, hold_ahead: bool, full_look: bool) -> Turn {
    if room.claimable == 0 {
        return Turn::Full;
    }
    let lane_room = lane_room(room, lane, hold_ahead);
    if lane_room == 0 {
        return Turn::Skip {
            hold_ahead: lane.rate_limited && lane.may_have_work,
        };
    }
    let path = match lane.rate_limited || full_look {
        true => ClaimPath::TwoSteps,
        false => ClaimPath::AtOnce,
    };
    Turn::Claim {
        room: lane_room,
        path,
        releases_hold: lane.rate_limited,
    }
}

/// What a lane's two-step look left: `found` due rows, `room` asked for, `granted` calls (all
/// of the room without a rate limit). Returns `(capped, left_work)`: granted fewer calls than
/// it found means a freed slot is worth a look; it left work when it was short or found its
/// whole room.
pub(super) fn after_look(found: usize, room: usize, granted: usize) -> (bool, bool) {
    let short = granted < room.min(found);
    (short, short || found >= room)
}

/// How a round ended, and so when the loop looks next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoundEnd {
    /// The shutdown began during the round.
    Shutdown,
    /// Some lane found its whole room and room is left: look again at once.
    MoreDue,
    /// More is due but cannot be claimed now (no room, or a lane was capped): the next freed
    /// slot looks, or the next poll.
    Capped,
    /// Nothing more is due: wait for a notification or the next poll.
    Idle,
}

/// The end of a round in which some lane found its whole room (`more`) or was `capped`, with
/// `room_left` claimable after it.
pub(super) fn after_round(more: bool, capped: bool, room_left: usize) -> RoundEnd {
    match (more, capped) {
        (true, _) if room_left > 0 => RoundEnd::MoreDue,
        (true, _) | (false, true) => RoundEnd::Capped,
        (false, false) => RoundEnd::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn room(claimable: usize, callable: usize) -> Room {
        Room {
            claimable,
            callable,
        }
    }

    const PLAIN: LaneView = LaneView {
        rate_limited: false,
        own_free: None,
        may_have_work: false,
    };
    const LIMITED: LaneView = LaneView {
        rate_limited: true,
        ..PLAIN
    };
    const LIMITED_WITH_WORK: LaneView = LaneView {
        may_have_work: true,
        ..LIMITED
    };
    const fn own(free: usize) -> LaneView {
        LaneView {
            own_free: Some(free),
            ..PLAIN
        }
    }

    #[test]
    fn lane_room_follows_each_kind_of_lane() {
        let cases = [
            // (room, lane, hold_ahead, expected, why)
            (room(40, 8), PLAIN, false, 40, "a plain lane claims ahead"),
            (
                room(40, 8),
                LIMITED,
                false,
                8,
                "a rate limit claims only callable",
            ),
            (
                room(40, 8),
                PLAIN,
                true,
                8,
                "the hold keeps every lane from claiming ahead",
            ),
            (room(40, 8), own(3), false, 3, "own slots bound the claim"),
            (
                room(40, 8),
                own(20),
                false,
                20,
                "own slots may claim ahead within them",
            ),
            (room(2, 0), own(5), false, 2, "never beyond the shared room"),
            (
                room(40, 0),
                LIMITED,
                false,
                0,
                "no free slot, no rate-limited claim",
            ),
        ];
        for (room, lane, hold, expected, why) in cases {
            assert_eq!(lane_room(room, lane, hold), expected, "{why}");
        }
    }

    #[test]
    fn a_freed_slot_is_worth_a_look_only_for_a_batch_of_known_work() {
        use Wake::*;
        use Woke::*;
        let cases = [
            // (woke, claimable, more_work, expected, why) at concurrency 32: a batch is 8
            (Freed, 7, true, Ignore, "fewer than a batch free"),
            (Freed, 8, true, Look, "a batch free and work left"),
            (Freed, 32, false, Ignore, "the last look left nothing"),
            (Poll, 0, false, Full, "a poll with no room waits for a slot"),
            (
                Notified,
                1,
                false,
                Look,
                "a notification looks with any room",
            ),
            (Poll, 5, true, Look, "a poll looks"),
        ];
        for (woke, claimable, more, expected, why) in cases {
            assert_eq!(wake(woke, room(claimable, 0), more, 32), expected, "{why}");
        }
        // With a concurrency of 2 a batch is 1.
        assert_eq!(wake(Woke::Freed, room(1, 1), true, 2), Wake::Look);
    }

    #[test]
    fn hints_are_claimed_by_id_only_when_they_all_fit_and_nothing_was_left() {
        use Look::{Hinted, Round};
        use Woke::{Notified, Poll};
        let two = [PLAIN, own(1)];
        // woke, more_work, hinted rows per lane, overflowed, room, hold_ahead
        let look_at = |woke, more, per_lane: [usize; 2], overflowed, room, hold| {
            let hints = HintCount {
                per_lane: per_lane.to_vec(),
                overflowed,
            };
            look(woke, more, &hints, room, &two, hold)
        };
        let wide = room(8, 8);
        let cases = [
            (
                look_at(Notified, false, [3, 1], false, wide, false),
                Hinted,
                "all fit",
            ),
            (
                look_at(Poll, false, [3, 0], false, wide, false),
                Round,
                "a poll: full round",
            ),
            (
                look_at(Notified, true, [3, 0], false, wide, false),
                Round,
                "work was left",
            ),
            (
                look_at(Notified, false, [3, 0], true, wide, false),
                Round,
                "hints overflowed",
            ),
            (
                look_at(Notified, false, [0, 0], false, wide, false),
                Round,
                "no hints",
            ),
            (
                look_at(Notified, false, [9, 0], false, wide, false),
                Round,
                "beyond the room",
            ),
            (
                look_at(Notified, false, [0, 2], false, wide, false),
                Round,
                "beyond own slots",
            ),
            (
                look_at(Notified, false, [3, 0], false, room(8, 2), true),
                Round,
                "held back",
            ),
        ];
        for (got, expected, why) in cases {
            assert_eq!(got, expected, "{why}");
        }
        let limited = [LIMITED];
        let one = HintCount {
            per_lane: vec![1],
            overflowed: false,
        };
        assert_eq!(
            look(Notified, false, &one, wide, &limited, false),
            Round,
            "a rate-limited lane asks for calls in the full round"
        );
    }

    #[test]
    fn every_round_starts_with_the_next_lane() {
        assert_eq!(turns(0, 3), (vec![0, 1, 2], 1));
        assert_eq!(turns(2, 3), (vec![2, 0, 1], 0));
        assert_eq!(turns(5, 3), (vec![2, 0, 1], 0), "a stale start wraps");
        assert_eq!(turns(0, 1), (vec![0], 0));
        assert_eq!(turns(0, 0), (vec![], 0), "no lanes, no turns");
    }

    #[test]
    fn a_turn_claims_by_the_path_its_lane_needs() {
        let claim = |room, path, releases_hold| Turn::Claim {
            room,
            path,
            releases_hold,
        };
        let cases = [
            // (room, lane, hold, full_look, expected, why)
            (
                room(0, 0),
                PLAIN,
                false,
                false,
                Turn::Full,
                "no room ends the round",
            ),
            (
                room(10, 4),
                PLAIN,
                false,
                false,
                claim(10, ClaimPath::AtOnce, false),
                "a backlog drains in one request",
            ),
            (
                room(10, 4),
                PLAIN,
                false,
                true,
                claim(10, ClaimPath::TwoSteps, false),
                "a full look takes two steps",
            ),
            (
                room(10, 4),
                LIMITED,
                false,
                false,
                claim(4, ClaimPath::TwoSteps, true),
                "a rate limit asks between the steps",
            ),
            (
                room(10, 0),
                LIMITED,
                false,
                false,
                Turn::Skip { hold_ahead: false },
                "nothing callable, no known work",
            ),
            (
                room(10, 0),
                LIMITED_WITH_WORK,
                false,
                false,
                Turn::Skip { hold_ahead: true },
                "work waits: hold claims ahead",
            ),
            (
                room(10, 4),
                own(0),
                false,
                false,
                Turn::Skip { hold_ahead: false },
                "own slots full",
            ),
            (
                room(10, 0),
                PLAIN,
                true,
                false,
                Turn::Skip { hold_ahead: false },
                "held back for a rate-limited lane",
            ),
        ];
        for (room, lane, hold, full, expected, why) in cases {
            assert_eq!(turn(room, lane, hold, full), expected, "{why}");
        }
    }

    #[test]
    fn a_look_leaves_work_when_it_was_short_or_full() {
        let cases = [
            // (found, room, granted, (capped, left_work), why)
            (3, 10, 10, (false, false), "found less than the room"),
            (10, 10, 10, (false, true), "found the whole room"),
            (
                10,
                10,
                4,
                (true, true),
                "the rate limit granted fewer calls",
            ),
            (5, 10, 0, (true, true), "no call granted"),
            (0, 10, 0, (false, false), "nothing due"),
        ];
        for (found, room, granted, expected, why) in cases {
            assert_eq!(after_look(found, room, granted), expected, "{why}");
        }
    }

    #[test]
    fn a_round_ends_by_what_it_left() {
        let cases = [
            // (more, capped, room_left, expected)
            (true, false, 5, RoundEnd::MoreDue),
            (true, true, 5, RoundEnd::MoreDue),
            (true, false, 0, RoundEnd::Capped),
            (false, true, 5, RoundEnd::Capped),
            (false, false, 5, RoundEnd::Idle),
        ];
        for (more, capped, left, expected) in cases {
            assert_eq!(
                after_round(more, capped, left),
                expected,
                "{more} {capped} {left}"
            );
        }
    }
}
