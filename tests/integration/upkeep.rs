//! Keeping job tables and backends in shape: retention deletes old finished rows (one runner per
//! turn), a backend's own `concurrency:` bounds its slots, and `rateLimit:` bounds its calls per
//! second across every runner on the database.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sp00ky_job_runner::config::Retention;
use sp00ky_job_runner::runner::metrics::Metrics;
use sp00ky_job_runner::runner::retention::{Kept, take_turn};
use surrealdb::types::ToSql;

use crate::helpers::*;

/// A finished or pending row whose last change was `days` ago.
async fn row_changed_days_ago(
    store: &sp00ky_job_runner::store::Store,
    status: &str,
    days: i64,
) -> String {
    let id = insert_row(
        store,
        "job",
        json!({"path": "/spookify", "payload": "{}", "status": status}),
    )
    .await
    .to_sql();
    store
        .raw(&format!(
            "UPDATE {id} SET updated_at = time::now() - {days}d"
        ))
        .await
        .unwrap();
    id
}

fn deleted(metrics: &Metrics) -> u64 {
    ["success", "failed"]
        .iter()
        .map(|s| {
            metrics
                .retention_deleted
                .get_or_create(&metrics.outcome("api", s))
                .get()
        })
        .sum()
}

#[tokio::test]
async fn retention_deletes_old_finished_rows_once_per_turn_whoever_asks() {
    let store = mem_store().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &backends("http://127.0.0.1:9", "job"))
        .await
        .unwrap();
    let old_success = row_changed_days_ago(&store, "success", 8).await;
    let new_success = row_changed_days_ago(&store, "success", 6).await;
    let old_failed = row_changed_days_ago(&store, "failed", 31).await;
    let new_failed = row_changed_days_ago(&store, "failed", 8).await;
    let old_pending = row_changed_days_ago(&store, "pending", 90).await;
    let kept = Kept {
        backend: "api".into(),
        table: table_named("job"),
        retention: Retention {
            success: Some(Duration::from_secs(7 * 86_400)),
            failed: Some(Duration::from_secs(30 * 86_400)),
        },
    };
    // Two runners ask for the same turn at once: one of them takes it.
    let (a, b) = (Metrics::new(), Metrics::new());
    let turn = Utc::now();
    tokio::join!(
        take_turn(&store, &kept, "runner-a", turn, &a),
        take_turn(&store, &kept, "runner-b", turn, &b)
    );
    assert_eq!(deleted(&a) + deleted(&b), 2);
    assert!(deleted(&a) == 0 || deleted(&b) == 0, "one runner per turn");
    let left: Vec<String> = store
        .raw("SELECT VALUE <string> id FROM job")
        .await
        .unwrap()[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for id in [&new_success, &new_failed, &old_pending] {
        assert!(left.contains(id), "{id} is kept: {left:?}");
    }
    for id in [&old_success, &old_failed] {
        assert!(!left.contains(id), "{id} is deleted: {left:?}");
    }
    // The same turn again does nothing; the next one does the work.
    let later = row_changed_days_ago(&store, "success", 9).await;
    take_turn(&store, &kept, "runner-a", turn, &a).await;
    assert!(row_exists(&store, &later).await);
    take_turn(
        &store,
        &kept,
        "runner-b",
        turn + chrono::TimeDelta::minutes(1),
        &b,
    )
    .await;
    assert!(!row_exists(&store, &later).await);
}

async fn row_exists(store: &sp00ky_job_runner::store::Store, id: &str) -> bool {
    !store.raw(&format!("SELECT * FROM {id}")).await.unwrap()[0]
        .as_array()
        .unwrap()
        .is_empty()
}

/// A backend that answers after `delay` and remembers the most calls it had open at once.
async fn counting_backend(
    delay: Duration,
) -> (
    String,
    std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let open = std::sync::Arc::new((
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ));
    let counts = open.clone();
    let app = axum::Router::new().fallback(move || {
        let counts = counts.clone();
        async move {
            let now = counts.0.fetch_add(1, SeqCst) + 1;
            counts.1.fetch_max(now, SeqCst);
            tokio::time::sleep(delay).await;
            counts.0.fetch_sub(1, SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, open)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_with_its_own_concurrency_holds_no_more_and_cannot_starve_the_others() {
    own_concurrency_holds(0).await;
}

/// The same with jobs claimed ahead of the free slots: the capped backend's jobs take their own
/// slots when claimed and wait in line for the runner's.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_with_its_own_concurrency_holds_no_more_when_jobs_are_claimed_ahead() {
    own_concurrency_holds(4).await;
}

async fn own_concurrency_holds(claim_ahead: usize) {
    let (slow_url, slow_calls) = counting_backend(Duration::from_millis(300)).await;
    let fast = TestBackend::ok().await;
    let yaml = format!(
        "backends:\n{}{}",
        backend_entry("slow", &slow_url, "    concurrency: 2\n"),
        backend_entry("fast", &fast.url, "")
    );
    let runtimes = runtimes_of(&yaml);
    let store = mem_store().await;
    let options = sp00ky_job_runner::runner::RunnerOptions {
        concurrency: 4,
        claim_ahead,
        ..fast_options("capped")
    };
    let runner = start_runner(&store, runtimes, options).await;
    for n in 0..8 {
        insert_row(
            &store,
            "slow_job",
            json!({"path": "/spookify", "payload": format!("{{\"id\": \"s{n}\"}}")}),
        )
        .await;
    }
    for n in 0..8 {
        insert_row(
            &store,
            "fast_job",
            json!({"path": "/spookify", "payload": format!("{{\"id\": \"f{n}\"}}")}),
        )
        .await;
    }
    wait_until("every fast job", Duration::from_secs(20), || async {
        count_status(&store, "fast_job", "success").await == 8
    })
    .await;
    assert!(
        count_status(&store, "slow_job", "success").await < 8,
        "the fast backend's jobs did not wait for the slow backend's"
    );
    wait_until("every slow job", Duration::from_secs(20), || async {
        count_status(&store, "slow_job", "success").await == 8
    })
    .await;
    assert_eq!(
        slow_calls.1.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "at most (and, with 8 waiting, exactly) its 2 slots"
    );
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_across_runners_in_every_second_the_backend_counts() {
    let backend = TestBackend::ok().await;
    let yaml = format!(
        "backends:\n  api:\n    type: http\n    baseUrl: {}\n    spec: ./openapi.yml\n    rateLimit: 5/s\n    method:\n      type: outbox\n      table: job\n",
        backend.url
    );
    let store = mem_store().await;
    let jobs = 20;
    sp00ky_job_runner::commands::prepare_tables(&store, &runtimes_of(&yaml))
        .await
        .unwrap();
    for n in 0..jobs {
        insert_row(
            &store,
            "job",
            json!({"path": "/spookify", "payload": format!("{{\"id\": \"r{n}\"}}")}),
        )
        .await;
    }
    let first = start_runner(&store, runtimes_of(&yaml), fast_options("rate-1")).await;
    let second = start_runner(&store, runtimes_of(&yaml), fast_options("rate-2")).await;
    wait_until("every job", Duration::from_secs(30), || async {
        count_status(&store, "job", "success").await == jobs
    })
    .await;
    first.stop().await;
    second.stop().await;
    // Calls per second as the backend's clock counts them (whole seconds since the epoch).
    let requests = backend.requests();
    assert_eq!(requests.len(), jobs);
    let started = std::time::Instant::now();
    let epoch_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
    for request in &requests {
        let at = epoch_now - started.duration_since(request.at);
        *per_second.entry(at.as_secs()).or_default() += 1;
    }
    assert!(
        per_second.values().all(|&n| n <= 5),
        "at most 5 calls in any second: {per_second:?}"
    );
    assert!(
        per_second.len() >= 4,
        "20 calls at 5/s take at least four seconds: {per_second:?}"
    );
}

/// Freed slots go to jobs waiting ahead first, and a rate-limited backend claims only what it can
/// call at once: while another backend's backlog keeps jobs waiting ahead, the rate-limited one
/// must still get slots, long before that backlog drains.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_backend_gets_slots_while_another_backlog_waits_ahead() {
    let bulk = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(100))).await;
    let limited = TestBackend::ok().await;
    let yaml = format!(
        "backends:\n{}{}",
        backend_entry("bulk", &bulk.url, ""),
        backend_entry("limited", &limited.url, "    rateLimit: 50/s\n")
    );
    let store = mem_store().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &runtimes_of(&yaml))
        .await
        .unwrap();
    let backlog = 80;
    for n in 0..backlog {
        insert_row(
            &store,
            "bulk_job",
            json!({"path": "/spookify", "payload": format!("{{\"id\": \"b{n}\"}}")}),
        )
        .await;
    }
    // Two slots and four ahead: 80 calls of 100 ms take four seconds.
    let options = sp00ky_job_runner::runner::RunnerOptions {
        concurrency: 2,
        claim_ahead: 4,
        ..fast_options("ahead-and-limited")
    };
    let runner = start_runner(&store, runtimes_of(&yaml), options).await;
    wait_until("jobs waiting ahead", Duration::from_secs(20), || async {
        count_status(&store, "bulk_job", "processing").await == 6
    })
    .await;
    for n in 0..3 {
        insert_row(
            &store,
            "limited_job",
            json!({"path": "/spookify", "payload": format!("{{\"id\": \"l{n}\"}}")}),
        )
        .await;
    }
    wait_until("the rate-limited jobs", Duration::from_secs(20), || async {
        count_status(&store, "limited_job", "success").await == 3
    })
    .await;
    let bulk_done = count_status(&store, "bulk_job", "success").await;
    assert!(
        bulk_done <= backlog / 2,
        "the rate-limited jobs waited for {bulk_done} of the {backlog} jobs of the backlog"
    );
    runner.stop().await;
}
