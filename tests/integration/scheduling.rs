//! Delays, priorities and schedules.

use std::time::{Duration, Instant};

use serde_json::json;
use sp00ky_job_runner::admin::{Admin, EnqueueRequest};
use std::sync::Arc;

use crate::helpers::*;

/// A row's `delay` keeps it pending until created_at + delay; it runs soon after.
#[tokio::test]
async fn delayed_jobs_wait_then_run_promptly() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = start_runner(&store, backends(&backend.url, "job"), fast_options("r1")).await;
    let created = Instant::now();
    let delayed = insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"later\"}", "delay": 1500}),
    )
    .await;
    let now = insert_job(
        &store,
        "job",
        "/spookify",
        json!({"id": "now"}),
        0,
        "linear",
    )
    .await;
    assert_eq!(
        wait_final(&store, &now, Duration::from_secs(20)).await["status"],
        "success"
    );
    assert_eq!(
        row(&store, &delayed).await["status"],
        "pending",
        "not picked before its delay"
    );
    let done = wait_final(&store, &delayed, Duration::from_secs(20)).await;
    runner.stop().await;
    assert_eq!(done["status"], "success");
    let requests = backend.requests();
    let later = requests.iter().find(|r| r.json()["id"] == "later").unwrap();
    let waited = later.at - created;
    assert!(
        waited >= Duration::from_millis(1500),
        "ran after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1500) + Duration::from_secs(2),
        "picked late: {waited:?}"
    );
}

/// `enqueue` takes a delay or an absolute time, and a priority.
#[tokio::test]
async fn enqueue_accepts_delay_run_at_and_priority() {
    let store = mem_store().await;
    let runtimes = backends("http://127.0.0.1:9", "job");
    sp00ky_job_runner::app::prepare_tables(&store, &runtimes)
        .await
        .unwrap();
    let admin = Admin::new(
        store.clone(),
        Arc::new(runtimes.into_iter().map(Arc::new).collect()),
    );
    let request =
        |delay_ms: Option<u64>, run_at: Option<&str>, priority: Option<i64>| EnqueueRequest {
            backend: "api".into(),
            path: "/spookify".into(),
            payload: json!({"id": "x"}),
            max_retries: None,
            retry_strategy: None,
            assigned_to: None,
            timeout: None,
            delay_ms,
            run_at: run_at.map(str::to_string),
            priority,
        };
    let delayed = admin
        .enqueue(request(Some(60_000), None, Some(5)))
        .await
        .unwrap();
    let row = store.get(&delayed).await.unwrap().unwrap();
    let due: chrono::DateTime<chrono::Utc> = row["due_at"].as_str().unwrap().parse().unwrap();
    let created: chrono::DateTime<chrono::Utc> =
        row["created_at"].as_str().unwrap().parse().unwrap();
    let wait = (due - created).num_milliseconds();
    assert!((59_000..=61_000).contains(&wait), "{wait} ms");
    assert_eq!(
        (row["delay"].as_i64(), row["priority"].as_i64()),
        (Some(60_000), Some(5))
    );

    let at = admin
        .enqueue(request(None, Some("2031-01-02T03:04:05Z"), None))
        .await
        .unwrap();
    let row = store.get(&at).await.unwrap().unwrap();
    assert_eq!(row["due_at"], "2031-01-02T03:04:05Z");
    assert!(
        admin
            .enqueue(request(Some(1), Some("2031-01-02T03:04:05Z"), None))
            .await
            .is_err()
    );
    assert!(
        admin
            .enqueue(request(None, Some("tomorrow"), None))
            .await
            .is_err()
    );
}

/// Among due jobs, higher priority runs first; equal priorities keep oldest-first.
#[tokio::test]
async fn priorities_order_due_jobs() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    sp00ky_job_runner::app::prepare_tables(&store, &backends(&backend.url, "job"))
        .await
        .unwrap();
    let plan: Vec<(&str, i64)> = vec![
        ("low-1", -5),
        ("plain-1", 0),
        ("high-1", 10),
        ("plain-2", 0),
        ("mid-1", 3),
        ("high-2", 10),
        ("low-2", -5),
        ("plain-3", 0),
        ("mid-2", 3),
    ];
    for (name, priority) in &plan {
        insert_row(&store, "job", json!({"path": "/spookify", "payload": json!({"id": name}).to_string(), "priority": priority})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // A backlog of plain jobs behind them must not bury a high-priority job added later.
    for n in 0..40 {
        insert_row(&store, "job", json!({"path": "/spookify", "payload": json!({"id": format!("backlog-{n}")}).to_string()})).await;
    }
    insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"urgent\"}", "priority": 100}),
    )
    .await;
    let mut options = fast_options("r1");
    options.concurrency = 1;
    let runner = start_runner(&store, backends(&backend.url, "job"), options).await;
    wait_until("all jobs to run", Duration::from_secs(60), || async {
        backend.count() == plan.len() + 41
    })
    .await;
    runner.stop().await;
    let order: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        &order[..6],
        ["urgent", "high-1", "high-2", "mid-1", "mid-2", "plain-1"],
        "{order:?}"
    );
    assert_eq!(&order[order.len() - 2..], ["low-1", "low-2"], "{order:?}");
    let plain: Vec<&String> = order
        .iter()
        .filter(|o| o.starts_with("plain") || o.starts_with("backlog"))
        .collect();
    assert_eq!(plain[..3], ["plain-1", "plain-2", "plain-3"]);
}
