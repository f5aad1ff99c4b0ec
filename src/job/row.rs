//! Step 2 of a job's life: read a claimed **row** into a [`Job`].
//!
//! Rows are untrusted. A row whose fields cannot be read is still claimed (so it cannot stall
//! the queue) and carries its problem in [`Job::row`], which the record step writes as a `row`
//! failure. The same reader ([`read_row`]) checks a job before `enqueue` writes it, so one
//! contract holds at both ends: what the claim would refuse is refused at enqueue, in the same
//! words.

use chrono::{DateTime, Utc};
use serde_json::Value;
use surrealdb::types::{RecordId, ToSql};

use crate::config::limits::{self, RowLimits};
use crate::job::failure::{Failure, FailureKind, History, excerpt};
use crate::job::retry::Strategy;
use crate::store::ClaimedRow;

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
    /// The row's `errors` as far as keeping them bounded needs.
    pub history: History,
    /// Taken over from a runner whose lease ran out (not claimed as pending).
    pub rescued: bool,
    /// Who asked for the job and what it concerns, as the backend is told ([`Asker`]).
    pub asker: Asker,
}

/// Who asked for a job: the record user the database wrote into `created_by` (absent for a
/// system user's job) and the record the job concerns (`assigned_to`). Both are read from the
/// row, never from the payload, so a backend can check that the user may act on the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asker {
    pub user: Option<String>,
    pub assigned_to: Option<String>,
}

impl Asker {
    /// A record id as the row holds it (`table:key`); anything else is no record and is left out.
    fn of_row(fields: &Value) -> Asker {
        let record = |field: &str| {
            fields
                .get(field)
                .and_then(Value::as_str)
                .filter(|id| id.contains(':'))
                .map(str::to_string)
        };
        Asker {
            user: record("created_by"),
            assigned_to: record("assigned_to"),
        }
    }
}

/// The client-written fields of a row, read and checked.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub path: String,
    /// The payload as JSON: Sp00ky's client stores a JSON string, which is parsed here.
    /// `Null` while `payload_withheld`.
    pub payload: Value,
    /// The claim's reply left the payload out (it is longer than [`crate::store::INLINE_CHARS`]
    /// but within the backend's limit); the attempt reads it on its own ([`read_payload`]).
    pub payload_withheld: bool,
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

pub(crate) fn read_count(row: &Value, field: &str) -> Option<u32> {
    row.get(field)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// Reads a claimed row within its backend's `limits`. Never fails: what cannot be read becomes a
/// `row` failure on the job.
pub fn read_job(
    row: ClaimedRow,
    token: &str,
    due_at: Option<DateTime<Utc>>,
    limits: &RowLimits,
) -> Job {
    let fields = &row.fields;
    let retries = read_count(fields, "retries").unwrap_or(0);
    Job {
        display_id: row.id.to_sql(),
        id: row.id,
        token: token.to_string(),
        retries,
        row: read_row(fields, limits),
        due_at,
        history: History::of_row(fields),
        rescued: false,
        asker: Asker::of_row(fields),
    }
}

/// The client-written fields of a row, within its backend's `limits`. The claim reads every row
/// with it, and enqueue checks a new job's fields with it before writing them (with the payload
/// as [`payload_text`] stores it), so no limit applies at one end only.
pub fn read_row(fields: &Value, row_limits: &RowLimits) -> Result<JobRow, Failure> {
    let bad = |message: String| Failure::new(FailureKind::Row, message);
    let path = read_path(fields)?;
    let max_retries = match fields.get("max_retries") {
        None | Some(Value::Null) => limits::MAX_RETRIES,
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "`max_retries` must be a whole number of 0 or more, got {}",
                    excerpt(&value.to_string(), 40)
                ))
            })?,
    }
    .min(row_limits.max_retries);
    let strategy = match fields.get("retry_strategy") {
        None | Some(Value::Null) => Strategy::Linear,
        Some(Value::String(s)) => Strategy::parse(s).ok_or_else(|| {
            bad(format!(
                "`retry_strategy` must be `linear` or `exponential`, got {:?}",
                excerpt(s, 40)
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
                .filter(|s| limits::TIMEOUT_RANGE_SECS.contains(s))
                .ok_or_else(|| {
                    bad(format!(
                        "`timeout` must be {} to {} seconds, got {}",
                        limits::TIMEOUT_RANGE_SECS.start(),
                        limits::TIMEOUT_RANGE_SECS.end(),
                        excerpt(&value.to_string(), 40)
                    ))
                })?,
        ),
    };
    let payload_chars = fields.get("payload_chars").and_then(Value::as_u64);
    // Every character is at least one byte: more characters than the limit allows bytes is
    // over the limit, without reading the payload.
    if let Some(n) = payload_chars.filter(|n| *n > row_limits.payload_bytes as u64) {
        return Err(payload_too_big(&format!("{n} characters"), row_limits));
    }
    let withheld = matches!(fields.get("payload"), None | Some(Value::Null))
        && payload_chars.is_some_and(|n| n > 0);
    let payload = match withheld {
        true => Value::Null,
        false => read_payload(fields.get("payload"), row_limits)?,
    };
    Ok(JobRow {
        path,
        payload,
        payload_withheld: withheld,
        max_retries,
        strategy,
        timeout,
    })
}

/// The text a new job's payload is written as (Sp00ky's client stores a JSON string): a string
/// as given, anything else as JSON. [`read_payload`] measures exactly this text, so the size
/// checked at enqueue is the size the claim finds.
pub fn payload_text(payload: Value) -> String {
    match payload {
        Value::String(text) => text,
        other => other.to_string(),
    }
}

/// The row's `path`, within [`limits::PATH_CHARS`]. A claim reports the length of a path it
/// left out of its reply (see `store::INLINE_CHARS`) instead of the path.
fn read_path(fields: &Value) -> Result<String, Failure> {
    let bad = |message: String| Failure::new(FailureKind::Row, message);
    let path_chars = fields
        .get("path_chars")
        .and_then(Value::as_u64)
        .or_else(|| {
            let path = fields.get("path").and_then(Value::as_str);
            path.map(|p| p.chars().count() as u64)
        });
    if let Some(n) = path_chars.filter(|n| *n > limits::PATH_CHARS as u64) {
        return Err(bad(format!(
            "`path` is {n} characters, more than the limit of {}",
            limits::PATH_CHARS
        )));
    }
    match fields.get("path") {
        Some(Value::String(path)) => Ok(path.clone()),
        Some(Value::Null) | None => Err(bad("the row has no `path`".into())),
        Some(other) => Err(bad(format!(
            "`path` must be a string, got {}",
            type_name(other)
        ))),
    }
}

fn payload_too_big(size: &str, row_limits: &RowLimits) -> Failure {
    Failure::new(
        FailureKind::Row,
        format!(
            "`payload` is {size}, more than the backend's limit of {} (limits.payloadBytes)",
            row_limits.payload_bytes
        ),
    )
}

/// The payload within the size limit, parsed when it is a JSON string (what Sp00ky's client
/// stores). The size is checked first, so an oversized payload costs no parse.
pub fn read_payload(payload: Option<&Value>, row_limits: &RowLimits) -> Result<Value, Failure> {
    let size = match payload {
        Some(Value::String(text)) => text.len(),
        Some(value) => serde_json::to_string(value).map_or(usize::MAX, |text| text.len()),
        None => 0,
    };
    if size > row_limits.payload_bytes {
        return Err(payload_too_big(&format!("{size} bytes"), row_limits));
    }
    match payload {
        None => Ok(Value::Null),
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
            Failure::new(
                FailureKind::Validation,
                format!(
                    "`payload` is a string but not JSON: {}",
                    excerpt(&e.to_string(), 200)
                ),
            )
        }),
        Some(value) => Ok(value.clone()),
    }
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

    #[test]
    fn reads_a_sp00ky_row_with_a_json_string_payload() {
        let row = read_row(&json!({"path": "/spookify", "payload": "{\"id\":\"t1\"}", "max_retries": 0, "retry_strategy": "exponential"}), &RowLimits::default()).unwrap();
        assert_eq!(row.payload, json!({"id": "t1"}));
        assert_eq!(row.max_retries, 0);
        assert_eq!(row.strategy, Strategy::Exponential);
    }

    #[test]
    fn defaults_match_the_contract() {
        let row = read_row(
            &json!({"path": "/x", "payload": {"a": 1}}),
            &RowLimits::default(),
        )
        .unwrap();
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
            let err = read_row(&row, &RowLimits::default()).unwrap_err();
            assert!(err.reason.contains(expected), "{row}: {}", err.reason);
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn rows_asking_for_more_retries_than_the_cap_run_with_the_cap() {
        let limits = RowLimits {
            payload_bytes: 1024,
            max_retries: 25,
            ..RowLimits::default()
        };
        let row = read_row(
            &json!({"path": "/x", "max_retries": 4_000_000_000u64}),
            &limits,
        )
        .unwrap();
        assert_eq!(row.max_retries, 25);
        let row = read_row(&json!({"path": "/x", "max_retries": 2}), &limits).unwrap();
        assert_eq!(row.max_retries, 2);
    }

    #[test]
    fn a_payload_is_measured_as_it_is_stored() {
        let limits = RowLimits {
            payload_bytes: 1024,
            max_retries: 25,
            ..RowLimits::default()
        };
        let value = json!({"big": "y".repeat(1100)});
        let text = payload_text(value.clone());
        assert_eq!(text, value.to_string());
        for payload in [value, Value::String(text)] {
            let err = read_row(&json!({"path": "/x", "payload": payload}), &limits).unwrap_err();
            assert_eq!(err.kind, FailureKind::Row);
        }
        // A JSON string is kept as given, so its own length is what the claim will measure.
        let spaced = format!("{{\"a\": 1{}}}", " ".repeat(1100));
        assert_eq!(payload_text(Value::String(spaced.clone())), spaced);
        let err = read_row(&json!({"path": "/x", "payload": spaced}), &limits).unwrap_err();
        assert_eq!(err.kind, FailureKind::Row);
    }

    #[test]
    fn payloads_over_the_limit_fail_before_they_are_parsed() {
        let limits = RowLimits {
            payload_bytes: 1024,
            max_retries: 25,
            ..RowLimits::default()
        };
        // Not even JSON: the size is refused first, so an oversized row costs no parse.
        let text = format!("{{not json {}", "x".repeat(2000));
        let err = read_row(&json!({"path": "/x", "payload": text}), &limits).unwrap_err();
        assert_eq!(err.kind, FailureKind::Row);
        assert!(
            err.reason.contains("more than the backend's limit of 1024"),
            "{}",
            err.reason
        );
        assert!(
            err.reason.len() < 200,
            "the reason does not quote the payload"
        );
        let object = json!({"path": "/x", "payload": {"big": "y".repeat(2000)}});
        assert_eq!(
            read_row(&object, &limits).unwrap_err().kind,
            FailureKind::Row
        );
        let fits = json!({"path": "/x", "payload": {"small": "y".repeat(900)}});
        assert!(read_row(&fits, &limits).is_ok());
    }
}
