//! The hand walk over a configuration tree: each reader knows the key it reads, so every error
//! names the file (or variable), the key and what is wrong.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::env::interpolate;
use super::limits::{TIMEOUT, TIMEOUT_RANGE_SECS};
use secrecy::SecretString;

use super::{ConfigError, EnvLookup, Origin};

use crate::store::TableName;

/// Walks the JSON tree, carrying what every error needs to say.
pub(super) struct Walker<'a> {
    pub(super) origin: &'a Origin,
    pub(super) env: EnvLookup<'a>,
}

impl Walker<'_> {
    pub(super) fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn object<'v>(
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
    pub(super) fn opt_string(
        &self,
        value: Option<&Value>,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
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

    pub(super) fn required_string(
        &self,
        value: Option<&Value>,
        key: &str,
    ) -> Result<String, ConfigError> {
        match self.opt_string(value, key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.err(key, "must not be empty")),
            None => Err(self.err(key, "is required")),
        }
    }

    pub(super) fn opt_bool(
        &self,
        value: Option<&Value>,
        key: &str,
    ) -> Result<Option<bool>, ConfigError> {
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

    pub(super) fn opt_u64(
        &self,
        value: Option<&Value>,
        key: &str,
    ) -> Result<Option<u64>, ConfigError> {
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

    pub(super) fn timeout(
        &self,
        value: Option<&Value>,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        match self.opt_u64(value, key)? {
            None => Ok(TIMEOUT),
            Some(secs) if TIMEOUT_RANGE_SECS.contains(&secs) => Ok(Duration::from_secs(secs)),
            Some(secs) => Err(self.err(
                key,
                format!("timeout must be between 1 and 3600 seconds, got {secs}"),
            )),
        }
    }

    /// A backend's bearer token, refused at load when a header cannot carry it (a stray newline
    /// from an env file, say): otherwise every call would fail as a transport error, retried on
    /// every job. The message never quotes the token.
    pub(super) fn bearer_token(
        &self,
        token: String,
        key: &str,
    ) -> Result<SecretString, ConfigError> {
        // The check is the one the call makes when it builds the header.
        let sendable = |text: &str| reqwest::header::HeaderValue::from_str(text).is_ok();
        if sendable(&token) {
            return Ok(SecretString::from(token));
        }
        let mut buffer = [0u8; 4];
        let at = token
            .chars()
            .position(|c| !sendable(c.encode_utf8(&mut buffer)))
            .unwrap_or_default();
        Err(self.err(
            key,
            format!(
                "the token cannot be sent in an Authorization header: character {} of {} is a control character (a stray newline?)",
                at + 1,
                token.chars().count()
            ),
        ))
    }

    pub(super) fn table_name(&self, table: &str, key: &str) -> Result<TableName, ConfigError> {
        TableName::new(table).map_err(|message| self.err(key, message))
    }

    pub(super) fn base_url(&self, value: Option<&Value>, key: &str) -> Result<Url, ConfigError> {
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
}

pub(super) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    proptest! {
        /// Whatever a token holds, it is accepted exactly when a header can carry it
        /// (`reqwest`'s own check), and a refusal names the key.
        #[test]
        fn a_token_is_accepted_exactly_when_a_header_can_carry_it(token in "(?s).{0,40}") {
            let origin = Origin::File("sp00ky.yml".into());
            let walker = Walker { origin: &origin, env: &|_| None };
            let sendable = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_ok();
            match walker.bearer_token(token.clone(), "apps.api.auth.token") {
                Ok(secret) => {
                    prop_assert!(sendable);
                    prop_assert_eq!(secret.expose_secret(), token.as_str());
                }
                Err(e) => {
                    prop_assert!(!sendable);
                    prop_assert_eq!(e.key.as_str(), "apps.api.auth.token");
                }
            }
        }
    }
}
