//! `sp00ky-job-runner bench`: how close the runner gets to SurrealDB's own limit.
//!
//! For each database mode (embedded `mem://`, embedded SurrealKV, and a SurrealDB server over
//! WebSocket when one is available) it measures, in one process:
//!
//! 1. **limit**: the claim and result statements the runner sends, in a tight loop at the same
//!    concurrency, with no HTTP and no runner loop: what the database allows.
//! 2. **throughput**: pre-inserted jobs drained by the real runner through a zero-latency local
//!    HTTP backend, and its ratio to the limit.
//! 3. **pickup latency**: jobs inserted at a steady rate by a separate client; time from insert
//!    to the backend receiving the request.
//! 4. **I/O-bound throughput**: a backend answering after 50 ms, at the default concurrency,
//!    against one job at a time (the reference runner's design).
//! 5. **memory**: peak RSS, and RSS after many jobs against RSS after the first batch (finished
//!    rows are deleted between batches, so a growing store does not hide a growing runner). In
//!    the embedded modes the engine lives in this process, so the same batches first go through
//!    the database alone, and its growth is printed next to the runner's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;

use crate::claim::{Claimer, Watermark};
use crate::config::Backend;
use crate::record::{SuccessWriter, Written};
use crate::retry::RetryPolicy;
use crate::runner::{BackendRuntime, Runner, RunnerOptions};
use crate::store::{DbSettings, NewJob, Store, StoreError, WriteBack};
use crate::validate::Routes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Mem,
    Surrealkv,
    Ws,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Pre-inserted jobs for the limit and throughput runs.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Inserts per second for the pickup-latency run.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// How long the pickup-latency run inserts.
    #[arg(long, value_parser = crate::cli::parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Jobs at once (the runner's default).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Jobs for the I/O-bound run (the serial comparison runs a tenth of them, at least 20).
    #[arg(long, default_value_t = 3_200)]
    pub io_jobs: usize,
    /// Jobs processed in the memory run, in batches of --jobs.
    #[arg(long, default_value_t = 200_000)]
    pub memory_jobs: usize,
    /// Database modes to measure [default: mem, surrealkv, and ws when a server is available].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Vec<Mode>,
    /// A SurrealDB server for the ws mode (root user via --user/SPKY_DB_USER etc.); without it,
    /// a `sp00ky-test-surreal` binary next to this one is started on a free loopback port.
    #[arg(long)]
    pub ws_endpoint: Option<String>,
    /// Small sizes: finishes in under a minute (a smoke check, not a measurement).
    #[arg(long)]
    pub quick: bool,
    /// One JSON object per mode instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    fn sized(mut self) -> BenchArgs {
        if self.quick {
            self.jobs = 1_000;
            self.rate = 100;
            self.duration = Duration::from_secs(2);
            self.io_jobs = 320;
            self.memory_jobs = 5_000;
        }
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The figures of one mode; field names are the `--json` contract.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: Mode,
    pub jobs: usize,
    pub concurrency: usize,
    pub limit_jobs_per_s: f64,
    pub throughput_jobs_per_s: f64,
    pub ratio_to_limit: f64,
    pub pickup_ms: Percentiles,
    pub pickup_samples: usize,
    pub io_bound_jobs_per_s: f64,
    pub serial_jobs_per_s: f64,
    pub io_bound_ratio_to_serial: f64,
    pub peak_rss_mb: f64,
    pub rss_first_batch_mb: f64,
    pub rss_last_batch_mb: f64,
    pub rss_growth_ratio: f64,
    /// RSS after the last batch minus after the first, for the same batches through the
    /// database alone (embedded modes only): how much of the runner's growth is the engine's.
    pub database_alone_rss_growth_mb: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// Runs every requested mode and prints the results.
pub async fn bench(
    args: BenchArgs,
    db_user: Option<String>,
    db_pass: Option<secrecy::SecretString>,
) -> Result<(), BenchError> {
    let args = args.sized();
    let server_binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("sp00ky-test-surreal")))
        .filter(|path| path.is_file());
    let modes = if args.modes.is_empty() {
        let mut modes = vec![Mode::Mem, Mode::Surrealkv];
        if args.ws_endpoint.is_some() || server_binary.is_some() {
            modes.push(Mode::Ws);
        }
        modes
    } else {
        args.modes.clone()
    };
    if !args.json {
        println!("{}", describe_machine());
        println!(
            "jobs={} concurrency={} pickup: {}/s for {:?}; io: {} jobs at 50 ms; memory: {} jobs in batches of {}\n",
            args.jobs,
            args.concurrency,
            args.rate,
            args.duration,
            args.io_jobs,
            args.memory_jobs,
            args.jobs
        );
    }
    for mode in modes {
        let (store, _guard) = connect(
            mode,
            &args,
            server_binary.as_ref(),
            db_user.clone(),
            db_pass.clone(),
        )
        .await?;
        let result = run_mode(mode, &store, &args).await?;
        drop(store);
        _guard.embedded_store_closed().await;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&result).expect("results serialise")
            );
        } else {
            print_table(&result);
        }
    }
    Ok(())
}

/// Keeps what a mode needs alive: a temporary folder, a server process.
struct ModeGuard {
    _dir: Option<tempfile::TempDir>,
    server: Option<std::process::Child>,
}

impl ModeGuard {
    /// Waits (up to 10 s) for an embedded SurrealKV store to close once its last handle is gone:
    /// the engine closes in a task of its own, and the folder must outlive it.
    async fn embedded_store_closed(&self) {
        let Some(dir) = &self._dir else { return };
        let lock = dir.path().join("db").join("LOCK");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.is_none() && Instant::now() < deadline {
            match std::fs::File::open(&lock) {
                Ok(file) if file.try_lock().is_err() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => return,
            }
        }
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

async fn connect(
    mode: Mode,
    args: &BenchArgs,
    server_binary: Option<&PathBuf>,
    user: Option<String>,
    pass: Option<secrecy::SecretString>,
) -> Result<(Store, ModeGuard), BenchError> {
    let mut guard = ModeGuard {
        _dir: None,
        server: None,
    };
    let mut settings = DbSettings {
        endpoint: "mem://".into(),
        namespace: "bench".into(),
        database: "bench".into(),
        username: None,
        password: None,
    };
    match mode {
        Mode::Mem => {}
        Mode::Surrealkv => {
            let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
            settings.endpoint = format!("surrealkv://{}", dir.path().join("db").display());
            guard._dir = Some(dir);
        }
        Mode::Ws => {
            if let Some(endpoint) = &args.ws_endpoint {
                settings.endpoint = endpoint.clone();
                settings.username = user.or(Some("root".into()));
                settings.password = pass.or(Some("root".to_string().into()));
            } else {
                let binary = server_binary.ok_or_else(|| {
                    BenchError::Setup(
                        "no server for ws mode: pass --ws-endpoint or build sp00ky-test-surreal"
                            .into(),
                    )
                })?;
                let dir = tempfile::tempdir().map_err(|e| BenchError::Setup(e.to_string()))?;
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map_err(|e| BenchError::Setup(e.to_string()))?
                    .port();
                let child = std::process::Command::new(binary)
                    .args(["start", "--no-banner", "--log", "error", "--bind"])
                    .arg(format!("127.0.0.1:{port}"))
                    .args(["--user", "root", "--pass", "bench-root"])
                    .arg(format!("surrealkv://{}", dir.path().join("db").display()))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| {
                        BenchError::Setup(format!("cannot start {}: {e}", binary.display()))
                    })?;
                guard.server = Some(child);
                guard._dir = Some(dir);
                let health = format!("http://127.0.0.1:{port}/health");
                let deadline = Instant::now() + Duration::from_secs(60);
                while !reqwest::get(&health)
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    if Instant::now() > deadline {
                        return Err(BenchError::Setup(
                            "the SurrealDB server did not start".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                settings.endpoint = format!("ws://127.0.0.1:{port}");
                settings.username = Some("root".into());
                settings.password = Some("bench-root".to_string().into());
            }
        }
    }
    let store = Store::connect(settings).await?;
    store.define_namespace_and_database().await?;
    Ok((store, guard))
}

async fn run_mode(mode: Mode, store: &Store, args: &BenchArgs) -> Result<ModeResult, BenchError> {
    let limit = limit(store, args).await?;
    let backend = BenchBackend::start(Duration::ZERO).await;
    let throughput = drain(
        store,
        "bench_throughput",
        &backend,
        args.jobs,
        args.concurrency,
    )
    .await?;
    let pickup = pickup(store, &backend, args).await?;
    let slow = BenchBackend::start(Duration::from_millis(50)).await;
    let io_bound = drain(store, "bench_io", &slow, args.io_jobs, args.concurrency).await?;
    let serial = drain(store, "bench_serial", &slow, (args.io_jobs / 10).max(20), 1).await?;
    // In the embedded modes the engine shares the process: measure what it keeps on its own
    // first. Over WebSocket it is another process.
    let database_alone = match mode {
        Mode::Mem | Mode::Surrealkv => Some(memory_database_alone(store, args).await?),
        Mode::Ws => None,
    };
    let (first, last) = memory(store, &backend, args).await?;
    Ok(ModeResult {
        mode,
        jobs: args.jobs,
        concurrency: args.concurrency,
        limit_jobs_per_s: round(limit),
        throughput_jobs_per_s: round(throughput),
        ratio_to_limit: round(throughput / limit),
        pickup_samples: pickup.1,
        pickup_ms: pickup.0,
        io_bound_jobs_per_s: round(io_bound),
        serial_jobs_per_s: round(serial),
        io_bound_ratio_to_serial: round(io_bound / serial),
        peak_rss_mb: round(rss_mb("VmHWM")),
        rss_first_batch_mb: round(first),
        rss_last_batch_mb: round(last),
        rss_growth_ratio: round(last / first),
        database_alone_rss_growth_mb: database_alone.map(|(first, last)| round(last - first)),
    })
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn jobs(count: usize, payload: impl Fn(usize) -> String) -> Vec<NewJob> {
    (0..count)
        .map(|n| NewJob {
            path: "/bench".into(),
            payload: payload(n),
            max_retries: 0,
            retry_strategy: "linear".into(),
            timeout: None,
            assigned_to: None,
            delay_ms: 0,
            run_at: None,
            priority: 0,
        })
        .collect()
}

async fn load(store: &Store, table: &str, count: usize) -> Result<(), BenchError> {
    store.apply_schema(table).await?;
    insert(store, table, count).await
}

/// Inserts `count` pending jobs, a thousand per statement.
async fn insert(store: &Store, table: &str, count: usize) -> Result<(), BenchError> {
    for chunk in jobs(count, |_| "{}".into()).chunks(1_000) {
        store.enqueue_many(table, chunk.to_vec()).await?;
    }
    Ok(())
}

/// The claim and result statements alone, at the runner's concurrency: the better of a pipelined
/// loop (the runner's batched success writer) and a lock-step one (claim a full batch, write
/// its results in one statement, repeat).
async fn limit(store: &Store, args: &BenchArgs) -> Result<f64, BenchError> {
    let pipelined = limit_pipelined(store, args).await?;
    let lockstep = limit_lockstep(store, args).await?;
    Ok(pipelined.max(lockstep))
}

/// The limit loops claim as a runner would (their looks start where the last one found work,
/// with a full look every second, the runner's default poll interval), with a lease long enough
/// never to lapse.
fn limit_claimer() -> (Claimer, Watermark) {
    let claimer = Claimer {
        runner_id: "bench-limit".into(),
        lease: Duration::from_secs(60),
    };
    (
        claimer,
        Watermark::new(RunnerOptions::default().poll_interval),
    )
}

async fn limit_lockstep(store: &Store, args: &BenchArgs) -> Result<f64, BenchError> {
    let table = "bench_limit_lockstep";
    load(store, table, args.jobs).await?;
    let started = Instant::now();
    lockstep(store, table, args.jobs, args.concurrency).await?;
    Ok(args.jobs as f64 / started.elapsed().as_secs_f64())
}

/// Claims `count` pending jobs of `table`, `concurrency` at a time, and writes their results in
/// one statement per claim: the database's work for those jobs, without a runner.
async fn lockstep(
    store: &Store,
    table: &str,
    count: usize,
    concurrency: usize,
) -> Result<(), BenchError> {
    let (claimer, mut watermark) = limit_claimer();
    let mut done = 0usize;
    while done < count {
        let claimed = claimer
            .claim(store, table, concurrency, &mut watermark)
            .await?;
        let fences = claimed
            .iter()
            .map(|job| (job.id.clone(), job.token.clone()))
            .collect();
        done += store.write_successes(fences).await?.len();
    }
    Ok(())
}

async fn limit_pipelined(store: &Store, args: &BenchArgs) -> Result<f64, BenchError> {
    let table = "bench_limit";
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
            claimer.claim(store, table, free, &mut watermark).await?
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

/// A runner over `table` against `backend`.
fn runner(store: &Store, table: &str, backend: &BenchBackend, concurrency: usize) -> Runner {
    let runtime = BackendRuntime {
        backend: Backend {
            name: table.into(),
            table: table.into(),
            base_url: backend.url.parse().expect("a local URL"),
            token: None,
            spec: None,
            timeout: Duration::from_secs(30),
            timeout_overridable: false,
            retry: RetryPolicy::default(),
            dev: None,
            schedules: Vec::new(),
        },
        routes: Routes::Unchecked,
    };
    Runner::new(
        store.clone(),
        vec![runtime],
        RunnerOptions {
            concurrency,
            runner_id: format!("bench-{table}"),
            ..RunnerOptions::default()
        },
    )
}

/// Runs `runner` until `until` completes.
async fn with_runner<T>(runner: Runner, until: impl std::future::Future<Output = T>) -> T {
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
async fn drain(
    store: &Store,
    table: &str,
    backend: &BenchBackend,
    count: usize,
    concurrency: usize,
) -> Result<f64, BenchError> {
    load(store, table, count).await?;
    let runner = runner(store, table, backend, concurrency);
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
async fn wait_succeeded(
    store: &Store,
    table: &str,
    backend: &BenchBackend,
    answered_before: usize,
    count: u64,
) -> Result<(), BenchError> {
    backend
        .until_answered(answered_before + count as usize)
        .await;
    while store.count_succeeded(table).await? < count {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Inserts at a steady rate from a separate client and records insert-to-request times.
async fn pickup(
    store: &Store,
    backend: &BenchBackend,
    args: &BenchArgs,
) -> Result<(Percentiles, usize), BenchError> {
    let table = "bench_pickup";
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
    let total = (f64::from(args.rate) * args.duration.as_secs_f64()) as usize;
    let runner = runner(store, table, backend, args.concurrency);
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
async fn memory(
    store: &Store,
    backend: &BenchBackend,
    args: &BenchArgs,
) -> Result<(f64, f64), BenchError> {
    let table = "bench_memory";
    store.apply_schema(table).await?;
    let runner = runner(store, table, backend, args.concurrency);
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
async fn memory_database_alone(store: &Store, args: &BenchArgs) -> Result<(f64, f64), BenchError> {
    let table = "bench_memory_database";
    store.apply_schema(table).await?;
    batches(store, table, args, async |count| {
        lockstep(store, table, count, args.concurrency).await
    })
    .await
}

/// Inserts `memory_jobs` in batches of `jobs`, lets `process` finish each batch, and deletes the
/// finished rows; returns the RSS after the first batch and after the last, in MiB.
async fn batches(
    store: &Store,
    table: &str,
    args: &BenchArgs,
    mut process: impl AsyncFnMut(usize) -> Result<(), BenchError>,
) -> Result<(f64, f64), BenchError> {
    let batches = args.memory_jobs.div_ceil(args.jobs).max(2);
    let mut first = 0.0;
    for batch in 0..batches {
        insert(store, table, args.jobs).await?;
        process(args.jobs).await?;
        store.delete_succeeded(table).await?;
        if batch == 0 {
            first = rss_mb("VmRSS");
        }
    }
    Ok((first, rss_mb("VmRSS")))
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// A field of /proc/self/status, in MiB (0 where /proc is unavailable).
fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn describe_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug build (figures are not representative)"
    } else {
        "release build"
    };
    format!(
        "sp00ky-job-runner {} bench: {cpu}, {cores} cores, {profile}",
        env!("CARGO_PKG_VERSION")
    )
}

fn print_table(result: &ModeResult) {
    let p = &result.pickup_ms;
    println!("mode {:?}", result.mode);
    println!(
        "  limit (claim + result statements)  {:>10.0} jobs/s",
        result.limit_jobs_per_s
    );
    println!(
        "  throughput (runner, 0 ms backend)   {:>10.0} jobs/s   {:.0} % of limit",
        result.throughput_jobs_per_s,
        result.ratio_to_limit * 100.0
    );
    println!(
        "  pickup latency ({} jobs)           p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        result.pickup_samples, p.p50, p.p95, p.p99, p.max
    );
    println!(
        "  I/O-bound (50 ms backend)           {:>10.1} jobs/s   {:.1}x one-at-a-time ({:.1} jobs/s)",
        result.io_bound_jobs_per_s, result.io_bound_ratio_to_serial, result.serial_jobs_per_s
    );
    println!(
        "  memory                              peak {:.0} MiB   after first batch {:.0} MiB   after last {:.0} MiB   growth {:.2}x (+{:.0} MiB)",
        result.peak_rss_mb,
        result.rss_first_batch_mb,
        result.rss_last_batch_mb,
        result.rss_growth_ratio,
        result.rss_last_batch_mb - result.rss_first_batch_mb
    );
    if let Some(growth) = result.database_alone_rss_growth_mb {
        println!(
            "  memory, database alone              +{growth:.0} MiB over the same batches (the engine shares this process)"
        );
    }
    println!();
}

/// A zero-latency (or fixed-latency) local HTTP backend that records pickup latency and counts
/// the requests it answered, so waiting for a run to finish costs the database nothing.
struct BenchBackend {
    url: String,
    state: BackendState,
}

#[derive(Clone)]
struct BackendState {
    delay: Duration,
    latencies: Arc<Mutex<Vec<f64>>>,
    answered: Arc<(AtomicUsize, Notify)>,
}

impl BenchBackend {
    async fn start(delay: Duration) -> BenchBackend {
        let state = BackendState {
            delay,
            latencies: Arc::default(),
            answered: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BenchBackend { url, state }
    }

    fn answered(&self) -> usize {
        self.state.answered.0.load(Ordering::SeqCst)
    }

    /// Waits until the backend has answered `count` requests in all.
    async fn until_answered(&self, count: usize) {
        let (answered, changed) = &*self.state.answered;
        loop {
            let notified = changed.notified();
            if answered.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }
}

async fn receive(State(state): State<BackendState>, body: Bytes) -> &'static str {
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(sent) = payload.get("t").and_then(serde_json::Value::as_u64)
    {
        let latency_ms = (now_micros().saturating_sub(u128::from(sent))) as f64 / 1000.0;
        state
            .latencies
            .lock()
            .expect("latency lock")
            .push(latency_ms);
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let (answered, changed) = &*state.answered;
    answered.fetch_add(1, Ordering::SeqCst);
    changed.notify_waiters();
    "ok"
}
