//! The admin API of a running runner, as a client: what `enqueue` and `jobs ...` use when that
//! runner holds the embedded store (SurrealKV lets one process open it). Answers are turned back
//! into the same errors the direct path gives, so output and exit codes do not depend on which
//! path a command took.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::error::AppError;
use crate::ops::admin::AdminError;

/// Where `dev` keeps the admin token it made for its run, beside the config file, so that the
/// CLI in another terminal can use it. Readable by the owner only.
pub fn dev_token_file(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("."))
        .join(".sp00ky")
        .join("admin-token")
}

/// A running runner's admin API.
pub struct RemoteAdmin {
    base: String,
    token: SecretString,
    client: reqwest::Client,
}

impl RemoteAdmin {
    pub fn new(listen: SocketAddr, token: SecretString) -> RemoteAdmin {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        RemoteAdmin {
            base: format!("http://{addr}"),
            token,
            // Never through a proxy from the environment, which would receive the admin token.
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("a plain client builds"),
        }
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, AppError> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| AppError::Usage(format!("{path}: {e}")))?;
        url.query_pairs_mut().extend_pairs(query);
        self.send(self.client.get(url)).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, AppError> {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, AppError> {
        let response = request
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| {
                AppError::Unhealthy(format!(
                    "the embedded store is held by another process, and no runner answered at {}: {}",
                    self.base,
                    without_url(&e)
                ))
            })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"].as_str().unwrap_or("no message").to_string();
        Err(match status.as_u16() {
            400 => AdminError::BadRequest(message).into(),
            404 => AdminError::NotFound(message).into(),
            409 => AdminError::Conflict(message).into(),
            401 | 403 => AppError::Usage(format!(
                "the runner at {} refused the admin token: {message}",
                self.base
            )),
            _ => AppError::Unhealthy(format!(
                "the runner at {} answered {status}: {message}",
                self.base
            )),
        })
    }
}

/// reqwest's error text without the URL it carries (it names only our own loopback address, but
/// a message should not depend on that).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "the runner");
    }
    text
}
