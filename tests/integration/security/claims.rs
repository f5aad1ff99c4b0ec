//! Claims and leases under faults a row or a machine can cause: one statement of a claim round
//! failing, a runner whose clock runs an hour ahead, and `/metrics` scraped in a loop.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sp00ky_job_runner::runner::Runner;

use super::WAIT;
use crate::helpers::*;

/// A schemaless table whose `/poison` rows refuse to be taken over (an event throws), so the
/// rescue of one expired row fails in a round that also rescues another and claims a pending one.
const POISONED_TABLE: &str = "
DEFINE TABLE loose SCHEMALESS;
DEFINE FIELD due_at ON loose TYPE datetime DEFAULT time::now();
DEFINE FIELD priority ON loose TYPE int DEFAULT 0;
DEFINE INDEX loose_due ON loose FIELDS status, priority, due_at;
DEFINE EVENT poison ON loose WHEN $event = 'UPDATE' AND $after.path = '/poison'
    AND $before.lease_token != $after.lease_token THEN { THROW 'poisoned row' };
";

/// What the rows of the round look like: an expired lease, a poisoned expired lease, a new job.
fn round_rows() -> [serde_json::Value; 3] {
    let expired = |path: &str, token: &str| {
        json!({"status": "processing", "retries": 0, "errors": [], "path": path,
               "payload": "{\"id\":\"x\"}", "lease_token": token, "assignee": "gone:1:1",
               "max_retries": 3})
    };
    [
        expired("/spookify", "old-a"),
        expired("/poison", "old-b"),
        json!({"status": "pending", "retries": 0, "errors": [], "path": "/spookify",
               "payload": "{\"id\":\"y\"}"}),
    ]
}

/// The rows one round claimed run at once, although another statement of the round failed:
/// none waits for its (60 s) lease to run out.
#[tokio::test]
async fn a_failed_statement_in_a_claim_round_strands_no_claimed_row() {
    let store = mem_store().await;
    store.raw(POISONED_TABLE).await.unwrap();
    let backend = TestBackend::ok().await;
    let mut ids = Vec::new();
    for fields in round_rows() {
        ids.push(insert_row(&store, "loose", fields).await);
    }
    store
        .raw("UPDATE loose SET due_at = time::now() - 1m WHERE status = 'processing'")
        .await
        .unwrap();
    let options = sp00ky_job_runner::runner::RunnerOptions {
        lease: Duration::from_secs(60),
        ..fast_options("r1")
    };
    let runner = start_runner(&store, backends(&backend.url, "loose"), options).await;
    let rescued = wait_final(&store, &ids[0], WAIT).await;
    let fresh = wait_final(&store, &ids[2], WAIT).await;
    runner.stop().await;
    assert_eq!(rescued["status"], "success", "{rescued}");
    assert_eq!(rescued["errors"][0]["kind"], "lease_expired");
    assert_eq!(fresh["status"], "success", "{fresh}");
    assert_eq!(row(&store, &ids[1]).await["status"], "processing");
    assert_eq!(backend.count(), 2);
}

/// Two runners, one with its clock an hour ahead, share slow jobs: leases end on the database's
/// clock, so the fast clock never takes over a job whose owner is still calling. Each job
/// reaches the backend exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_clock_runs_ahead_never_takes_a_live_lease() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_secs(1))).await;
    let options = |id: &str, offset| sp00ky_job_runner::runner::RunnerOptions {
        lease: Duration::from_secs(10),
        clock_offset: offset,
        ..fast_options(id)
    };
    let steady = start_runner(
        &store,
        backends(&backend.url, "job"),
        options("steady", chrono::TimeDelta::zero()),
    )
    .await;
    let ahead = start_runner(
        &store,
        backends(&backend.url, "job"),
        options("ahead", chrono::TimeDelta::hours(1)),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            job("/spookify")
                .payload(json!({"id": format!("j{n}")}))
                .insert(&store)
                .await,
        );
    }
    for id in &ids {
        let done = wait_final(&store, id, WAIT).await;
        assert_eq!(done["status"], "success", "{done}");
        assert_eq!(done["errors"], json!([]), "no lease was taken over: {done}");
    }
    steady.stop().await;
    ahead.stop().await;
    let mut calls: HashMap<String, usize> = HashMap::new();
    for request in backend.requests() {
        *calls
            .entry(request.header("idempotency-key").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(calls.len(), ids.len());
    assert!(calls.values().all(|n| *n == 1), "{calls:?}");
}

/// `/metrics` reads the row counts from the database at most once per poll interval, however
/// often it is scraped, and the counts it returns (the dashboard's) are that same read.
#[tokio::test]
async fn row_gauges_are_read_at_most_once_per_poll_interval() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runtimes = backends(&backend.url, "job");
    sp00ky_job_runner::commands::prepare_tables(&store, &runtimes)
        .await
        .unwrap();
    let options = sp00ky_job_runner::runner::RunnerOptions {
        poll_interval: Duration::from_secs(2),
        ..fast_options("r1")
    };
    let status = Runner::new(store.clone(), runtimes, options).status();
    let pending = |text: String| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with("sp00ky_runner_job_rows{") && l.contains("status=\"pending\""))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    let first = status
        .row_counts(&store)
        .await
        .expect("the first read succeeds");
    assert_eq!(first[0].0, "job");
    assert_eq!(first[0].1.pending, 0);
    assert_eq!(pending(status.metrics.encode()).as_deref(), Some("0"));
    for n in 0..3 {
        job("/spookify")
            .payload(json!({"id": n}))
            .insert(&store)
            .await;
    }
    for _ in 0..20 {
        let counts = status.row_counts(&store).await.unwrap();
        assert_eq!(
            counts[0].1.pending, 0,
            "the cached counts, as the gauges show"
        );
        assert_eq!(
            pending(status.metrics.encode()).as_deref(),
            Some("0"),
            "read again within the interval"
        );
    }
    wait_until("the next interval's read", WAIT, || async {
        let counts = status.row_counts(&store).await.unwrap();
        counts[0].1.pending == 3 && pending(status.metrics.encode()).as_deref() == Some("3")
    })
    .await;
}
