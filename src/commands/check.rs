//! `check` (what the runner would serve) and `schema` (the job table's definition).

use super::args::{GlobalArgs, SchemaArgs};
use super::error::AppError;
use super::service::table_exists;
use super::settings::{ONE_SHOT_WAIT, connect, db_settings, load_backends, wait_for_database};
use crate::config::{self, EnvLookup};
use crate::job::retry::RetryPolicy;
use crate::store;
use crate::store::TableName;

/// `check`: print what the runner would serve; any problem is an error.
pub async fn check(global: &GlobalArgs, env: EnvLookup<'_>) -> Result<(), AppError> {
    let (config, backends) = load_backends(global, RetryPolicy::default(), env)?;
    let store = connect(global, Some(&config), env, Some(ONE_SHOT_WAIT)).await?;
    let settings = store.settings();
    println!("config:    {}", config.origin);
    println!(
        "database:  {} (namespace {}, database {})",
        settings.endpoint, settings.namespace, settings.database
    );
    if backends.is_empty() {
        println!("backends:  none with `method: {{type: outbox}}`");
    }
    for runtime in &backends {
        let backend = &runtime.backend;
        let state = match table_exists(&store, backend).await? {
            true => "ready",
            false => "missing (run creates it)",
        };
        println!("backend:   {}", backend.name);
        println!("  table:   {} ({state})", backend.table);
        println!("  baseUrl: {}", backend.base_url);
        println!(
            "  auth:    {}",
            if backend.token.is_some() {
                "bearer token (hidden)"
            } else {
                "none"
            }
        );
        println!(
            "  timeout: {} s{}",
            backend.timeout.as_secs(),
            if backend.timeout_overridable {
                " (rows may override)"
            } else {
                ""
            }
        );
        println!(
            "  retry:   base {:?}, cap {:?}",
            backend.retry.base, backend.retry.cap
        );
        for route in runtime.routes.describe() {
            println!("  route:   {route}");
        }
        for schedule in &backend.schedules {
            let next: Vec<String> = schedule
                .upcoming(chrono::Utc::now(), 3)
                .iter()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .collect();
            let next = if next.is_empty() {
                "at each runner start".to_string()
            } else {
                next.join(", ")
            };
            println!(
                "  schedule: {} `{}` {} -> next: {next}",
                schedule.name, schedule.expression, schedule.path
            );
        }
    }
    Ok(())
}

/// `schema`: print, or apply idempotently.
pub async fn schema(
    global: &GlobalArgs,
    args: SchemaArgs,
    env: EnvLookup<'_>,
) -> Result<(), AppError> {
    let config =
        if args.table.is_none() && (global.config.exists() || env("SPKY_JOB_CONFIG").is_some()) {
            Some(config::load(&global.config, env, RetryPolicy::default())?)
        } else {
            None
        };
    let tables: Vec<TableName> = match (&args.table, &config) {
        (Some(table), _) => vec![
            TableName::new(table)
                .map_err(|message| AppError::Usage(format!("--table: {message}")))?,
        ],
        (None, Some(config)) if !config.backends.is_empty() => {
            config.backends.iter().map(|b| b.table.clone()).collect()
        }
        _ => vec![TableName::new("job").expect("`job` is an identifier")],
    };
    if !args.apply {
        for table in &tables {
            println!(
                "{};",
                store::schema_for(table).trim_end().trim_end_matches(';')
            );
        }
        return Ok(());
    }
    let file = config
        .as_ref()
        .map(|c| c.database.clone())
        .unwrap_or_default();
    let wait = global.connect_timeout.map(|t| t.0).or(Some(ONE_SHOT_WAIT));
    let store = wait_for_database(db_settings(global, &file, env), wait, false).await?;
    store.define_namespace_and_database().await?;
    for table in &tables {
        store.apply_schema(table).await?;
        println!("applied schema to table {table}");
    }
    Ok(())
}
