//! No row can cost without bound: oversized payloads, huge or hostile validation messages, a job
//! retried many times, a backend echoing the token at the edge of an excerpt, an id that is no
//! header value. Each ends as the row says, with a bounded `errors`, and nothing is retried that
//! cannot succeed.

use std::time::Duration;

use serde_json::{Value, json};
use sp00ky_job_runner::runner::Runner;
use surrealdb::types::{RecordId, ToSql};

use super::WAIT;
use crate::helpers::*;
use crate::ops::{ADMIN, call, serve_ops};

/// A payload over `limits.payloadBytes` fails (`row`) before validation: no request, no retry,
/// a short reason that does not quote it.
#[tokio::test]
async fn oversized_payloads_fail_as_row_without_a_request() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let limited = backends_with(
        &backend.url,
        "job",
        "baseMs: 50\n    limits:\n      payloadBytes: 1024",
    );
    let runner = start_runner(&store, limited, fast_options("r1")).await;
    let big = job("/spookify")
        .payload(json!({"id": "x".repeat(5000)}))
        .insert(&store)
        .await;
    let fits = job("/spookify")
        .payload(json!({"id": "x"}))
        .insert(&store)
        .await;
    let done = wait_final(&store, &big, WAIT).await;
    assert_eq!(wait_final(&store, &fits, WAIT).await["status"], "success");
    runner.stop().await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["retries"], 0);
    assert_eq!(done["errors"][0]["kind"], "row");
    let reason = done["errors"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("limit of 1024"), "{reason}");
    assert!(
        reason.len() < 200 && !reason.contains("xxxxxxxx"),
        "{reason}"
    );
    assert_eq!(backend.count(), 1, "only the payload that fits was sent");
}

/// Enqueue reads a new job with the claim's own reader: a payload over `limits.payloadBytes`,
/// as an object or as the JSON string Sp00ky's client stores, is a 400 with the claim's reason
/// and writes no row; one that fits is created.
#[tokio::test]
async fn oversized_payloads_are_refused_at_enqueue() {
    let store = mem_store().await;
    let limited = backends_with(
        "http://127.0.0.1:9",
        "job",
        "baseMs: 50\n    limits:\n      payloadBytes: 1024",
    );
    sp00ky_job_runner::commands::prepare_tables(&store, &limited)
        .await
        .unwrap();
    let runner = Runner::new(store.clone(), limited, fast_options("r1"));
    let url = serve_ops(&store, &runner, Some(ADMIN)).await;
    let enqueue = |payload: Value| {
        let body = json!({"backend": "api", "path": "/spookify", "payload": payload});
        call(
            reqwest::Method::POST,
            format!("{url}/v1/jobs"),
            Some(ADMIN),
            Some(body),
        )
    };
    let big = json!({"id": "x".repeat(5000)});
    for payload in [big.clone(), Value::String(big.to_string())] {
        let (code, body) = enqueue(payload).await;
        assert_eq!(code, 400, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("more than the backend's limit of 1024 (limits.payloadBytes)"),
            "{error}"
        );
        assert!(error.len() < 200 && !error.contains("xxxxxxxx"), "{error}");
    }
    assert_eq!(
        count_status(&store, "job", "pending").await,
        0,
        "a refused job writes no row"
    );
    let (code, body) = enqueue(json!({"id": "fits"})).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(count_status(&store, "job", "pending").await, 1);
}

/// Validation messages quote the offending value: they are cut, their control characters
/// escaped, so neither a huge value nor a forged log line reaches `errors` or the logs.
#[tokio::test]
async fn validation_messages_are_bounded_and_escaped() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;
    let forged = format!(
        "\nINFO sp00ky_job_runner: job succeeded\r\n{}",
        "y".repeat(10_000)
    );
    let id = job("/spookify")
        .payload(json!({"id": 5, "count": forged}))
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;
    assert_eq!(done["errors"][0]["kind"], "validation", "{done}");
    let reason = done["errors"][0]["reason"].as_str().unwrap();
    assert!(reason.len() < 1000, "{} characters", reason.len());
    assert!(!reason.contains(['\n', '\r']), "{reason}");
    assert!(
        reason.contains("/id") && reason.contains("/count"),
        "{reason}"
    );
    assert!(!captured_logs().contains("\nINFO sp00ky_job_runner: job succeeded"));
    assert_eq!(backend.count(), 0);
}

/// A job retried 40 times keeps 25 `errors` entries: its first five failures, a `truncated`
/// note naming the attempts left out, and the most recent ones.
#[tokio::test]
async fn errors_keep_a_bounded_history() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::status(503)).await;
    let many = backends_with(
        &backend.url,
        "job",
        "baseMs: 1\n      maxDelayMs: 2\n    limits:\n      maxRetries: 40",
    );
    let runner = start_runner(&store, many, fast_options("r1")).await;
    let id = job("/spookify")
        .payload(json!({"id": "t"}))
        .max_retries(40)
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, Duration::from_secs(60)).await;
    runner.stop().await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["retries"], 40);
    assert_eq!(backend.count(), 41);
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 25, "{errors:?}");
    let attempts: Vec<_> = errors.iter().map(|e| e["attempt"].as_u64()).collect();
    assert_eq!(attempts[..5], [Some(1), Some(2), Some(3), Some(4), Some(5)]);
    assert_eq!(errors[5]["kind"], "truncated");
    assert_eq!(
        errors[5]["reason"],
        "17 failed attempts not kept (attempts 6 to 22)"
    );
    let tail: Vec<u64> = (23..=41).collect();
    assert_eq!(
        attempts[6..],
        tail.iter().map(|a| Some(*a)).collect::<Vec<_>>()[..]
    );
}

/// The token is scrubbed from a response body before the excerpt is cut: a token straddling the
/// cut would otherwise survive in part.
#[tokio::test]
async fn excerpts_are_scrubbed_before_they_are_cut() {
    let backend = TestBackend::start(|request, _| {
        let echoed = request
            .header("authorization")
            .unwrap_or_default()
            .to_string();
        // "Bearer " + the token starts 10 characters before the 300-character cut.
        Reply::status(400).body(format!("{}{echoed}", "e".repeat(283)))
    })
    .await;
    let done = run_one(
        &backend.url,
        job("/spookify").payload(json!({"id": "t"})).max_retries(0),
    )
    .await;
    let reason = done["errors"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("[redacted]"), "{reason}");
    assert!(
        !reason.contains(&TOKEN[..8]),
        "part of the token survived: {reason}"
    );
}

/// A record id that cannot be an `Idempotency-Key` header (a control character in its key) fails the
/// job permanently as `row`: no request, no retry.
#[tokio::test]
async fn an_id_that_is_no_header_value_fails_the_job_once() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;
    // A key whose written form (`table:key`, what the header carries) is no header value.
    let unsendable = ["bad\u{7f}key", "bad\0key", "bad\nkey", "bad\rkey"]
        .into_iter()
        .map(|key| RecordId::new("job", key.to_string()))
        .find(|id| reqwest::header::HeaderValue::from_str(&id.to_sql()).is_err());
    let id = unsendable.expect("some record id cannot be a header value");
    store
        .client()
        .query(
            "CREATE ONLY $id SET path = '/spookify', payload = '{\"id\":\"t\"}', max_retries = 5",
        )
        .bind(("id", id.clone()))
        .await
        .and_then(|r| r.check())
        .unwrap();
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["retries"], 0);
    assert_eq!(done["errors"][0]["kind"], "row");
    assert!(
        done["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    assert_eq!(backend.count(), 0);
}
