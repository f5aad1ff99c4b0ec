//! Step 2 of a job's life: **claim** due rows so that no other runner takes them, and read each
//! claimed row into a [`Job`].
//!
//! A claim is a compare-and-set in the store: `UPDATE ... WHERE status = 'pending' AND due_at <=
//! $now`. Of several runners racing for one row, exactly one write matches; the others see no row
//! and move on, silently. A SurrealDB transaction conflict is the same race seen from the
//! database's side: it is retried, and never recorded as a job failure.
//!
//! Rows are untrusted. A row whose fields cannot be read is still claimed (so it cannot stall
//! the queue) and carries its problem in [`Job::row`], which the record step writes as a `row`
//! failure.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use surrealdb::types::{RecordId, ToSql};

use crate::failure::{Failure, FailureKind};
use crate::retry::Strategy;
use crate::store::{Candidate, ClaimedRow, DueHint, DueRows, Store, StoreError};

/// Contract default of `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// A claimed job, owned by this runner until its lease ends.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: RecordId,
    /// `table:key`, as logs, errors and `Idempotency-Key` show it.
    pub display_id: String,
    /// The fencing token of this claim; every write-back requires it.
    pub token: String,
    /// Retry attempts before this one; this attempt is number `retries + 1`.
    pub retries: u32,
    /// The readable part of the row, or why it could not be read.
    pub row: Result<JobRow, Failure>,
    /// When the job became due; claim lag is measured from here.
    pub due_at: Option<DateTime<Utc>>,
}

/// The client-written fields of a row, read and checked.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub path: String,
    /// The payload as JSON: Sp00ky's client stores a JSON string, which is parsed here.
    pub payload: Value,
    pub max_retries: u32,
    pub strategy: Strategy,
    /// The row's own `timeout`, seconds; honoured only when the backend allows it.
    pub timeout: Option<u64>,
}

impl Job {
    pub fn attempt(&self) -> u32 {
        self.retries + 1
    }

    /// `max_retries` when the row is readable; an unreadable row gets no retries.
    pub fn max_retries(&self) -> u32 {
        self.row.as_ref().map_or(0, |row| row.max_retries)
    }
}

/// Due rows seen by [`Claimer::find`], not yet taken.
#[derive(Debug)]
pub struct Found {
    now: DateTime<Utc>,
    look: Look,
    candidates: Vec<Candidate>,
    /// Where the next look may start (see [`DueRows::backlog_from`]).
    backlog_from: Option<DateTime<Utc>>,
}

/// What one look at a table scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The priority-0 scan starts at this `due_at` (inclusive); `None` scans from the start.
    pub from: Option<DateTime<Utc>>,
    /// Whether rows whose lease ran out are looked for.
    pub expired: bool,
}

impl Look {
    /// The whole `pending` range, and expired leases.
    pub const FULL: Look = Look {
        from: None,
        expired: true,
    };

    fn is_full(&self) -> bool {
        *self == Look::FULL
    }
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

/// Who claims, and for how long.
#[derive(Debug, Clone)]
pub struct Claimer {
    pub runner_id: String,
    pub lease: Duration,
}

/// How often a claim is tried again when SurrealDB reports a transaction conflict.
const CONFLICT_ATTEMPTS: u32 = 5;

impl Claimer {
    /// Claims up to `limit` due jobs of `table`: rows with an expired lease first (they are the
    /// oldest work), then pending rows oldest first.
    pub async fn claim(
        &self,
        store: &Store,
        table: &str,
        limit: usize,
        watermark: &mut Watermark,
    ) -> Result<Vec<Job>, StoreError> {
        let found = self
            .find(store, table, limit, watermark.look(Instant::now()))
            .await?;
        watermark.saw(&found, Instant::now());
        self.take(store, found, limit).await
    }

    /// The read-only half of a claim: which rows are due. Nothing is written, so a caller may
    /// abandon it at any point (a shutdown does, to exit at once while idle).
    pub async fn find(
        &self,
        store: &Store,
        table: &str,
        limit: usize,
        look: Look,
    ) -> Result<Found, StoreError> {
        let now = Utc::now();
        let due = if limit == 0 {
            DueRows::default()
        } else {
            store.due_candidates(table, now, limit, look).await?
        };
        Ok(Found {
            now,
            look,
            candidates: due.candidates,
            backlog_from: due.backlog_from,
        })
    }

    /// The writing half of a claim: takes what [`Claimer::find`] saw, as compare-and-set
    /// updates. Once started it must be awaited, or rows may stay held by a lease nobody runs.
    pub async fn take(
        &self,
        store: &Store,
        found: Found,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let Found {
            now, candidates, ..
        } = found;
        if limit == 0 || candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (expired, pending): (Vec<Candidate>, Vec<Candidate>) = candidates
            .into_iter()
            .partition(|c| c.status == "processing");
        let mut jobs = Vec::new();
        for candidate in expired.into_iter().take(limit) {
            if let Some(job) = self.rescue(store, &candidate, now).await? {
                jobs.push(job);
            }
        }
        let room = limit.saturating_sub(jobs.len());
        let pending = pending.into_iter().take(room).map(|c| (c.id, c.due_at));
        jobs.extend(self.claim_pending(store, pending.collect(), now).await?);
        Ok(jobs)
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
        self.claim_pending(store, pending.collect(), Utc::now())
            .await
    }

    /// The compare-and-set both takes share: `(id, due_at)` of rows seen pending, one token.
    async fn claim_pending(
        &self,
        store: &Store,
        pending: Vec<(RecordId, Option<DateTime<Utc>>)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>, StoreError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let token = new_token();
        let due: std::collections::HashMap<String, Option<DateTime<Utc>>> = pending
            .iter()
            .map(|(id, due_at)| (id.to_sql(), *due_at))
            .collect();
        let ids: Vec<RecordId> = pending.into_iter().map(|(id, _)| id).collect();
        let rows = retry_conflicts(|| {
            store.claim_pending(ids.clone(), &self.runner_id, &token, now, now + self.lease)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let due_at = due.get(&row.id.to_sql()).copied().flatten();
                read_job(row, &token, due_at)
            })
            .collect())
    }

    /// Takes over one row whose lease ran out, recording the lost attempt.
    async fn rescue(
        &self,
        store: &Store,
        candidate: &Candidate,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, StoreError> {
        let Some(current) = store.get(&candidate.id).await? else {
            return Ok(None);
        };
        let retries = read_count(&current, "retries").unwrap_or(0);
        let max_retries = read_count(&current, "max_retries").unwrap_or(DEFAULT_MAX_RETRIES);
        let lost_attempt = retries + 1;
        let failure = Failure::new(
            FailureKind::LeaseExpired,
            format!(
                "the runner that held this job ({}) stopped renewing its lease; the call may have reached the backend",
                current
                    .get("assignee")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
            ),
        );
        let give_up = retries >= max_retries;
        let token = new_token();
        let claimed = retry_conflicts(|| {
            store.rescue_expired(
                candidate,
                &failure,
                lost_attempt,
                give_up,
                &self.runner_id,
                &token,
                now,
                now + self.lease,
            )
        })
        .await?;
        if give_up {
            tracing::warn!(job = %candidate.id.to_sql(), "lease expired and no attempts are left: job failed");
        }
        Ok(claimed.map(|row| read_job(row, &token, candidate.due_at)))
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
    format!("{:032x}", fastrand::u128(..))
}

fn read_count(row: &Value, field: &str) -> Option<u32> {
    row.get(field)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// Reads a claimed row. Never fails: what cannot be read becomes a `row` failure on the job.
pub fn read_job(row: ClaimedRow, token: &str, due_at: Option<DateTime<Utc>>) -> Job {
    let fields = &row.fields;
    let retries = read_count(fields, "retries").unwrap_or(0);
    Job {
        display_id: row.id.to_sql(),
        id: row.id,
        token: token.to_string(),
        retries,
        row: read_row(fields),
        due_at,
    }
}

fn read_row(fields: &Value) -> Result<JobRow, Failure> {
    let bad = |message: String| Failure::new(FailureKind::Row, message);
    let path = match fields.get("path") {
        Some(Value::String(path)) => path.clone(),
        Some(Value::Null) | None => return Err(bad("the row has no `path`".into())),
        Some(other) => {
            return Err(bad(format!(
                "`path` must be a string, got {}",
                type_name(other)
            )));
        }
    };
    let max_retries = match fields.get("max_retries") {
        None | Some(Value::Null) => DEFAULT_MAX_RETRIES,
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "`max_retries` must be a whole number of 0 or more, got {value}"
                ))
            })?,
    };
    let strategy = match fields.get("retry_strategy") {
        None | Some(Value::Null) => Strategy::Linear,
        Some(Value::String(s)) => Strategy::parse(s).ok_or_else(|| {
            bad(format!(
                "`retry_strategy` must be `linear` or `exponential`, got {:?}",
                crate::validate::excerpt(s)
            ))
        })?,
        Some(other) => {
            return Err(bad(format!(
                "`retry_strategy` must be a string, got {}",
                type_name(other)
            )));
        }
    };
    let timeout = match fields.get("timeout") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|s| crate::config::TIMEOUT_RANGE_SECS.contains(s))
                .ok_or_else(|| bad(format!("`timeout` must be 1 to 3600 seconds, got {value}")))?,
        ),
    };
    let payload = match fields.get("payload") {
        None => Value::Null,
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
            Failure::new(
                FailureKind::Validation,
                format!("`payload` is a string but not JSON: {e}"),
            )
        })?,
        Some(value) => value.clone(),
    };
    Ok(JobRow {
        path,
        payload,
        max_retries,
        strategy,
        timeout,
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn found(look: Look, backlog_from: Option<DateTime<Utc>>) -> Found {
        Found {
            now: Utc::now(),
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

    #[test]
    fn reads_a_sp00ky_row_with_a_json_string_payload() {
        let row = read_row(&json!({"path": "/spookify", "payload": "{\"id\":\"t1\"}", "max_retries": 0, "retry_strategy": "exponential"})).unwrap();
        assert_eq!(row.payload, json!({"id": "t1"}));
        assert_eq!(row.max_retries, 0);
        assert_eq!(row.strategy, Strategy::Exponential);
    }

    #[test]
    fn defaults_match_the_contract() {
        let row = read_row(&json!({"path": "/x", "payload": {"a": 1}})).unwrap();
        assert_eq!(row.max_retries, 3);
        assert_eq!(row.strategy, Strategy::Linear);
        assert_eq!(row.payload, json!({"a": 1}));
    }

    #[test]
    fn unreadable_rows_name_the_field() {
        let cases = [
            (json!({}), "no `path`"),
            (json!({"path": 5}), "`path` must be a string"),
            (json!({"path": "/x", "max_retries": -1}), "`max_retries`"),
            (
                json!({"path": "/x", "retry_strategy": "fibonacci"}),
                "`retry_strategy`",
            ),
            (json!({"path": "/x", "timeout": 0}), "`timeout`"),
            (json!({"path": "/x", "payload": "{not json"}), "not JSON"),
        ];
        for (row, expected) in cases {
            let err = read_row(&row).unwrap_err();
            assert!(err.reason.contains(expected), "{row}: {}", err.reason);
            assert!(!err.is_retryable());
        }
    }
}
