//! Scale-out: 1, 2, 4 ... runner processes (this binary's `run`) against one SurrealDB server,
//! draining one burst of jobs together. Prints jobs per second and the transaction conflicts
//! the runners met per 1,000 jobs (each runner's `/metrics`), so adding runners can be seen to
//! add throughput rather than contention.

use std::process::{Child, Command, Stdio};

use super::*;

/// One row of the scale-out table.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub processes: usize,
    pub jobs: usize,
    pub jobs_per_s: f64,
    pub conflicts: u64,
    pub conflicts_per_1000_jobs: f64,
}

const SPEC: &str = "openapi: 3.0.3\ninfo: {title: bench, version: '1'}\npaths:\n  /bench:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {type: object}\n      responses:\n        '200': {description: ok}\n";

/// Runs the scale-out table on a server (`--ws-endpoint`, or one this benchmark starts).
pub(super) async fn scale_out(
    args: &BenchArgs,
    server_binary: Option<&PathBuf>,
    user: Option<String>,
    pass: Option<secrecy::SecretString>,
    progress: &Progress,
) -> Result<Vec<ScaleRow>, BenchError> {
    let (store, _guard) = connect(Mode::Ws, args, server_binary, user, pass).await?;
    let backend = BenchBackend::start(Duration::ZERO).await;
    let mut rows = Vec::new();
    for &processes in &args.scale_out {
        progress.phase(
            Mode::Ws,
            &format!("scale-out: {processes} runner processes"),
        );
        rows.push(one_size(&store, &backend, args, processes).await?);
    }
    Ok(rows)
}

async fn one_size(
    store: &Store,
    backend: &BenchBackend,
    args: &BenchArgs,
    processes: usize,
) -> Result<ScaleRow, BenchError> {
    let table = bench_table(&format!("bench_scale_{processes}"));
    store.apply_schema(&table).await?;
    let dir = tempfile::tempdir().map_err(setup)?;
    std::fs::write(dir.path().join("openapi.yml"), SPEC).map_err(setup)?;
    std::fs::write(
        dir.path().join("sp00ky.yml"),
        format!(
            "apps:\n  bench:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: {}\n    method:\n      type: outbox\n      table: {table}\n",
            backend.url
        ),
    )
    .map_err(setup)?;
    let mut runners = Runners::default();
    for _ in 0..processes {
        runners.spawn(store.settings(), &dir.path().join("sp00ky.yml"), args)?;
    }
    for port in runners.ports.clone() {
        wait_ready(port).await?;
    }
    let answered = backend.answered();
    let started = Instant::now();
    insert(store, &table, args.jobs).await?;
    wait_succeeded(store, &table, backend, answered, args.jobs as u64).await?;
    let elapsed = started.elapsed();
    let mut conflicts = 0;
    for port in runners.ports.clone() {
        conflicts += scrape_conflicts(port).await?;
    }
    runners.stop();
    Ok(ScaleRow {
        processes,
        jobs: args.jobs,
        jobs_per_s: round(args.jobs as f64 / elapsed.as_secs_f64()),
        conflicts,
        conflicts_per_1000_jobs: round(conflicts as f64 * 1000.0 / args.jobs as f64),
    })
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// The runner processes of one size; stopped (SIGTERM, then waited for) when dropped.
#[derive(Default)]
struct Runners {
    children: Vec<Child>,
    ports: Vec<u16>,
}

impl Runners {
    fn spawn(
        &mut self,
        db: &DbSettings,
        config: &std::path::Path,
        args: &BenchArgs,
    ) -> Result<(), BenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(setup)?
            .port();
        let exe = std::env::current_exe().map_err(setup)?;
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(config)
            .args(["--db", &db.endpoint, "--namespace", &db.namespace])
            .args(["--database", &db.database, "--log-format", "json", "run"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args(["--claim-ahead", &args.claim_ahead.to_string()])
            .env_remove("SPKY_JOB_CONFIG")
            // `SPKY_BENCH_RUNNER_LOG` sets the measured runners' `RUST_LOG` to profile them.
            .env(
                "RUST_LOG",
                std::env::var("SPKY_BENCH_RUNNER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null());
        // Every runner flag reads a variable too; the measured runners take only the flags above.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPKY_RUNNER_") {
                command.env_remove(name);
            }
        }
        if let Some(user) = &db.username {
            command.env("SPKY_DB_USER", user);
        }
        if let Some(pass) = &db.password {
            command.env("SPKY_DB_PASS", secrecy::ExposeSecret::expose_secret(pass));
        }
        self.children.push(command.spawn().map_err(setup)?);
        self.ports.push(port);
        Ok(())
    }

    fn stop(&mut self) {
        for child in &self.children {
            // SAFETY: kill(2) with a pid this process started and has not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Runners {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (up to 60 s) for a runner's `/readyz` to answer 200.
async fn wait_ready(port: u16) -> Result<(), BenchError> {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(&url)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "the runner on port {port} never became ready"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `sp00ky_runner_transaction_conflicts_total` of the runner on `port`.
async fn scrape_conflicts(port: u16) -> Result<u64, BenchError> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map_err(setup)?
        .text()
        .await
        .map_err(setup)?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix("sp00ky_runner_transaction_conflicts_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

pub(super) fn print_scale(rows: &[ScaleRow]) {
    println!("scale-out (runner processes against one server over WebSocket)");
    println!("  processes   jobs/s   transaction conflicts per 1,000 jobs");
    for row in rows {
        println!(
            "  {:>9}   {:>6.0}   {:>6.1} ({} in {} jobs)",
            row.processes, row.jobs_per_s, row.conflicts_per_1000_jobs, row.conflicts, row.jobs
        );
    }
    println!();
}
