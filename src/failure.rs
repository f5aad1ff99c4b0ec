//! The stable shape of a failed attempt, and the one place that decides retryable vs permanent.
//!
//! Each failed attempt appends one entry to the row's `errors`:
//! `{ code, reason, kind, attempt, at }`. `code` is the HTTP status, 0 when no response came
//! (CONTRACT.md); `kind` is one of the [`FailureKind`] names below and never changes meaning, so
//! apps can branch on it; `reason` is text for people.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
