//! Everything the integration tests share: a recording HTTP backend on 127.0.0.1:0, an embedded
//! SurrealDB per test, a runner started in-process, row helpers, and captured logs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sp00ky_job_runner::config;
use sp00ky_job_runner::job::retry::RetryPolicy;
use sp00ky_job_runner::job::validate::Routes;
use sp00ky_job_runner::runner::{BackendRuntime, Runner, RunnerOptions};
use sp00ky_job_runner::store::{DbSettings, Store};
use surrealdb::types::{RecordId, ToSql};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bearer token every test backend is configured with; it must never show up in a log line,
/// a stored row or an error.
pub const TOKEN: &str = "tok_7f3a9c1e5b2d4f60_never_print_me";

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as sent (still percent-encoded).
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the runner sends JSON")
    }
}

/// What the backend answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// Decides the reply from the request and how many requests with the same `Idempotency-Key`
/// came before it (0 for a job's first attempt).
pub type Script = Arc<dyn Fn(&Recorded, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct BackendState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Script,
}

/// A real HTTP server that records every request.
pub struct TestBackend {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl TestBackend {
    pub async fn start(
        script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> TestBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestBackend::serve(listener, script).await
    }

    /// Serves on a listener the test bound itself (to bring a backend up on a known port).
    pub async fn serve(
        listener: tokio::net::TcpListener,
        script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> TestBackend {
        let state = BackendState {
            requests: Arc::new(Mutex::new(Vec::new())),
            script: Arc::new(script),
        };
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestBackend {
            url,
            requests: state.requests,
        }
    }

    /// A backend that answers 200 to everything.
    pub async fn ok() -> TestBackend {
        TestBackend::start(|_, _| Reply::ok()).await
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The `id` field of each JSON payload received, in the order the calls arrived.
    pub fn called_ids(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn handle(
    State(state): State<BackendState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method,
        target: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let key = recorded.header("idempotency-key").map(str::to_string);
    let reply = {
        let mut requests = state.requests.lock().unwrap();
        let earlier = requests
            .iter()
            .filter(|r| r.header("idempotency-key").map(str::to_string) == key)
            .count();
        let reply = (state.script)(&recorded, earlier);
        requests.push(recorded);
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// A fresh embedded in-memory database.
pub async fn mem_store() -> Store {
    init_logs();
    Store::connect(DbSettings {
        endpoint: "mem://".into(),
        namespace: "test".into(),
        database: "test".into(),
        username: None,
        password: None,
    })
    .await
    .expect("embedded SurrealDB starts")
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The backends of a sp00ky.yml that points one backend (`api`, table `table`) at `base_url`
/// with the fixture spec, the test token and fast retries.
pub fn backends(base_url: &str, table: &str) -> Vec<BackendRuntime> {
    backends_with(base_url, table, "baseMs: 50\n      maxDelayMs: 2000")
}

/// Like [`backends`], with the `retry:` block's body given.
pub fn backends_with(base_url: &str, table: &str, retry: &str) -> Vec<BackendRuntime> {
    let yaml = format!(
        "backends:\n  api:\n    type: http\n    baseUrl: {base_url}\n    spec: ./openapi.yml\n    auth:\n      type: token\n      token: {TOKEN}\n    method:\n      type: outbox\n      table: {table}\n    deploy:\n      timeout: 5\n      timeoutOverridable: true\n    retry:\n      {retry}\n"
    );
    let config = config::from_yaml(
        &yaml,
        config::Origin::File("test.yml".into()),
        &fixture(""),
        &|_| None,
        RetryPolicy::default(),
    )
    .expect("test config loads");
    config
        .backends
        .into_iter()
        .map(|backend| BackendRuntime {
            routes: Routes::load(backend.spec.as_ref().unwrap()).expect("fixture spec loads"),
            backend,
        })
        .collect()
}

/// A runner running in this process until [`TestRunner::stop`].
pub struct TestRunner {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestRunner {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("runner stops within 30 s")
            .expect("runner task does not panic");
    }
}

pub fn fast_options(runner_id: &str) -> RunnerOptions {
    RunnerOptions {
        concurrency: 16,
        claim_ahead: 0,
        poll_interval: Duration::from_millis(100),
        lease: Duration::from_secs(15),
        shutdown_grace: Duration::from_secs(5),
        runner_id: runner_id.into(),
        clock_offset: chrono::TimeDelta::zero(),
    }
}

/// Prepares the tables and starts a runner over `backends`.
pub async fn start_runner(
    store: &Store,
    backends: Vec<BackendRuntime>,
    options: RunnerOptions,
) -> TestRunner {
    sp00ky_job_runner::commands::prepare_tables(store, &backends)
        .await
        .expect("tables are ready");
    let runner = Runner::new(store.clone(), backends, options);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    TestRunner {
        stop: Some(stop),
        task,
    }
}

/// Prepares table `job` for the fixture backend at `base_url` and inserts `count` jobs with
/// payload ids `t0`, `t1`, ..., each created a little after the one before, so that the order a
/// runner calls them in is observable.
pub async fn insert_in_order(store: &Store, base_url: &str, count: usize) -> Vec<RecordId> {
    sp00ky_job_runner::commands::prepare_tables(store, &backends(base_url, "job"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(
            job("/spookify")
                .payload(json!({"id": format!("t{n}")}))
                .insert(store)
                .await,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ids
}

/// A runner (id `r1`, fast options) over the fixture backend `api` at `base_url`, table `job`.
pub async fn runner_for(store: &Store, base_url: &str) -> TestRunner {
    start_runner(store, backends(base_url, "job"), fast_options("r1")).await
}

/// The one place a test starts the service: a fresh embedded database, a runner serving the
/// fixture backend `api` at `backend_url` (table `job`), `row` inserted and run to its end. The
/// finished row.
pub async fn run_one(backend_url: &str, row: NewRow) -> Value {
    let store = mem_store().await;
    let runner = runner_for(&store, backend_url).await;
    let id = row.insert(&store).await;
    let done = wait_final(&store, &id, Duration::from_secs(20)).await;
    runner.stop().await;
    done
}

/// A job as a Sp00ky client writes it (`payload` a JSON string), with the contract's defaults:
/// `job("/spookify").payload(json!({"id": "t"})).max_retries(0).insert(&store).await`.
pub fn job(path: &str) -> NewRow {
    NewRow {
        path: path.into(),
        payload: json!({}),
        max_retries: 3,
        strategy: "linear".into(),
    }
}

/// A job row to insert; see [`job`].
pub struct NewRow {
    path: String,
    payload: Value,
    max_retries: u32,
    strategy: String,
}

impl NewRow {
    pub fn payload(mut self, payload: Value) -> NewRow {
        self.payload = payload;
        self
    }

    pub fn max_retries(mut self, max_retries: u32) -> NewRow {
        self.max_retries = max_retries;
        self
    }

    pub fn strategy(mut self, strategy: &str) -> NewRow {
        self.strategy = strategy.into();
        self
    }

    pub async fn insert(self, store: &Store) -> RecordId {
        let fields = json!({
            "path": self.path,
            "payload": self.payload.to_string(),
            "max_retries": self.max_retries,
            "retry_strategy": self.strategy,
        });
        insert_row(store, "job", fields).await
    }
}

/// Runs SurrealQL the runner never sends (test set-up and inspection): one JSON value per
/// statement.
#[allow(async_fn_in_trait)]
pub trait Raw {
    async fn raw(&self, statements: &str) -> surrealdb::Result<Vec<Value>>;
}

impl Raw for Store {
    async fn raw(&self, statements: &str) -> surrealdb::Result<Vec<Value>> {
        let mut response = self.client().query(statements).await?.check()?;
        let mut out = Vec::new();
        for index in 0..response.num_statements() {
            let value: surrealdb::types::Value = response.take(index)?;
            out.push(value.into_json_value());
        }
        Ok(out)
    }
}

/// A table name the store accepts, for tests that name a table of their own.
pub fn table_named(name: &str) -> sp00ky_job_runner::store::TableName {
    sp00ky_job_runner::store::TableName::new(name).expect("a test table name is an identifier")
}

/// Creates a row with exactly the given fields.
pub async fn insert_row(store: &Store, table: &str, fields: Value) -> RecordId {
    let id = RecordId::new(table, sp00ky_job_runner::store::new_job_key());
    store
        .client()
        .query("CREATE ONLY $id CONTENT $fields RETURN NONE")
        .bind(("id", id.clone()))
        .bind(("fields", fields))
        .await
        .and_then(|r| r.check())
        .expect("job row is created");
    id
}

pub async fn row(store: &Store, id: &RecordId) -> Value {
    store.get(id).await.expect("row reads").expect("row exists")
}

/// Waits until the row's status is one of the final ones, and returns the row.
pub async fn wait_final(store: &Store, id: &RecordId, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let current = row(store, id).await;
        if matches!(current["status"].as_str(), Some("success" | "failed")) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{} still {current} after {within:?}; recent logs:\n{}",
            id.to_sql(),
            recent_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `check` holds, polling the database.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; recent logs:\n{}",
            recent_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn count_status(store: &Store, table: &str, status: &str) -> usize {
    let rows = store
        .raw(&format!(
            "SELECT count() AS n FROM {table} WHERE status = '{status}' GROUP ALL"
        ))
        .await
        .unwrap();
    rows[0][0]["n"].as_u64().unwrap_or(0) as usize
}

/// Every log line of this test binary, all tests together.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

/// The end of the captured logs, for failure messages.
pub fn recent_logs() -> String {
    let logs = captured_logs();
    let start = logs.len().saturating_sub(4000);
    logs[logs.ceil_char_boundary(start)..].to_string()
}

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line, at debug level, into memory.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("sp00ky_job_runner=debug,info")
            .with_writer(|| LogSink)
            .with_ansi(false)
            .init();
    });
}

/// Defines the app's users and its record access, as a Sp00ky app does.
pub async fn define_app_access(store: &Store) {
    store
        .raw(
            "DEFINE TABLE user SCHEMALESS PERMISSIONS FULL;
             DEFINE ACCESS app ON DATABASE TYPE RECORD
                SIGNUP (CREATE user SET name = $name)
                SIGNIN (SELECT * FROM user WHERE name = $name)
                DURATION FOR SESSION 1h;",
        )
        .await
        .unwrap();
}

/// A session of its own, signed up as the app user `name`.
pub async fn app_user(
    store: &Store,
    name: &str,
) -> surrealdb::Surreal<surrealdb::engine::any::Any> {
    let session = store.client().clone();
    session
        .signup(surrealdb::opt::auth::Record {
            namespace: "test".into(),
            database: "test".into(),
            access: "app".into(),
            params: json!({"name": name}),
        })
        .await
        .expect("record signup works");
    session
}

/// One entry of a `backends:` YAML document: backend `name` at `url`, its outbox table
/// `<name>_job`, and `extra` (indented keys such as `    rateLimit: 5/s\n`).
pub fn backend_entry(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    type: http\n    baseUrl: {url}\n    spec: ./openapi.yml\n{extra}    method:\n      type: outbox\n      table: {name}_job\n"
    )
}

/// The backends of a `backends:` YAML document, with the fixture spec.
pub fn runtimes_of(yaml: &str) -> Vec<BackendRuntime> {
    let config = config::from_yaml(
        yaml,
        config::Origin::File("test.yml".into()),
        &fixture(""),
        &|_| None,
        Default::default(),
    )
    .unwrap();
    config
        .backends
        .into_iter()
        .map(|backend| BackendRuntime {
            routes: Routes::load(backend.spec.as_ref().unwrap()).unwrap(),
            backend,
        })
        .collect()
}
