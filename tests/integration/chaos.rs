//! The chaos suite: runner processes against a real SurrealDB server process, under kills,
//! restarts, outages and signals. Each scenario prints its figures (jobs, lost, duplicated,
//! rescue time) and appends them to `chaos-figures.txt` in Cargo's test temp folder.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sp00ky_job_runner::store::Store;
use surrealdb::types::{RecordId, ToSql};

use crate::helpers::{
    Raw, Recorded, Reply, TestBackend, count_status, row, table_named, wait_until,
};
use crate::processes::*;

fn per_job(requests: &[Recorded]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in requests {
        *counts
            .entry(request.header("idempotency-key").unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

/// Jobs among `ids` that never ended `success`, and jobs the backend saw more than once.
async fn lost_and_duplicated(
    store: &Store,
    ids: &[RecordId],
    backend: &TestBackend,
) -> (usize, usize) {
    let counts = per_job(&backend.requests());
    let mut lost = 0;
    for id in ids {
        if row(store, id).await["status"] != "success" {
            lost += 1;
        }
    }
    let duplicated = counts.values().filter(|n| **n > 1).count();
    (lost, duplicated)
}

/// 1. 200 jobs in flight against a slow backend; the runner is SIGKILLed; a second runner
/// finishes all of them within lease + poll interval, each reaching the backend at most twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_200_jobs_in_flight_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const JOBS: usize = 200;
    const LEASE: Duration = Duration::from_secs(4);
    const POLL: Duration = Duration::from_millis(500);
    let server = Server::start().await;
    let store = server.store().await;
    // First attempts hang (the runner dies holding them); the rescued attempts answer at once.
    let backend = TestBackend::start(|_, earlier| match earlier {
        0 => Reply::ok().after(Duration::from_secs(60)),
        _ => Reply::ok(),
    })
    .await;
    let project = project(&backend.url, 1000, 60_000);
    let args = [
        "--concurrency",
        "256",
        "--lease",
        "4s",
        "--poll-interval",
        "500ms",
    ];
    let mut doomed = RunnerProcess::start(&server, project.path(), &args).await;
    let ids = insert_jobs(&store, JOBS, 3, "linear").await;
    wait_until("all jobs in flight", Duration::from_secs(60), || async {
        backend.count() >= JOBS
    })
    .await;
    let survivor = RunnerProcess::start(&server, project.path(), &args).await;

    signal(doomed.pid(), "KILL");
    let killed_at = Instant::now();
    wait_exit(&mut doomed.child, Duration::from_secs(5))
        .await
        .expect("SIGKILL ends the runner");
    wait_until("every job rescued", Duration::from_secs(60), || async {
        backend.count() >= 2 * JOBS
    })
    .await;
    let requests = backend.requests();
    let rescue_started = requests[JOBS].at.duration_since(killed_at);
    let rescue_finished = requests[2 * JOBS - 1].at.duration_since(killed_at);
    wait_until("all jobs to succeed", Duration::from_secs(60), || async {
        count_status(&store, "job", "success").await == JOBS
    })
    .await;

    let (lost, duplicated) = lost_and_duplicated(&store, &ids, &backend).await;
    report(
        "1 sigkill",
        &format!(
            "jobs={JOBS} lost={lost} reached_backend_twice={duplicated} (all were in flight at the kill) \
             rescue_started={rescue_started:?} rescue_finished={rescue_finished:?} lease={LEASE:?} poll={POLL:?}"
        ),
    );
    assert_eq!(lost, 0);
    let counts = per_job(&backend.requests());
    assert_eq!(counts.len(), JOBS);
    assert!(counts.values().all(|n| *n <= 2), "no job runs a third time");
    assert!(
        rescue_finished <= LEASE + POLL + Duration::from_secs(1),
        "rescue took {rescue_finished:?}"
    );
    for id in ids.iter().take(20) {
        let done = row(&store, id).await;
        assert_eq!(done["retries"], 1, "{done}");
        assert_eq!(done["errors"][0]["kind"], "lease_expired", "{done}");
    }
    drop(survivor);
}

/// 2. 1000 jobs; the SurrealDB server is restarted twice during the run (same storage): all end
/// `success`, none reaches the backend twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarts_lose_and_repeat_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const JOBS: usize = 1000;
    let mut server = Server::start().await;
    let store = server.store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(25))).await;
    let project = project(&backend.url, 200, 5_000);
    let runner = RunnerProcess::start(
        &server,
        project.path(),
        &["--concurrency", "8", "--lease", "15s"],
    )
    .await;
    let ids = insert_jobs(&store, JOBS, 5, "linear").await;
    let started = Instant::now();

    let mut outages = Vec::new();
    for threshold in [JOBS / 4, JOBS / 2] {
        wait_until(
            "progress before a restart",
            Duration::from_secs(120),
            || async { backend.count() >= threshold },
        )
        .await;
        let down = Instant::now();
        server.restart().await;
        outages.push(down.elapsed());
    }
    let store = server.store().await;
    wait_until(
        "all jobs to succeed after restarts",
        Duration::from_secs(180),
        || async { count_status(&store, "job", "success").await == JOBS },
    )
    .await;
    let (lost, duplicated) = lost_and_duplicated(&store, &ids, &backend).await;
    report(
        "2 database restarts",
        &format!(
            "jobs={JOBS} lost={lost} duplicated={duplicated} restarts=2 outages={outages:?} total={:?} reconnects_logged={}",
            started.elapsed(),
            runner.logs().matches("database connection is back").count()
        ),
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert_eq!(per_job(&backend.requests()).len(), JOBS);
}

/// 3. Four runner processes share 2000 jobs: every job reaches the backend exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runner_processes_run_2000_jobs_exactly_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const JOBS: usize = 2000;
    let server = Server::start().await;
    let store = server.store().await;
    let backend = TestBackend::ok().await;
    let project = project(&backend.url, 200, 5_000);
    // Apply the schema once, so four runners do not race to define the table.
    store.apply_schema(&table_named("job")).await.unwrap();
    let mut runners = Vec::new();
    for _ in 0..4 {
        runners.push(RunnerProcess::start(&server, project.path(), &["--concurrency", "16"]).await);
    }
    let started = Instant::now();
    let ids = insert_jobs(&store, JOBS, 3, "linear").await;
    wait_until("all jobs to succeed", Duration::from_secs(300), || async {
        count_status(&store, "job", "success").await == JOBS
    })
    .await;
    let elapsed = started.elapsed();
    let (lost, duplicated) = lost_and_duplicated(&store, &ids, &backend).await;
    let mut by_runner: HashMap<String, usize> = HashMap::new();
    for (n, runner) in runners.iter().enumerate() {
        by_runner.insert(
            format!("runner{n}"),
            runner.logs().matches("job succeeded").count(),
        );
    }
    report(
        "3 four runners",
        &format!(
            "jobs={JOBS} lost={lost} duplicated={duplicated} elapsed={elapsed:?} successes_per_runner={by_runner:?}"
        ),
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert_eq!(per_job(&backend.requests()).len(), JOBS);
}

/// 4. The backend refuses connections for 10 s, then comes back: every job is retried on its
/// schedule and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_outage_is_ridden_out_on_schedule() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const JOBS: usize = 20;
    let server = Server::start().await;
    let store = server.store().await;
    let port = free_port();
    let base_url = format!("http://127.0.0.1:{port}");
    let project = project(&base_url, 1000, 4000);
    let runner = RunnerProcess::start(&server, project.path(), &[]).await;
    let linear = insert_jobs(&store, JOBS / 2, 10, "linear").await;
    let exponential = insert_jobs(&store, JOBS / 2, 10, "exponential").await;
    let outage_started = Instant::now();

    wait_until(
        "the first failures to be recorded",
        Duration::from_secs(30),
        || async {
            let first = row(&store, &linear[0]).await;
            first["retries"].as_u64() >= Some(2)
        },
    )
    .await;
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        outage_started + Duration::from_secs(10),
    ))
    .await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is still free");
    let backend = TestBackend::serve(listener, |_, _| Reply::ok()).await;
    let back_at = Instant::now();

    let all: Vec<RecordId> = linear.iter().chain(&exponential).cloned().collect();
    wait_until(
        "every job to succeed after the outage",
        Duration::from_secs(60),
        || async { count_status(&store, "job", "success").await == JOBS },
    )
    .await;
    let finished_after = back_at.elapsed();
    let mut attempts = Vec::new();
    for (ids, strategy) in [(&linear, "linear"), (&exponential, "exponential")] {
        for id in ids.iter() {
            attempts.push(retries_kept_their_schedule(
                &row(&store, id).await,
                strategy,
            ));
        }
    }
    report(
        "4 backend outage",
        &format!(
            "jobs={JOBS} lost=0 outage=10s attempts_per_job min={} max={} finished_after_backend_returned={finished_after:?} requests={}",
            attempts.iter().min().unwrap(),
            attempts.iter().max().unwrap(),
            backend.count()
        ),
    );
    assert_eq!(per_job(&backend.requests()).len(), all.len());
    drop(runner);
}

/// Checks that every failed attempt of `done` was a transport error and that each retry waited
/// at least its nominal delay (less the jitter) on the `strategy` schedule of the outage test
/// (base 1 s, cap 4 s); returns the job's attempts.
fn retries_kept_their_schedule(done: &serde_json::Value, strategy: &str) -> usize {
    let errors = done["errors"].as_array().unwrap();
    assert!(!errors.is_empty(), "{done}");
    assert!(
        errors
            .iter()
            .all(|e| e["kind"] == "transport" && e["code"] == 0),
        "{done}"
    );
    let times: Vec<chrono::DateTime<chrono::Utc>> = errors
        .iter()
        .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        .collect();
    for (n, pair) in times.windows(2).enumerate() {
        let retry = n as u32 + 1;
        let nominal = match strategy {
            "linear" => Duration::from_secs(u64::from(retry)),
            _ => Duration::from_secs(1 << (retry - 1)),
        }
        .min(Duration::from_secs(4));
        let gap = (pair[1] - pair[0]).to_std().unwrap();
        assert!(
            gap >= nominal.mul_f64(0.8),
            "{strategy} retry {retry} came after {gap:?}: {done}"
        );
    }
    errors.len() + 1
}

/// 5. SIGTERM under load: the runner exits within the grace period, leaves no row `processing`,
/// and nothing runs twice; an idle runner exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_cleanly() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const JOBS: usize = 300;
    let server = Server::start().await;
    let store = server.store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(500))).await;
    let project = project(&backend.url, 200, 5_000);
    let args = ["--concurrency", "32", "--shutdown-grace", "10s"];
    let mut first = RunnerProcess::start(&server, project.path(), &args).await;
    let ids = insert_jobs(&store, JOBS, 3, "linear").await;
    wait_until("work in flight", Duration::from_secs(30), || async {
        backend.count() >= 40
    })
    .await;

    signal(first.pid(), "TERM");
    let sent = Instant::now();
    let status = wait_exit(&mut first.child, Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    let exit_time = sent.elapsed();
    let processing = count_status(&store, "job", "processing").await;
    let done_by_first = count_status(&store, "job", "success").await;

    let second = RunnerProcess::start(&server, project.path(), &args).await;
    wait_until("the rest to succeed", Duration::from_secs(120), || async {
        count_status(&store, "job", "success").await == JOBS
    })
    .await;
    let (lost, duplicated) = lost_and_duplicated(&store, &ids, &backend).await;

    // An idle runner: nothing in flight, so it should exit almost at once.
    let mut idle = RunnerProcess::start(&server, project.path(), &args).await;
    signal(idle.pid(), "TERM");
    let idle_sent = Instant::now();
    let idle_status = wait_exit(&mut idle.child, Duration::from_secs(10))
        .await
        .expect("idle runner exits");
    let idle_exit = idle_sent.elapsed();
    report(
        "5 sigterm",
        &format!(
            "jobs={JOBS} lost={lost} duplicated={duplicated} exit_after_sigterm={exit_time:?} (grace 10s) \
             finished_by_first={done_by_first} left_processing={processing} idle_exit={idle_exit:?}"
        ),
    );
    assert!(status.success(), "{status}: {}", first.logs());
    assert!(exit_time < Duration::from_secs(10), "{exit_time:?}");
    assert_eq!(processing, 0);
    assert_eq!((lost, duplicated), (0, 0));
    assert!(idle_status.success());
    assert!(
        idle_exit < Duration::from_secs(1),
        "idle exit took {idle_exit:?}:\n{}",
        idle.logs()
    );
    drop(second);
}

/// When the grace period runs out, unfinished jobs go back to `pending` without spending an
/// attempt (the backend may then see the call again, with the same Idempotency-Key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_releases_jobs() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start().await;
    let store = server.store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_secs(30))).await;
    let project = project(&backend.url, 200, 5_000);
    let mut runner =
        RunnerProcess::start(&server, project.path(), &["--shutdown-grace", "1s"]).await;
    let ids = insert_jobs(&store, 5, 3, "linear").await;
    wait_until("jobs in flight", Duration::from_secs(30), || async {
        backend.count() >= 5
    })
    .await;
    signal(runner.pid(), "TERM");
    let sent = Instant::now();
    let status = wait_exit(&mut runner.child, Duration::from_secs(15))
        .await
        .expect("exits");
    let exit_time = sent.elapsed();
    assert!(status.success(), "{status}: {}", runner.logs());
    assert!(exit_time < Duration::from_secs(5), "{exit_time:?}");
    for id in &ids {
        let released = row(&store, id).await;
        assert_eq!(released["status"], "pending", "{released}");
        assert_eq!(released["retries"], 0, "no attempt spent: {released}");
        assert_eq!(released["errors"], serde_json::json!([]));
        assert!(released["lease_token"].is_null());
    }
    report(
        "5b sigterm past grace",
        &format!("released=5 exit_after_sigterm={exit_time:?} (grace 1s)"),
    );
}

/// 6. A zombie: a runner paused (SIGSTOP) past its lease, then resumed after another runner took
/// over and finished the job: its late result is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_runner_cannot_overwrite_the_new_owner() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start().await;
    let store = server.store().await;
    // The zombie's attempt ends in a 500 (which, if written, would show); the rescue succeeds.
    let backend = TestBackend::start(|_, earlier| match earlier {
        0 => Reply::status(500).after(Duration::from_secs(3)),
        _ => Reply::ok(),
    })
    .await;
    let project = project(&backend.url, 200, 5_000);
    let args = ["--lease", "2s", "--poll-interval", "200ms"];
    let zombie = RunnerProcess::start(&server, project.path(), &args).await;
    let ids = insert_jobs(&store, 1, 3, "linear").await;
    wait_until("the zombie's call", Duration::from_secs(30), || async {
        backend.count() == 1
    })
    .await;
    signal(zombie.pid(), "STOP");
    let stopped = Instant::now();

    let rescuer = RunnerProcess::start(&server, project.path(), &args).await;
    wait_until(
        "the rescuer to finish the job",
        Duration::from_secs(30),
        || async { row(&store, &ids[0]).await["status"] == "success" },
    )
    .await;
    let rescue_time = stopped.elapsed();
    signal(zombie.pid(), "CONT");
    let mut zombie = zombie;
    zombie
        .wait_for_log("lost the lease", Duration::from_secs(30))
        .await;

    let done = row(&store, &ids[0]).await;
    report(
        "6 zombie",
        &format!(
            "jobs=1 rescue_time={rescue_time:?} late_result_written={} requests={}",
            done["status"] != "success",
            backend.count()
        ),
    );
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["retries"], 1);
    let errors = done["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "only the lost lease is recorded: {done}");
    assert_eq!(errors[0]["kind"], "lease_expired");
    assert!(
        backend
            .requests()
            .iter()
            .all(|r| r.header("idempotency-key") == Some(ids[0].to_sql().as_str()))
    );
    drop(rescuer);
}

/// Regression: a server closes a WebSocket whose live-query notifications pile up (a bulk insert
/// of many jobs does that). Live queries therefore have a connection of their own, and a burst
/// must not cost the claims and write-backs their connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_notifications_does_not_drop_the_main_connection() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const JOBS: usize = 1500;
    let server = Server::start().await;
    let store = server.store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    let backend = TestBackend::ok().await;
    let project = project(&backend.url, 200, 5_000);
    let runner = RunnerProcess::start(&server, project.path(), &["--concurrency", "32"]).await;
    // Batches of 250 rows: far more notifications at once than the server queues (100).
    let ids = insert_jobs(&store, JOBS, 3, "linear").await;
    wait_until("all jobs to succeed", Duration::from_secs(120), || async {
        count_status(&store, "job", "success").await == JOBS
    })
    .await;
    let (lost, duplicated) = lost_and_duplicated(&store, &ids, &backend).await;
    let logs = runner.logs();
    report(
        "burst",
        &format!(
            "jobs={JOBS} lost={lost} duplicated={duplicated} main_connection_lost={}",
            logs.matches("lost the database connection").count()
        ),
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(!logs.contains("lost the database connection"), "{logs}");
}

/// Regression: the live query is re-armed every 30 s (and after reconnects). Dropping the SDK's
/// stream left the old one running on the server (one more per re-arm, each costing the server
/// work on every write to the table); the runner now ends it on its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_armed_live_query_leaves_one_subscription_on_the_server() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start().await;
    for store in [server.store().await, crate::helpers::mem_store().await] {
        store.apply_schema(&table_named("job")).await.unwrap();
        let watcher = store.own_connection().await.unwrap();
        for _ in 0..3 {
            let watch = watcher.watch_pending(&table_named("job")).await.unwrap();
            watcher.end_watch(watch).await.unwrap();
        }
        let _armed = watcher.watch_pending(&table_named("job")).await.unwrap();
        let info = store.raw("INFO FOR TABLE job").await.unwrap();
        let lives = info[0]["lives"].as_object().unwrap();
        assert_eq!(lives.len(), 1, "{lives:?}");
    }
}

/// A graceful stop ends the runner's live queries on the server (and on an embedded engine,
/// which keeps them for as long as the process lives): the watchers see the stop and end their
/// queries, instead of being aborted with the queries still armed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_leaves_no_live_query_on_the_server() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start().await;
    let backend = TestBackend::ok().await;
    for store in [server.store().await, crate::helpers::mem_store().await] {
        let runner = crate::helpers::runner_for(&store, &backend.url).await;
        let lives = || async {
            let info = store.raw("INFO FOR TABLE job").await.unwrap();
            info[0]["lives"].as_object().map_or(0, |lives| lives.len())
        };
        wait_until(
            "the runner's live query",
            Duration::from_secs(20),
            || async { lives().await == 1 },
        )
        .await;
        runner.stop().await;
        assert_eq!(lives().await, 0, "live queries left after a graceful stop");
    }
}
