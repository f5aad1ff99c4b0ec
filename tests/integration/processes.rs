//! Real processes for the chaos suite: a SurrealDB server (the `sp00ky-test-surreal` binary, which
//! is the official server) on a random loopback port with SurrealKV storage in a temporary folder,
//! and runner processes started from the built binary. Both can be signalled, killed, restarted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sp00ky_job_runner::store::{DbSettings, Store};
use surrealdb::types::RecordId;

use crate::helpers::fixture;

/// Chaos scenarios start several processes each; running two at once on a 2-core machine would
/// make their timing figures meaningless, so they take turns.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const ROOT_USER: &str = "root";
pub const ROOT_PASS: &str = "root-pass-for-tests";

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

fn capture(child: &mut Child) -> Arc<Mutex<String>> {
    let logs = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut logs = sink.lock().unwrap();
            logs.push_str(&line);
            logs.push('\n');
        }
    });
    logs
}

/// Polls `try_wait` until the process exits.
pub async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A SurrealDB server process.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    data: tempfile::TempDir,
    logs: Arc<Mutex<String>>,
}

impl Server {
    pub async fn start() -> Server {
        let mut server = Server::not_started();
        server.start_now().await;
        server
    }

    /// A server with its port and storage chosen, not running yet: a runner may be pointed at
    /// it first, as `spky dev` and Docker Compose often do.
    pub fn not_started() -> Server {
        Server {
            child: None,
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            logs: Arc::default(),
        }
    }

    /// Starts a [`Server::not_started`] and defines the test namespace and database.
    pub async fn start_now(&mut self) {
        self.spawn().await;
        let store = self.store_without_database().await;
        store.define_namespace_and_database().await.unwrap();
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sp00ky-test-surreal"))
            .args(["start", "--no-banner", "--log", "warn", "--bind"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--user", ROOT_USER, "--pass", ROOT_PASS])
            .arg(format!(
                "surrealkv://{}",
                self.data.path().join("db").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the test SurrealDB server starts");
        self.logs = capture(&mut child);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let health = format!("http://127.0.0.1:{}/health", self.port);
        loop {
            if let Ok(response) = reqwest::get(&health).await
                && response.status().is_success()
            {
                return;
            }
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "SurrealDB exited with {status}: {}",
                    self.logs.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "SurrealDB not healthy after 60 s: {}",
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    fn settings(&self) -> DbSettings {
        DbSettings {
            endpoint: self.endpoint(),
            namespace: "test".into(),
            database: "test".into(),
            username: Some(ROOT_USER.into()),
            password: Some(ROOT_PASS.into()),
        }
    }

    async fn store_without_database(&self) -> Store {
        Store::connect(self.settings())
            .await
            .expect("connects to the test server")
    }

    /// A client connection for the test itself (inserting rows, reading results).
    pub async fn store(&self) -> Store {
        let store = self.store_without_database().await;
        store.check_database().await.unwrap();
        store
    }

    /// Stops the server gracefully and starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(child.id(), "TERM");
        wait_exit(&mut child, Duration::from_secs(30))
            .await
            .expect("SurrealDB stops on SIGTERM");
        self.spawn().await;
    }

    /// The arguments that point a runner process at this server.
    pub fn runner_args(&self) -> Vec<String> {
        vec![
            "--db".into(),
            self.endpoint(),
            "--namespace".into(),
            "test".into(),
            "--database".into(),
            "test".into(),
            "--user".into(),
            ROOT_USER.into(),
        ]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A folder with a sp00ky.yml (backend `api`, table `job`) pointing at `base_url`.
pub fn project(base_url: &str, retry_base_ms: u64, retry_cap_ms: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("openapi.yml"), dir.path().join("openapi.yml")).unwrap();
    std::fs::write(
        dir.path().join("sp00ky.yml"),
        format!(
            "apps:\n  api:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: {base_url}\n    auth:\n      type: token\n      token: ${{API_TOKEN}}\n    method:\n      type: outbox\n      table: job\n    deploy:\n      timeout: 60\n    retry:\n      baseMs: {retry_base_ms}\n      maxDelayMs: {retry_cap_ms}\n"
        ),
    )
    .unwrap();
    dir
}

/// A runner process.
pub struct RunnerProcess {
    pub child: Child,
    logs: Arc<Mutex<String>>,
}

impl RunnerProcess {
    /// Starts `sp00ky-job-runner run` against `server` with the project in `dir`, and waits until
    /// it has checked its tables and armed its live queries.
    pub async fn start(server: &Server, dir: &Path, run_args: &[&str]) -> RunnerProcess {
        let mut runner = RunnerProcess::spawn(server, dir, run_args);
        runner
            .wait_for_log("runner started", Duration::from_secs(30))
            .await;
        runner
    }

    /// Starts `sp00ky-job-runner run` like [`RunnerProcess::start`], without waiting for it.
    pub fn spawn(server: &Server, dir: &Path, run_args: &[&str]) -> RunnerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"))
            .current_dir(dir)
            .env("RUST_LOG", "warn,sp00ky_job_runner=info")
            .env("API_TOKEN", crate::helpers::TOKEN)
            .env("SPKY_DB_PASS", ROOT_PASS)
            .env_remove("SPKY_JOB_CONFIG")
            .args(server.runner_args())
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(run_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = capture(&mut child);
        RunnerProcess { child, logs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logs().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "runner exited ({status}) before logging {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "runner did not log {needle:?} within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Inserts `count` jobs as a Sp00ky client would (JSON-string payloads), in batches.
pub async fn insert_jobs(
    store: &Store,
    count: usize,
    max_retries: u32,
    strategy: &str,
) -> Vec<RecordId> {
    let mut ids = Vec::with_capacity(count);
    let mut rows: Vec<Value> = Vec::new();
    for n in 0..count {
        let key = sp00ky_job_runner::store::new_job_key();
        ids.push(RecordId::new("job", key.clone()));
        rows.push(json!({
            "id": key,
            "path": "/spookify",
            "payload": json!({"id": format!("thread:{n}")}).to_string(),
            "max_retries": max_retries,
            "retry_strategy": strategy,
        }));
        if rows.len() == 250 || n + 1 == count {
            store
                .client()
                .query("INSERT INTO job $rows RETURN NONE")
                .bind(("rows", std::mem::take(&mut rows)))
                .await
                .and_then(|r| r.check())
                .expect("jobs are inserted");
        }
    }
    ids
}

/// Appends a scenario's figures to a file CI prints, and to stderr.
pub fn report(scenario: &str, figures: &str) {
    let line = format!("chaos {scenario}: {figures}\n");
    eprint!("{line}");
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-figures.txt");
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(line.as_bytes()).unwrap();
}
