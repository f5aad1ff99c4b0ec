//! The shipped schema: start-up inspection, the claim index, and what a signed-in app user may do.

use serde_json::json;
use sp00ky_job_runner::commands::{AppError, prepare_tables};
use sp00ky_job_runner::store;

use crate::helpers::*;

/// Sp00ky's own example table, without the runner's bookkeeping fields.
pub(crate) const SP00KY_TABLE: &str = "
DEFINE TABLE job SCHEMAFULL PERMISSIONS FOR select, create WHERE $auth != NONE FOR update, delete NONE;
DEFINE FIELD path ON job TYPE string;
DEFINE FIELD payload ON job TYPE any;
DEFINE FIELD max_retries ON job TYPE int DEFAULT 3;
DEFINE FIELD retry_strategy ON job TYPE string DEFAULT 'linear';
DEFINE FIELD assigned_to ON job TYPE option<record>;
DEFINE FIELD status ON job TYPE string DEFAULT 'pending' ASSERT $value IN ['pending', 'processing', 'success', 'failed'];
DEFINE FIELD retries ON job TYPE int DEFAULT 0;
DEFINE FIELD errors ON job TYPE array<object> DEFAULT [];
DEFINE FIELD created_at ON job TYPE datetime DEFAULT time::now();
DEFINE FIELD updated_at ON job TYPE datetime DEFAULT time::now();
";

#[tokio::test]
async fn a_schemafull_table_without_runner_fields_is_refused_with_the_fix() {
    let store = mem_store().await;
    store.raw(SP00KY_TABLE).await.unwrap();
    let backend = TestBackend::ok().await;
    let err = prepare_tables(&store, &backends(&backend.url, "job"))
        .await
        .unwrap_err();
    let AppError::Schema(message) = &err else {
        panic!("{err}")
    };
    assert!(
        message.contains("lacks fields the runner writes: due_at, assignee, lease_token, priority"),
        "{message}"
    );
    for statement in [
        "DEFINE FIELD IF NOT EXISTS due_at ON job TYPE datetime",
        "DEFINE FIELD IF NOT EXISTS assignee ON job",
        "DEFINE FIELD IF NOT EXISTS lease_token ON job",
        "DEFINE FIELD IF NOT EXISTS priority ON job TYPE int DEFAULT 0",
        "DEFINE INDEX IF NOT EXISTS job_due ON job FIELDS status, priority, due_at",
    ] {
        assert!(
            message.contains(statement),
            "missing `{statement}` in:\n{message}"
        );
    }
    assert_eq!(err.exit_code(), std::process::ExitCode::from(78));

    // Applying exactly what the message says makes the table acceptable, and keeps its rows.
    let pending = insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"old\"}"}),
    )
    .await;
    let fix = message.split_once(":\n\n").unwrap().1;
    store.raw(fix).await.unwrap();
    prepare_tables(&store, &backends(&backend.url, "job"))
        .await
        .unwrap();
    let runner = runner_for(&store, &backend.url).await;
    let done = wait_final(&store, &pending, std::time::Duration::from_secs(20)).await;
    runner.stop().await;
    assert_eq!(
        done["status"], "success",
        "a row written before the fix still runs: {done}"
    );
}

#[tokio::test]
async fn the_schema_applies_twice_and_the_claim_query_uses_its_index() {
    let store = mem_store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    store.apply_schema(&table_named("job")).await.unwrap();
    // Both the claim query and the probe for non-zero priorities are forward ranges on the index.
    let claim = plan(&store, "SELECT id FROM job WHERE status = 'pending' AND priority = 0 AND due_at <= d'2030-01-01T00:00:00Z' ORDER BY due_at LIMIT 10").await;
    let probe = plan(&store, "SELECT VALUE id FROM job WHERE status = 'pending' AND priority > 0 AND due_at <= d'2030-01-01T00:00:00Z' LIMIT 1").await;
    let narrow = plan(&store, "SELECT id FROM job WHERE status = 'pending' AND priority = 0 AND due_at >= d'2029-01-01T00:00:00Z' AND due_at <= d'2030-01-01T00:00:00Z' ORDER BY due_at LIMIT 10").await;
    // The index range is the first bound of `due_at` the planner reads: each look's own.
    assert!(claim.contains(r#"['pending', 0] LessThanEqual"#), "{claim}");
    assert!(
        narrow.contains(r#"['pending', 0] MoreThanEqual"#),
        "{narrow}"
    );
    for (what, plan) in [
        ("the claim query", claim),
        ("the narrow claim query", narrow),
        ("the priority probe", probe),
    ] {
        assert!(
            plan.contains("job_due"),
            "{what} does not use the index: {plan}"
        );
        assert!(
            plan.contains(r#""direction":"Forward""#) && !plan.contains("Backward"),
            "{what} must scan forwards: {plan}"
        );
    }
    let info = store.table_info(&table_named("job")).await.unwrap();
    assert!(info.schemafull);
    for field in store::RUNNER_FIELDS {
        assert!(info.fields.contains_key(field), "{field}");
    }
}

/// A record user (an app user signed in through DEFINE ACCESS ... TYPE RECORD) can create a
/// pending job and read its state, but not create it in another state or change runner fields.
#[tokio::test]
async fn a_signed_in_app_user_can_create_jobs_but_not_forge_their_state() {
    let store = mem_store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    define_app_access(&store).await;
    let app = app_user(&store, "ada").await;

    let created = app
        .query("CREATE ONLY job:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa SET path = '/spookify', payload = '{\"id\":\"t\"}', max_retries = 1 RETURN status, retries, errors")
        .await
        .and_then(|r| r.check());
    let mut created = created.expect("an app user may create a pending job");
    let visible: Option<serde_json::Value> = created.take(0).unwrap();
    assert_eq!(
        visible.unwrap(),
        json!({"status": "pending", "retries": 0, "errors": []})
    );

    for forged in [
        "CREATE job SET path = '/spookify', status = 'success'",
        "CREATE job SET path = '/spookify', retries = 7",
        "CREATE job SET path = '/spookify', errors = [{ code: 500, reason: 'fake' }]",
        "CREATE job SET path = '/spookify', lease_token = 'mine'",
        "CREATE job SET path = '/spookify', assignee = 'me'",
    ] {
        let result = app.query(forged).await.and_then(|r| r.check());
        assert!(result.is_err(), "{forged} was accepted");
    }
    for update in [
        "UPDATE job:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa SET status = 'success'",
        "UPDATE job:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa SET retries = 3, errors = []",
        "DELETE job:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        // Permissions make these silent no-ops or errors; either way nothing may change.
        let _ = app.query(update).await.and_then(|r| r.check());
    }
    let row = store
        .raw("SELECT status, retries, errors FROM ONLY job:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        .await
        .unwrap();
    assert_eq!(
        row[0],
        json!({"status": "pending", "retries": 0, "errors": []})
    );
    let count = store
        .raw("SELECT count() AS n FROM job GROUP ALL")
        .await
        .unwrap();
    assert_eq!(count[0][0]["n"], 1, "no forged row was created");

    let mut readable = app
        .query("SELECT status, retries, errors FROM job")
        .await
        .and_then(|r| r.check())
        .unwrap();
    let rows: Vec<serde_json::Value> = readable.take(0).unwrap();
    assert_eq!(rows.len(), 1, "the app user can read the job's state");
}

/// The `EXPLAIN` plan of `query`, as JSON text.
async fn plan(store: &sp00ky_job_runner::store::Store, query: &str) -> String {
    let plan = store.raw(&format!("{query} EXPLAIN")).await.unwrap();
    serde_json::to_string(&plan).unwrap()
}
