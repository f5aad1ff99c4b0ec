//! The environment: `SPKY_JOB_CONFIG` (what `spky dev` hands its sidecar), `${VAR}` in string
//! values, and dotenv files.

use serde_json::Value;

use super::walk::{Walker, describe};
use super::{Backend, Config, ConfigError, EnvLookup, FileDatabase, Origin, check_tables_unique};
use crate::job::retry::RetryPolicy;

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
        let token_key = format!("{key}.auth_token");
        let token = match walker
            .opt_string(obj.get("auth_token"), &token_key)?
            .filter(|t| !t.is_empty())
        {
            Some(token) => Some(walker.bearer_token(token, &token_key)?),
            None => None,
        };
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
            row_limits: Default::default(),
            dev: None,
            schedules: Vec::new(),
            retention: Default::default(),
            concurrency: None,
            rate_limit: None,
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

/// Reads a dotenv file as Node's and uv's tools do (quotes, escapes, `export`, comments), with
/// `dotenvy`, the maintained successor of `dotenv`. An error names the file and what is wrong.
pub fn read_dotenv(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let lines = dotenvy::from_path_iter(path)
        .map_err(|e| format!("cannot read env file {}: {e}", path.display()))?;
    lines
        .map(|line| line.map_err(|e| format!("env file {}: {e}", path.display())))
        .collect()
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(
            &path,
            "# comment\n\nA=1\nexport B=\"two words\"\nC='x=y'\nD=\"line\\none\" # note\n",
        )
        .unwrap();
        assert_eq!(
            read_dotenv(&path).unwrap(),
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into()),
                ("D".into(), "line\none".into())
            ]
        );
        std::fs::write(&path, "A=1\nJUST A LINE\n").unwrap();
        let err = read_dotenv(&path).unwrap_err();
        assert!(err.contains(".env"), "{err}");
        assert!(
            read_dotenv(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
