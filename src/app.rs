//! The commands: flags, environment and config file merged once, here, then run.
//!
//! Precedence for database settings: flag, then environment (`SPKY_DB_*`), then the `surrealdb:`
//! block of sp00ky.yml, then defaults (an embedded SurrealKV store under `./.sp00ky/`, so a fresh
//! machine needs no server).

use std::process::ExitCode;

use secrecy::SecretString;
use surrealdb::types::ToSql;

use std::sync::Arc;

use crate::admin::{Admin, AdminError, EnqueueRequest, ListQuery};
use crate::cli::{Cli, Command, EnqueueArgs, GlobalArgs, JobsCommand, RunArgs, SchemaArgs};
use crate::config::{self, Config, ConfigError, EnvLookup};
use crate::retry::RetryPolicy;
use crate::runner::{BackendRuntime, Runner, RunnerOptions, RunnerStatus};
use crate::serve::OpsState;
use crate::store::{self, DbSettings, Store, StoreError};
use crate::validate::{Routes, SpecError};

/// Where the embedded default store lives.
pub const DEFAULT_ENDPOINT: &str = "surrealkv://.sp00ky/db";

/// Why a command stopped; the exit code tells scripts which kind of problem it was.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The database's tables are not ready for the runner; the message says what to apply.
    #[error("{0}")]
    Schema(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("not healthy: {0}")]
    Unhealthy(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl AppError {
    /// 78 (EX_CONFIG) for anything the user must fix in configuration or schema; 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AppError::Config(_) | AppError::Spec(_) | AppError::Schema(_) => ExitCode::from(78),
            AppError::Usage(_) => ExitCode::from(2),
            AppError::Admin(AdminError::Store(_)) => ExitCode::FAILURE,
            AppError::Admin(_) => ExitCode::from(2),
            AppError::Listen { .. } => ExitCode::from(78),
            AppError::Store(_) | AppError::Unhealthy(_) => ExitCode::FAILURE,
        }
    }
}

/// Database settings from flags, environment and the config file.
pub fn db_settings(
    global: &GlobalArgs,
    file: &config::FileDatabase,
    env: EnvLookup<'_>,
) -> DbSettings {
    let pick = |flag: &Option<String>, vars: &[&str], file: &Option<String>| {
        flag.clone()
            .or_else(|| vars.iter().find_map(|v| env(v).filter(|s| !s.is_empty())))
            .or_else(|| file.clone())
    };
    DbSettings {
        endpoint: pick(&global.db, &["SPKY_DB_WS", "SPKY_DB_URL"], &file.endpoint)
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
        namespace: pick(&global.namespace, &["SPKY_DB_NS"], &file.namespace)
            .unwrap_or_else(|| "main".into()),
        database: pick(&global.database, &["SPKY_DB_NAME"], &file.database)
            .unwrap_or_else(|| "main".into()),
        username: pick(&global.user, &["SPKY_DB_USER"], &file.username),
        password: global
            .pass
            .clone()
            .or_else(|| env("SPKY_DB_PASS"))
            .map(SecretString::from)
            .or_else(|| file.password.clone()),
    }
}

/// Loads the configuration and compiles every backend's spec.
pub fn load_backends(
    global: &GlobalArgs,
    retry: RetryPolicy,
    env: EnvLookup<'_>,
) -> Result<(Config, Vec<BackendRuntime>), AppError> {
    let config = config::load(&global.config, env, retry)?;
    let mut runtimes = Vec::new();
    for backend in &config.backends {
        let routes = match &backend.spec {
            Some(path) => Routes::load(path)?,
            None => {
                tracing::warn!(
                    backend = %backend.name,
                    "no OpenAPI spec: payloads go unvalidated, and only plain absolute paths are called"
                );
                Routes::Unchecked
            }
        };
        // A bad schedule fails now, not at 3 a.m.
        for schedule in &backend.schedules {
            routes
                .prepare(&backend.base_url, &schedule.path, schedule.payload.clone())
                .map_err(|failure| ConfigError {
                    origin: config.origin.clone(),
                    key: format!("{}.payload", schedule.key),
                    message: failure.reason,
                })?;
        }
        runtimes.push(BackendRuntime {
            backend: backend.clone(),
            routes,
        });
    }
    Ok((config, runtimes))
}

/// What the start-up inspection found for one table.
pub enum TableState {
    Ready,
    /// Missing; the runner creates it from the shipped schema.
    Missing,
}

/// Inspects `table`: a table that lacks fields the runner writes is refused with the exact
/// statements to apply.
pub async fn inspect_table(store: &Store, table: &str) -> Result<TableState, AppError> {
    let info = store.table_info(table).await?;
    if !info.exists {
        return Ok(TableState::Missing);
    }
    // `due_at` and `priority` must be defined even on a schemaless table: their DEFAULTs are what
    // put a row written by a Sp00ky client into the claim query.
    let mut missing: Vec<&str> = Vec::new();
    for field in store::RUNNER_FIELDS.iter().chain(&store::QUEUE_FIELDS) {
        let needed = info.schemafull || store::QUEUE_FIELDS.contains(field);
        if needed && !info.fields.contains_key(*field) && !missing.contains(field) {
            missing.push(field);
        }
    }
    if !missing.is_empty() {
        return Err(AppError::Schema(format!(
            "table `{table}` lacks fields the runner writes: {}. Apply these definitions (or run `sp00ky-job-runner schema --table {table} --apply`):\n\n{}\n",
            missing.join(", "),
            store::definitions_for(table, &missing)
        )));
    }
    if info.indexes.is_empty() {
        tracing::warn!(%table, "no index on the job table: the claim query scans it; apply `sp00ky-job-runner schema --table {table}`");
    }
    Ok(TableState::Ready)
}

async fn connect(
    global: &GlobalArgs,
    config: Option<&Config>,
    env: EnvLookup<'_>,
) -> Result<Store, AppError> {
    let file = config.map(|c| c.database.clone()).unwrap_or_default();
    let settings = db_settings(global, &file, env);
    let store = Store::connect(settings).await?;
    store.check_database().await?;
    Ok(store)
}

/// Runs the parsed command line. Logging must already be set up.
pub async fn main(cli: Cli, env: EnvLookup<'_>) -> Result<(), AppError> {
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Run(args) => run(&cli.global, args, env, shutdown_signal()).await,
        Command::Dev(args) => crate::dev::dev(&cli.global, args, env).await,
        Command::Check => check(&cli.global, env).await,
        Command::Schema(args) => schema(&cli.global, args, env).await,
        Command::Enqueue(args) => enqueue(&cli.global, args, env).await,
        Command::Jobs(command) => jobs(&cli.global, command, env).await,
        Command::Health { listen } => health(listen, env).await,
        Command::Bench(args) => {
            let settings = db_settings(&cli.global, &config::FileDatabase::default(), env);
            crate::bench::bench(args, settings.username, settings.password)
                .await
                .map_err(|e| AppError::Usage(format!("bench: {e}")))
        }
    }
}

/// Makes every job table ready: creates missing ones from the shipped schema, refuses ones that
/// lack the runner's fields, and gives rows written before the schema a due time.
pub async fn prepare_tables(store: &Store, backends: &[BackendRuntime]) -> Result<(), AppError> {
    for runtime in backends {
        let table = &runtime.backend.table;
        if let TableState::Missing = inspect_table(store, table).await? {
            tracing::info!(%table, "job table does not exist: defining it from schema/job.surql");
            store.apply_schema(table).await?;
        }
        let backfilled = store.backfill_due(table).await?;
        if backfilled > 0 {
            tracing::info!(%table, rows = backfilled, "gave rows written before the runner's schema a due time");
        }
    }
    Ok(())
}

/// `run`: serve every configured backend until `shutdown` completes.
pub async fn run(
    global: &GlobalArgs,
    args: RunArgs,
    env: EnvLookup<'_>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let retry = RetryPolicy {
        base: args.retry_base,
        cap: args.retry_cap.max(args.retry_base),
    };
    let (config, backends) = load_backends(global, retry, env)?;
    if backends.is_empty() {
        return Err(AppError::Config(ConfigError {
            origin: config.origin.clone(),
            key: "backends".into(),
            message:
                "no backend with `method: {type: outbox}` is configured: there is nothing to run"
                    .into(),
        }));
    }
    let store = connect(global, Some(&config), env).await?;
    prepare_tables(&store, &backends).await?;
    let options = RunnerOptions {
        concurrency: args.concurrency.max(1),
        poll_interval: args.poll_interval,
        lease: args.lease.max(std::time::Duration::from_secs(1)),
        shutdown_grace: args.shutdown_grace,
        ..RunnerOptions::default()
    };
    let admin_token = admin_token(&args, env)?;
    crate::serve::check_exposure(&args.listen, admin_token.as_ref()).map_err(|message| {
        AppError::Config(ConfigError {
            origin: config::Origin::Env("SPKY_RUNNER_LISTEN"),
            key: "--listen".into(),
            message,
        })
    })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: args.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AppError::Listen {
        addr: args.listen,
        source,
    })?;

    let planned: Vec<crate::scheduler::Planned> = backends
        .iter()
        .flat_map(|b| {
            b.backend
                .schedules
                .iter()
                .map(|schedule| crate::scheduler::Planned {
                    table: b.backend.table.clone(),
                    schedule: schedule.clone(),
                })
        })
        .collect();
    let runner = Runner::new(store.clone(), backends, options);
    let status = runner.status();
    let ops = OpsState {
        store: store.clone(),
        status: status.clone(),
        admin: Admin::new(store.clone(), runner.backends()),
        admin_token: admin_token.map(Arc::new),
    };
    if ops.admin_token.is_none() {
        tracing::info!("admin API off (no SPKY_RUNNER_ADMIN_TOKEN or --admin-token-file)");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = tokio::spawn(crate::serve::serve(listener, ops, stopped(stop_rx.clone())));
    tracing::info!(listen = %local, "health, metrics and admin API listening");
    tokio::spawn(notify_systemd(status.clone(), stopped(stop_rx.clone())));
    if !planned.is_empty() {
        tokio::spawn(crate::scheduler::run(
            store.clone(),
            planned,
            stopped(stop_rx.clone()),
        ));
    }
    let running = runner.run(stopped(stop_rx));
    tokio::pin!(running);
    tokio::select! {
        () = shutdown => {
            let _ = stop_tx.send(true);
            running.await;
        }
        () = &mut running => {}
    }
    let _ = server.await;
    Ok(())
}

/// The admin token from `--admin-token-file` or `SPKY_RUNNER_ADMIN_TOKEN`.
fn admin_token(args: &RunArgs, env: EnvLookup<'_>) -> Result<Option<SecretString>, AppError> {
    let token = match &args.admin_token_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            AppError::Config(ConfigError {
                origin: config::Origin::File(path.clone()),
                key: "--admin-token-file".into(),
                message: format!("cannot read the admin token: {e}"),
            })
        })?),
        None => env("SPKY_RUNNER_ADMIN_TOKEN"),
    };
    Ok(token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(SecretString::from))
}

/// Tells systemd (when it started us with `Type=notify`) READY once the live queries are armed,
/// WATCHDOG while the main loop goes round, and STOPPING at shutdown. Without NOTIFY_SOCKET every
/// call is a no-op.
async fn notify_systemd(
    status: Arc<RunnerStatus>,
    stopping: impl std::future::Future<Output = ()>,
) {
    use sd_notify::NotifyState;
    let armed = async {
        while !status.live_queries_armed() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    // Live queries may be unavailable (an http:// endpoint): then polling alone serves.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), armed).await;
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled();
    tokio::pin!(stopping);
    loop {
        let every = watchdog.map_or(std::time::Duration::from_secs(3600), |w| w / 3);
        tokio::select! {
            () = &mut stopping => break,
            () = tokio::time::sleep(every) => {
                if let Some(limit) = watchdog
                    && status.loop_alive(limit / 2)
                {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
            }
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// `check`: print what the runner would serve; any problem is an error.
pub async fn check(global: &GlobalArgs, env: EnvLookup<'_>) -> Result<(), AppError> {
    let (config, backends) = load_backends(global, RetryPolicy::default(), env)?;
    let store = connect(global, Some(&config), env).await?;
    let settings = store.settings();
    println!("config:    {}", config.origin);
    println!(
        "database:  {} (namespace {}, database {})",
        settings.endpoint, settings.namespace, settings.database
    );
    if backends.is_empty() {
        println!("backends:  none with `method: {{type: outbox}}`");
    }
    for runtime in &backends {
        let backend = &runtime.backend;
        let state = match inspect_table(&store, &backend.table).await? {
            TableState::Ready => "ready",
            TableState::Missing => "missing (run creates it)",
        };
        println!("backend:   {}", backend.name);
        println!("  table:   {} ({state})", backend.table);
        println!("  baseUrl: {}", backend.base_url);
        println!(
            "  auth:    {}",
            if backend.token.is_some() {
                "bearer token (hidden)"
            } else {
                "none"
            }
        );
        println!(
            "  timeout: {} s{}",
            backend.timeout.as_secs(),
            if backend.timeout_overridable {
                " (rows may override)"
            } else {
                ""
            }
        );
        println!(
            "  retry:   base {:?}, cap {:?}",
            backend.retry.base, backend.retry.cap
        );
        for route in runtime.routes.describe() {
            println!("  route:   {route}");
        }
        for schedule in &backend.schedules {
            let next: Vec<String> = schedule
                .upcoming(chrono::Utc::now(), 3)
                .iter()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .collect();
            let next = if next.is_empty() {
                "at each runner start".to_string()
            } else {
                next.join(", ")
            };
            println!(
                "  schedule: {} `{}` {} -> next: {next}",
                schedule.name, schedule.expression, schedule.path
            );
        }
    }
    Ok(())
}

/// `schema`: print, or apply idempotently.
pub async fn schema(
    global: &GlobalArgs,
    args: SchemaArgs,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let config =
        if args.table.is_none() && (global.config.exists() || env("SPKY_JOB_CONFIG").is_some()) {
            Some(config::load(&global.config, env, RetryPolicy::default())?)
        } else {
            None
        };
    let tables: Vec<String> = match (&args.table, &config) {
        (Some(table), _) => {
            if !config::is_identifier(table) {
                return Err(AppError::Usage(format!(
                    "--table {table:?}: must be letters, digits and underscores"
                )));
            }
            vec![table.clone()]
        }
        (None, Some(config)) if !config.backends.is_empty() => {
            config.backends.iter().map(|b| b.table.clone()).collect()
        }
        _ => vec!["job".into()],
    };
    if !args.apply {
        for table in &tables {
            println!(
                "{};",
                store::schema_for(table).trim_end().trim_end_matches(';')
            );
        }
        return Ok(());
    }
    let file = config
        .as_ref()
        .map(|c| c.database.clone())
        .unwrap_or_default();
    let store = Store::connect(db_settings(global, &file, env)).await?;
    store.define_namespace_and_database().await?;
    for table in &tables {
        store.apply_schema(table).await?;
        println!("applied schema to table {table}");
    }
    Ok(())
}

/// `enqueue`: create a job like `db.run`: the route must exist and the payload must validate.
pub async fn enqueue(
    global: &GlobalArgs,
    args: EnqueueArgs,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| AppError::Usage(format!("--payload is not JSON: {e}")))?;
    let admin = admin_for(global, env).await?;
    let id = admin
        .enqueue(EnqueueRequest {
            backend: args.backend,
            path: args.path,
            payload,
            max_retries: Some(args.max_retries),
            retry_strategy: Some(args.retry_strategy),
            assigned_to: args.assigned_to,
            timeout: args.timeout,
            delay_ms: args.delay.map(|d| d.as_millis() as u64),
            run_at: args.run_at,
            priority: args.priority,
        })
        .await?;
    println!("{}", id.to_sql());
    Ok(())
}

/// `health`: GET /healthz of a running runner. A wildcard listen address is asked on loopback.
pub async fn health(
    listen: Option<std::net::SocketAddr>,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let mut addr = match listen {
        Some(addr) => addr,
        None => env("SPKY_RUNNER_LISTEN")
            .unwrap_or_else(|| crate::serve::DEFAULT_LISTEN.into())
            .parse()
            .map_err(|e| AppError::Usage(format!("SPKY_RUNNER_LISTEN is not an address: {e}")))?,
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .expect("a plain client builds");
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(AppError::Unhealthy(format!(
            "{url} answered {}",
            response.status()
        ))),
        Err(e) => Err(AppError::Unhealthy(format!("{url}: {e}"))),
    }
}

/// `jobs ...`: the admin API's verbs, straight against the database.
pub async fn jobs(
    global: &GlobalArgs,
    command: JobsCommand,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let admin = admin_for(global, env).await?;
    let value = match command {
        JobsCommand::List {
            table,
            status,
            limit,
            cursor,
        } => {
            admin
                .list(ListQuery {
                    table,
                    status,
                    limit: Some(limit),
                    cursor,
                })
                .await?
        }
        JobsCommand::Show { id } => admin.show(&id).await?,
        JobsCommand::Retry { id } => admin.retry(&id).await?,
        JobsCommand::Cancel { id } => admin.cancel(&id).await?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    );
    Ok(())
}

/// Loads the backends, connects, and makes sure their tables exist.
async fn admin_for(global: &GlobalArgs, env: EnvLookup<'_>) -> Result<Admin, AppError> {
    let (config, backends) = load_backends(global, RetryPolicy::default(), env)?;
    let store = connect(global, Some(&config), env).await?;
    prepare_tables(&store, &backends).await?;
    Ok(Admin::new(
        store,
        Arc::new(backends.into_iter().map(Arc::new).collect()),
    ))
}

/// Completes on the first SIGINT or SIGTERM; a second one ends the process at once (leases then
/// rescue whatever was in flight).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown signal received; send another to stop at once");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
}
