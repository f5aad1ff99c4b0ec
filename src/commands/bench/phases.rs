//! The runner's phases: throughput, pickup latency, I/O-bound work and memory.

use super::*;

/// A runner over `table` against `backend`, with `(concurrency, claim_ahead)`.
pub(super) fn runner(
    store: &Store,
    table: &TableName,
    backend: &BenchBackend,
    (concurrency, claim_ahead): (usize, usize),
) -> Runner {
    let runtime = BackendRuntime {
        backend: Backend {
            name: table.to_string(),
            table: table.clone(),
            base_url: backend.url.parse().expect("a local URL"),
            token: None,
            spec: None,
            timeout: Duration::from_secs(30),
            timeout_overridable: false,
            retry: RetryPolicy::default(),
            row_limits: Default::default(),
            dev: None,
            schedules: Vec::new(),
            retention: Default::default(),
            concurrency: None,
            rate_limit: None,
        },
        routes: Routes::Unchecked,
    };
    Runner::new(
        store.clone(),
        vec![runtime],
        RunnerOptions {
            concurrency,
            claim_ahead,
            runner_id: format!("bench-{table}"),
            ..RunnerOptions::default()
        },
    )
}

/// Runs `runner` until `until` completes.
pub(super) async fn with_runner<T>(
    runner: Runner,
    until: impl std::future::Future<Output = T>,
) -> T {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    let value = until.await;
    let _ = stop.send(());
    let _ = task.await;
    value
}

/// Pre-inserts `count` jobs and times the runner draining them.
pub(super) async fn drain(
    store: &Store,
    table: &TableName,
    backend: &BenchBackend,
    count: usize,
    slots: (usize, usize),
) -> Result<f64, BenchError> {
    load(store, table, count).await?;
    let runner = runner(store, table, backend, slots);
    let answered = backend.answered();
    let started = Instant::now();
    let elapsed = with_runner(runner, async {
        wait_succeeded(store, table, backend, answered, count as u64)
            .await
            .map(|()| started.elapsed())
    })
    .await?;
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Waits until `count` jobs of `table` are recorded `success`: first for the backend to have
/// answered them (`answered_before` is its count when the run began), so the database is not
/// polled while the runner works, then briefly for the last write-backs.
pub(super) async fn wait_succeeded(
    store: &Store,
    table: &TableName,
    backend: &BenchBackend,
    answered_before: usize,
    count: u64,
) -> Result<(), BenchError> {
    backend
        .until_answered(answered_before + count as usize)
        .await;
    while store.count(table, JobStatus::Success).await? < count {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Inserts at a steady rate from a separate client and records insert-to-request times.
pub(super) async fn pickup(
    store: &Store,
    backend: &BenchBackend,
    args: &BenchArgs,
) -> Result<(Percentiles, usize), BenchError> {
    let table = &bench_table("bench_pickup");
    store.apply_schema(table).await?;
    backend
        .state
        .latencies
        .lock()
        .expect("latency lock")
        .clear();
    // A client of its own where the database is a server; an embedded store has one handle.
    let client = store.own_connection().await?;
    let answered = backend.answered();
    let total = (f64::from(args.rate) * args.duration.0.as_secs_f64()) as usize;
    let runner = runner(store, table, backend, (args.concurrency, args.claim_ahead));
    with_runner(runner, async {
        // Let the live query arm before the clock starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = tokio::time::Instant::now();
        let every = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        for n in 0..total {
            tokio::time::sleep_until(started + every * n as u32).await;
            let job = jobs(1, |_| format!("{{\"t\":{}}}", now_micros()));
            client.enqueue_many(table, job).await?;
        }
        wait_succeeded(store, table, backend, answered, total as u64).await
    })
    .await?;
    let mut samples: Vec<f64> = backend
        .state
        .latencies
        .lock()
        .expect("latency lock")
        .clone();
    samples.sort_by(f64::total_cmp);
    let at =
        |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    Ok((
        Percentiles {
            p50: round(at(0.50)),
            p95: round(at(0.95)),
            p99: round(at(0.99)),
            max: round(at(1.0)),
        },
        samples.len(),
    ))
}

/// Processes `memory_jobs` in batches of `jobs`, deleting finished rows between batches; returns
/// the RSS after the first batch and after the last, in MiB.
pub(super) async fn memory(
    store: &Store,
    backend: &BenchBackend,
    args: &BenchArgs,
) -> Result<(f64, f64), BenchError> {
    let table = &bench_table("bench_memory");
    store.apply_schema(table).await?;
    let runner = runner(store, table, backend, (args.concurrency, args.claim_ahead));
    // The runner starts on a batch while it is still being inserted, so each batch is counted
    // from where the previous one ended, not from when the wait begins.
    let mut answered = backend.answered();
    with_runner(runner, async {
        batches(store, table, args, async |count| {
            wait_succeeded(store, table, backend, answered, count as u64).await?;
            answered += count;
            Ok(())
        })
        .await
    })
    .await
}

/// The same batches as [`memory`] through the same claim and result statements, without a
/// runner: what an embedded engine keeps for the jobs that went through it, measured in the
/// same process, so the runner's own figure can be told apart from it.
pub(super) async fn memory_database_alone(
    store: &Store,
    args: &BenchArgs,
) -> Result<(f64, f64), BenchError> {
    let table = &bench_table("bench_memory_database");
    store.apply_schema(table).await?;
    batches(store, table, args, async |count| {
        lockstep(store, table, count, args.concurrency).await
    })
    .await
}

/// Inserts `memory_jobs` in batches of `jobs`, lets `process` finish each batch, and deletes the
/// finished rows; returns the RSS after the first batch and after the last, in MiB.
pub(super) async fn batches(
    store: &Store,
    table: &TableName,
    args: &BenchArgs,
    mut process: impl AsyncFnMut(usize) -> Result<(), BenchError>,
) -> Result<(f64, f64), BenchError> {
    let batches = args.memory_jobs.div_ceil(args.jobs).max(2);
    let mut first = 0.0;
    for batch in 0..batches {
        insert(store, table, args.jobs).await?;
        process(args.jobs).await?;
        store.delete_finished(table, Finished::Success).await?;
        if batch == 0 {
            first = rss_mb("VmRSS");
        }
    }
    Ok((first, rss_mb("VmRSS")))
}

pub(super) fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}
