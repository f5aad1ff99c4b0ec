//! `sp00ky.yml`: the documented `backends:` map and the current `apps:` map.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use super::EnvLookup;
use super::limits;
use super::walk::{Walker, describe};
use super::{
    Backend, Config, ConfigError, FileDatabase, Origin, RateLimit, Retention, check_tables_unique,
};
use crate::job::retry::RetryPolicy;

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
        super::yaml::parse(text).map_err(|e| syntax_error(&origin, &e.to_string()))?
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

impl Walker<'_> {
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
        // The current CLI names the table after the app when `method.table` is left out.
        let table_key = format!("{method_key}.table");
        let table = match self.opt_string(method.get("table"), &table_key)? {
            Some(table) => self.table_name(&table, &table_key)?,
            None => self.table_name(name, &format!("{key} (the table is named after it)"))?,
        };
        let base_url = self.base_url(obj.get("baseUrl"), &format!("{key}.baseUrl"))?;
        let spec_key = format!("{key}.spec");
        let spec = self.required_string(obj.get("spec"), &spec_key)?;
        let spec = base_dir.join(spec);

        let token = self.auth(obj.get("auth"), &format!("{key}.auth"))?;
        let (timeout, timeout_overridable) = match obj.get("deploy") {
            Some(deploy) => self.deploy(deploy, &format!("{key}.deploy"))?,
            None => (limits::TIMEOUT, false),
        };
        let retry = match obj.get("retry") {
            Some(block) => self.retry(block, &format!("{key}.retry"), default_retry)?,
            None => default_retry,
        };
        let row_limits = match obj.get("limits") {
            Some(block) => self.row_limits(block, &format!("{key}.limits"))?,
            None => limits::RowLimits::default(),
        };
        let dev = match obj.get("dev") {
            None | Some(Value::Null) => None,
            Some(dev) => Some(self.dev_with_env(dev, obj.get("env"), key, base_dir)?),
        };
        let schedules = match obj.get("schedules") {
            None | Some(Value::Null) => Vec::new(),
            Some(list) => self.schedules(list, &format!("{key}.schedules"))?,
        };
        let (concurrency, rate_limit, retention) = self.backend_limits(obj, key)?;

        Ok(Some(Backend {
            name: name.to_string(),
            table,
            base_url,
            token,
            spec: Some(spec),
            timeout,
            timeout_overridable,
            retry,
            row_limits,
            dev,
            schedules,
            retention,
            concurrency,
            rate_limit,
        }))
    }

    /// The `auth` block: a bearer token, or nothing.
    fn auth(
        &self,
        value: Option<&Value>,
        auth_key: &str,
    ) -> Result<Option<SecretString>, ConfigError> {
        let Some(auth) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let auth = self.object(auth, auth_key)?;
        match self
            .opt_string(auth.get("type"), &format!("{auth_key}.type"))?
            .as_deref()
        {
            Some("token") => {
                let key = format!("{auth_key}.token");
                let token = self.required_string(auth.get("token"), &key)?;
                Ok(Some(self.bearer_token(token, &key)?))
            }
            None | Some("none") => Ok(None),
            Some(other) => Err(self.err(
                &format!("{auth_key}.type"),
                format!("unknown auth type {other:?}; expected `token`"),
            )),
        }
    }

    /// The `deploy` block: the call timeout, and whether rows may override it.
    fn deploy(&self, deploy: &Value, deploy_key: &str) -> Result<(Duration, bool), ConfigError> {
        let deploy = self.object(deploy, deploy_key)?;
        let timeout = self.timeout(deploy.get("timeout"), &format!("{deploy_key}.timeout"))?;
        let overridable = self
            .opt_bool(
                deploy.get("timeoutOverridable"),
                &format!("{deploy_key}.timeoutOverridable"),
            )?
            .unwrap_or(false);
        Ok((timeout, overridable))
    }

    /// The `retry` block (ours): base and cap of the delay formula, each within its range.
    /// A backend's own limits: `concurrency`, `rateLimit` and `retention`.
    fn backend_limits(
        &self,
        obj: &serde_json::Map<String, Value>,
        key: &str,
    ) -> Result<(Option<usize>, Option<RateLimit>, Retention), ConfigError> {
        let concurrency_key = format!("{key}.concurrency");
        let concurrency = match self.opt_u64(obj.get("concurrency"), &concurrency_key)? {
            None => None,
            Some(n) => match usize::try_from(n) {
                Ok(n) if limits::CONCURRENCY_RANGE.contains(&n) => Some(n),
                _ => {
                    let range = limits::CONCURRENCY_RANGE;
                    return Err(self.err(
                        &concurrency_key,
                        format!(
                            "{n} is outside the allowed range {} to {}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
            },
        };
        let rate_key = format!("{key}.rateLimit");
        let rate_limit = self
            .opt_string(obj.get("rateLimit"), &rate_key)?
            .map(|text| RateLimit::parse(&text).map_err(|message| self.err(&rate_key, message)))
            .transpose()?;
        let retention = match obj.get("retention") {
            None | Some(Value::Null) => Retention::default(),
            Some(block) => self.retention(block, &format!("{key}.retention"))?,
        };
        Ok((concurrency, rate_limit, retention))
    }

    /// `retention: {success: 7d, failed: 30d}`: durations as humantime writes them.
    fn retention(&self, block: &Value, key: &str) -> Result<Retention, ConfigError> {
        let block = self.object(block, key)?;
        if let Some(other) = block.keys().find(|k| *k != "success" && *k != "failed") {
            return Err(self.err(
                &format!("{key}.{other}"),
                "unknown key; retention takes `success` and `failed`",
            ));
        }
        let read = |field: &str| -> Result<Option<Duration>, ConfigError> {
            let key = format!("{key}.{field}");
            match self.opt_string(block.get(field), &key)? {
                None => Ok(None),
                Some(text) => limits::RETENTION
                    .parse(&text)
                    .map(Some)
                    .map_err(|message| self.err(&key, message)),
            }
        };
        Ok(Retention {
            success: read("success")?,
            failed: read("failed")?,
        })
    }

    fn retry(
        &self,
        block: &Value,
        retry_key: &str,
        default_retry: RetryPolicy,
    ) -> Result<RetryPolicy, ConfigError> {
        let block = self.object(block, retry_key)?;
        let mut retry = default_retry;
        let read = |field: &str,
                    setting: &limits::DurationSetting|
         -> Result<Option<Duration>, ConfigError> {
            let key = format!("{retry_key}.{field}");
            match self.opt_u64(block.get(field), &key)? {
                None => Ok(None),
                Some(ms) => setting
                    .check(Duration::from_millis(ms))
                    .map(Some)
                    .map_err(|message| self.err(&key, message)),
            }
        };
        if let Some(base) = read("baseMs", &limits::RETRY_BASE)? {
            retry.base = base;
        }
        if let Some(cap) = read("maxDelayMs", &limits::RETRY_CAP)? {
            retry.cap = cap;
        }
        if retry.cap < retry.base {
            return Err(self.err(retry_key, "maxDelayMs must be at least baseMs"));
        }
        Ok(retry)
    }

    /// The `limits` block (ours): `payloadBytes`, `maxRetries` and `perUser.pending`, each
    /// within its range.
    fn row_limits(&self, block: &Value, key: &str) -> Result<limits::RowLimits, ConfigError> {
        let block = self.object(block, key)?;
        let mut row_limits = limits::RowLimits::default();
        if let Some(other) = block
            .keys()
            .find(|k| !["payloadBytes", "maxRetries", "perUser"].contains(&k.as_str()))
        {
            return Err(self.err(
                &format!("{key}.{other}"),
                "unknown key; limits takes `payloadBytes`, `maxRetries` and `perUser`",
            ));
        }
        let per_user = match block.get("perUser") {
            Some(value) => Some(self.object(value, &format!("{key}.perUser"))?),
            None => None,
        };
        if let Some(other) = per_user.and_then(|b| b.keys().find(|k| *k != "pending")) {
            return Err(self.err(
                &format!("{key}.perUser.{other}"),
                "unknown key; perUser takes `pending`",
            ));
        }
        // `field` is the key's path under `limits`; its last part is the key in `block`.
        let read_in = |block: Option<&serde_json::Map<String, Value>>,
                       field: &str,
                       range: &std::ops::RangeInclusive<u64>| {
            let key = format!("{key}.{field}");
            let name = field.rsplit('.').next().unwrap_or(field);
            match self.opt_u64(block.and_then(|b| b.get(name)), &key)? {
                Some(n) if !range.contains(&n) => Err(self.err(
                    &key,
                    format!(
                        "{n} is outside the allowed range {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
                other => Ok(other),
            }
        };
        let read = |field, range| read_in(Some(block), field, range);
        if let Some(bytes) = read("payloadBytes", &limits::PAYLOAD_BYTES_RANGE)? {
            row_limits.payload_bytes = bytes as usize;
        }
        if let Some(retries) = read("maxRetries", &limits::MAX_RETRIES_CAP_RANGE)? {
            row_limits.max_retries = retries as u32;
        }
        if let Some(pending) =
            read_in(per_user, "perUser.pending", &limits::PENDING_PER_USER_RANGE)?
        {
            row_limits.pending_per_user = pending as u32;
        }
        Ok(row_limits)
    }
}
