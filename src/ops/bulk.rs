//! The bulk verbs: retry every failed job matching a filter, delete finished jobs matching one.
//! One implementation for the admin API, the dashboard and the `jobs retry`/`jobs delete`
//! commands; each is bounded and says how many rows it touched.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ops::admin::{Admin, AdminError, parse_status};
use crate::store::{Finished, JobFilter, JobStatus};

/// The most rows one bulk request touches; `more` in the answer says whether rows were left.
pub const BULK_BOUND: usize = 100_000;

/// `POST /v1/jobs/retry`: every failed job of a table, optionally of one path and failed at or
/// after `since`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRetry {
    pub table: Option<String>,
    /// Must be `failed` when given: only failed jobs are retried.
    pub status: Option<String>,
    pub path: Option<String>,
    /// An RFC 3339 time, or a duration ago (`1h`, `2d`).
    pub since: Option<String>,
}

/// `POST /v1/jobs/delete`: finished jobs of a table with one status, optionally of one path and
/// finished more than `older_than` ago.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    pub table: Option<String>,
    /// `success` or `failed`.
    pub status: String,
    pub path: Option<String>,
    /// A duration (`7d`, `12h`).
    pub older_than: Option<String>,
}

/// What a bulk verb did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Touched {
    pub touched: u64,
    /// The bound was reached: rows may be left; run it again.
    pub more: bool,
}

impl Admin {
    pub async fn retry_matching(&self, request: BulkRetry) -> Result<Touched, AdminError> {
        let table = self.table(request.table.as_deref())?;
        if let Some(status) = &request.status {
            parse_status(status, &[JobStatus::Failed])?;
        }
        let since = request
            .since
            .as_deref()
            .map(|text| parse_since(text, Utc::now()))
            .transpose()?;
        // Only jobs that had failed when the request came: a retried job that fails again
        // while the request runs is not taken a second time.
        let filter = JobFilter {
            path: request.path.filter(|p| !p.is_empty()),
            changed_since: since,
            changed_before: Some(Utc::now()),
            ..JobFilter::default()
        };
        let touched = self
            .store()
            .retry_failed_matching(&table, &filter, BULK_BOUND)
            .await?;
        Ok(Touched {
            touched,
            more: touched as usize >= BULK_BOUND,
        })
    }

    pub async fn delete_matching(&self, request: BulkDelete) -> Result<Touched, AdminError> {
        let table = self.table(request.table.as_deref())?;
        let status = parse_status(&request.status, &[JobStatus::Success, JobStatus::Failed])?;
        let status = Finished::try_from(status).expect("only final statuses are allowed");
        let before = request
            .older_than
            .as_deref()
            .map(|text| parse_age(text, "older_than").map(|age| Utc::now() - age))
            .transpose()?;
        let filter = JobFilter {
            path: request.path.filter(|p| !p.is_empty()),
            changed_before: before,
            ..JobFilter::default()
        };
        let touched = self
            .store()
            .delete_finished_matching(&table, status, &filter, BULK_BOUND)
            .await?;
        Ok(Touched {
            touched,
            more: touched as usize >= BULK_BOUND,
        })
    }
}

/// `since`: an RFC 3339 time, or a duration before `now`.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AdminError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    parse_age(text, "since").map(|age| now - age).map_err(|_| {
        AdminError::BadRequest(format!(
            "since {text:?} is neither an RFC 3339 time nor a duration like 1h or 2d"
        ))
    })
}

/// A duration of at most ten years, as humantime writes it (`7d`, `12h 30m`).
fn parse_age(text: &str, key: &str) -> Result<chrono::TimeDelta, AdminError> {
    const TEN_YEARS: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
    humantime::parse_duration(text)
        .ok()
        .filter(|d| *d <= TEN_YEARS)
        .and_then(|d| chrono::TimeDelta::from_std(d).ok())
        .ok_or_else(|| {
            AdminError::BadRequest(format!(
                "{key} {text:?} is not a duration like 7d or 12h (at most ten years)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("2h", now).unwrap().to_rfc3339(),
            "2026-11-25T10:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-11-01T00:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("99999y", now).is_err());
    }
}
