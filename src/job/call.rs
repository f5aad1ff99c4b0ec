//! Step 4 of a job's life: **call** the backend.
//!
//! The request was built by the validate step, so its URL is already known to lie under the
//! backend's `baseUrl`. Redirects are not followed: a 3xx could otherwise carry the bearer token
//! somewhere else. The response body is read up to [`BODY_CAP`] bytes and only a short excerpt
//! (with the token scrubbed, in case a backend echoes headers) ever reaches a row or a log.

use std::time::{Duration, SystemTime};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use secrecy::{ExposeSecret, SecretString};

use crate::job::failure::{Failure, FailureKind, excerpt};
use crate::job::row::Asker;
use crate::job::validate::Request;

/// The most of a response body the runner reads.
pub const BODY_CAP: usize = 64 * 1024;
/// The most of a response body that is stored in a row's `errors` or logged.
pub const EXCERPT_CHARS: usize = 300;
/// The header that carries the attempt number (1 for the first attempt).
pub const ATTEMPT_HEADER: &str = "x-sp00ky-attempt";
/// The record user who created the job (`created_by`); absent for a system user's job.
pub const USER_HEADER: &str = "x-sp00ky-user";
/// The record the job concerns (`assigned_to`); absent when the row names none.
pub const ASSIGNED_TO_HEADER: &str = "x-sp00ky-assigned-to";

/// An HTTP client shared by every job (connection pooling).
#[derive(Clone)]
pub struct Caller {
    client: reqwest::Client,
}

/// Who is calling, for the request headers.
pub struct CallContext<'a> {
    pub job_id: &'a str,
    /// Sent as [`USER_HEADER`] and [`ASSIGNED_TO_HEADER`].
    pub asker: &'a Asker,
    pub attempt: u32,
    pub token: Option<&'a SecretString>,
    pub timeout: Duration,
}

impl Caller {
    pub fn new() -> Caller {
        // `no_proxy`: an `HTTP_PROXY`/`ALL_PROXY` in the environment must not receive the
        // bearer token and every payload (it would, loopback backends included).
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sp00ky-job-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with these settings always builds");
        Caller { client }
    }

    /// Sends the request; `Ok` for any 2xx.
    pub async fn call(&self, request: Request, context: CallContext<'_>) -> Result<(), Failure> {
        // A record id that is no header value (a control character in its key) can never be
        // sent: a permanent failure of the row, not a transport error to retry.
        let idempotency_key = HeaderValue::from_str(context.job_id).map_err(|_| {
            Failure::new(
                FailureKind::Row,
                format!(
                    "the job id {:?} cannot be sent as an Idempotency-Key header",
                    excerpt(context.job_id, 100)
                ),
            )
        })?;
        let mut builder = self
            .client
            .request(request.method, request.url)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("sp00ky-job-runner/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", idempotency_key)
            .header(ATTEMPT_HEADER, context.attempt.to_string())
            .body(serde_json::to_vec(&request.body).expect("a JSON value always serialises"));
        for (name, value) in [
            (USER_HEADER, &context.asker.user),
            (ASSIGNED_TO_HEADER, &context.asker.assigned_to),
        ] {
            if let Some(value) = value {
                builder = builder.header(name, header_value(name, value)?);
            }
        }
        if let Some(token) = context.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                .map_err(|_| {
                    Failure::new(
                        FailureKind::Transport,
                        "the configured token is not a valid header value",
                    )
                })?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        let timeout = context.timeout;
        let exchange = async {
            let response = builder.send().await.map_err(|e| transport(&e))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            if status.is_success() {
                return Ok(());
            }
            let body = read_capped(response).await;
            let mut reason = format!("HTTP {}", status.as_u16());
            if let Some(text) = status.canonical_reason() {
                reason.push(' ');
                reason.push_str(text);
            }
            // Scrubbed before it is cut: a token split by the cut would survive in part.
            let excerpt = excerpt(
                scrub(&String::from_utf8_lossy(&body), context.token).trim(),
                EXCERPT_CHARS,
            );
            if !excerpt.is_empty() {
                reason.push_str(": ");
                reason.push_str(&excerpt);
            }
            Err(Failure::http(status.as_u16(), reason, retry_after))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                FailureKind::Timeout,
                format!("no complete response within {} s", timeout.as_secs_f64()),
            )),
        }
    }
}

impl Default for Caller {
    fn default() -> Self {
        Caller::new()
    }
}

/// A record id from the row as a header value; one that cannot be sent (a control character in
/// its key) is a permanent failure of the row, not a transport error to retry.
fn header_value(name: &str, value: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_str(value).map_err(|_| {
        Failure::new(
            FailureKind::Row,
            format!(
                "{:?} cannot be sent as the {name} header",
                excerpt(value, 100)
            ),
        )
    })
}

/// The failure an app user may read: the cause chain ("connection refused") without the URL,
/// which may name a backend's internal host (operators get it in the log line below). Headers
/// never appear: reqwest does not print them.
fn transport(error: &reqwest::Error) -> Failure {
    if let Some(url) = error.url() {
        tracing::info!(url = %url, error = %error, "backend call failed before a response");
    }
    let mut reason = reqwest_without_url(error);
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    let kind = if error.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Transport
    };
    Failure::new(kind, reason)
}

/// `error`'s own message without the URL reqwest appends to it (`... for url (...)`).
fn reqwest_without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text
            .replace(&format!(" for url ({url})"), "")
            .replace(url.as_str(), "[backend]"),
        None => text,
    }
}

async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = BODY_CAP - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= BODY_CAP {
            break;
        }
    }
    body
}

/// Removes the token from text that came back from the backend.
fn scrub(text: &str, token: Option<&SecretString>) -> String {
    match token.map(|t| t.expose_secret()) {
        Some(secret) if !secret.is_empty() => text.replace(secret, "[redacted]"),
        _ => text.to_string(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let parsed = parse_retry_after(&in_a_minute).unwrap();
        assert!(
            parsed > Duration::from_secs(55) && parsed <= Duration::from_secs(61),
            "{parsed:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn excerpts_are_bounded_and_scrubbed() {
        let long = "x".repeat(10_000);
        assert_eq!(
            excerpt(&long, EXCERPT_CHARS).chars().count(),
            EXCERPT_CHARS + 1
        );
        let token = SecretString::from("tok-123");
        assert_eq!(
            scrub("echo: Bearer tok-123", Some(&token)),
            "echo: Bearer [redacted]"
        );
    }
}
