//! Step 1 of a job's life: **load the configuration** that says which backends exist, which table
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
use serde_json::Value;
use url::Url;

use crate::retry::{RetryPolicy, Strategy};
use crate::schedule::{Every, Missed, Schedule, is_schedule_name};

/// Default per-call timeout when a backend does not set `deploy.timeout` (CONTRACT.md).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The range CONTRACT.md allows for `deploy.timeout` and a row's `timeout`, in seconds.
pub const TIMEOUT_RANGE_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

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
    pub table: String,
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
    /// How `sp00ky-job-runner dev` starts this backend locally (the `dev` key).
    pub dev: Option<DevSpec>,
    /// Recurring jobs (`schedules:`, a key of this runner's own).
    pub schedules: Vec<Schedule>,
}

/// The `dev` key of a backend: a command that runs it during development.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSpec {
    pub command: DevCommand,
    /// Where it runs: `workdir` resolved against the config file's folder (the project root).
    pub workdir: PathBuf,
    /// A dotenv file whose variables the command gets.
    pub env_file: Option<PathBuf>,
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

/// Parses the text of a sp00ky.yml (YAML, so JSON too).
pub fn from_yaml(
    text: &str,
    origin: Origin,
    base_dir: &Path,
    env: EnvLookup<'_>,
    default_retry: RetryPolicy,
) -> Result<Config, ConfigError> {
    let root: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(|e| syntax_error(&origin, &e.to_string()))?
    };
    let walker = Walker {
        origin: &origin,
        env,
    };
    let root_obj = match &root {
        Value::Object(map) => map,
        other => {
            return Err(walker.err(
                "(top level)",
                format!("expected a mapping, got {}", describe(other)),
            ));
        }
    };

    let mut backends = Vec::new();
    // The documented shape and the current shape may even both be present; both count.
    if let Some(map) = root_obj.get("backends") {
        let map = walker.object(map, "backends")?;
        for (name, entry) in map {
            let key = format!("backends.{name}");
            if let Some(backend) = walker.backend(name, entry, &key, base_dir, default_retry)? {
                backends.push(backend);
            }
        }
    }
    if let Some(map) = root_obj.get("apps") {
        let map = walker.object(map, "apps")?;
        for (name, entry) in map {
            let key = format!("apps.{name}");
            let entry_obj = walker.object(entry, &key)?;
            let kind = walker.opt_string(entry_obj.get("type"), &format!("{key}.type"))?;
            if kind.as_deref() != Some("backend") {
                continue;
            }
            if let Some(backend) = walker.backend(name, entry, &key, base_dir, default_retry)? {
                backends.push(backend);
            }
        }
    }

    let mut database = FileDatabase::default();
    if let Some(block) = root_obj.get("surrealdb") {
        let block = walker.object(block, "surrealdb")?;
        database.namespace = walker.opt_string(block.get("namespace"), "surrealdb.namespace")?;
        database.database = walker.opt_string(block.get("database"), "surrealdb.database")?;
        database.username = walker.opt_string(block.get("username"), "surrealdb.username")?;
        database.password = walker
            .opt_string(block.get("password"), "surrealdb.password")?
            .map(SecretString::from);
        database.endpoint = walker.opt_string(block.get("endpoint"), "surrealdb.endpoint")?;
    }

    let config = Config {
        origin: origin.clone(),
        backends,
        database,
    };
    check_tables_unique(&config)?;
    Ok(config)
}

/// Parses `SPKY_JOB_CONFIG`: `[{name, table, base_url, auth_token, timeout, timeout_overridable}]`.
pub fn from_env_json(
    json: &str,
    env: EnvLookup<'_>,
    default_retry: RetryPolicy,
) -> Result<Config, ConfigError> {
    let origin = Origin::Env("SPKY_JOB_CONFIG");
    let walker = Walker {
        origin: &origin,
        env,
    };
    let root: Value = serde_json::from_str(json).map_err(|e| ConfigError {
        origin: origin.clone(),
        key: format!("line {}, column {}", e.line(), e.column()),
        message: format!("not valid JSON: {e}"),
    })?;
    let Value::Array(entries) = root else {
        return Err(walker.err(
            "(top level)",
            format!("expected a JSON array of backends, got {}", describe(&root)),
        ));
    };
    let mut backends = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("[{i}]");
        let obj = walker.object(entry, &key)?;
        let name = walker.required_string(obj.get("name"), &format!("{key}.name"))?;
        let table_key = format!("{key}.table");
        let table = walker.required_string(obj.get("table"), &table_key)?;
        let table = walker.table_name(&table, &table_key)?;
        let base_url = walker.base_url(obj.get("base_url"), &format!("{key}.base_url"))?;
        let token = walker
            .opt_string(obj.get("auth_token"), &format!("{key}.auth_token"))?
            .filter(|t| !t.is_empty())
            .map(SecretString::from);
        let timeout = walker.timeout(obj.get("timeout"), &format!("{key}.timeout"))?;
        let timeout_overridable = walker
            .opt_bool(
                obj.get("timeout_overridable"),
                &format!("{key}.timeout_overridable"),
            )?
            .unwrap_or(false);
        backends.push(Backend {
            name,
            table,
            base_url,
            token,
            spec: None,
            timeout,
            timeout_overridable,
            retry: default_retry,
            dev: None,
            schedules: Vec::new(),
        });
    }
    let config = Config {
        origin,
        backends,
        database: FileDatabase::default(),
    };
    check_tables_unique(&config)?;
    Ok(config)
}

fn check_tables_unique(config: &Config) -> Result<(), ConfigError> {
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

fn syntax_error(origin: &Origin, message: &str) -> ConfigError {
    // serde-saphyr reports "... at line L column C"; lift the position into the key slot so the
    // message reads `file: line L, column C: ...` like every other configuration error.
    let position = message
        .find("line ")
        .map(|at| {
            message[at..]
                .trim_end_matches(['.', ')'])
                .replace(" column", ", column")
        })
        .unwrap_or_else(|| "(syntax)".into());
    ConfigError {
        origin: origin.clone(),
        key: position,
        message: format!("YAML syntax error: {message}"),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Walks the JSON tree, carrying what every error needs to say.
struct Walker<'a> {
    origin: &'a Origin,
    env: EnvLookup<'a>,
}

impl Walker<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn object<'v>(
        &self,
        value: &'v Value,
        key: &str,
    ) -> Result<&'v serde_json::Map<String, Value>, ConfigError> {
        match value {
            Value::Object(map) => Ok(map),
            other => Err(self.err(key, format!("expected a mapping, got {}", describe(other)))),
        }
    }

    /// A string value with `${VAR}` / `${VAR:-default}` filled in. Numbers are accepted as their
    /// text, since YAML turns an unquoted `8080` into a number.
    fn opt_string(&self, value: Option<&Value>, key: &str) -> Result<Option<String>, ConfigError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => interpolate(s, self.env)
                .map(Some)
                .map_err(|message| self.err(key, message)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => {
                Err(self.err(key, format!("expected a string, got {}", describe(other))))
            }
        }
    }

    fn required_string(&self, value: Option<&Value>, key: &str) -> Result<String, ConfigError> {
        match self.opt_string(value, key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.err(key, "must not be empty")),
            None => Err(self.err(key, "is required")),
        }
    }

    fn opt_bool(&self, value: Option<&Value>, key: &str) -> Result<Option<bool>, ConfigError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match interpolate(s, self.env)
                .map_err(|m| self.err(key, m))?
                .as_str()
            {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                other => Err(self.err(key, format!("expected true or false, got {other:?}"))),
            },
            Some(other) => Err(self.err(
                key,
                format!("expected true or false, got {}", describe(other)),
            )),
        }
    }

    fn opt_u64(&self, value: Option<&Value>, key: &str) -> Result<Option<u64>, ConfigError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                self.err(
                    key,
                    format!("expected a whole number of 0 or more, got {n}"),
                )
            }),
            Some(Value::String(s)) => {
                let text = interpolate(s, self.env).map_err(|m| self.err(key, m))?;
                text.trim().parse().map(Some).map_err(|_| {
                    self.err(
                        key,
                        format!("expected a whole number of 0 or more, got {text:?}"),
                    )
                })
            }
            Some(other) => Err(self.err(
                key,
                format!("expected a whole number, got {}", describe(other)),
            )),
        }
    }

    fn timeout(&self, value: Option<&Value>, key: &str) -> Result<Duration, ConfigError> {
        match self.opt_u64(value, key)? {
            None => Ok(DEFAULT_TIMEOUT),
            Some(secs) if TIMEOUT_RANGE_SECS.contains(&secs) => Ok(Duration::from_secs(secs)),
            Some(secs) => Err(self.err(
                key,
                format!("timeout must be between 1 and 3600 seconds, got {secs}"),
            )),
        }
    }

    fn table_name(&self, table: &str, key: &str) -> Result<String, ConfigError> {
        if is_identifier(table) {
            Ok(table.to_string())
        } else {
            Err(self.err(
                key,
                format!("table name {table:?} must be letters, digits and underscores, not starting with a digit"),
            ))
        }
    }

    fn base_url(&self, value: Option<&Value>, key: &str) -> Result<Url, ConfigError> {
        let text = self.required_string(value, key)?;
        let url =
            Url::parse(&text).map_err(|e| self.err(key, format!("{text:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.err(
                key,
                format!(
                    "must be an http:// or https:// URL, got scheme {:?}",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.err(key, "has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(key, "must not carry a query or fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(key, "must not carry credentials; use `auth` instead"));
        }
        Ok(url)
    }

    /// One entry of `backends:` or an `apps:` entry with `type: backend`. `Ok(None)` when its
    /// `method.type` is not `outbox`: such a backend is not this runner's business.
    fn backend(
        &self,
        name: &str,
        entry: &Value,
        key: &str,
        base_dir: &Path,
        default_retry: RetryPolicy,
    ) -> Result<Option<Backend>, ConfigError> {
        let obj = self.object(entry, key)?;
        let method_key = format!("{key}.method");
        let Some(method) = obj.get("method") else {
            return Ok(None);
        };
        let method = self.object(method, &method_key)?;
        let method_type = self.opt_string(method.get("type"), &format!("{method_key}.type"))?;
        if method_type.as_deref() != Some("outbox") {
            return Ok(None);
        }
        if let Some(kind) = self.opt_string(obj.get("type"), &format!("{key}.type"))?
            && kind != "http"
            && kind != "backend"
        {
            return Err(self.err(
                &format!("{key}.type"),
                format!("only `http` backends can be called, got {kind:?}"),
            ));
        }
        let table_key = format!("{method_key}.table");
        let table = self.required_string(method.get("table"), &table_key)?;
        let table = self.table_name(&table, &table_key)?;
        let base_url = self.base_url(obj.get("baseUrl"), &format!("{key}.baseUrl"))?;
        let spec_key = format!("{key}.spec");
        let spec = self.required_string(obj.get("spec"), &spec_key)?;
        let spec = base_dir.join(spec);

        let token = match obj.get("auth") {
            None | Some(Value::Null) => None,
            Some(auth) => {
                let auth_key = format!("{key}.auth");
                let auth = self.object(auth, &auth_key)?;
                match self
                    .opt_string(auth.get("type"), &format!("{auth_key}.type"))?
                    .as_deref()
                {
                    Some("token") => Some(SecretString::from(
                        self.required_string(auth.get("token"), &format!("{auth_key}.token"))?,
                    )),
                    None | Some("none") => None,
                    Some(other) => {
                        return Err(self.err(
                            &format!("{auth_key}.type"),
                            format!("unknown auth type {other:?}; expected `token`"),
                        ));
                    }
                }
            }
        };

        let (mut timeout, mut timeout_overridable) = (DEFAULT_TIMEOUT, false);
        if let Some(deploy) = obj.get("deploy") {
            let deploy_key = format!("{key}.deploy");
            let deploy = self.object(deploy, &deploy_key)?;
            timeout = self.timeout(deploy.get("timeout"), &format!("{deploy_key}.timeout"))?;
            timeout_overridable = self
                .opt_bool(
                    deploy.get("timeoutOverridable"),
                    &format!("{deploy_key}.timeoutOverridable"),
                )?
                .unwrap_or(false);
        }

        let mut retry = default_retry;
        if let Some(block) = obj.get("retry") {
            let retry_key = format!("{key}.retry");
            let block = self.object(block, &retry_key)?;
            if let Some(ms) = self.opt_u64(block.get("baseMs"), &format!("{retry_key}.baseMs"))? {
                retry.base = Duration::from_millis(ms);
            }
            if let Some(ms) =
                self.opt_u64(block.get("maxDelayMs"), &format!("{retry_key}.maxDelayMs"))?
            {
                retry.cap = Duration::from_millis(ms);
            }
            if retry.base.is_zero() || retry.cap < retry.base {
                return Err(self.err(
                    &retry_key,
                    "baseMs must be above 0 and maxDelayMs at least baseMs",
                ));
            }
        }

        let dev = match obj.get("dev") {
            None | Some(Value::Null) => None,
            Some(dev) => Some(self.dev(dev, &format!("{key}.dev"), base_dir)?),
        };
        let schedules = match obj.get("schedules") {
            None | Some(Value::Null) => Vec::new(),
            Some(list) => self.schedules(list, &format!("{key}.schedules"))?,
        };

        Ok(Some(Backend {
            name: name.to_string(),
            table,
            base_url,
            token,
            spec: Some(spec),
            timeout,
            timeout_overridable,
            retry,
            dev,
            schedules,
        }))
    }

    /// The `schedules:` list of a backend.
    fn schedules(&self, value: &Value, key: &str) -> Result<Vec<Schedule>, ConfigError> {
        let Value::Array(items) = value else {
            return Err(self.err(key, "expected a list of schedules"));
        };
        let mut schedules: Vec<Schedule> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let key = format!("{key}[{index}]");
            let obj = self.object(item, &key)?;
            let name_key = format!("{key}.name");
            let name = self.required_string(obj.get("name"), &name_key)?;
            if !is_schedule_name(&name) {
                return Err(self.err(
                    &name_key,
                    format!("{name:?} may hold only letters, digits, `_` and `-`"),
                ));
            }
            if schedules.iter().any(|s| s.name == name) {
                return Err(self.err(
                    &name_key,
                    format!("a schedule named {name:?} already exists for this backend"),
                ));
            }
            let expression_key = format!("{key}.schedule");
            let expression = self.required_string(obj.get("schedule"), &expression_key)?;
            let timezone = self.opt_string(obj.get("timezone"), &format!("{key}.timezone"))?;
            let every = Every::parse(&expression, timezone.as_deref())
                .map_err(|m| self.err(&expression_key, m))?;
            let path = self.required_string(obj.get("path"), &format!("{key}.path"))?;
            let payload = match obj.get("payload") {
                None => Value::Object(Default::default()),
                Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
                    self.err(
                        &format!("{key}.payload"),
                        format!("a string payload must be JSON: {e}"),
                    )
                })?,
                Some(other) => other.clone(),
            };
            let max_retries =
                self.opt_u64(obj.get("max_retries"), &format!("{key}.max_retries"))?;
            let max_retries = u32::try_from(max_retries.unwrap_or(3))
                .map_err(|_| self.err(&format!("{key}.max_retries"), "is too large"))?;
            let strategy_key = format!("{key}.retry_strategy");
            let retry_strategy = match self.opt_string(obj.get("retry_strategy"), &strategy_key)? {
                None => Strategy::Linear,
                Some(text) => Strategy::parse(&text).ok_or_else(|| {
                    self.err(
                        &strategy_key,
                        format!("{text:?} is not linear or exponential"),
                    )
                })?,
            };
            let priority = match obj.get("priority") {
                None | Some(Value::Null) => 0,
                Some(value) => value.as_i64().ok_or_else(|| {
                    self.err(&format!("{key}.priority"), "expected a whole number")
                })?,
            };
            let missed_key = format!("{key}.missed");
            let missed = match self.opt_string(obj.get("missed"), &missed_key)?.as_deref() {
                None | Some("run-once") => Missed::RunOnce,
                Some("skip") => Missed::Skip,
                Some(other) => {
                    return Err(self.err(&missed_key, format!("{other:?} is not run-once or skip")));
                }
            };
            schedules.push(Schedule {
                name,
                expression,
                every,
                path,
                payload,
                max_retries,
                retry_strategy,
                priority,
                missed,
                key,
            });
        }
        Ok(schedules)
    }

    /// The `dev` key: a string, or `{type: npm|uv|docker, ...}` with optional `workdir` and
    /// `env-file`, both relative to the config file's folder.
    fn dev(&self, value: &Value, key: &str, base_dir: &Path) -> Result<DevSpec, ConfigError> {
        if let Value::String(command) = value {
            // Not interpolated: the shell expands variables itself, and `$$` must stay `$$`.
            if command.trim().is_empty() {
                return Err(self.err(key, "must not be empty"));
            }
            let command = command.clone();
            return Ok(DevSpec {
                command: DevCommand::Shell(command),
                workdir: base_dir.to_path_buf(),
                env_file: None,
            });
        }
        let obj = self.object(value, key)?;
        let workdir = match self.opt_string(obj.get("workdir"), &format!("{key}.workdir"))? {
            Some(dir) => base_dir.join(dir),
            None => base_dir.to_path_buf(),
        };
        let env_file = self
            .opt_string(obj.get("env-file"), &format!("{key}.env-file"))?
            .map(|file| base_dir.join(file));
        let kind_key = format!("{key}.type");
        let command = match self.required_string(obj.get("type"), &kind_key)?.as_str() {
            "npm" => DevCommand::Npm {
                script: self.required_string(obj.get("script"), &format!("{key}.script"))?,
            },
            "uv" => DevCommand::Uv {
                script: self.required_string(obj.get("script"), &format!("{key}.script"))?,
            },
            "docker" => {
                let port = match self.opt_u64(obj.get("port"), &format!("{key}.port"))? {
                    None => None,
                    Some(port) => Some(u16::try_from(port).map_err(|_| {
                        self.err(
                            &format!("{key}.port"),
                            format!("{port} is not a port number"),
                        )
                    })?),
                };
                let mut env = Vec::new();
                if let Some(vars) = obj.get("env") {
                    for (name, value) in self.object(vars, &format!("{key}.env"))? {
                        let value = self
                            .opt_string(Some(value), &format!("{key}.env.{name}"))?
                            .unwrap_or_default();
                        env.push((name.clone(), value));
                    }
                }
                DevCommand::Docker {
                    file: base_dir
                        .join(self.required_string(obj.get("file"), &format!("{key}.file"))?),
                    port,
                    env,
                }
            }
            other => {
                return Err(self.err(
                    &kind_key,
                    format!("unknown dev type {other:?}; expected npm, uv or docker (or a command string)"),
                ));
            }
        };
        Ok(DevSpec {
            command,
            workdir,
            env_file,
        })
    }
}

/// Reads a dotenv file: `KEY=VALUE` lines; `#` comments and blank lines are skipped; an optional
/// `export ` prefix and matching single or double quotes around the value are removed.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", number + 1))?;
        let name = name.trim();
        if !is_env_name(name) {
            return Err(format!(
                "line {}: {name:?} is not a variable name",
                number + 1
            ));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.push((name.to_string(), value.to_string()));
    }
    Ok(vars)
}

/// True for names SurrealQL accepts unquoted as a table: the store relies on this to name tables.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// Fills `${VAR}` and `${VAR:-default}` from the environment. `$$` stands for a literal `$`.
pub fn interpolate(text: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if !is_env_name(name) {
                return Err(format!(
                    "`${{{expr}}}` does not name an environment variable"
                ));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn interpolation_fills_variables_and_defaults() {
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(
            interpolate("${MISSING:-fallback}", &env).unwrap(),
            "fallback"
        );
        assert_eq!(interpolate("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(
            interpolate("cost $$5 and $x", &env).unwrap(),
            "cost $5 and $x"
        );
    }

    #[test]
    fn interpolation_names_the_unset_variable() {
        let err = interpolate("${NOPE}", &env).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(
            interpolate("${oops", &env)
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            interpolate("${a b}", &env)
                .unwrap_err()
                .contains("does not name")
        );
    }

    #[test]
    fn dotenv_lines() {
        let vars = parse_dotenv("# comment\n\nA=1\nexport B = \"two words\"\nC='x=y'\n").unwrap();
        assert_eq!(
            vars,
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into())
            ]
        );
        assert!(parse_dotenv("JUST A LINE").unwrap_err().contains("line 1"));
        assert!(
            parse_dotenv("1A=x")
                .unwrap_err()
                .contains("not a variable name")
        );
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("job"));
        assert!(is_identifier("_jobs_2"));
        assert!(!is_identifier("2job"));
        assert!(!is_identifier("job; DELETE"));
        assert!(!is_identifier("job`x"));
        assert!(!is_identifier(""));
    }
}
