//! What operators do to many jobs at once: filter them, retry or delete them in bounded slices,
//! and take turns at periodic work (retention) so that one runner does it at a time.

use chrono::{DateTime, Utc};
use surrealdb::types::{RecordId, Value};

use super::{Finished, JobStatus, Store, StoreError, TableName, query_err};

/// Rows one bulk statement touches; a bulk verb runs slices of this size until none is left or
/// its own bound is reached.
pub const SLICE: usize = 1_000;

/// Which rows of a table an operator means. Every field is optional; all given must match.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub path: Option<String>,
    /// Contained in the id (`table:key`) or in `assigned_to`.
    pub text: Option<String>,
    /// Last changed at or after (for failed jobs: when they failed).
    pub changed_since: Option<DateTime<Utc>>,
    /// Last changed before (for finished jobs: when they finished).
    pub changed_before: Option<DateTime<Utc>>,
}

impl JobFilter {
    /// The `WHERE` condition; every value is bound, none formatted in.
    pub(super) const CONDITION: &str = "($status = NONE OR status = $status) \
        AND ($path = NONE OR path = $path) \
        AND ($text = NONE OR string::contains(<string> id, $text) \
             OR (assigned_to != NONE AND string::contains(<string> assigned_to, $text))) \
        AND ($since = NONE OR updated_at >= $since) \
        AND ($before = NONE OR updated_at < $before)";

    pub(super) fn bindings(&self) -> surrealdb::types::Object {
        let mut vars = surrealdb::types::Object::new();
        vars.insert("status", self.status.map(|s| s.as_str().to_string()));
        vars.insert("path", self.path.clone());
        vars.insert("text", self.text.clone());
        vars.insert("since", self.changed_since);
        vars.insert("before", self.changed_before);
        vars
    }
}

/// Where a page ends: the last row's creation time and id.
#[derive(Debug, Clone, PartialEq)]
pub struct PageKey {
    pub created_at: DateTime<Utc>,
    pub id: RecordId,
}

impl Store {
    /// Puts up to `bound` failed rows matching `filter` back to `pending` with a fresh attempt
    /// budget (their errors stay), `SLICE` at a time; returns how many. The status test is part
    /// of each write, so a row that changed meanwhile is left alone. A row an operator
    /// cancelled (its last entry is `cancelled`) is not retried in bulk: it failed on purpose
    /// (retrying it by id still works).
    pub async fn retry_failed_matching(
        &self,
        table: &TableName,
        filter: &JobFilter,
        bound: usize,
    ) -> Result<u64, StoreError> {
        const STATEMENT: &str = "UPDATE ... SET status = 'pending' WHERE status = 'failed' (bulk)";
        let filter = JobFilter {
            status: Some(JobStatus::Failed),
            ..filter.clone()
        };
        const WRITE: &str = "UPDATE $ids SET status = 'pending', retries = 0, \
            due_at = time::now(), assignee = NONE, lease_token = NONE, updated_at = time::now() \
            WHERE status = 'failed' RETURN VALUE id;";
        let not_cancelled = "(array::last(errors).kind ?? '') != 'cancelled'";
        self.in_slices(table, &filter, bound, STATEMENT, (not_cancelled, WRITE))
            .await
    }

    /// Deletes up to `bound` rows that ended `status` and match `filter`, `SLICE` at a time;
    /// returns how many.
    pub async fn delete_finished_matching(
        &self,
        table: &TableName,
        status: Finished,
        filter: &JobFilter,
        bound: usize,
    ) -> Result<u64, StoreError> {
        const STATEMENT: &str = "DELETE ... WHERE status = $status (bulk)";
        let filter = JobFilter {
            status: Some(status.into()),
            ..filter.clone()
        };
        const WRITE: &str = "DELETE $ids WHERE status = $status RETURN BEFORE;";
        self.in_slices(table, &filter, bound, STATEMENT, ("true", WRITE))
            .await
    }

    /// Selects `SLICE` matching ids and runs `write` (which returns one value per row it
    /// touched) on them, until a slice touches nothing or `bound` rows were touched.
    async fn in_slices(
        &self,
        table: &TableName,
        filter: &JobFilter,
        bound: usize,
        statement: &'static str,
        (condition, write): (&str, &str),
    ) -> Result<u64, StoreError> {
        let mut total = 0u64;
        while (total as usize) < bound {
            let slice = SLICE.min(bound - total as usize);
            let query = self
                .db
                .query(format!(
                    "LET $ids = (SELECT VALUE id FROM {table} WHERE {} AND {condition} LIMIT $slice); \
                     {write}",
                    JobFilter::CONDITION,
                ))
                .bind(filter.bindings())
                .bind(("slice", slice as i64));
            let mut response = self.exec(statement, query).await?;
            let touched: Vec<Value> = response.take(1).map_err(query_err(statement))?;
            if touched.is_empty() {
                break;
            }
            total += touched.len() as u64;
        }
        Ok(total)
    }

    /// Work left for `run --once`: pending rows of `table` due by `due_by`, and rows `assignee`
    /// holds (`processing`).
    pub async fn open_work(
        &self,
        table: &TableName,
        due_by: DateTime<Utc>,
        assignee: &str,
    ) -> Result<(u64, u64), StoreError> {
        const STATEMENT: &str = "SELECT count() of due and held rows";
        let query = self
            .db
            .query(format!(
                "SELECT count() AS n FROM {table} \
                   WHERE status = 'pending' AND due_at <= $due_by GROUP ALL; \
                 SELECT count() AS n FROM {table} \
                   WHERE status = 'processing' AND assignee = $assignee GROUP ALL;"
            ))
            .bind(("due_by", due_by))
            .bind(("assignee", assignee.to_string()));
        let mut response = self.exec(STATEMENT, query).await?;
        let mut count = |index: usize| -> Result<u64, StoreError> {
            let rows: Vec<Value> = response.take(index).map_err(query_err(STATEMENT))?;
            Ok(rows
                .into_iter()
                .next()
                .map(Value::into_json_value)
                .and_then(|row| row["n"].as_u64())
                .unwrap_or(0))
        };
        Ok((count(0)?, count(1)?))
    }

    /// Takes the turn `turn` of the periodic work `key` for `holder`: a compare-and-set on
    /// `sp00ky_schedule` (the runner's own table), so of the runners asking for one turn exactly
    /// one gets it. `Ok(false)`: another runner has it (or it conflicted, which is the same).
    pub async fn take_turn(
        &self,
        key: &str,
        turn: DateTime<Utc>,
        holder: &str,
    ) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPSERT sp00ky_schedule (take a turn)";
        // Unique per call: a runner asking again for a turn it already took does not get it twice.
        let holder = format!("{holder}/{:016x}", fastrand::u64(..));
        let query = self
            .db
            .query(
                "DEFINE TABLE IF NOT EXISTS sp00ky_schedule SCHEMALESS PERMISSIONS NONE; \
                 UPSERT ONLY type::record('sp00ky_schedule', $key) \
                   SET holder = IF last_tick = NONE OR last_tick < $turn THEN $holder ELSE holder END, \
                       last_tick = IF last_tick = NONE OR last_tick < $turn THEN $turn ELSE last_tick END \
                   RETURN VALUE holder;",
            )
            .bind(("key", key.to_string()))
            .bind(("turn", turn))
            .bind(("holder", holder.clone()));
        match self.exec(STATEMENT, query).await {
            Ok(mut response) => {
                let holder_now: Option<String> = response.take(1).map_err(query_err(STATEMENT))?;
                Ok(holder_now.as_deref() == Some(holder.as_str()))
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}
