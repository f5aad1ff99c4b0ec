//! Command-line arguments as the user gave them. Nothing here does I/O; [`crate::commands`] resolves
//! them (with the environment and the config file) into what the commands run with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::limits::{self, FlagDuration};
use crate::job::retry::Strategy;
use crate::store::{Finished, JobStatus};

/// Executes Sp00ky outbox jobs stored in SurrealDB.
#[derive(Debug, Parser)]
#[command(name = "sp00ky-job-runner", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// The sp00ky.yml to read (ignored when SPKY_JOB_CONFIG is set).
    #[arg(long, global = true, env = "SPKY_CONFIG", default_value = "sp00ky.yml")]
    pub config: PathBuf,
    /// SurrealDB endpoint: ws://, wss://, http://, https://, mem://, surrealkv://PATH
    /// [env: SPKY_DB_WS, SPKY_DB_URL; default: surrealkv://.sp00ky/db].
    #[arg(long, global = true)]
    pub db: Option<String>,
    /// SurrealDB namespace [env: SPKY_DB_NS; else sp00ky.yml surrealdb.namespace; default: main].
    #[arg(long, global = true)]
    pub namespace: Option<String>,
    /// SurrealDB database [env: SPKY_DB_NAME; else sp00ky.yml surrealdb.database; default: main].
    #[arg(long, global = true)]
    pub database: Option<String>,
    /// SurrealDB root user [env: SPKY_DB_USER].
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// SurrealDB password [env: SPKY_DB_PASS]; prefer the variable, a flag is visible in `ps`.
    #[arg(long, global = true)]
    pub pass: Option<String>,
    /// How long to wait for a database server that does not answer yet [default: forever for
    /// run and dev, 30s for the other commands].
    #[arg(long, global = true, value_parser = |s: &str| limits::CONNECT_TIMEOUT.parse(s).map(FlagDuration))]
    pub connect_timeout: Option<FlagDuration>,
    /// Log format: readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, env = "SPKY_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs until stopped (the default).
    Run(RunArgs),
    /// Measure the runner against SurrealDB's own limit (see BENCHMARKS.md).
    Bench(crate::commands::bench::BenchArgs),
    /// Run jobs, and beside them every backend's `dev` command from sp00ky.yml.
    Dev(RunArgs),
    /// Load the config and specs, connect, inspect the tables, print what the runner would serve.
    Check,
    /// Print (or apply) the job table schema.
    Schema(SchemaArgs),
    /// Create a job the way a Sp00ky client's db.run does, after the same checks; prints its id.
    /// While a runner holds the embedded store, goes through that runner's admin API.
    Enqueue(EnqueueArgs),
    /// Exit 0 when a running runner's /healthz answers (for container health checks).
    Health {
        /// The runner's listener [default: SPKY_RUNNER_LISTEN, else 127.0.0.1:8787].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Inspect and repair jobs in the database (the admin API's verbs). While a runner holds the
    /// embedded store, they go through that runner's admin API instead.
    Jobs(JobsArgs),
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub runner: RunnerAddress,
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// Where a running runner's admin API is, for the verbs that fall back to it.
#[derive(Debug, Args, Clone)]
pub struct RunnerAddress {
    /// The running runner's listener, used when it holds the embedded store.
    #[arg(long, env = "SPKY_RUNNER_LISTEN", default_value = limits::LISTEN)]
    pub listen: std::net::SocketAddr,
}

/// The only status whose jobs can be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailedStatus {
    Failed,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// One page of jobs, newest first; pass the printed `next_cursor` as --cursor for the next.
    List {
        /// The job table (needed when several are configured).
        #[arg(long)]
        table: Option<String>,
        #[arg(long, value_enum)]
        status: Option<JobStatus>,
        /// Only jobs of exactly this path.
        #[arg(long)]
        path: Option<String>,
        /// Only jobs whose id or assigned_to contains this text.
        #[arg(long)]
        text: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One job, with its errors.
    Show { id: String },
    /// Put failed jobs back to pending with a fresh attempt budget (their errors are kept): one
    /// by id, or with --status failed every failed job matching --path and --since.
    Retry {
        /// One job's id; omit it and give --status failed to retry many.
        #[arg(required_unless_present = "status", conflicts_with_all = ["status", "path", "since"])]
        id: Option<String>,
        #[arg(long)]
        table: Option<String>,
        #[arg(long, value_enum)]
        status: Option<FailedStatus>,
        #[arg(long, requires = "status")]
        path: Option<String>,
        /// Failed at or after this: an RFC 3339 time, or a duration ago (1h, 2d).
        #[arg(long, requires = "status")]
        since: Option<String>,
    },
    /// End a pending job as failed, with a `cancelled` error.
    Cancel { id: String },
    /// Delete finished jobs with --status, optionally only --path and finished more than
    /// --older-than ago. Prints how many.
    Delete {
        #[arg(long)]
        table: Option<String>,
        #[arg(long, value_enum)]
        status: Finished,
        #[arg(long)]
        path: Option<String>,
        /// e.g. 7d, 12h.
        #[arg(long)]
        older_than: Option<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Backend calls running at once, across all backends (each result is written after its
    /// call's slot is freed, with at most as many writes pending).
    #[arg(long, env = "SPKY_RUNNER_CONCURRENCY", default_value_t = limits::CONCURRENCY,
          value_parser = parse_concurrency)]
    pub concurrency: usize,
    /// Jobs claimed beyond the free slots. They wait for a slot in claim order, their leases
    /// renewed, so the next claim overlaps the running calls; 0 claims only what can start at
    /// once. Backends with `concurrency:` or `rateLimit:` never claim ahead.
    #[arg(long, env = "SPKY_RUNNER_CLAIM_AHEAD", default_value_t = 0, value_parser = limits::parse_claim_ahead)]
    pub claim_ahead: usize,
    /// Longest wait between two looks at the tables (live queries usually wake the runner sooner).
    #[arg(long, env = "SPKY_RUNNER_POLL_INTERVAL", value_parser = |s: &str| limits::POLL_INTERVAL.parse(s).map(FlagDuration),
          default_value_t = FlagDuration(limits::POLL_INTERVAL.default))]
    pub poll_interval: FlagDuration,
    /// How long a claim holds without renewal; a crashed runner's jobs are rescued after this.
    #[arg(long, env = "SPKY_RUNNER_LEASE", value_parser = |s: &str| limits::LEASE.parse(s).map(FlagDuration),
          default_value_t = FlagDuration(limits::LEASE.default))]
    pub lease: FlagDuration,
    /// How long in-flight jobs may finish after SIGINT/SIGTERM before they are put back.
    #[arg(long, env = "SPKY_RUNNER_SHUTDOWN_GRACE", value_parser = |s: &str| limits::SHUTDOWN_GRACE.parse(s).map(FlagDuration),
          default_value_t = FlagDuration(limits::SHUTDOWN_GRACE.default))]
    pub shutdown_grace: FlagDuration,
    /// First retry delay, for backends that do not set `retry.baseMs`.
    #[arg(long, env = "SPKY_RUNNER_RETRY_BASE", value_parser = |s: &str| limits::RETRY_BASE.parse(s).map(FlagDuration),
          default_value_t = FlagDuration(limits::RETRY_BASE.default))]
    pub retry_base: FlagDuration,
    /// Longest retry delay, for backends that do not set `retry.maxDelayMs`.
    #[arg(long, env = "SPKY_RUNNER_RETRY_CAP", value_parser = |s: &str| limits::RETRY_CAP.parse(s).map(FlagDuration),
          default_value_t = FlagDuration(limits::RETRY_CAP.default))]
    pub retry_cap: FlagDuration,
    /// Where /healthz, /readyz, /metrics and the admin API listen. Anything but loopback needs an
    /// admin token.
    #[arg(long, env = "SPKY_RUNNER_LISTEN", default_value = limits::LISTEN)]
    pub listen: std::net::SocketAddr,
    /// A file holding the admin API's bearer token (else env SPKY_RUNNER_ADMIN_TOKEN; without
    /// either, the admin API and dashboard are off, except under `dev`, which makes one).
    #[arg(long, env = "SPKY_RUNNER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Process every job due now, then exit: 0 when none was left `processing`.
    #[arg(long, env = "SPKY_RUNNER_ONCE")]
    pub once: bool,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs::parse_from_defaults()
    }
}

impl RunArgs {
    fn parse_from_defaults() -> RunArgs {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: RunArgs,
        }
        Wrapper::parse_from(["run"]).args
    }
}

#[derive(Debug, Args, Clone)]
pub struct SchemaArgs {
    /// The table to define (default: every configured job table, or `job` without a config).
    #[arg(long)]
    pub table: Option<String>,
    /// Apply it to the database (idempotent) instead of printing it.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Args, Clone)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub runner: RunnerAddress,
    /// The backend's name in the configuration.
    pub backend: String,
    /// A route of the backend's spec, e.g. /spookify.
    pub path: String,
    /// The payload as JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    #[arg(long, default_value_t = limits::MAX_RETRIES)]
    pub max_retries: u32,
    /// linear or exponential.
    #[arg(long, value_enum, default_value_t = Strategy::Linear)]
    pub retry_strategy: Strategy,
    /// The record this job concerns, e.g. thread:abc.
    #[arg(long)]
    pub assigned_to: Option<String>,
    /// Per-job timeout in seconds (honoured when the backend allows it).
    #[arg(long)]
    pub timeout: Option<u32>,
    /// Wait this long before the first attempt (e.g. 30s, 5m).
    #[arg(long, value_parser = |s: &str| limits::DELAY.parse(s), conflicts_with = "run_at")]
    pub delay: Option<Duration>,
    /// Run no earlier than this RFC 3339 time (e.g. 2026-12-24T18:00:00Z).
    #[arg(long)]
    pub run_at: Option<String>,
    /// Higher runs first among due jobs of the table (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i64>,
}

/// `--concurrency`, within its range.
fn parse_concurrency(text: &str) -> Result<usize, String> {
    let range = limits::CONCURRENCY_RANGE;
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{text:?} is not a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_defaults() {
        let args = RunArgs::default();
        assert_eq!(args.lease.0, Duration::from_secs(15));
        assert_eq!(args.poll_interval.0, Duration::from_secs(1));
        assert_eq!(args.lease.0, limits::LEASE.default);
        assert_eq!(args.poll_interval.0, limits::POLL_INTERVAL.default);
        assert_eq!(args.retry_cap.0, limits::RETRY_CAP.default);
        assert_eq!(args.concurrency, limits::CONCURRENCY);
        assert_eq!(
            args.claim_ahead, 0,
            "off: jobs held ahead would wait while another runner's slots are free"
        );
    }

    #[test]
    fn out_of_range_flags_are_refused_with_the_flag_and_range() {
        for (flag, value) in [
            ("--lease", "1e20"),
            ("--retry-cap", "100000000h"),
            ("--poll-interval", "0"),
            ("--concurrency", "0"),
            ("--claim-ahead", "many"),
            ("--claim-ahead", "10001"),
        ] {
            let err = Cli::try_parse_from(["sp00ky-job-runner", "run", flag, value]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(flag), "{flag} {value}: {text}");
        }
    }
}
