//! `run`: prepare the tables, then serve every configured backend (the runner, the scheduler,
//! the operations listener and systemd notifications) until a shutdown signal.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::args::{GlobalArgs, RunArgs};
use super::error::AppError;
use super::settings::{connect, load_backends};
use crate::config::{self, Backend, ConfigError, EnvLookup};
use crate::job::retry::RetryPolicy;
use crate::ops::admin::Admin;
use crate::ops::listener::OpsState;
use crate::runner::{BackendRuntime, Runner, RunnerOptions, RunnerStatus};
use crate::schedule::scheduler::{self, Planned};
use crate::store::{self, Store, TableName, TableState};

/// Whether the table of `backend` exists, after refusing one that lacks fields the runner
/// writes, with the exact statements to apply. A backend with schedules also writes `schedule`.
pub async fn table_exists(store: &Store, backend: &Backend) -> Result<bool, AppError> {
    let table = &backend.table;
    match store
        .inspect_table(table, !backend.schedules.is_empty())
        .await?
    {
        TableState::Missing => Ok(false),
        TableState::Lacks(missing) => Err(AppError::Schema(format!(
            "table `{table}` lacks fields the runner writes: {}. Apply these definitions (or run `sp00ky-job-runner schema --table {table} --apply`):\n\n{}\n",
            missing.join(", "),
            store::definitions_for(table, &missing)
        ))),
        TableState::Ready { indexed } => {
            if !indexed {
                tracing::warn!(%table, "no index on the job table: the claim query scans it; apply `sp00ky-job-runner schema --table {table}`");
            }
            Ok(true)
        }
    }
}

/// Makes every job table ready: creates missing ones from the shipped schema, refuses ones that
/// lack the runner's fields, and gives rows written before the schema a due time.
pub async fn prepare_tables(store: &Store, backends: &[BackendRuntime]) -> Result<(), AppError> {
    for runtime in backends {
        let table = &runtime.backend.table;
        if !table_exists(store, &runtime.backend).await? {
            tracing::info!(%table, "job table does not exist: defining it from schema/job.surql");
            store.apply_schema(table).await?;
        }
        store
            .set_pending_quota(table, runtime.backend.row_limits.pending_per_user)
            .await?;
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
    run_with_token(global, args, env, None, shutdown).await
}

/// `run`, with the admin token `dev` made for this run (kept in memory, never a flag); `None`
/// reads `--admin-token-file` or `SPKY_RUNNER_ADMIN_TOKEN`.
pub async fn run_with_token(
    global: &GlobalArgs,
    args: RunArgs,
    env: EnvLookup<'_>,
    made_token: Option<SecretString>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let retry = RetryPolicy {
        base: args.retry_base.0,
        cap: args.retry_cap.0.max(args.retry_base.0),
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
    let admin_token = match made_token {
        Some(token) => Some(token),
        None => admin_token(&args, env)?,
    };
    let listener = bind_listener(&args, admin_token.as_ref()).await?;
    let listen_error = |source| AppError::Listen {
        addr: args.listen,
        source,
    };
    let (starting, listener) = serve_while_starting(listener).map_err(listen_error)?;
    tokio::pin!(shutdown);
    let ready = async {
        let store = connect(global, Some(&config), env, None).await?;
        prepare_tables(&store, &backends).await?;
        Ok::<Store, AppError>(store)
    };
    let store = tokio::select! {
        store = ready => store?,
        // Stopped while waiting for the database: nothing runs yet, so there is nothing to drain.
        () = &mut shutdown => {
            starting.stop().await;
            return Ok(());
        }
    };
    starting.stop().await;
    serve(store, backends, &args, listener, admin_token, shutdown).await
}

/// Runs the runner, the scheduler, the operations listener and systemd notifications over a
/// ready database until `shutdown` completes, then drains.
async fn serve(
    store: Store,
    backends: Vec<BackendRuntime>,
    args: &RunArgs,
    listener: tokio::net::TcpListener,
    admin_token: Option<SecretString>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), AppError> {
    let options = RunnerOptions {
        concurrency: args.concurrency,
        claim_ahead: args.claim_ahead,
        poll_interval: args.poll_interval.0,
        lease: args.lease.0,
        shutdown_grace: args.shutdown_grace.0,
        ..RunnerOptions::default()
    };
    let planned = planned_schedules(&backends);
    let runner = Runner::new(store.clone(), backends, options);
    let status = runner.status();
    // One signal stops everything; each task ends what it holds on its way out.
    let stop = CancellationToken::new();
    let mut server = spawn_listener(listener, &store, &runner, args, admin_token, &stop);
    let mut side = JoinSet::new();
    side.spawn(notify_systemd(status.clone(), stop.clone()));
    let tables: Vec<TableName> = backends_tables(&runner);
    let runner_id = status.runner_id.clone();
    // `--once` runs what is due when it starts; a schedule's later ticks are not that.
    if !args.once {
        spawn_periodic(&mut side, &store, &runner, planned, &stop);
    }
    let due_by = chrono::Utc::now();
    let running = runner.run_until(stop.clone());
    tokio::pin!(running);
    let drained = async {
        match args.once {
            true => drained(&store, &status, &tables, due_by).await,
            false => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.as_mut() => {
            stop.cancel();
            running.await;
        }
        () = drained => {
            tracing::info!("--once: every job due at the start was processed");
            stop.cancel();
            running.await;
        }
        () = &mut running => {}
    }
    stop.cancel();
    join_side_tasks(side).await;
    // Live feeds end on the stop signal; anything else still open gets a few seconds.
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    match args.once {
        true => left_processing(&store, &tables, due_by, &runner_id).await,
        false => Ok(()),
    }
}

/// Serves the operations listener (health, metrics, admin API, dashboard) until `stop`.
fn spawn_listener(
    listener: tokio::net::TcpListener,
    store: &Store,
    runner: &Runner,
    args: &RunArgs,
    admin_token: Option<SecretString>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    // The dashboard counts every row of every table: at most every 2 s, however short the poll.
    let refresh = args.poll_interval.0.max(std::time::Duration::from_secs(2));
    let ops = OpsState::new(
        store.clone(),
        runner.status(),
        Admin::new(store.clone(), runner.backends()),
        admin_token,
        refresh,
    )
    .with_stop(stop.clone());
    let ops = match listener.local_addr() {
        Ok(addr) => ops.bound_to(addr),
        Err(_) => ops,
    };
    if ops.admin_token.is_none() {
        tracing::info!("admin API off (no SPKY_RUNNER_ADMIN_TOKEN or --admin-token-file)");
    }
    tokio::spawn(crate::ops::listener::serve(
        listener,
        ops,
        stop.clone().cancelled_owned(),
    ))
}

/// Waits for the scheduler, retention and systemd notifications to see the stop; one that is
/// stuck on an unreachable database is aborted after 10 s (what it was doing is safe to cut:
/// each writes in single transactions).
async fn join_side_tasks(mut side: JoinSet<()>) {
    let joined = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(joined) = side.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                tracing::error!(error = %e, "a side task (scheduler, retention or systemd notify) panicked");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!("side tasks did not stop within 10 s; cancelling them");
        side.abort_all();
    }
}

/// The scheduler and retention, each when some backend needs it, until `stop`.
fn spawn_periodic(
    side: &mut JoinSet<()>,
    store: &Store,
    runner: &Runner,
    planned: Vec<Planned>,
    stop: &CancellationToken,
) {
    if !planned.is_empty() {
        side.spawn(scheduler::run(
            store.clone(),
            planned,
            stop.clone().cancelled_owned(),
        ));
    }
    let kept = kept_backends(runner);
    if !kept.is_empty() {
        let status = runner.status();
        side.spawn(crate::runner::retention::run(
            store.clone(),
            kept,
            status.runner_id.clone(),
            status.metrics.clone(),
            crate::config::limits::RETENTION_EVERY,
            stop.clone().cancelled_owned(),
        ));
    }
}

/// The backends with a `retention:` setting.
fn kept_backends(runner: &Runner) -> Vec<crate::runner::retention::Kept> {
    let backends = runner.backends();
    backends
        .iter()
        .filter(|b| b.backend.retention.is_on())
        .map(|b| crate::runner::retention::Kept {
            backend: b.backend.name.clone(),
            table: b.backend.table.clone(),
            retention: b.backend.retention,
        })
        .collect()
}

fn backends_tables(runner: &Runner) -> Vec<TableName> {
    let backends = runner.backends();
    backends.iter().map(|b| b.backend.table.clone()).collect()
}

/// The end of `--once`: an error when this runner left jobs `processing`.
async fn left_processing(
    store: &Store,
    tables: &[TableName],
    due_by: chrono::DateTime<chrono::Utc>,
    runner_id: &str,
) -> Result<(), AppError> {
    let mut held = 0;
    for table in tables {
        held += store.open_work(table, due_by, runner_id).await?.1;
    }
    if held > 0 {
        return Err(AppError::Unhealthy(format!(
            "--once: {held} jobs were left processing (their leases will run out and another runner takes them)"
        )));
    }
    Ok(())
}

/// Waits until no job of `tables` that was due at `due_by` is pending and this runner holds none.
/// Asks the database every 100 ms: a `--once` run is a batch, not a latency path.
async fn drained(
    store: &Store,
    status: &RunnerStatus,
    tables: &[TableName],
    due_by: chrono::DateTime<chrono::Utc>,
) {
    loop {
        let mut open = status.metrics.in_flight.get() as u64;
        for table in tables {
            match store.open_work(table, due_by, &status.runner_id).await {
                Ok((due, held)) => open += due + held,
                Err(e) => {
                    tracing::warn!(%table, error = %e, "--once: could not count the work left");
                    open += 1;
                }
            }
        }
        if open == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Binds the operations listener, refusing a non-loopback address without an admin token.
async fn bind_listener(
    args: &RunArgs,
    admin_token: Option<&SecretString>,
) -> Result<tokio::net::TcpListener, AppError> {
    crate::ops::listener::check_exposure(&args.listen, admin_token).map_err(|message| {
        AppError::Config(ConfigError {
            origin: config::Origin::Env("SPKY_RUNNER_LISTEN"),
            key: "--listen".into(),
            message,
        })
    })?;
    let listen_error = |source| AppError::Listen {
        addr: args.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    tracing::info!(listen = %local, "health, metrics and admin API listening");
    if admin_token.is_some() {
        tracing::info!(url = %format!("http://{local}/"), "dashboard");
    }
    Ok(listener)
}

/// The listener's answers while the runner waits for its database and prepares its tables:
/// alive, not ready. Its task serves a twin of the listener's socket, so the full router can
/// take over the same socket afterwards.
struct Starting {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Starting {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

fn serve_while_starting(
    listener: tokio::net::TcpListener,
) -> std::io::Result<(Starting, tokio::net::TcpListener)> {
    let socket = listener.into_std()?;
    let twin = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
    let listener = tokio::net::TcpListener::from_std(socket)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::ops::listener::serve_router(
        twin,
        crate::ops::listener::starting_router(),
        async move {
            let _ = stopped.await;
        },
    ));
    Ok((Starting { stop, task }, listener))
}

/// Every backend's schedules, with the table their rows go to.
fn planned_schedules(backends: &[BackendRuntime]) -> Vec<Planned> {
    backends
        .iter()
        .flat_map(|b| {
            b.backend.schedules.iter().map(|schedule| Planned {
                table: b.backend.table.clone(),
                schedule: schedule.clone(),
            })
        })
        .collect()
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
    let Some(token) = token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    if token.chars().count() < ADMIN_TOKEN_CHARS {
        let (origin, key) = match &args.admin_token_file {
            Some(path) => (config::Origin::File(path.clone()), "--admin-token-file"),
            None => (
                config::Origin::Env("SPKY_RUNNER_ADMIN_TOKEN"),
                "SPKY_RUNNER_ADMIN_TOKEN",
            ),
        };
        return Err(AppError::Config(ConfigError {
            origin,
            key: key.into(),
            message: format!(
                "the admin token must be at least {ADMIN_TOKEN_CHARS} characters (it has {}); `openssl rand -hex 32` makes one",
                token.chars().count()
            ),
        }));
    }
    Ok(Some(SecretString::from(token)))
}

/// The shortest admin token accepted: it guards every job of every table, and a short one is
/// guessed quickly.
const ADMIN_TOKEN_CHARS: usize = 16;

/// Tells systemd (when it started us with `Type=notify`) READY once the live queries are armed,
/// WATCHDOG while the main loop goes round, and STOPPING at shutdown. Without NOTIFY_SOCKET every
/// call is a no-op.
async fn notify_systemd(status: Arc<RunnerStatus>, stop: CancellationToken) {
    use sd_notify::NotifyState;
    let armed = async {
        while !status.live_queries_armed() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    // Live queries may be unavailable (an http:// endpoint): then polling alone serves.
    let armed = tokio::time::timeout(std::time::Duration::from_secs(5), armed);
    if stop.run_until_cancelled(armed).await.is_some() {
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }
    let watchdog = sd_notify::watchdog_enabled();
    loop {
        let every = watchdog.map_or(std::time::Duration::from_secs(3600), |w| w / 3);
        tokio::select! {
            () = stop.cancelled() => break,
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

/// Completes on the first SIGINT or SIGTERM; a second one ends the process at once (leases then
/// rescue whatever was in flight).
/// The handlers are installed when this is called, not when the future is first polled: a signal
/// that comes while the runner still waits for its database (or `dev` starts its children) is
/// caught, not fatal.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
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
}
