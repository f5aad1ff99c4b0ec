//! The hot path: which rows are due, claiming them by compare-and-set, renewing leases, writing
//! results back (each fenced by the claim's token). The live query that hints at new rows is
//! in [`super::live`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use surrealdb::types::{RecordId, Value};

use super::{ErrorEntry, JobStatus, Store, StoreError, TableName, query_err, split_row};

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

    pub fn is_full(&self) -> bool {
        *self == Look::FULL
    }
}

/// A row that may be claimed: its id and what the claim must compare against.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: RecordId,
    /// `pending`, or `processing` for a row whose lease has run out. `None` for a spelling this
    /// runner does not know: the due queries select only those two, and one odd row must not
    /// make the whole look fail.
    pub status: Option<JobStatus>,
    /// The fencing token seen; the rescue of an expired lease compares against it.
    pub lease_token: String,
    pub due_at: Option<DateTime<Utc>>,
}

/// What a look at a table found.
#[derive(Debug, Default)]
pub struct DueRows {
    /// Higher priorities first, then priority 0 oldest first, lower priorities, expired leases.
    pub candidates: Vec<Candidate>,
    /// `due_at` of the oldest due priority-0 row, when such rows filled the limit (a backlog:
    /// more are likely due after them).
    pub backlog_from: Option<DateTime<Utc>>,
}

/// A claimed row: the id, and the rest of the row as JSON for the lenient reader in `claim`.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: RecordId,
    pub fields: serde_json::Value,
}

/// What [`Store::look_and_claim`] saw and took.
#[derive(Debug, Default)]
pub struct LookAndClaim {
    /// Rows of another priority are due: nothing was claimed.
    pub prioritised: bool,
    /// The due priority-0 rows the look saw, oldest first.
    pub due: DueRows,
    /// The rows this request won; rows another runner took first are absent.
    pub claimed: Vec<ClaimedRow>,
}

/// How a finished attempt is written back.
#[derive(Debug, Clone)]
pub enum WriteBack<'a> {
    Success,
    /// Back to `pending`, due `delay` after the write, with the failure appended.
    Retry {
        error: ErrorEntry<'a>,
        /// From the database's now.
        delay: Duration,
    },
    /// `failed`, with the failure appended.
    Failed {
        error: ErrorEntry<'a>,
    },
}

impl Store {
    /// Due rows: pending ones by priority (higher first), then oldest first; then processing ones
    /// whose lease has run out (when `look.expired`). The priority-0 scan starts at `look.from`
    /// (see [`crate::job::claim::Watermark`] for why). Non-zero priorities are expected to be the
    /// minority: the priority-0 rows come straight off the index in order, and the others are
    /// first probed for with a forward `LIMIT 1`. Only when some exist is the `ORDER BY priority
    /// DESC` query run, in a second round trip: a descending scan starts from the end of
    /// SurrealKV's memtable and walks back to the range (measured: most of an embedded runner's
    /// CPU once the memtable held a few thousand finished jobs), so the common case never runs
    /// one.
    pub async fn due_candidates(
        &self,
        table: &TableName,
        now: DateTime<Utc>,
        limit: usize,
        look: Look,
    ) -> Result<DueRows, StoreError> {
        const STATEMENT: &str = "SELECT due rows";
        let range = due_range(look.from);
        let expired = if look.expired {
            format!(
                "SELECT {CANDIDATE_FIELDS} FROM {table} \
                   WHERE status = 'processing' AND due_at <= $now ORDER BY due_at LIMIT $limit;"
            )
        } else {
            String::new()
        };
        let query = self
            .db
            .query(format!(
                "SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority > 0 AND due_at <= $now LIMIT 1; \
                 SELECT {CANDIDATE_FIELDS} FROM {table} \
                   WHERE status = 'pending' AND priority = 0 AND {range} \
                   ORDER BY due_at LIMIT $limit; \
                 SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority < 0 AND due_at <= $now LIMIT 1; \
                 {expired}"
            ))
            .bind(("now", now))
            .bind(("from", look.from))
            .bind(("limit", limit as i64));
        let mut response = self.exec(STATEMENT, query).await?;
        let higher: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        let normal: Vec<Value> = response.take(1).map_err(query_err(STATEMENT))?;
        let lower: Vec<Value> = response.take(2).map_err(query_err(STATEMENT))?;
        let expired: Vec<Value> = if look.expired {
            response.take(3).map_err(query_err(STATEMENT))?
        } else {
            Vec::new()
        };
        let (higher, lower) = if higher.is_empty() && lower.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            self.due_by_priority(table, now, limit).await?
        };
        let first_normal = higher.len();
        let backlog = !normal.is_empty() && normal.len() >= limit;
        let candidates = higher
            .into_iter()
            .chain(normal)
            .chain(lower)
            .chain(expired)
            .map(read_candidate)
            .collect::<Result<Vec<_>, _>>()?;
        let backlog_from = candidates
            .get(first_normal)
            .filter(|_| backlog)
            .and_then(|c| c.due_at);
        Ok(DueRows {
            candidates,
            backlog_from,
        })
    }

    /// A look and its claim in one request, for the look that runs most while a backlog drains:
    /// the priority-0 rows from `look.from` (no expired leases), claimed by the same
    /// compare-and-set as [`Store::claim_pending`] on the server, without the runner's round
    /// trip between the two. The claim is skipped ([`LookAndClaim::prioritised`]) when a row of
    /// a higher priority is due, or one of a lower priority that the two-step look would take
    /// because fewer priority-0 rows are due than the limit: the caller then makes that look,
    /// which orders them. The claim runs only when the probes answered `false`, so a failed
    /// probe claims nothing (a claim whose request then errors would hold rows nobody runs).
    pub async fn look_and_claim(
        &self,
        table: &TableName,
        now: DateTime<Utc>,
        limit: usize,
        from: Option<DateTime<Utc>>,
        claim: &Claim<'_>,
    ) -> Result<LookAndClaim, StoreError> {
        const STATEMENT: &str = "SELECT due rows, then UPDATE $due WHERE status = 'pending'";
        let range = due_range(from);
        let query = self
            .db
            .query(format!(
                "LET $higher = (SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority > 0 AND due_at <= $now LIMIT 1); \
                 LET $lower = (SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority < 0 AND due_at <= $now LIMIT 1); \
                 LET $due = (SELECT {CANDIDATE_FIELDS} FROM {table} \
                   WHERE status = 'pending' AND priority = 0 AND {range} \
                   ORDER BY due_at LIMIT $limit); \
                 LET $prioritised = array::len($higher) > 0 \
                   OR (array::len($lower) > 0 AND array::len($due) < $limit); \
                 RETURN $prioritised; \
                 RETURN $due; \
                 IF $prioritised = false AND array::len($due) > 0 {{ \
                   UPDATE $due.id {CLAIM_PENDING} {CLAIMED} \
                 }} ELSE {{ [] }};"
            ))
            .bind(("now", now))
            .bind(("from", from))
            .bind(("limit", limit as i64))
            .bind(claim.bindings());
        let mut response = self.exec(STATEMENT, query).await?;
        let prioritised: Option<bool> = response.take(4).map_err(query_err(STATEMENT))?;
        let due: Vec<Value> = response.take(5).map_err(query_err(STATEMENT))?;
        let claimed: Vec<Value> = response.take(6).map_err(query_err(STATEMENT))?;
        let seen = due
            .into_iter()
            .map(read_candidate)
            .collect::<Result<Vec<_>, _>>()?;
        let backlog_from = seen
            .first()
            .filter(|_| seen.len() >= limit)
            .and_then(|c| c.due_at);
        let claimed = claimed_rows(claimed, STATEMENT)?;
        Ok(LookAndClaim {
            prioritised: prioritised != Some(false),
            due: DueRows {
                candidates: seen,
                backlog_from,
            },
            claimed,
        })
    }

    /// Due pending rows of non-zero priority: higher first, then lower (see
    /// [`Store::due_candidates`] for why this is a second round trip).
    async fn due_by_priority(
        &self,
        table: &TableName,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(Vec<Value>, Vec<Value>), StoreError> {
        const STATEMENT: &str = "SELECT due rows by priority";
        let query = self
            .db
            .query(format!(
                "SELECT {CANDIDATE_FIELDS} FROM {table} \
                   WHERE status = 'pending' AND priority > 0 AND due_at <= $now \
                   ORDER BY priority DESC, due_at LIMIT $limit; \
                 SELECT {CANDIDATE_FIELDS} FROM {table} \
                   WHERE status = 'pending' AND priority < 0 AND due_at <= $now \
                   ORDER BY priority DESC, due_at LIMIT $limit;"
            ))
            .bind(("now", now))
            .bind(("limit", limit as i64));
        let mut response = self.exec(STATEMENT, query).await?;
        Ok((
            response.take(0).map_err(query_err(STATEMENT))?,
            response.take(1).map_err(query_err(STATEMENT))?,
        ))
    }

    /// Claims pending rows by compare-and-set: a row is taken only if it is still pending and due
    /// by the database's clock. Returns the rows this call won; rows another runner took are
    /// simply absent.
    pub async fn claim_pending(
        &self,
        ids: Vec<RecordId>,
        claim: &Claim<'_>,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        const STATEMENT: &str = "UPDATE ... SET status = 'processing' WHERE status = 'pending'";
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let query = self
            .db
            .query(format!("UPDATE $ids {CLAIM_PENDING} {CLAIMED}"))
            .bind(("ids", ids))
            .bind(claim.bindings());
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        claimed_rows(rows, STATEMENT)
    }

    /// Takes over a processing row whose lease ran out. The lost attempt is recorded as a failure
    /// (kind `lease_expired`): the previous call may have reached the backend. `give_up` ends the
    /// row `failed` instead of claiming it, when it has no attempts left.
    /// Whether the lease ran out is decided on the database's clock, so a runner whose clock runs
    /// ahead never takes a job whose owner is still renewing it.
    pub async fn rescue_expired(
        &self,
        candidate: &Candidate,
        lost: ErrorEntry<'_>,
        give_up: bool,
        claim: &Claim<'_>,
    ) -> Result<Option<ClaimedRow>, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... WHERE status = 'processing' AND lease expired";
        let set = if give_up {
            "status = 'failed', assignee = NONE, lease_token = NONE"
        } else {
            "retries = $lost_attempt, assignee = $runner, lease_token = $claim_token, \
             due_at = time::now() + duration::from_millis($lease_ms)"
        };
        let errors = lost.set();
        let query = self
            .db
            .query(format!(
                "UPDATE ONLY $id SET {set}, updated_at = time::now(), \
                   {errors} \
                 WHERE status = 'processing' AND (lease_token ?? '') = $seen AND due_at <= time::now() \
                 {CLAIMED}"
            ))
            .bind(("id", candidate.id.clone()))
            .bind(("seen", candidate.lease_token.clone()))
            .bind(lost.bindings())
            .bind(("lost_attempt", i64::from(lost.attempt)))
            .bind(claim.bindings());
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        match row {
            Some(row) if !give_up => {
                let (id, fields) = split_row(row, STATEMENT)?;
                Ok(Some(ClaimedRow { id, fields }))
            }
            _ => Ok(None),
        }
    }

    /// Moves the lease end to `lease` from now (the database's now) while the call runs. `false`
    /// means the lease is gone.
    pub async fn extend_lease(
        &self,
        id: &RecordId,
        token: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET due_at (lease)";
        let query = self
            .db
            .query(
                "UPDATE ONLY $id SET due_at = time::now() + duration::from_millis($lease_ms), \
                   updated_at = time::now() \
                 WHERE status = 'processing' AND lease_token = $claim_token RETURN id",
            )
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()))
            .bind(("lease_ms", lease_millis(lease)));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.is_some())
    }

    /// Writes the outcome of an attempt, if this runner still holds the lease. `false` means
    /// another runner owns the job now and nothing was written.
    pub async fn write_back(
        &self,
        id: &RecordId,
        token: &str,
        retries: u32,
        outcome: WriteBack<'_>,
    ) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... (write back) WHERE lease_token = $claim_token";
        let set = match outcome {
            WriteBack::Success => "status = 'success'".to_string(),
            WriteBack::Retry { error, .. } => {
                format!(
                    "status = 'pending', due_at = time::now() + duration::from_millis($delay_ms), {}",
                    error.set()
                )
            }
            WriteBack::Failed { error } => {
                format!("status = 'failed', {}", error.set())
            }
        };
        let mut query = self
            .db
            .query(format!(
                "UPDATE ONLY $id SET {set}, retries = $retries, assignee = NONE, lease_token = NONE, \
                   updated_at = time::now() \
                 WHERE status = 'processing' AND lease_token = $claim_token RETURN id"
            ))
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()))
            .bind(("retries", i64::from(retries)));
        match outcome {
            WriteBack::Success => {}
            WriteBack::Retry { error, delay } => {
                query = query
                    .bind(error.bindings())
                    .bind(("delay_ms", lease_millis(delay)));
            }
            WriteBack::Failed { error } => {
                query = query.bind(error.bindings());
            }
        }
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.is_some())
    }

    /// Records several successes in one statement, each fenced by its own claim token: a burst
    /// of finished jobs then costs one commit instead of one each. `retries` is left as it is,
    /// which is what a success writes. Returns the ids written; an id missing from the answer
    /// lost its lease and nothing was written for it.
    pub async fn write_successes(
        &self,
        fences: Vec<(RecordId, String)>,
    ) -> Result<Vec<RecordId>, StoreError> {
        const STATEMENT: &str =
            "UPDATE $ids SET status = 'success' WHERE [id, lease_token] INSIDE $fences";
        if fences.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<RecordId> = fences.iter().map(|(id, _)| id.clone()).collect();
        let query = self
            .db
            .query(
                "UPDATE $ids SET status = 'success', assignee = NONE, lease_token = NONE, \
                   updated_at = time::now() \
                 WHERE status = 'processing' AND [id, lease_token] INSIDE $fences RETURN id",
            )
            .bind(("ids", ids))
            .bind(("fences", fences));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        rows.into_iter()
            .map(|row| split_row(row, STATEMENT).map(|(id, _)| id))
            .collect()
    }

    /// The payload a claim left out of its reply (see [`INLINE_CHARS`]), read on its own while
    /// this claim holds the row; `None` when the lease is gone.
    pub async fn withheld_payload(
        &self,
        id: &RecordId,
        token: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "SELECT VALUE payload FROM $id WHERE lease_token = $claim_token";
        let query = self
            .db
            .query("SELECT VALUE payload FROM $id WHERE lease_token = $claim_token")
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.into_iter().next().map(Value::into_json_value))
    }

    /// What taking over an expired lease needs of a row: its attempts, its history and who held
    /// it; never the client's fields, which may be large.
    pub async fn lease_state(
        &self,
        id: &RecordId,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "SELECT retries, max_retries, errors, assignee FROM ONLY $id";
        let query = self.db.query(STATEMENT).bind(("id", id.clone()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }

    /// Puts a claimed row back to `pending` without spending an attempt (shutdown).
    pub async fn release(&self, id: &RecordId, token: &str) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET status = 'pending' (release)";
        let query = self
            .db
            .query(
                "UPDATE ONLY $id SET status = 'pending', assignee = NONE, lease_token = NONE, \
                   due_at = time::now(), updated_at = time::now() \
                 WHERE status = 'processing' AND lease_token = $claim_token RETURN id",
            )
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.is_some())
    }
}

/// Who claims a row, with which fencing token, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Names the runner in `assignee`.
    pub runner: &'a str,
    /// The fencing token every later write of this claim must present.
    pub token: &'a str,
    /// How long the claim holds from the database's now, unless renewed.
    pub lease: Duration,
}

impl Claim<'_> {
    fn bindings(&self) -> surrealdb::types::Object {
        let mut vars = surrealdb::types::Object::new();
        vars.insert("runner", self.runner.to_string());
        vars.insert("claim_token", self.token.to_string());
        vars.insert("lease_ms", lease_millis(self.lease));
        vars.insert("inline", INLINE_CHARS);
        vars
    }
}

/// A lease in whole milliseconds for `duration::from_millis` (the limits keep it far below
/// `i64::MAX`).
fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// The compare-and-set of a claim, after `UPDATE <ids>`: a row is taken only if it is still
/// pending and due by the database's clock. The one-request claim and the claim by id share it.
const CLAIM_PENDING: &str = "SET status = 'processing', assignee = $runner, \
    lease_token = $claim_token, due_at = time::now() + duration::from_millis($lease_ms), \
    updated_at = time::now() \
    WHERE status = 'pending' AND due_at <= time::now()";

/// The most characters of a row's `payload` or `path` a claim's reply carries. A claim answers
/// for a whole batch in one reply, and rows are untrusted (a row written by a system user, or
/// before the schema bounded them, may hold megabytes): so a larger value is left out and only
/// its length is reported. An oversized one then fails its own job without ever being read; one
/// within the backend's limit is read on its own when its job starts
/// ([`Store::withheld_payload`]). Every row of a batch is therefore bounded, whatever the others
/// hold.
pub const INLINE_CHARS: i64 = 16 * 1024;

/// What a claim returns of each row it took (see [`INLINE_CHARS`]): the fields a job's life
/// reads, never the whole row. `payload_chars` and `path_chars` are the database's count of
/// characters (a payload that is not a string is measured in its SurrealQL text form).
const CLAIMED: &str = "RETURN id, retries, max_retries, retry_strategy, timeout, errors, \
    created_by, assigned_to, \
    string::len(<string> (path ?? '')) AS path_chars, \
    IF string::len(<string> (path ?? '')) <= $inline THEN path ELSE NONE END AS path, \
    string::len(<string> (payload ?? '')) AS payload_chars, \
    IF string::len(<string> (payload ?? '')) <= $inline THEN payload ELSE NONE END AS payload";

/// The `due_at` condition of a priority-0 look. The planner takes one bound of `due_at` as the
/// index range, the first it reads; the other is a filter. A narrow look's range is its lower
/// bound.
fn due_range(from: Option<DateTime<Utc>>) -> &'static str {
    if from.is_some() {
        "due_at >= $from AND due_at <= $now"
    } else {
        "due_at <= $now"
    }
}

fn claimed_rows(rows: Vec<Value>, statement: &'static str) -> Result<Vec<ClaimedRow>, StoreError> {
    rows.into_iter()
        .map(|row| {
            let (id, fields) = split_row(row, statement)?;
            Ok(ClaimedRow { id, fields })
        })
        .collect()
}

/// What the due query reads of a candidate row.
const CANDIDATE_FIELDS: &str = "id, status, lease_token, due_at";

fn read_candidate(row: Value) -> Result<Candidate, StoreError> {
    let (id, fields) = split_row(row, "SELECT due rows")?;
    Ok(Candidate {
        id,
        status: fields["status"].as_str().and_then(|s| s.parse().ok()),
        lease_token: fields["lease_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        due_at: fields["due_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc)),
    })
}
