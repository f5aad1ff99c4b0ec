//! Flags, environment and config file, merged once.
//!
//! Precedence for database settings: flag, then environment (`SPKY_DB_*`), then the `surrealdb:`
//! block of sp00ky.yml, then defaults (an embedded SurrealKV store under `./.sp00ky/`, so a fresh
//! machine needs no server).

use std::time::Duration;

use secrecy::SecretString;

use super::args::GlobalArgs;
use super::error::AppError;
use crate::config::{self, Config, ConfigError, EnvLookup};
use crate::job::retry::RetryPolicy;
use crate::job::validate::Routes;
use crate::runner::BackendRuntime;
use crate::store::{DbSettings, Store, StoreError};

/// Where the embedded default store lives.
pub const DEFAULT_ENDPOINT: &str = "surrealkv://.sp00ky/db";

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

/// How long a one-shot command (`check`, `schema`, `enqueue`, `jobs`) waits for a database server
/// that does not answer yet; `run` waits forever. `--connect-timeout` sets both.
pub const ONE_SHOT_WAIT: Duration = crate::config::limits::CONNECT_TIMEOUT.default;

/// Connects with the merged settings and checks the namespace and database exist. A server that
/// does not answer yet (started after the runner, as `spky dev`, Compose and systemd may do) is
/// waited for with capped exponential backoff, one log line per change of what is wrong, for
/// `--connect-timeout` or else `default_wait` (`None`: forever). An embedded store is not waited
/// for: nothing else would start it.
pub async fn connect(
    global: &GlobalArgs,
    config: Option<&Config>,
    env: EnvLookup<'_>,
    default_wait: Option<Duration>,
) -> Result<Store, AppError> {
    let file = config.map(|c| c.database.clone()).unwrap_or_default();
    let settings = db_settings(global, &file, env);
    let wait = global.connect_timeout.map(|t| t.0).or(default_wait);
    wait_for_database(settings, wait, true).await
}

/// [`connect`] from settings; `check` also requires the namespace and database to exist
/// (`schema --apply` defines them instead).
pub async fn wait_for_database(
    settings: DbSettings,
    wait: Option<Duration>,
    check: bool,
) -> Result<Store, AppError> {
    if settings.is_embedded() {
        let store = Store::connect(settings).await?;
        if check {
            store.check_database().await?;
        }
        return Ok(store);
    }
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(200);
    let mut waiting_for: Option<String> = None;
    loop {
        let attempt = async {
            let store = Store::connect(settings.clone()).await?;
            if check {
                store.check_database().await?;
            }
            Ok::<Store, StoreError>(store)
        };
        let error = match attempt.await {
            Ok(store) => {
                if waiting_for.is_some() {
                    tracing::info!(endpoint = %settings.endpoint, "database is up");
                }
                return Ok(store);
            }
            Err(error) => error,
        };
        let what = error.to_string();
        if waiting_for.as_deref() != Some(what.as_str()) {
            tracing::warn!(endpoint = %settings.endpoint, error = %what, "waiting for the database");
        }
        if let Some(limit) = wait
            && started.elapsed() + pause > limit
        {
            return Err(AppError::Unreachable {
                endpoint: settings.endpoint.clone(),
                waited: humantime::format_duration(limit).to_string(),
                source: error,
            });
        }
        waiting_for = Some(what);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
