//! The `dev` key of a backend (how `dev` mode starts it) and the app's `env:`, in every form
//! the Sp00ky CLI writes.

use std::path::Path;

use serde_json::Value;

use super::walk::Walker;
use super::{ConfigError, DevCommand, DevSpec, EnvSource};

/// The output prefix of a dev command, after the key the backend came from: `apps.api.dev` gives
/// `app.api.dev`, `backends.api.dev` gives `backend.api.dev`.
fn label(key: &str) -> String {
    match key.split_once('.') {
        Some(("apps", rest)) => format!("app.{rest}"),
        Some(("backends", rest)) => format!("backend.{rest}"),
        _ => key.to_string(),
    }
}

impl Walker<'_> {
    /// The `dev` key: a string, or `{type: npm|uv|docker, ...}` with optional `workdir` and
    /// `env-file`, both relative to the config file's folder.
    pub(super) fn dev(
        &self,
        value: &Value,
        key: &str,
        base_dir: &Path,
    ) -> Result<DevSpec, ConfigError> {
        if let Value::String(command) = value {
            // Not interpolated: the shell expands variables itself, and `$$` must stay `$$`.
            if command.trim().is_empty() {
                return Err(self.err(key, "must not be empty"));
            }
            let command = command.clone();
            return Ok(DevSpec {
                command: DevCommand::Shell(command),
                workdir: base_dir.to_path_buf(),
                env: Vec::new(),
                label: label(key),
            });
        }
        let obj = self.object(value, key)?;
        let workdir = match self.opt_string(obj.get("workdir"), &format!("{key}.workdir"))? {
            Some(dir) => base_dir.join(dir),
            None => base_dir.to_path_buf(),
        };
        let env_file = self
            .opt_string(obj.get("env-file"), &format!("{key}.env-file"))?
            .map(|file| EnvSource::File(base_dir.join(file)));
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
            env: env_file.into_iter().collect(),
            label: label(key),
        })
    }

    /// The `dev` key of the entry at `key`, with the entry's `env:` added to its environment.
    pub(super) fn dev_with_env(
        &self,
        dev: &Value,
        env: Option<&Value>,
        key: &str,
        base_dir: &Path,
    ) -> Result<DevSpec, ConfigError> {
        let mut spec = self.dev(dev, &format!("{key}.dev"), base_dir)?;
        if let Some(env) = env {
            let sources = self.env_sources(env, &format!("{key}.env"), base_dir)?;
            spec.env.extend(sources);
        }
        Ok(spec)
    }

    /// An app's `env:`: a dotenv path, an inline map, a list of those, `{vault: [NAMES]}` (read
    /// from this process's environment: no vault exists locally), or `{dev, cloud}`, of which
    /// `dev` applies here.
    pub(super) fn env_sources(
        &self,
        value: &Value,
        key: &str,
        base_dir: &Path,
    ) -> Result<Vec<EnvSource>, ConfigError> {
        match value {
            Value::Null => Ok(Vec::new()),
            Value::String(_) => {
                let path = self.required_string(Some(value), key)?;
                Ok(vec![EnvSource::File(base_dir.join(path))])
            }
            Value::Array(items) => {
                let mut sources = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    sources.extend(self.env_sources(item, &format!("{key}[{index}]"), base_dir)?);
                }
                Ok(sources)
            }
            Value::Object(map) if map.contains_key("dev") || map.contains_key("cloud") => {
                match map.get("dev") {
                    Some(dev) => self.env_sources(dev, &format!("{key}.dev"), base_dir),
                    None => Ok(Vec::new()),
                }
            }
            Value::Object(map) if map.contains_key("vault") => {
                let vault_key = format!("{key}.vault");
                let Some(Value::Array(names)) = map.get("vault") else {
                    return Err(self.err(&vault_key, "expected a list of variable names"));
                };
                let names = names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| self.required_string(Some(name), &format!("{vault_key}[{i}]")))
                    .collect::<Result<_, _>>()?;
                Ok(vec![EnvSource::Process(names)])
            }
            Value::Object(map) => {
                let mut vars = Vec::new();
                for (name, value) in map {
                    let text = match value {
                        Value::Bool(b) => b.to_string(),
                        other => self
                            .opt_string(Some(other), &format!("{key}.{name}"))?
                            .unwrap_or_default(),
                    };
                    vars.push((name.clone(), text));
                }
                Ok(vec![EnvSource::Vars(vars)])
            }
            other => Err(self.err(
                key,
                format!(
                    "expected a dotenv path, a mapping or a list, got {}",
                    super::walk::describe(other)
                ),
            )),
        }
    }
}
