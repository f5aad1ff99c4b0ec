//! The life of a job end to end: embedded SurrealDB, real HTTP backend, runner in-process.

use std::time::Duration;

use serde_json::json;
use surrealdb::types::ToSql;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn success_sends_every_header_and_records_success() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &format!("{}/api", backend.url)).await;

    let id = job("/spookify")
        .payload(json!({"id": "thread:1"}))
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "success");
    assert_eq!(done["retries"], 0);
    assert_eq!(done["errors"], json!([]));
    assert!(
        done["assignee"].is_null() && done["lease_token"].is_null(),
        "{done}"
    );
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/api/spookify");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header("idempotency-key"),
        Some(id.to_sql().as_str())
    );
    assert_eq!(request.header("x-sp00ky-attempt"), Some("1"));
    assert!(
        request
            .header("user-agent")
            .unwrap()
            .starts_with("sp00ky-job-runner/"),
        "{:?}",
        request.header("user-agent")
    );
    assert_eq!(request.json(), json!({"id": "thread:1"}));
}

#[tokio::test]
async fn object_payloads_are_sent_as_they_are() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;

    let payload = json!({"id": "thread:2", "count": 3});
    let id = insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": payload}),
    )
    .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "success");
    assert_eq!(backend.requests()[0].json(), payload);
}

#[tokio::test]
async fn invalid_payload_fails_without_a_request() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;

    let id = job("/spookify")
        .payload(json!({"count": -1}))
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["retries"], 0, "validation failures are not retried");
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["kind"], "validation");
    assert_eq!(errors[0]["code"], 0);
    assert_eq!(errors[0]["attempt"], 1);
    let reason = errors[0]["reason"].as_str().unwrap();
    assert!(reason.contains("\"id\" is a required property"), "{reason}");
    assert!(
        reason.contains("/count"),
        "every message is listed: {reason}"
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn path_templates_are_filled_from_the_payload() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;

    let id = job("/threads/{id}/summary")
        .payload(json!({"id": "a b/c?d"}))
        .max_retries(0)
        .insert(&store)
        .await;
    // A `..` between slashes would climb out behind a proxy that decodes `%2F`: refused.
    let climbing = job("/threads/{id}/summary")
        .payload(json!({"id": "a b/../c?d"}))
        .max_retries(0)
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    let refused = wait_final(&store, &climbing, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(refused["errors"][0]["kind"], "route", "{refused}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, "/threads/a%20b%2Fc%3Fd/summary");
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, earlier| match earlier {
        0 => Reply::status(503).body("down for maintenance"),
        1 => Reply::status(500),
        _ => Reply::ok(),
    })
    .await;
    let runner = runner_for(&store, &backend.url).await;

    let id = job("/spookify")
        .payload(json!({"id": "t"}))
        .strategy("exponential")
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "success");
    assert_eq!(done["retries"], 2);
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        (errors[0]["code"].as_u64(), errors[0]["attempt"].as_u64()),
        (Some(503), Some(1))
    );
    assert_eq!(
        (errors[1]["code"].as_u64(), errors[1]["attempt"].as_u64()),
        (Some(500), Some(2))
    );
    assert_eq!(errors[0]["kind"], "http");
    assert!(
        errors[0]["reason"]
            .as_str()
            .unwrap()
            .contains("down for maintenance")
    );
    assert!(
        errors[0]["at"].is_string(),
        "each entry has a timestamp: {}",
        errors[0]
    );
    let requests = backend.requests();
    let attempts: Vec<_> = requests
        .iter()
        .map(|r| r.header("x-sp00ky-attempt").unwrap().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        requests
            .iter()
            .all(|r| r.header("idempotency-key") == Some(id.to_sql().as_str()))
    );
}

#[tokio::test]
async fn client_errors_are_permanent() {
    let backend =
        TestBackend::start(|_, _| Reply::status(422).body("{\"error\":\"thread is archived\"}"))
            .await;
    let done = run_one(
        &backend.url,
        job("/spookify").payload(json!({"id": "t"})).max_retries(5),
    )
    .await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["retries"], 0);
    assert_eq!(backend.count(), 1);
    let error = &done["errors"][0];
    assert_eq!(error["code"], 422);
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("thread is archived"),
        "{error}"
    );
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let backend = TestBackend::start(|_, _| Reply::status(502)).await;
    let done = run_one(
        &backend.url,
        job("/spookify").payload(json!({"id": "t"})).max_retries(2),
    )
    .await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["retries"], 2, "two retries after the first attempt");
    assert_eq!(done["errors"].as_array().unwrap().len(), 3);
    assert_eq!(done["errors"][2]["attempt"], 3);
    assert_eq!(backend.count(), 3);
}

#[tokio::test]
async fn max_retries_zero_means_a_single_attempt() {
    let backend = TestBackend::start(|_, _| Reply::status(500)).await;
    let done = run_one(
        &backend.url,
        job("/spookify").payload(json!({"id": "t"})).max_retries(0),
    )
    .await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["retries"], 0);
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn retry_after_delays_the_next_attempt() {
    let backend = TestBackend::start(|_, earlier| match earlier {
        0 => Reply::status(429).header("retry-after", "1"),
        _ => Reply::ok(),
    })
    .await;
    // Base 50 ms: without the header the retry would come almost at once.
    let done = run_one(&backend.url, job("/spookify").payload(json!({"id": "t"}))).await;

    assert_eq!(done["status"], "success");
    assert_eq!(done["errors"][0]["code"], 429);
    let requests = backend.requests();
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt came after {gap:?}"
    );
}

#[tokio::test]
async fn a_slow_backend_times_out_and_is_retried() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, earlier| match earlier {
        0 => Reply::ok().after(Duration::from_secs(3)),
        _ => Reply::ok(),
    })
    .await;
    let runner = runner_for(&store, &backend.url).await;

    // The backend allows per-job timeouts (timeoutOverridable: true); this row asks for 1 s.
    let id = insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"t\"}", "max_retries": 2, "timeout": 1}),
    )
    .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "success");
    assert_eq!(done["errors"][0]["kind"], "timeout");
    assert_eq!(done["errors"][0]["code"], 0);
    assert_eq!(backend.count(), 2);
}

#[tokio::test]
async fn refused_connections_are_transport_failures() {
    let store = mem_store().await;
    // Bind and drop: nothing listens on this port any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let runner = start_runner(
        &store,
        backends(&format!("http://127.0.0.1:{port}"), "job"),
        fast_options("r1"),
    )
    .await;

    let id = job("/spookify")
        .payload(json!({"id": "t"}))
        .max_retries(1)
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(done["status"], "failed");
    assert_eq!(done["retries"], 1);
    assert_eq!(done["errors"][0]["kind"], "transport");
    assert_eq!(done["errors"][0]["code"], 0);
}

#[tokio::test]
async fn rows_written_before_the_runner_starts_are_run_oldest_first() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let ids = insert_in_order(&store, &backend.url, 5).await;
    let mut options = fast_options("r1");
    options.concurrency = 1;
    let runner = start_runner(&store, backends(&backend.url, "job"), options).await;
    for id in &ids {
        assert_eq!(wait_final(&store, id, WAIT).await["status"], "success");
    }
    runner.stop().await;

    let order = backend.called_ids();
    assert_eq!(order, ["t0", "t1", "t2", "t3", "t4"]);
}

#[tokio::test]
async fn unreadable_rows_fail_and_do_not_stall_the_others() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    // A schemaless table accepts any junk a client writes; it only needs the runner's due_at.
    store
        .raw("DEFINE TABLE loose SCHEMALESS; DEFINE FIELD due_at ON loose TYPE datetime DEFAULT time::now(); DEFINE FIELD priority ON loose TYPE int DEFAULT 0; DEFINE INDEX loose_due ON loose FIELDS status, priority, due_at;")
        .await
        .unwrap();
    let bad_rows = [
        json!({"status": "pending", "retries": 0, "errors": [], "path": 42, "payload": "{}"}),
        json!({"status": "pending", "retries": 0, "errors": [], "path": "/spookify", "payload": "{\"id\":\"x\"}", "retry_strategy": "fibonacci"}),
        json!({"status": "pending", "retries": 0, "errors": [], "path": "/spookify", "payload": "{not json"}),
        json!({"status": "pending", "retries": 0, "errors": [], "path": "/spookify", "payload": "{\"id\":\"x\"}", "max_retries": "three"}),
    ];
    let mut bad = Vec::new();
    for fields in bad_rows {
        bad.push(insert_row(&store, "loose", fields).await);
    }
    let good = insert_row(&store, "loose", json!({"status": "pending", "retries": 0, "errors": [], "path": "/spookify", "payload": "{\"id\":\"ok\"}"})).await;
    let runner = start_runner(&store, backends(&backend.url, "loose"), fast_options("r1")).await;

    assert_eq!(wait_final(&store, &good, WAIT).await["status"], "success");
    let mut kinds = Vec::new();
    for id in &bad {
        let done = wait_final(&store, id, WAIT).await;
        assert_eq!(done["status"], "failed", "{done}");
        kinds.push(done["errors"][0]["kind"].as_str().unwrap().to_string());
        assert!(!done["errors"][0]["reason"].as_str().unwrap().is_empty());
    }
    runner.stop().await;
    assert_eq!(kinds, ["row", "row", "validation", "row"]);
    assert_eq!(backend.count(), 1, "only the good row reached the backend");
}
