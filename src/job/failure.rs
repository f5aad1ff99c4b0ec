//! The stable shape of a failed attempt, and the one place that decides retryable vs permanent.
//!
//! Each failed attempt appends one entry to the row's `errors`:
//! `{ code, reason, kind, attempt, at }`. `code` is the HTTP status, 0 when no response came
//! (CONTRACT.md); `kind` is one of the [`FailureKind`] names below and never changes meaning, so
//! apps can branch on it; `reason` is text for people.

use std::time::Duration;

use serde_json::Value;

use crate::config::limits;
use crate::store::{ErrorEntry, Trim};

/// What went wrong, as a stable machine-readable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The payload does not match the route's request schema (or a path parameter is missing).
    Validation,
    /// The row's `path` is not a route the backend declares, or is not a safe path.
    Route,
    /// The backend answered with a non-2xx status.
    Http,
    /// No response: connection refused, reset, DNS, TLS.
    Transport,
    /// No response within the timeout.
    Timeout,
    /// The row itself is unreadable (wrong field types, unknown `retry_strategy`, ...).
    Row,
    /// The runner that held the job stopped renewing its lease; the call may have reached the backend.
    LeaseExpired,
    /// An operator cancelled the job.
    Cancelled,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Validation => "validation",
            FailureKind::Route => "route",
            FailureKind::Http => "http",
            FailureKind::Transport => "transport",
            FailureKind::Timeout => "timeout",
            FailureKind::Row => "row",
            FailureKind::LeaseExpired => "lease_expired",
            FailureKind::Cancelled => "cancelled",
        }
    }
}

/// One failed attempt, before it is written to the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// HTTP status, or 0 when there was no response.
    pub code: u16,
    pub reason: String,
    /// The backend's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Failure {
        Failure {
            kind,
            code: 0,
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn http(code: u16, reason: impl Into<String>, retry_after: Option<Duration>) -> Failure {
        Failure {
            kind: FailureKind::Http,
            code,
            reason: reason.into(),
            retry_after,
        }
    }

    /// This failure as the `errors` entry of attempt `attempt`.
    pub fn entry(&self, attempt: u32) -> ErrorEntry<'_> {
        ErrorEntry {
            code: self.code,
            reason: &self.reason,
            kind: self.kind.as_str(),
            attempt,
            trim: None,
        }
    }

    /// Whether another attempt could succeed. Transport errors, timeouts, an expired lease, and
    /// the statuses that mean "not now" (408, 425, 429, 5xx) are retryable; every other 4xx and
    /// every problem with the row itself is permanent, since repeating it changes nothing.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            FailureKind::Transport | FailureKind::Timeout | FailureKind::LeaseExpired => true,
            FailureKind::Http => matches!(self.code, 408 | 425 | 429 | 500..=599),
            FailureKind::Validation
            | FailureKind::Route
            | FailureKind::Row
            | FailureKind::Cancelled => false,
        }
    }
}

/// What a row's `errors` holds, as far as keeping it bounded needs: each entry's attempt.
///
/// A job retried many times would grow its row without bound, so `errors` keeps the first
/// [`limits::ERRORS_HEAD`] entries (how it started failing), a `truncated` note saying which
/// attempts were left out, and the most recent ones: [`limits::ERRORS_KEPT`] entries in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// `attempt` of each entry, in order; `None` for a note or an entry without one.
    attempts: Vec<Option<u32>>,
}

/// A cut of a full history, owning its note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimPlan {
    pub head: usize,
    pub tail_from: usize,
    pub note: String,
}

impl TrimPlan {
    pub fn as_trim(&self) -> Trim<'_> {
        Trim {
            head: self.head,
            tail_from: self.tail_from,
            note: &self.note,
        }
    }
}

impl History {
    /// Reads the `errors` of a row (as JSON); anything unreadable counts as an entry without an
    /// attempt.
    pub fn of_row(fields: &Value) -> History {
        let attempts = fields
            .get("errors")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| match e.get("kind").and_then(Value::as_str) {
                        Some("truncated") => None,
                        _ => e
                            .get("attempt")
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        History { attempts }
    }

    /// How to cut the history before one more entry is appended, when it is full.
    pub fn plan(&self) -> Option<TrimPlan> {
        let len = self.attempts.len();
        if len < limits::ERRORS_KEPT {
            return None;
        }
        let head = limits::ERRORS_HEAD;
        // Kept after the note: all but the head, the note and the new entry.
        let tail = limits::ERRORS_KEPT - head - 2;
        let tail_from = len - tail;
        let first = self.attempts[..head]
            .iter()
            .rev()
            .find_map(|a| *a)
            .map(|a| a + 1);
        let last = self.attempts[tail_from..]
            .iter()
            .find_map(|a| *a)
            .map(|a| a.saturating_sub(1));
        let note = match (first, last) {
            (Some(first), Some(last)) if last >= first => format!(
                "{} failed attempts not kept (attempts {first} to {last})",
                last - first + 1
            ),
            _ => "earlier failed attempts not kept".to_string(),
        };
        Some(TrimPlan {
            head,
            tail_from,
            note,
        })
    }
}

/// A bounded, printable excerpt of untrusted text (a path, a response body, a validation
/// message) for a reason or a log line. Control characters are escaped (`\n`, `\u{1b}`), so no
/// value can forge a log line or send a terminal sequence; past `max_chars` it ends in `…`.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 2));
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_escape_controls_and_stop_at_the_limit() {
        assert_eq!(excerpt("a\nb\u{1b}[31m", 10), "a\\nb\\u{1b}[31m");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("abc", 3), "abc");
        assert!(!excerpt("line\r\nforged: INFO", 100).contains(['\r', '\n']));
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert!(Failure::http(code, "", None).is_retryable(), "{code}");
        }
        for code in [300, 301, 400, 401, 403, 404, 409, 410, 422, 451] {
            assert!(!Failure::http(code, "", None).is_retryable(), "{code}");
        }
        assert!(Failure::new(FailureKind::Transport, "").is_retryable());
        assert!(Failure::new(FailureKind::Timeout, "").is_retryable());
        assert!(!Failure::new(FailureKind::Validation, "").is_retryable());
        assert!(!Failure::new(FailureKind::Route, "").is_retryable());
        assert!(!Failure::new(FailureKind::Row, "").is_retryable());
    }

    fn history(attempts: std::ops::RangeInclusive<u32>) -> History {
        History {
            attempts: attempts.map(Some).collect(),
        }
    }

    #[test]
    fn a_history_below_the_limit_is_appended_to() {
        assert_eq!(history(1..=24).plan(), None);
        assert_eq!(History::default().plan(), None);
    }

    #[test]
    fn a_full_history_keeps_its_start_a_note_and_its_latest_entries() {
        // 25 entries for attempts 1..=25: the 26th is about to be appended.
        let plan = history(1..=25).plan().unwrap();
        assert_eq!(plan.head, 5);
        // Kept: 5 first, the note, 18 latest (attempts 8..=25), the new one: 25 in all.
        assert_eq!(plan.tail_from, 7);
        assert_eq!(plan.note, "2 failed attempts not kept (attempts 6 to 7)");
        assert_eq!(
            plan.head + 1 + (25 - plan.tail_from) + 1,
            limits::ERRORS_KEPT
        );
    }

    #[test]
    fn a_trimmed_history_moves_its_note_forward() {
        // After a first trim: attempts 1..=5, the note, attempts 8..=26 (25 entries again).
        let mut attempts: Vec<Option<u32>> = (1..=5).map(Some).collect();
        attempts.push(None);
        attempts.extend((8..=26).map(Some));
        let plan = History { attempts }.plan().unwrap();
        assert_eq!(plan.head, 5);
        // The old note (index 5) and attempt 8 are left out; attempts 9..=26 stay.
        assert_eq!(plan.tail_from, 7);
        assert_eq!(plan.note, "3 failed attempts not kept (attempts 6 to 8)");
    }

    #[test]
    fn a_history_is_read_from_the_row() {
        let row = serde_json::json!({"errors": [
            {"attempt": 1, "kind": "http"},
            {"kind": "truncated", "attempt": 99},
            {"attempt": "x"},
        ]});
        assert_eq!(History::of_row(&row).attempts, vec![Some(1), None, None]);
        assert_eq!(History::of_row(&serde_json::json!({})).attempts, Vec::new());
    }
}
