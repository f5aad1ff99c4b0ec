//! The database's limit for the runner's own statements: the claim and result statements in a
//! tight loop, with no HTTP and no runner loop.

use super::*;

pub(super) fn jobs(count: usize, payload: impl Fn(usize) -> String) -> Vec<NewJob> {
    (0..count)
        .map(|n| NewJob {
            path: "/bench".into(),
            payload: payload(n),
            max_retries: 0,
            retry_strategy: Strategy::Linear.as_str(),
            timeout: None,
            assigned_to: None,
            delay_ms: 0,
            run_at: None,
            priority: 0,
            schedule: None,
        })
        .collect()
}

pub(super) async fn load(store: &Store, table: &TableName, count: usize) -> Result<(), BenchError> {
    store.apply_schema(table).await?;
    insert(store, table, count).await
}

/// Inserts `count` pending jobs, a thousand per statement.
pub(super) async fn insert(
    store: &Store,
    table: &TableName,
    count: usize,
) -> Result<(), BenchError> {
    for chunk in jobs(count, |_| "{}".into()).chunks(1_000) {
        store.enqueue_many(table, chunk.to_vec()).await?;
    }
    Ok(())
}

/// The claim and result statements alone, at the runner's concurrency: the better of a pipelined
/// loop (the runner's batched success writer) and a lock-step one (claim a full batch, write
/// its results in one statement, repeat).
pub(super) async fn limit(store: &Store, args: &BenchArgs) -> Result<f64, BenchError> {
    let pipelined = limit_pipelined(store, args).await?;
    let lockstep = limit_lockstep(store, args).await?;
    Ok(pipelined.max(lockstep))
}

/// The limit loops claim as a runner would (their looks start where the last one found work,
/// with a full look every second, the runner's default poll interval), with a lease long enough
/// never to lapse.
pub(super) fn limit_claimer() -> (Claimer, Watermark) {
    let claimer = Claimer::new("bench-limit", Duration::from_secs(60));
    (
        claimer,
        Watermark::new(RunnerOptions::default().poll_interval),
    )
}

pub(super) async fn limit_lockstep(store: &Store, args: &BenchArgs) -> Result<f64, BenchError> {
    let table = &bench_table("bench_limit_lockstep");
    load(store, table, args.jobs).await?;
    let started = Instant::now();
    lockstep(store, table, args.jobs, args.concurrency).await?;
    Ok(args.jobs as f64 / started.elapsed().as_secs_f64())
}

/// Claims `count` pending jobs of `table`, `concurrency` at a time, and writes their results in
/// one statement per claim: the database's work for those jobs, without a runner.
pub(super) async fn lockstep(
    store: &Store,
    table: &TableName,
    count: usize,
    concurrency: usize,
) -> Result<(), BenchError> {
    let (claimer, mut watermark) = limit_claimer();
    let mut done = 0usize;
    while done < count {
        let claimed = claimer
            .claim(store, table, concurrency, &mut watermark, Instant::now())
            .await?;
        let fences = claimed
            .iter()
            .map(|job| (job.id.clone(), job.token.clone()))
            .collect();
        done += store.write_successes(fences).await?.len();
    }
    Ok(())
}

pub(super) async fn limit_pipelined(store: &Store, args: &BenchArgs) -> Result<f64, BenchError> {
    let table = &bench_table("bench_limit");
    load(store, table, args.jobs).await?;
    let (claimer, mut watermark) = limit_claimer();
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let successes = SuccessWriter::start(store.clone());
    let mut writes: JoinSet<Result<bool, StoreError>> = JoinSet::new();
    let mut done = 0usize;
    let started = Instant::now();
    // Claim in batches once at least half the slots are free: the cheapest way to issue the same
    // statements, so the runner's figure can be judged against it.
    let batch_at = (args.concurrency / 2).max(1);
    while done < args.jobs {
        let free = permits.available_permits();
        let claimed = if free >= batch_at || writes.is_empty() {
            claimer
                .claim(store, table, free, &mut watermark, Instant::now())
                .await?
        } else {
            Vec::new()
        };
        if claimed.is_empty() {
            match writes.join_next().await {
                Some(result) => {
                    result.map_err(|e| BenchError::Setup(e.to_string()))??;
                    done += 1;
                }
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
            continue;
        }
        for job in claimed {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let store = store.clone();
            let successes = successes.clone();
            writes.spawn(async move {
                // The runner's path: the batched write, and the single one if the batch fails.
                let written = match successes.write(&job).await {
                    Some(written) => Ok(written == Written::Recorded),
                    None => {
                        store
                            .write_back(&job.id, &job.token, 0, WriteBack::Success)
                            .await
                    }
                };
                drop(permit);
                written
            });
        }
    }
    Ok(args.jobs as f64 / started.elapsed().as_secs_f64())
}
