//! The CLI's job verbs (`enqueue`, `jobs ...`) and the `health` probe.
//!
//! Each verb goes straight to the database through [`Admin`], like the admin API. An embedded
//! store can be open in one process only: while `dev` or `run` holds it, the verbs go through
//! that runner's admin API instead ([`RemoteAdmin`]), with the same output and exit codes.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Value, json};
use surrealdb::types::ToSql;

use super::args::{EnqueueArgs, GlobalArgs, JobsArgs, JobsCommand, RunnerAddress};
use super::error::AppError;
use super::remote::{RemoteAdmin, dev_token_file};
use super::service::prepare_tables;
use super::settings::{ONE_SHOT_WAIT, connect, db_settings, load_backends};
use crate::config::EnvLookup;
use crate::job::retry::RetryPolicy;
use crate::ops::admin::{Admin, EnqueueRequest, ListQuery};
use crate::ops::bulk::{BulkDelete, BulkRetry};
use crate::store::{JobStatus, StoreError};

/// Who carries out a verb: the database itself, or the runner that holds it.
enum Operator {
    Direct(Admin),
    Runner(RemoteAdmin),
}

/// `enqueue`: create a job like `db.run`: the route must exist and the payload must validate.
pub async fn enqueue(
    global: &GlobalArgs,
    args: EnqueueArgs,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let payload: Value = serde_json::from_str(&args.payload)
        .map_err(|e| AppError::Usage(format!("--payload is not JSON: {e}")))?;
    let request = EnqueueRequest {
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
    };
    let id = match operator_for(global, &args.runner, env).await? {
        Operator::Direct(admin) => admin.enqueue(request).await?.to_sql(),
        Operator::Runner(remote) => {
            let body = serde_json::to_value(&request).expect("a request serialises");
            let created = remote.post("/v1/jobs", Some(body)).await?;
            created["id"].as_str().unwrap_or_default().to_string()
        }
    };
    println!("{id}");
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
            .unwrap_or_else(|| crate::config::limits::LISTEN.into())
            .parse()
            .map_err(|e| AppError::Usage(format!("SPKY_RUNNER_LISTEN is not an address: {e}")))?,
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/healthz");
    // Never through a proxy from the environment: the runner is on this machine.
    let client = reqwest::Client::builder()
        .no_proxy()
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

/// `jobs ...`: the admin API's verbs; prints the answer as JSON.
pub async fn jobs(global: &GlobalArgs, args: JobsArgs, env: EnvLookup<'_>) -> Result<(), AppError> {
    let value = match operator_for(global, &args.runner, env).await? {
        Operator::Direct(admin) => direct(&admin, args.command.into()).await?,
        Operator::Runner(remote) => through_runner(&remote, args.command.into()).await?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    );
    Ok(())
}

/// One verb with its request, the same for both paths.
enum Verb {
    List(ListQuery),
    Show(String),
    Retry(String),
    Cancel(String),
    RetryMatching(BulkRetry),
    DeleteMatching(BulkDelete),
}

impl From<JobsCommand> for Verb {
    fn from(command: JobsCommand) -> Verb {
        match command {
            JobsCommand::List {
                table,
                status,
                path,
                text,
                limit,
                cursor,
            } => Verb::List(ListQuery {
                table,
                status: status.map(|s| s.as_str().to_string()),
                path,
                q: text,
                limit: Some(limit),
                cursor,
            }),
            JobsCommand::Show { id } => Verb::Show(id),
            JobsCommand::Retry { id: Some(id), .. } => Verb::Retry(id),
            JobsCommand::Retry {
                id: None,
                table,
                path,
                since,
                ..
            } => Verb::RetryMatching(BulkRetry {
                table,
                status: Some(JobStatus::Failed.as_str().to_string()),
                path,
                since,
            }),
            JobsCommand::Cancel { id } => Verb::Cancel(id),
            JobsCommand::Delete {
                table,
                status,
                path,
                older_than,
            } => Verb::DeleteMatching(BulkDelete {
                table,
                status: status.as_str().to_string(),
                path,
                older_than,
            }),
        }
    }
}

async fn direct(admin: &Admin, verb: Verb) -> Result<Value, AppError> {
    Ok(match verb {
        Verb::List(query) => admin.list(query).await?,
        Verb::Show(id) => admin.show(&id).await?,
        Verb::Retry(id) => admin.retry(&id).await?,
        Verb::Cancel(id) => admin.cancel(&id).await?,
        Verb::RetryMatching(request) => json!(admin.retry_matching(request).await?),
        Verb::DeleteMatching(request) => json!(admin.delete_matching(request).await?),
    })
}

async fn through_runner(remote: &RemoteAdmin, verb: Verb) -> Result<Value, AppError> {
    let id_path = |id: &str, action: &str| {
        let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        format!("/v1/jobs/{id}{action}")
    };
    match verb {
        Verb::List(query) => {
            // The query's set fields, as the API's query string.
            let fields = serde_json::to_value(&query).expect("a query serialises");
            let pairs: Vec<(&str, String)> = fields
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    (
                        k.as_str(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect();
            remote.get("/v1/jobs", &pairs).await
        }
        Verb::Show(id) => remote.get(&id_path(&id, ""), &[]).await,
        Verb::Retry(id) => remote.post(&id_path(&id, "/retry"), None).await,
        Verb::Cancel(id) => remote.post(&id_path(&id, "/cancel"), None).await,
        Verb::RetryMatching(request) => remote.post("/v1/jobs/retry", Some(json!(request))).await,
        Verb::DeleteMatching(request) => remote.post("/v1/jobs/delete", Some(json!(request))).await,
    }
}

/// Loads the backends and connects; when a running runner holds the embedded store, that
/// runner's admin API instead.
async fn operator_for(
    global: &GlobalArgs,
    runner: &RunnerAddress,
    env: EnvLookup<'_>,
) -> Result<Operator, AppError> {
    let (config, backends) = load_backends(global, RetryPolicy::default(), env)?;
    let settings = db_settings(global, &config.database, env);
    let store = match connect(global, Some(&config), env, Some(ONE_SHOT_WAIT)).await {
        Ok(store) => store,
        Err(AppError::Store(error)) if settings.is_embedded() && is_held(&error) => {
            let token_file = dev_token_file(&global.config);
            let token = env("SPKY_RUNNER_ADMIN_TOKEN")
                .or_else(|| std::fs::read_to_string(&token_file).ok())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    AppError::Usage(format!(
                        "the embedded store {} is held by a running runner; to go through its admin API, set SPKY_RUNNER_ADMIN_TOKEN (`dev` writes one to {})",
                        settings.endpoint,
                        token_file.display()
                    ))
                })?;
            tracing::debug!(listen = %runner.listen, "the embedded store is held; using the running runner's admin API");
            return Ok(Operator::Runner(RemoteAdmin::new(
                runner.listen,
                SecretString::from(token),
            )));
        }
        Err(error) => return Err(error),
    };
    prepare_tables(&store, &backends).await?;
    Ok(Operator::Direct(Admin::new(
        store,
        Arc::new(backends.into_iter().map(Arc::new).collect()),
    )))
}

/// Whether opening an embedded store failed because another process has it open.
fn is_held(error: &StoreError) -> bool {
    matches!(error, StoreError::Connect { .. })
        && error.to_string().to_ascii_lowercase().contains("lock")
}
