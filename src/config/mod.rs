//! Before a job's life begins: **load the configuration** that says which backends exist, which table
//! each one drains, where its calls may go and with which token.
//!
//! Three shapes load (see `CONTRACT.md`): the documented `backends:` map of `sp00ky.yml`, the
//! current `apps:` map (only `type: backend` entries count), and the `SPKY_JOB_CONFIG` JSON array
//! that `spky dev` hands its sidecar. All three end as the same [`Backend`] values, so nothing past
//! this module knows which shape a backend came from.
//!
//! The file is read as a plain JSON tree and walked by hand rather than deserialised into structs:
//! the file belongs to other tools too (unknown keys must be ignored), and every error must name
//! the file and the exact key, which a hand walk knows at each step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::job::retry::RetryPolicy;
use crate::schedule::Schedule;

mod dev;
mod env;
mod file;
pub mod limits;
mod schedules;
mod walk;
pub mod yaml;

pub use env::{from_env_json, interpolate, read_dotenv};
pub use file::from_yaml;

/// Where a setting came from, so an error can point a person at the right file or variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// A configuration mistake: always names where (file or variable), which key, and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{origin}: {key}: {message}")]
pub struct ConfigError {
    pub origin: Origin,
    /// Dotted key path (`apps.api.baseUrl`), or `line L, column C` for a syntax error.
    pub key: String,
    pub message: String,
}

/// One backend the runner serves: the outbox table it drains and the HTTP service it calls.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The name under `backends:`/`apps:`; used in logs, metrics and `enqueue`.
    pub name: String,
    /// The job table; validated as a plain identifier so the store can name it in SurrealQL.
    pub table: crate::store::TableName,
    /// Every request of this backend goes under this URL and nowhere else.
    pub base_url: Url,
    /// The bearer token; a `SecretString` so `Debug` and logs can never print it.
    pub token: Option<SecretString>,
    /// The OpenAPI file, already resolved against the config file's folder. `None` for
    /// `SPKY_JOB_CONFIG`, whose entries carry no spec.
    pub spec: Option<PathBuf>,
    /// `deploy.timeout`: the per-call timeout.
    pub timeout: Duration,
    /// `deploy.timeoutOverridable`: whether a row's own `timeout` replaces [`Backend::timeout`].
    pub timeout_overridable: bool,
    /// Base and cap of retry delays; per backend because backends recover at different speeds.
    pub retry: RetryPolicy,
    /// What one row of this backend may cost (`limits:`).
    pub row_limits: limits::RowLimits,
    /// How `sp00ky-job-runner dev` starts this backend locally (the `dev` key).
    pub dev: Option<DevSpec>,
    /// Recurring jobs (`schedules:`, a key of this runner's own).
    pub schedules: Vec<Schedule>,
    /// How long finished rows are kept (`retention:`); off unless set.
    pub retention: Retention,
    /// Slots this backend may hold within one runner (`concurrency:`), so a slow backend cannot
    /// take every slot; `None`: any of the runner's.
    pub concurrency: Option<usize>,
    /// Calls per window to this backend across every runner on the database (`rateLimit:`).
    pub rate_limit: Option<RateLimit>,
}

/// `rateLimit: 10/s` (also `/m`, `/h`; a bare number is per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub calls: u32,
    pub per: Duration,
}

impl RateLimit {
    /// Reads `N/s`, `N/m`, `N/h` or `N`.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown unit {other:?}; write N/s, N/m or N/h")),
        };
        match count.trim().parse::<u32>() {
            Ok(calls @ 1..=1_000_000) => Ok(RateLimit { calls, per }),
            _ => Err(format!(
                "{text:?} is not a rate like 10/s (1 to 1000000 calls per second, minute or hour)"
            )),
        }
    }
}

/// `retention: {success: 7d, failed: 30d}`: finished rows older than this are deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub success: Option<Duration>,
    pub failed: Option<Duration>,
}

impl Retention {
    pub fn is_on(&self) -> bool {
        self.success.is_some() || self.failed.is_some()
    }
}

/// The `dev` key of a backend: a command that runs it during development.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSpec {
    pub command: DevCommand,
    /// Where it runs: `workdir` resolved against the config file's folder (the project root).
    pub workdir: PathBuf,
    /// Where its environment comes from, in order (a later source wins): the typed form's
    /// `env-file`, then the app's `env:`.
    pub env: Vec<EnvSource>,
    /// Its output prefix, after the key it came from (`app.api.dev`, `backend.api.dev`).
    pub label: String,
}

/// One source of a dev command's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A dotenv file (`KEY=VALUE`, quotes, escapes, `export`, comments: as Node and uv read them).
    File(PathBuf),
    /// Variables written in sp00ky.yml.
    Vars(Vec<(String, String)>),
    /// Names read from this process's environment (`{vault: [NAMES]}` with no vault here).
    Process(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevCommand {
    /// A string: run with `sh -c`.
    Shell(String),
    /// `npm run <script>`
    Npm { script: String },
    /// `uv run <script>`
    Uv { script: String },
    /// Build `file` and run it with `port` published and `env` set.
    Docker {
        file: PathBuf,
        port: Option<u16>,
        env: Vec<(String, String)>,
    },
}

/// The `surrealdb:` block of sp00ky.yml: the lowest-precedence source of database settings.
#[derive(Debug, Clone, Default)]
pub struct FileDatabase {
    pub namespace: Option<String>,
    pub database: Option<String>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub endpoint: Option<String>,
}

/// Everything the configuration source says.
#[derive(Debug, Clone)]
pub struct Config {
    pub origin: Origin,
    pub backends: Vec<Backend>,
    pub database: FileDatabase,
}

/// Reads the environment; a trait object so tests can hand in a map instead of mutating the
/// process environment (which is shared by every test thread).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads the backends from `SPKY_JOB_CONFIG` when it is set, else from the file at `path`.
pub fn load(
    path: &Path,
    env: EnvLookup<'_>,
    default_retry: RetryPolicy,
) -> Result<Config, ConfigError> {
    if let Some(json) = env("SPKY_JOB_CONFIG").filter(|s| !s.trim().is_empty()) {
        return from_env_json(&json, env, default_retry);
    }
    let origin = Origin::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        key: "(file)".into(),
        message: format!("cannot read the configuration file: {e}"),
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    from_yaml(&text, origin, &base_dir, env, default_retry)
}

pub(crate) fn check_tables_unique(config: &Config) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for backend in &config.backends {
        if let Some(first) = seen.insert(&backend.table, &backend.name) {
            return Err(ConfigError {
                origin: config.origin.clone(),
                key: backend.name.clone(),
                message: format!(
                    "table `{}` is already drained by backend `{first}`; two backends cannot share one job table",
                    backend.table
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any `rateLimit:` text is read or refused, never a panic, and what is read is in range
        /// with one of the three windows.
        #[test]
        fn any_rate_text_is_read_within_range_or_refused(text in "(?s).{0,24}") {
            if let Ok(rate) = RateLimit::parse(&text) {
                prop_assert!((1..=1_000_000).contains(&rate.calls));
                prop_assert!([1, 60, 3600].contains(&rate.per.as_secs()));
            }
        }

        #[test]
        fn every_count_in_range_reads_back(calls in 1u32..=1_000_000, unit in "s|m|h") {
            let rate = RateLimit::parse(&format!("{calls}/{unit}")).unwrap();
            prop_assert_eq!(rate.calls, calls);
        }
    }
}
