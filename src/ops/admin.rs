//! Operator actions on jobs: enqueue, show, list, retry, cancel. One implementation serves both
//! the admin HTTP API ([`crate::ops::listener`]) and the `jobs`/`enqueue` commands, so they cannot drift.
//!
//! Only the configured job tables are reachable: an id naming any other table is "not found".

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use surrealdb::types::{RecordId, ToSql};

use crate::config::limits;
use crate::job::failure::{Failure, FailureKind, History, TrimPlan};
use crate::job::retry::Strategy;
use crate::job::row;
use crate::runner::BackendRuntime;
use crate::store::{JobFilter, JobStatus, NewJob, PageKey, Store, StoreError, TableName};

/// Why an action was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 400: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: the job is not in a state that allows the action.
    #[error("{0}")]
    Conflict(String),
    /// 503: the database did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `db.run` sends, as JSON (`POST /v1/jobs`).
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    pub backend: String,
    pub path: String,
    #[serde(default)]
    pub payload: Value,
    pub max_retries: Option<u32>,
    pub retry_strategy: Option<Strategy>,
    pub assigned_to: Option<String>,
    pub timeout: Option<u32>,
    /// Milliseconds before the first attempt.
    pub delay_ms: Option<u64>,
    /// RFC 3339 time before which the job does not run; exclusive with `delay_ms`.
    pub run_at: Option<String>,
    pub priority: Option<i64>,
}

/// `GET /v1/jobs` parameters.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub table: Option<String>,
    pub status: Option<String>,
    /// Exactly this path.
    pub path: Option<String>,
    /// Text contained in the id or in `assigned_to`.
    pub q: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The most rows one page may hold.
pub const MAX_PAGE: usize = 500;

#[derive(Clone)]
pub struct Admin {
    store: Store,
    backends: Arc<Vec<Arc<BackendRuntime>>>,
}

impl Admin {
    pub fn new(store: Store, backends: Arc<Vec<Arc<BackendRuntime>>>) -> Admin {
        Admin { store, backends }
    }

    /// Creates a job after the checks `db.run` makes (the route exists, the payload validates),
    /// having read its fields with the claim's own reader within the backend's `limits`: a job
    /// the claim would fail as unreadable is refused here instead, with the claim's words.
    pub async fn enqueue(&self, request: EnqueueRequest) -> Result<RecordId, AdminError> {
        let runtime = self.backend(&request.backend)?;
        let payload = row::payload_text(request.payload);
        let fields = json!({
            "path": &request.path,
            "payload": &payload,
            "max_retries": request.max_retries,
            "retry_strategy": request.retry_strategy.map(Strategy::as_str),
            "timeout": request.timeout,
        });
        let checked = row::read_row(&fields, &runtime.backend.row_limits)
            .map_err(|failure| AdminError::BadRequest(failure.reason))?;
        runtime
            .routes
            .prepare(&runtime.backend.base_url, &checked.path, checked.payload)
            .map_err(|failure| AdminError::BadRequest(failure.reason))?;
        let assigned_to = request
            .assigned_to
            .as_deref()
            .map(|text| {
                RecordId::parse_simple(text).map_err(|e| {
                    AdminError::BadRequest(format!("assigned_to {text:?} is not a record id: {e}"))
                })
            })
            .transpose()?;
        if request.delay_ms.is_some() && request.run_at.is_some() {
            return Err(AdminError::BadRequest(
                "give delay_ms or run_at, not both".into(),
            ));
        }
        let run_at = request.run_at.as_deref().map(parse_run_at).transpose()?;
        let id = self
            .store
            .enqueue(
                &runtime.backend.table,
                NewJob {
                    path: request.path,
                    payload,
                    max_retries: request.max_retries.unwrap_or(limits::MAX_RETRIES),
                    retry_strategy: checked.strategy.as_str(),
                    timeout: request.timeout,
                    assigned_to,
                    delay_ms: request.delay_ms.unwrap_or(0),
                    run_at,
                    priority: request.priority.unwrap_or(0),
                    schedule: None,
                },
            )
            .await?;
        Ok(id)
    }

    /// The configured backend named `name`.
    fn backend(&self, name: &str) -> Result<&Arc<BackendRuntime>, AdminError> {
        self.backends
            .iter()
            .find(|b| b.backend.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .backends
                    .iter()
                    .map(|b| b.backend.name.as_str())
                    .collect();
                AdminError::BadRequest(format!(
                    "no backend named {name:?}; configured: {}",
                    names.join(", ")
                ))
            })
    }

    /// Parses `table:key` and checks that the table is a configured job table.
    pub fn job_id(&self, text: &str) -> Result<RecordId, AdminError> {
        let id = RecordId::parse_simple(text).map_err(|_| {
            AdminError::BadRequest(format!("{text:?} is not a job id like job:0123abcd"))
        })?;
        if !self
            .backends
            .iter()
            .any(|b| b.backend.table == id.table.as_str())
        {
            return Err(AdminError::NotFound(format!(
                "{text:?} is not in a configured job table"
            )));
        }
        Ok(id)
    }

    pub async fn show(&self, id: &str) -> Result<Value, AdminError> {
        let id = self.job_id(id)?;
        self.store
            .get(&id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no job {}", id.to_sql())))
    }

    /// One page: `{jobs, next_cursor}`; `next_cursor` is absent on the last page.
    pub async fn list(&self, query: ListQuery) -> Result<Value, AdminError> {
        let table = self.table(query.table.as_deref())?;
        let status = query
            .status
            .as_deref()
            .map(|status| parse_status(status, &JobStatus::ALL))
            .transpose()?;
        let limit = query.limit.unwrap_or(50);
        if limit == 0 || limit > MAX_PAGE {
            return Err(AdminError::BadRequest(format!(
                "limit must be 1 to {MAX_PAGE}"
            )));
        }
        let after = query
            .cursor
            .as_deref()
            .map(|c| self.page_key(c))
            .transpose()?;
        let filter = JobFilter {
            status,
            path: query.path.filter(|p| !p.is_empty()),
            text: query.q.filter(|q| !q.is_empty()),
            ..JobFilter::default()
        };
        let jobs = self.store.list_jobs(&table, &filter, after, limit).await?;
        let next = (jobs.len() == limit)
            .then(|| jobs.last().and_then(cursor_of))
            .flatten();
        let mut page = json!({ "jobs": jobs });
        if let Some(next) = next {
            page["next_cursor"] = Value::String(next);
        }
        Ok(page)
    }

    /// The configured job table `table`, or the only one when none is named.
    pub(crate) fn table(&self, table: Option<&str>) -> Result<TableName, AdminError> {
        match (table, self.backends.as_slice()) {
            (Some(table), _) => self
                .backends
                .iter()
                .map(|b| &b.backend.table)
                .find(|configured| *configured == table)
                .cloned()
                .ok_or_else(|| {
                    AdminError::NotFound(format!("{table:?} is not a configured job table"))
                }),
            (None, [only]) => Ok(only.backend.table.clone()),
            (None, _) => Err(AdminError::BadRequest(
                "several job tables are configured: name one with `table`".into(),
            )),
        }
    }

    /// Reads a cursor made by [`cursor_of`]; its id must be in a configured job table.
    fn page_key(&self, cursor: &str) -> Result<PageKey, AdminError> {
        let bad = || AdminError::BadRequest(format!("{cursor:?} is not a cursor from this API"));
        let text = unhex(cursor).ok_or_else(bad)?;
        let (at, id) = text.split_once('|').ok_or_else(bad)?;
        let created_at = chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|_| bad())?
            .with_timezone(&chrono::Utc);
        Ok(PageKey {
            created_at,
            id: self.job_id(id).map_err(|_| bad())?,
        })
    }

    pub(crate) fn backends(&self) -> &[Arc<BackendRuntime>] {
        &self.backends
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// A failed job back to `pending`, with a fresh attempt budget and its history kept.
    pub async fn retry(&self, id: &str) -> Result<Value, AdminError> {
        let id = self.job_id(id)?;
        match self.store.retry_failed(&id).await? {
            Some(row) => Ok(row),
            None => Err(self.state_conflict(&id, JobStatus::Failed, "retried").await),
        }
    }

    /// A pending job ended `failed`, with a `cancelled` entry in its errors.
    pub async fn cancel(&self, id: &str) -> Result<Value, AdminError> {
        let id = self.job_id(id)?;
        let current = self.show(&id.to_sql()).await?;
        let attempt = current["retries"].as_u64().unwrap_or(0) as u32 + 1;
        let failure = Failure::new(FailureKind::Cancelled, "cancelled by an operator");
        let trim = History::of_row(&current).plan();
        let entry = failure
            .entry(attempt)
            .with_trim(trim.as_ref().map(TrimPlan::as_trim));
        match self.store.cancel_pending(&id, entry).await? {
            Some(row) => Ok(row),
            None => Err(self
                .state_conflict(&id, JobStatus::Pending, "cancelled")
                .await),
        }
    }

    async fn state_conflict(&self, id: &RecordId, needed: JobStatus, action: &str) -> AdminError {
        match self.store.get(id).await {
            Ok(Some(row)) => AdminError::Conflict(format!(
                "job {} is {}; only a {needed} job can be {action}",
                id.to_sql(),
                row["status"].as_str().unwrap_or("unknown")
            )),
            Ok(None) => AdminError::NotFound(format!("no job {}", id.to_sql())),
            Err(e) => AdminError::Store(e),
        }
    }
}

/// Reads the status a request names. The wire keeps it a string, so that a status that is not
/// one of `allowed` (or no status at all) gets this message rather than serde's.
pub(crate) fn parse_status(text: &str, allowed: &[JobStatus]) -> Result<JobStatus, AdminError> {
    match text.parse::<JobStatus>() {
        Ok(status) if allowed.contains(&status) => Ok(status),
        _ => {
            let names: Vec<&str> = allowed.iter().map(|status| status.as_str()).collect();
            Err(AdminError::BadRequest(format!(
                "status {text:?} is not one of {}",
                names.join(", ")
            )))
        }
    }
}

/// The cursor after `row`: its creation time and id, hex-encoded so that it travels in a URL
/// as it is (ids may hold any character).
fn cursor_of(row: &Value) -> Option<String> {
    let at = row["created_at"].as_str()?;
    let id = row["id"].as_str()?;
    Some(
        format!("{at}|{id}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

fn unhex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// An RFC 3339 time for `run_at`.
fn parse_run_at(text: &str) -> Result<chrono::DateTime<chrono::Utc>, AdminError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            AdminError::BadRequest(format!("run_at {text:?} is not an RFC 3339 time: {e}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_status_outside_the_allowed_ones_is_refused_with_them() {
        assert_eq!(
            parse_status("failed", &JobStatus::ALL).unwrap(),
            JobStatus::Failed
        );
        let refused = |text: &str, allowed: &[JobStatus]| match parse_status(text, allowed) {
            Err(AdminError::BadRequest(message)) => message,
            other => panic!("{text:?}: {other:?}"),
        };
        assert_eq!(
            refused("bogus", &JobStatus::ALL),
            "status \"bogus\" is not one of pending, processing, success, failed"
        );
        assert_eq!(
            refused("success", &[JobStatus::Failed]),
            "status \"success\" is not one of failed"
        );
        assert_eq!(
            refused("Failed", &[JobStatus::Failed]),
            "status \"Failed\" is not one of failed",
            "statuses are spelled exactly"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A cursor carries any creation time and any id (ids may hold any character) through a
        /// URL unchanged: hex digits only, and read back exactly.
        #[test]
        fn cursors_round_trip_whatever_the_id(at in "(?s).{0,40}", id in "(?s).{0,80}") {
            let row = json!({"created_at": at, "id": id});
            let cursor = cursor_of(&row).unwrap();
            prop_assert!(cursor.bytes().all(|b| b.is_ascii_hexdigit()));
            prop_assert_eq!(unhex(&cursor), Some(format!("{at}|{id}")));
        }

        /// Whatever a browser sends as a cursor is read or refused, never a panic; what is read
        /// is exactly what those hex digits spell.
        #[test]
        fn any_cursor_text_reads_or_is_refused(text in "(?s).{0,200}|[0-9a-fA-F]{0,64}") {
            if let Some(read) = unhex(&text) {
                let spelled: String = read.bytes().map(|b| format!("{b:02x}")).collect();
                prop_assert_eq!(spelled, text.to_ascii_lowercase());
            }
        }
    }
}
