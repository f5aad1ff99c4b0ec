//! Step 1 of a job's life: **claim** due rows so that no other runner takes them; [`super::row`]
//! reads each claimed row into a [`Job`].
//!
//! A claim is a compare-and-set in the store: `UPDATE ... WHERE status = 'pending' AND due_at <=
//! time::now()`, on the database's clock, like every lease end. Of several runners racing for one row, exactly one write matches; the others see no row
//! and move on, silently. A SurrealDB transaction conflict is the same race seen from the
//! database's side: it is retried, and never recorded as a job failure.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use surrealdb::types::{RecordId, ToSql};

use crate::config::limits::{self, RowLimits};
use crate::job::failure::{Failure, FailureKind, History, TrimPlan};
use crate::job::row::{Job, read_count, read_job};
use crate::store::{
    Candidate, Claim, ClaimedRow, DueHint, DueRows, JobStatus, Look, Store, StoreError, TableName,
};

/// Due rows seen by [`Claimer::find`], not yet taken.
#[derive(Debug)]
pub struct Found {
    look: Look,
    candidates: Vec<Candidate>,
    /// Where the next look may start (see [`DueRows::backlog_from`]).
    backlog_from: Option<DateTime<Utc>>,
}

/// Where the next look at one table starts.
///
/// Rows leave `pending` oldest first, and an LSM store (SurrealKV) keeps each deleted index entry
/// in its memtable until a flush, so a scan from the start of the `pending` range steps over every
/// job the table ran recently: hundreds of thousands in a busy table, on every claim. While a
/// backlog drains (the last look filled its limit), a look therefore starts at the oldest due row
/// the previous one saw. Without a backlog it starts at the beginning: the index range of a
/// narrow look is its lower bound only (SurrealDB uses one bound of a column), so at the end of
/// a backlog it may walk rows delayed into the future, once. Rows can become due below the
/// start: a client may write its own `due_at`, and another runner's clock may lag this one's. So
/// a full look (from the start of the range, and for expired leases, which need no quicker
/// answer) runs at least once per `full_every`: such a row waits at most that long, the same
/// bound as a live-query notification that never arrived.
#[derive(Debug, Clone)]
pub struct Watermark {
    from: Option<DateTime<Utc>>,
    last_full: Option<Instant>,
    full_every: Duration,
}

impl Watermark {
    pub fn new(full_every: Duration) -> Watermark {
        Watermark {
            from: None,
            last_full: None,
            full_every,
        }
    }

    /// The look to make at `now`.
    pub fn look(&self, now: Instant) -> Look {
        match self.last_full {
            Some(at) if now.saturating_duration_since(at) < self.full_every => Look {
                from: self.from,
                expired: false,
            },
            _ => Look::FULL,
        }
    }

    /// Moves the start of the next look to what `found` saw (the look ended at `now`).
    pub fn saw(&mut self, found: &Found, now: Instant) {
        if found.look.is_full() {
            self.last_full = Some(now);
        }
        self.from = found.backlog_from;
    }
}

/// Who claims, for how long, and what a claimed row of this table may cost.
#[derive(Debug, Clone)]
pub struct Claimer {
    pub runner_id: String,
    pub lease: Duration,
    /// The backend's row limits, applied when a claimed row is read.
    pub limits: RowLimits,
    /// Added to this machine's clock where the runner reads it (which rows look due). Lease
    /// expiry is decided on the database's clock whatever this says; tests set it to play a
    /// runner whose clock is off.
    pub clock_offset: chrono::TimeDelta,
}

/// How many expired leases one round takes over at once.
const RESCUES_AT_ONCE: usize = 16;

/// How often a claim is tried again when SurrealDB reports a transaction conflict.
const CONFLICT_ATTEMPTS: u32 = 5;

impl Claimer {
    pub fn new(runner_id: impl Into<String>, lease: Duration) -> Claimer {
        Claimer {
            runner_id: runner_id.into(),
            lease,
            limits: RowLimits::default(),
            clock_offset: chrono::TimeDelta::zero(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    fn claim_for<'a>(&'a self, token: &'a str) -> Claim<'a> {
        Claim {
            runner: &self.runner_id,
            token,
            lease: self.lease,
        }
    }

    /// Claims up to `limit` due jobs of `table`: rows with an expired lease first (they are the
    /// oldest work), then pending rows oldest first. `at` is when the look is made, for the
    /// watermark (tests pass a later instant instead of waiting for one).
    pub async fn claim(
        &self,
        store: &Store,
        table: &TableName,
        limit: usize,
        watermark: &mut Watermark,
        at: Instant,
    ) -> Result<Vec<Job>, StoreError> {
        let found = self.find(store, table, limit, watermark.look(at)).await?;
        watermark.saw(&found, at);
        self.take(store, found, limit).await
    }

    /// The read-only half of a claim: which rows are due. Nothing is written, so a caller may
    /// abandon it at any point (a shutdown does, to exit at once while idle).
    pub async fn find(
        &self,
        store: &Store,
        table: &TableName,
        limit: usize,
        look: Look,
    ) -> Result<Found, StoreError> {
        let now = self.now();
        let due = if limit == 0 {
            DueRows::default()
        } else {
            store.due_candidates(table, now, limit, look).await?
        };
        Ok(Found {
            look,
            candidates: due.candidates,
            backlog_from: due.backlog_from,
        })
    }

    /// How many due rows the look found.
    pub fn found(found: &Found) -> usize {
        found.candidates.len()
    }

    /// The writing half of a claim: takes what [`Claimer::find`] saw, as compare-and-set
    /// updates. Once started it must be awaited, or rows may stay held by a lease nobody runs.
    /// When a statement fails after others claimed rows, those rows are returned (to be run at
    /// once) and the failure is only logged: it is an error only when nothing was claimed.
    pub async fn take(
        &self,
        store: &Store,
        found: Found,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let Found { candidates, .. } = found;
        if limit == 0 || candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (expired, pending): (Vec<Candidate>, Vec<Candidate>) = candidates
            .into_iter()
            .partition(|c| c.status == Some(JobStatus::Processing));
        let mut jobs = Vec::new();
        let mut failed = None;
        // Rescues are independent (each reads its row and takes it with its own token), so they
        // run side by side: a dead runner's jobs come back together. One row that cannot be
        // rescued must not hold up the others, nor the pending rows.
        let rescues = futures::stream::iter(expired.into_iter().take(limit))
            .map(|candidate| async move { self.rescue(store, &candidate).await })
            .buffer_unordered(RESCUES_AT_ONCE);
        let rescued: Vec<_> = rescues.collect().await;
        for result in rescued {
            match result {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        let room = limit.saturating_sub(jobs.len());
        let pending: Vec<_> = pending
            .into_iter()
            .take(room)
            .map(|c| (c.id, c.due_at))
            .collect();
        match self.claim_pending(store, pending).await {
            Ok(claimed) => jobs.extend(claimed),
            Err(e) => failed = Some(e),
        }
        match failed {
            Some(e) if jobs.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(claimed = jobs.len(), error = %e, "part of a claim failed; running what it took");
                Ok(jobs)
            }
            None => Ok(jobs),
        }
    }

    /// A look and its claim in one request (see [`Store::look_and_claim`]), for a narrow look
    /// (`look.expired` false) of a backend that need not ask for calls first: while a backlog
    /// drains, each batch costs the runner one round trip instead of two. `None` when rows of
    /// another priority are due: then the caller makes the two-step claim, which orders them.
    /// Unlike [`Claimer::find`], it writes: once started it must be awaited.
    pub async fn look_and_take(
        &self,
        store: &Store,
        table: &TableName,
        limit: usize,
        look: Look,
    ) -> Result<Option<(Found, Vec<Job>)>, StoreError> {
        debug_assert!(!look.expired, "expired leases take the two-step claim");
        let token = new_token();
        let claim = self.claim_for(&token);
        let now = self.now();
        let outcome =
            retry_conflicts(|| store.look_and_claim(table, now, limit, look.from, &claim)).await?;
        if outcome.prioritised {
            return Ok(None);
        }
        let seen = outcome.due.candidates.iter().map(|c| (&c.id, c.due_at));
        let jobs = self.read_claimed(outcome.claimed, &token, seen);
        let found = Found {
            look,
            candidates: outcome.due.candidates,
            backlog_from: outcome.due.backlog_from,
        };
        Ok(Some((found, jobs)))
    }

    /// Claims rows a live query reported as due, without the due query: one round trip from a
    /// new job to its claim. The compare-and-set is the same as [`Claimer::take`]'s, so a row
    /// another runner took, or one no longer due, is simply not returned.
    pub async fn take_hinted(
        &self,
        store: &Store,
        hints: Vec<DueHint>,
    ) -> Result<Vec<Job>, StoreError> {
        let pending = hints.into_iter().map(|h| (h.id, Some(h.due_at)));
        self.claim_pending(store, pending.collect()).await
    }

    /// The compare-and-set both takes share: `(id, due_at)` of rows seen pending, one token.
    async fn claim_pending(
        &self,
        store: &Store,
        pending: Vec<(RecordId, Option<DateTime<Utc>>)>,
    ) -> Result<Vec<Job>, StoreError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let token = new_token();
        let ids: Vec<RecordId> = pending.iter().map(|(id, _)| id.clone()).collect();
        let claim = self.claim_for(&token);
        let rows = retry_conflicts(|| store.claim_pending(ids.clone(), &claim)).await?;
        let seen = pending.iter().map(|(id, due_at)| (id, *due_at));
        Ok(self.read_claimed(rows, &token, seen))
    }

    /// Reads the rows a claim with `token` won into jobs, each with the `due_at` it was seen
    /// with before the claim moved it to the lease end (claim lag is measured from there).
    fn read_claimed<'a>(
        &self,
        rows: Vec<ClaimedRow>,
        token: &str,
        seen: impl Iterator<Item = (&'a RecordId, Option<DateTime<Utc>>)>,
    ) -> Vec<Job> {
        let due: std::collections::HashMap<String, Option<DateTime<Utc>>> =
            seen.map(|(id, due_at)| (id.to_sql(), due_at)).collect();
        rows.into_iter()
            .map(|row| {
                let due_at = due.get(&row.id.to_sql()).copied().flatten();
                read_job(row, token, due_at, &self.limits)
            })
            .collect()
    }

    /// Takes over one row whose lease ran out, recording the lost attempt.
    async fn rescue(
        &self,
        store: &Store,
        candidate: &Candidate,
    ) -> Result<Option<Job>, StoreError> {
        let Some(current) = store.lease_state(&candidate.id).await? else {
            return Ok(None);
        };
        let retries = read_count(&current, "retries").unwrap_or(0);
        let max_retries = read_count(&current, "max_retries")
            .unwrap_or(limits::MAX_RETRIES)
            .min(self.limits.max_retries);
        let lost_attempt = retries + 1;
        // App users read `errors`: the runner's name (host, pid) goes to the log only.
        let holder = current.get("assignee").and_then(Value::as_str);
        tracing::info!(job = %candidate.id.to_sql(), runner = holder.unwrap_or("unknown"), "taking over an expired lease");
        let failure = Failure::new(
            FailureKind::LeaseExpired,
            "the runner that held this job stopped renewing its lease; the call may have reached the backend",
        );
        let give_up = retries >= max_retries;
        let token = new_token();
        let claim = self.claim_for(&token);
        let trim = History::of_row(&current).plan();
        let lost = failure
            .entry(lost_attempt)
            .with_trim(trim.as_ref().map(TrimPlan::as_trim));
        let claimed =
            retry_conflicts(|| store.rescue_expired(candidate, lost, give_up, &claim)).await?;
        if give_up {
            tracing::warn!(job = %candidate.id.to_sql(), "lease expired and no attempts are left: job failed");
        }
        Ok(claimed.map(|row| Job {
            rescued: true,
            ..read_job(row, &token, candidate.due_at, &self.limits)
        }))
    }
}

/// Runs a store call again while it fails with a transaction conflict.
async fn retry_conflicts<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if e.is_conflict() && tries + 1 < CONFLICT_ATTEMPTS => {
                tries += 1;
                // A few random milliseconds let the competing transaction finish first.
                let pause = Duration::from_millis(fastrand::u64(1..=10 * u64::from(tries)));
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// A random fencing token; unique per claim, so a stale runner's writes match nothing.
fn new_token() -> String {
    crate::store::unguessable_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(look: Look, backlog_from: Option<DateTime<Utc>>) -> Found {
        Found {
            look,
            candidates: Vec::new(),
            backlog_from,
        }
    }

    #[test]
    fn a_backlog_is_looked_at_from_its_oldest_row_and_the_whole_range_every_interval() {
        let every = Duration::from_secs(1);
        let start = Instant::now();
        let mut watermark = Watermark::new(every);
        assert_eq!(watermark.look(start), Look::FULL, "the first look is full");

        let oldest = Utc::now();
        watermark.saw(&found(Look::FULL, Some(oldest)), start);
        let narrow = Look {
            from: Some(oldest),
            expired: false,
        };
        assert_eq!(
            watermark.look(start),
            narrow,
            "a backlog: start at its oldest row"
        );

        let half = start + every / 2;
        let later = oldest + chrono::TimeDelta::seconds(5);
        watermark.saw(&found(narrow, Some(later)), half);
        assert_eq!(
            watermark.look(half).from,
            Some(later),
            "the backlog moved on"
        );

        let whole_range = Look {
            from: None,
            expired: false,
        };
        watermark.saw(&found(narrow, None), half);
        assert_eq!(
            watermark.look(half),
            whole_range,
            "no backlog: from the start"
        );

        // Once the interval has passed since the last full look, the next one is full again,
        // backlog or not.
        watermark.saw(&found(whole_range, Some(later)), half);
        assert_eq!(watermark.look(start + every), Look::FULL);
    }
}
