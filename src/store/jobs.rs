//! Creating, reading and repairing jobs: what the admin API, the CLI, the scheduler and the
//! benchmark do to a job table besides running it.

use chrono::{DateTime, Utc};
use surrealdb::types::{RecordId, Value};

use super::{
    ErrorEntry, Finished, JobFilter, JobStatus, PageKey, StatusCounts, Store, StoreError,
    TableName, query_err,
};

impl Store {
    /// Creates a pending job the way `db.run` does; returns its id.
    pub async fn enqueue(&self, table: &TableName, job: NewJob) -> Result<RecordId, StoreError> {
        let key = new_job_key();
        self.create_job(table, &key, job)
            .await?
            .ok_or(StoreError::Shape {
                statement: "CREATE ONLY job",
                detail: format!("a job with the new random key {key} already exists"),
            })
    }

    /// Creates a job under `key`; `None` when a row with that id already exists.
    pub async fn create_job(
        &self,
        table: &TableName,
        key: &str,
        job: NewJob,
    ) -> Result<Option<RecordId>, StoreError> {
        const STATEMENT: &str = "CREATE ONLY job";
        let id = RecordId::new(table.as_str(), key.to_string());
        let query = self
            .db
            .query(format!(
                "CREATE ONLY $id SET {} RETURN id",
                job.set_clause()
            ))
            .bind(("id", id.clone()))
            .bind(job.bindings());
        match self.exec(STATEMENT, query).await {
            Ok(mut response) => {
                let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
                Ok(row.map(|_| id))
            }
            Err(StoreError::Query { source, .. })
                if source.to_string().contains("already exists") =>
            {
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Creates many pending jobs in one statement (the benchmark's and tests' bulk loader).
    pub async fn enqueue_many(
        &self,
        table: &TableName,
        jobs: Vec<NewJob>,
    ) -> Result<usize, StoreError> {
        const STATEMENT: &str = "INSERT INTO ... (bulk)";
        let count = jobs.len();
        let rows: Vec<serde_json::Value> = jobs
            .into_iter()
            .map(|job| {
                serde_json::json!({
                    "id": new_job_key(),
                    "path": job.path,
                    "payload": job.payload,
                    "max_retries": job.max_retries,
                    "retry_strategy": job.retry_strategy,
                    "priority": job.priority,
                })
            })
            .collect();
        let query = self
            .db
            .query(format!("INSERT INTO {table} $rows RETURN NONE"))
            .bind(("rows", rows));
        self.exec(STATEMENT, query).await?;
        Ok(count)
    }

    /// Deletes every row of `table` that ended `status`; returns how many. In slices: one
    /// statement deleting tens of thousands of rows outlasts the statement bound.
    pub async fn delete_finished(
        &self,
        table: &TableName,
        status: Finished,
    ) -> Result<u64, StoreError> {
        const STATEMENT: &str = "DELETE ... WHERE status = $status (finished)";
        let mut total = 0;
        loop {
            let query = self
                .db
                .query(format!(
                    "DELETE (SELECT VALUE id FROM {table} WHERE status = $status LIMIT 2000) RETURN BEFORE"
                ))
                .bind(("status", status.as_str()));
            let mut response = self.exec(STATEMENT, query).await?;
            let deleted: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
            if deleted.is_empty() {
                return Ok(total);
            }
            total += deleted.len() as u64;
        }
    }

    /// How many rows of `table` have `status` (on the status index).
    pub async fn count(&self, table: &TableName, status: JobStatus) -> Result<u64, StoreError> {
        const STATEMENT: &str = "SELECT count() WHERE status = $status";
        let query = self
            .db
            .query(format!(
                "SELECT count() AS n FROM {table} WHERE status = $status GROUP ALL"
            ))
            .bind(("status", status.as_str()));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<serde_json::Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0))
    }

    /// Rows per status of each table, in one request: what the dashboard and `/metrics` read
    /// once per refresh, however many pages are open and however often it is scraped. Rows
    /// whose status is none of the four are not counted.
    pub async fn counts_by_status(
        &self,
        tables: &[&TableName],
    ) -> Result<Vec<StatusCounts>, StoreError> {
        const STATEMENT: &str = "SELECT status, count() GROUP BY status";
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut text = String::new();
        for table in tables {
            text.push_str(&format!(
                "SELECT status, count() AS n FROM {table} GROUP BY status;"
            ));
        }
        let mut response = self.exec(STATEMENT, self.db.query(text)).await?;
        let mut counts = Vec::with_capacity(tables.len());
        for index in 0..tables.len() {
            let rows: Vec<Value> = response.take(index).map_err(query_err(STATEMENT))?;
            let mut of_table = StatusCounts::default();
            for row in rows.into_iter().map(Value::into_json_value) {
                let status = row["status"]
                    .as_str()
                    .and_then(|s| s.parse::<JobStatus>().ok());
                if let Some(status) = status {
                    of_table.add(status, row["n"].as_u64().unwrap_or(0));
                }
            }
            counts.push(of_table);
        }
        Ok(counts)
    }

    /// Reads one row as JSON (tests and the CLI).
    pub async fn get(&self, id: &RecordId) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "SELECT * FROM ONLY $id";
        let query = self
            .db
            .query("SELECT * FROM ONLY $id")
            .bind(("id", id.clone()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }

    /// A page of rows, newest first, after `after` (keyset paging on `created_at` and `id`:
    /// rows created, changed or deleted meanwhile never shift a page).
    pub async fn list_jobs(
        &self,
        table: &TableName,
        filter: &JobFilter,
        after: Option<PageKey>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "SELECT page of jobs";
        let (at, after_id) = after.map(|k| (k.created_at, k.id)).unzip();
        let query = self
            .db
            .query(format!(
                "SELECT * FROM {table} WHERE {} \
                   AND ($at = NONE OR created_at < $at OR (created_at = $at AND id < $after)) \
                 ORDER BY created_at DESC, id DESC LIMIT $limit",
                JobFilter::CONDITION
            ))
            .bind(filter.bindings())
            .bind(("at", at))
            .bind(("after", after_id))
            .bind(("limit", limit as i64));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.into_iter().map(Value::into_json_value).collect())
    }

    /// Puts a `failed` job back to `pending` with a fresh attempt budget; its `errors` stay.
    /// `None` when the job is not failed (or does not exist).
    pub async fn retry_failed(
        &self,
        id: &RecordId,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET status = 'pending' WHERE status = 'failed'";
        let query = self
            .db
            .query(
                "UPDATE ONLY $id SET status = 'pending', retries = 0, due_at = time::now(), \
                   assignee = NONE, lease_token = NONE, updated_at = time::now() \
                 WHERE status = 'failed' RETURN AFTER",
            )
            .bind(("id", id.clone()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }

    /// Ends a `pending` job `failed` with the given failure appended. `None` when the job is not
    /// pending (or does not exist).
    pub async fn cancel_pending(
        &self,
        id: &RecordId,
        error: ErrorEntry<'_>,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET status = 'failed' WHERE status = 'pending'";
        let query = self
            .db
            .query(format!(
                "UPDATE ONLY $id SET status = 'failed', updated_at = time::now(), \
                   {} \
                 WHERE status = 'pending' RETURN AFTER",
                error.set()
            ))
            .bind(("id", id.clone()))
            .bind(error.bindings());
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }
}

/// The fields a new job is created with.
const NEW_JOB_SET: &str = "path = $path, payload = $payload, max_retries = $max_retries, \
    retry_strategy = $retry_strategy, timeout = $timeout, assigned_to = $assigned_to, \
    delay = $delay, priority = $priority, \
    due_at = $run_at ?? (time::now() + duration::from_millis($delay))";

impl NewJob {
    /// The `SET` list of the `CREATE`; `schedule` only for a schedule's row, so tables without
    /// that field still take every other job.
    pub(super) fn set_clause(&self) -> String {
        match self.schedule {
            Some(_) => format!("{NEW_JOB_SET}, schedule = $schedule"),
            None => NEW_JOB_SET.to_string(),
        }
    }

    pub(super) fn bindings(self) -> surrealdb::types::Object {
        let mut vars = surrealdb::types::Object::new();
        vars.insert("path", self.path);
        vars.insert("payload", self.payload);
        vars.insert("max_retries", i64::from(self.max_retries));
        vars.insert("retry_strategy", self.retry_strategy.to_string());
        vars.insert("timeout", self.timeout.map(i64::from));
        vars.insert("assigned_to", self.assigned_to);
        vars.insert("delay", self.delay_ms as i64);
        vars.insert("priority", self.priority);
        vars.insert("run_at", self.run_at);
        vars.insert("schedule", self.schedule);
        vars
    }
}

/// A job to create, with the defaults of `db.run` already applied.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub path: String,
    /// Stored as Sp00ky's client stores it: a JSON string.
    pub payload: String,
    pub max_retries: u32,
    /// `linear` or `exponential`, from `Strategy::as_str`.
    pub retry_strategy: &'static str,
    pub timeout: Option<u32>,
    pub assigned_to: Option<RecordId>,
    /// Milliseconds before the job first runs.
    pub delay_ms: u64,
    /// An absolute first run time; wins over `delay_ms`.
    pub run_at: Option<DateTime<Utc>>,
    pub priority: i64,
    /// The schedule whose tick this row is: only the runner sets it (see `schema/job.surql`).
    pub schedule: Option<String>,
}

/// `job:<32 hex chars>`, like the Sp00ky client.
pub fn new_job_key() -> String {
    unguessable_hex()
}

/// 128 bits from the operating system's generator, as 32 hex digits: for what nobody may guess
/// (lease tokens, the keys of jobs and schedule ticks). `fastrand` stays for jitter and backoff,
/// where a seeded generator is enough.
pub fn unguessable_hex() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!("{:032x}", u128::from_ne_bytes(bytes))
}
