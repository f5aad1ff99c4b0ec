//! The CLI's job verbs (`enqueue`, `jobs ...`) and the `health` probe.

use std::sync::Arc;

use surrealdb::types::ToSql;

use super::args::{EnqueueArgs, GlobalArgs, JobsCommand};
use super::error::AppError;
use super::service::prepare_tables;
use super::settings::{ONE_SHOT_WAIT, connect, load_backends};
use crate::config::EnvLookup;
use crate::job::retry::RetryPolicy;
use crate::ops::admin::{Admin, EnqueueRequest, ListQuery};

/// `enqueue`: create a job like `db.run`: the route must exist and the payload must validate.
pub async fn enqueue(
    global: &GlobalArgs,
    args: EnqueueArgs,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| AppError::Usage(format!("--payload is not JSON: {e}")))?;
    let admin = admin_for(global, env).await?;
    let id = admin
        .enqueue(EnqueueRequest {
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
        })
        .await?;
    println!("{}", id.to_sql());
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
    let client = reqwest::Client::builder()
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

/// `jobs ...`: the admin API's verbs, straight against the database.
pub async fn jobs(
    global: &GlobalArgs,
    command: JobsCommand,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let admin = admin_for(global, env).await?;
    let value = match command {
        JobsCommand::List {
            table,
            status,
            limit,
            cursor,
        } => {
            admin
                .list(ListQuery {
                    table,
                    status,
                    limit: Some(limit),
                    cursor,
                })
                .await?
        }
        JobsCommand::Show { id } => admin.show(&id).await?,
        JobsCommand::Retry { id } => admin.retry(&id).await?,
        JobsCommand::Cancel { id } => admin.cancel(&id).await?,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialise")
    );
    Ok(())
}

/// Loads the backends, connects, and makes sure their tables exist.
async fn admin_for(global: &GlobalArgs, env: EnvLookup<'_>) -> Result<Admin, AppError> {
    let (config, backends) = load_backends(global, RetryPolicy::default(), env)?;
    let store = connect(global, Some(&config), env, Some(ONE_SHOT_WAIT)).await?;
    prepare_tables(&store, &backends).await?;
    Ok(Admin::new(
        store,
        Arc::new(backends.into_iter().map(Arc::new).collect()),
    ))
}
