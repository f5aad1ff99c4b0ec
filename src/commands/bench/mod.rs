//! `sp00ky-job-runner bench`: how close the runner gets to SurrealDB's own limit.
//!
//! For each database mode (embedded `mem://`, embedded SurrealKV, and a SurrealDB server over
//! WebSocket when one is available) it measures, in one process:
//!
//! 1. **ceiling**: the cheapest batched queue on this database (find due ids, one conditional
//!    claim, one result write), several loops on rows of their own, at the batch size and loop
//!    count that move the most rows: what the database allows, measured apart from our code.
//!    Then **limit**: the runner's own claim and result statements in a tight loop at the same
//!    concurrency, with no HTTP and no runner loop (what our statements allow).
//! 2. **throughput**: pre-inserted jobs drained by the real runner through a zero-latency local
//!    HTTP backend, and its ratio to the ceiling and to the limit.
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

use crate::config::Backend;
use crate::config::limits::FlagDuration;
use crate::job::claim::{Claimer, Watermark};
use crate::job::record::{SuccessWriter, Written};
use crate::job::retry::RetryPolicy;
use crate::job::retry::Strategy;
use crate::job::validate::Routes;
use crate::runner::{BackendRuntime, Runner, RunnerOptions};
use crate::store::{
    DbSettings, Finished, JobStatus, NewJob, Store, StoreError, TableName, WriteBack,
};

/// One of the benchmark's own tables (their names are identifiers by construction).
fn bench_table(name: &str) -> TableName {
    TableName::new(name).expect("the benchmark's table names are identifiers")
}

mod backend;
mod ceiling;
mod limit;
mod phases;
mod report;
mod scale;

use backend::*;
use ceiling::*;
use limit::*;
use phases::*;
use report::*;
use scale::*;

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
    #[arg(long, value_parser = |s: &str| crate::config::limits::BENCH_PICKUP.parse(s).map(FlagDuration),
          default_value_t = FlagDuration(crate::config::limits::BENCH_PICKUP.default))]
    pub duration: FlagDuration,
    /// Jobs at once (the runner's default).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Jobs the runner may claim beyond its free slots (`run --claim-ahead`).
    #[arg(long, default_value_t = 0, value_parser = crate::config::limits::parse_claim_ahead)]
    pub claim_ahead: usize,
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
    /// Instead of the modes: this many runner processes (`run`) side by side on one server,
    /// e.g. `1,2,4`, each size draining --jobs jobs (the server: --ws-endpoint, or one started
    /// here).
    #[arg(long, value_delimiter = ',', value_parser = parse_processes)]
    pub scale_out: Vec<usize>,
    /// Small sizes: finishes in under a minute (a smoke check, not a measurement).
    #[arg(long)]
    pub quick: bool,
    /// One JSON object per mode instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_processes(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=16) => Ok(n),
        _ => Err(format!("{text:?} is not a process count from 1 to 16")),
    }
}

impl BenchArgs {
    fn sized(mut self) -> BenchArgs {
        if self.quick {
            self.jobs = 1_000;
            self.rate = 100;
            self.duration = FlagDuration(Duration::from_secs(2));
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
    /// Jobs the runner claimed beyond its free slots at most.
    pub claim_ahead: usize,
    /// The ideal batched queue's best rate, and the batch size and loop count that reached it.
    pub ceiling_jobs_per_s: f64,
    pub ceiling_batch: usize,
    pub ceiling_loops: usize,
    /// Every batch size and loop count tried: `[batch, loops, jobs/s]`.
    pub ceiling_probes: Vec<(usize, usize, f64)>,
    pub limit_jobs_per_s: f64,
    pub throughput_jobs_per_s: f64,
    pub ratio_to_ceiling: f64,
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
            "jobs={} concurrency={} claim-ahead={} pickup: {}/s for {}; io: {} jobs at 50 ms; memory: {} jobs in batches of {}\n",
            args.jobs,
            args.concurrency,
            args.claim_ahead,
            args.rate,
            args.duration,
            args.io_jobs,
            args.memory_jobs,
            args.jobs
        );
    }
    let progress = Progress::start();
    if !args.scale_out.is_empty() {
        let rows = scale_out(&args, server_binary.as_ref(), db_user, db_pass, &progress).await?;
        if args.json {
            println!("{}", serde_json::to_string(&rows).expect("rows serialise"));
        } else {
            print_scale(&rows);
        }
        return Ok(());
    }
    for mode in modes {
        progress.phase(mode, "connecting");
        let (store, _guard) = connect(
            mode,
            &args,
            server_binary.as_ref(),
            db_user.clone(),
            db_pass.clone(),
        )
        .await?;
        let result = run_mode(mode, &store, &args, &progress).await?;
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

async fn run_mode(
    mode: Mode,
    store: &Store,
    args: &BenchArgs,
    progress: &Progress,
) -> Result<ModeResult, BenchError> {
    let ceiling = ceiling(store, args, progress, mode).await?;
    progress.phase(mode, "limit (claim and result statements alone)");
    let limit = limit(store, args).await?;
    let backend = BenchBackend::start(Duration::ZERO).await;
    progress.phase(mode, "throughput (the runner, 0 ms backend)");
    let throughput = drain(
        store,
        &bench_table("bench_throughput"),
        &backend,
        args.jobs,
        (args.concurrency, args.claim_ahead),
    )
    .await?;
    progress.phase(mode, "pickup latency");
    let pickup = pickup(store, &backend, args).await?;
    let slow = BenchBackend::start(Duration::from_millis(50)).await;
    progress.phase(mode, "I/O-bound (50 ms backend)");
    let io_bound = drain(
        store,
        &bench_table("bench_io"),
        &slow,
        args.io_jobs,
        (args.concurrency, args.claim_ahead),
    )
    .await?;
    progress.phase(mode, "one job at a time (50 ms backend)");
    // One job at a time, as Sp00ky's reference runner: one slot, nothing claimed ahead.
    let serial = drain(
        store,
        &bench_table("bench_serial"),
        &slow,
        (args.io_jobs / 10).max(20),
        (1, 0),
    )
    .await?;
    progress.phase(mode, "memory");
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
        claim_ahead: args.claim_ahead,
        ceiling_jobs_per_s: round(ceiling.jobs_per_s),
        ceiling_batch: ceiling.batch,
        ceiling_loops: ceiling.loops,
        ceiling_probes: ceiling.probes.clone(),
        limit_jobs_per_s: round(limit),
        throughput_jobs_per_s: round(throughput),
        ratio_to_ceiling: round(throughput / ceiling.jobs_per_s),
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
