//! What an app user (a record user, signed in through `DEFINE ACCESS ... TYPE RECORD`) can and
//! cannot do with the shipped schema: see only its own jobs, never a lease, never jump the queue,
//! never forge a schedule's row; and `schema --apply` never loosens a Sp00ky table.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

use super::WAIT;
use crate::helpers::*;

/// Runs `query` in `session`; the first statement's rows as JSON.
pub(super) async fn rows(session: &Surreal<Any>, query: &str) -> surrealdb::Result<Vec<Value>> {
    let mut response = session.query(query).await?.check()?;
    let rows: Vec<surrealdb::types::Value> = response.take(0)?;
    Ok(rows.into_iter().map(|v| v.into_json_value()).collect())
}

/// Creates a job as `session` does through `db.run`; its id.
pub(super) async fn create_as(
    session: &Surreal<Any>,
    key: &str,
    extra: &str,
) -> surrealdb::Result<Value> {
    let query = format!(
        "CREATE ONLY job:{key} SET path = '/spookify', payload = '{{\"id\":\"t\"}}', max_retries = 0{extra} RETURN VALUE id"
    );
    let mut response = session.query(query).await?.check()?;
    let id: Option<surrealdb::types::Value> = response.take(0)?;
    Ok(id.map(|v| v.into_json_value()).unwrap_or(Value::Null))
}

/// Two app users and the system each create a job; a slow backend keeps them `processing` for a
/// while. Each user reads only its own job (SELECT and LIVE SELECT), with `created_by` set by the
/// database, and never sees `lease_token` or `assignee`, not even in a live notification of the
/// runner's writes.
#[tokio::test]
async fn app_users_see_only_their_own_jobs_and_never_a_lease() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(300))).await;
    let runner = runner_for(&store, &backend.url).await;
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;
    let bob = app_user(&store, "bob").await;
    let mut live = ada
        .query("LIVE SELECT * FROM job")
        .await
        .unwrap()
        .stream::<surrealdb::Notification<surrealdb::types::Value>>(0)
        .unwrap();

    let ada_job = create_as(&ada, "a0000000000000000000000000000000", "")
        .await
        .unwrap();
    let bob_job = create_as(&bob, "b0000000000000000000000000000000", "")
        .await
        .unwrap();
    let system_job = job("/spookify")
        .payload(json!({"id": "s"}))
        .insert(&store)
        .await;
    assert_eq!(ada_job, json!("job:a0000000000000000000000000000000"));
    for id in [
        "a0000000000000000000000000000000",
        "b0000000000000000000000000000000",
    ] {
        let id = surrealdb::types::RecordId::new("job", id);
        assert_eq!(wait_final(&store, &id, WAIT).await["status"], "success");
    }
    assert_eq!(
        wait_final(&store, &system_job, WAIT).await["status"],
        "success"
    );
    runner.stop().await;

    let seen = notifications_until_success(&mut live).await;
    for data in &seen {
        assert_eq!(
            data["id"], ada_job,
            "ada is notified of her own job only: {data}"
        );
        assert!(
            data.get("lease_token").is_none() && data.get("assignee").is_none(),
            "{data}"
        );
    }
    assert!(seen.iter().any(|n| n["status"] == "processing"), "{seen:?}");

    let mine = rows(&ada, "SELECT * FROM job").await.unwrap();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["id"], ada_job);
    assert_eq!(
        mine[0]["created_by"]
            .as_str()
            .map(|s| s.starts_with("user:")),
        Some(true)
    );
    assert!(mine[0].get("lease_token").is_none() && mine[0].get("assignee").is_none());
    let theirs = rows(&bob, "SELECT * FROM job").await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["id"], bob_job);
    let peek = rows(&bob, "SELECT * FROM job:a0000000000000000000000000000000")
        .await
        .unwrap();
    assert!(peek.is_empty(), "bob reads ada's job: {peek:?}");
}

/// `created_by` is the database's: a client that names another user gets itself.
#[tokio::test]
async fn an_app_user_cannot_create_a_job_as_another() {
    let store = mem_store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    define_app_access(&store).await;
    let bob = app_user(&store, "bob").await;
    let forged = create_as(
        &bob,
        "b1000000000000000000000000000000",
        ", created_by = user:ada",
    )
    .await;
    let owner = store
        .raw("SELECT VALUE created_by FROM ONLY job:b1000000000000000000000000000000")
        .await
        .unwrap();
    assert!(
        forged.is_err() || owner[0] != json!("user:ada"),
        "bob made a job as ada: {owner:?}"
    );
}

/// An app user cannot put its job ahead of others: `due_at` is the database's (now plus a delay
/// of at most 30 days), priorities above 0 are refused, and a `max_retries` above the backend's
/// cap runs with the cap.
#[tokio::test]
async fn app_users_cannot_jump_the_queue() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::status(503)).await;
    let capped = backends_with(
        &backend.url,
        "job",
        "baseMs: 1\n      maxDelayMs: 5\n    limits:\n      maxRetries: 2",
    );
    let runner = start_runner(&store, capped, fast_options("r1")).await;
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let past = ", due_at = d'2000-01-01T00:00:00Z', delay = 86400000";
    create_as(&ada, "c0000000000000000000000000000000", past)
        .await
        .unwrap();
    ada.query("INSERT INTO job { id: job:c1000000000000000000000000000000, path: '/spookify', due_at: d'2000-01-01T00:00:00Z', delay: 86400000 }")
        .await
        .and_then(|r| r.check())
        .unwrap();
    for key in [
        "c0000000000000000000000000000000",
        "c1000000000000000000000000000000",
    ] {
        let due = store
            .raw(&format!("SELECT VALUE due_at FROM ONLY job:{key}"))
            .await
            .unwrap();
        let due: chrono::DateTime<chrono::Utc> = due[0].as_str().unwrap().parse().unwrap();
        assert!(
            due > before + chrono::Duration::hours(23),
            "{key} is due at {due}"
        );
    }
    for refused in [", delay = 2592000001", ", delay = -1", ", priority = 1"] {
        let result = create_as(&ada, "d0000000000000000000000000000000", refused).await;
        assert!(result.is_err(), "{refused} was accepted");
    }
    create_as(&ada, "e0000000000000000000000000000000", ", priority = -5")
        .await
        .unwrap();

    let greedy = create_as(
        &ada,
        "f0000000000000000000000000000000",
        ", max_retries = 1000",
    );
    greedy.await.unwrap();
    let id = surrealdb::types::RecordId::new("job", "f0000000000000000000000000000000");
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["retries"], 2, "1 + the cap of 2 attempts: {done}");
    assert_eq!(done["errors"].as_array().unwrap().len(), 3);
}

/// Schedule ticks cannot be forged: an app user's rows with the ids a tick once had neither stop
/// the tick nor pass for it. Each tick still makes exactly one row of its own, marked with its
/// schedule and no creator.
#[tokio::test]
async fn a_forged_schedule_row_neither_suppresses_nor_replaces_a_tick() {
    let store = mem_store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;
    let next = chrono::Utc::now().timestamp() + 1;
    for tick in next..next + 3 {
        for key in [
            format!("sched_every_second_{tick}"),
            format!("sched_every_second_{tick}_0000000000000000"),
        ] {
            create_as(&ada, &format!("`{key}`"), "").await.unwrap();
        }
    }
    let plan = crate::scheduling::schedule("every_second", "* * * * * *", "run-once");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(sp00ky_job_runner::schedule::scheduler::run(
        store.clone(),
        vec![plan],
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let marked = "SELECT VALUE record::id(id) FROM job WHERE schedule = 'every_second' AND created_by = NONE";
    wait_until("the three forged ticks fire", WAIT, || async {
        store.raw(marked).await.unwrap()[0]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| {
                key.as_str()
                    .is_some_and(|k| k.starts_with(&format!("sched_every_second_{}_", next + 2)))
            })
    })
    .await;
    stop.send(true).unwrap();
    scheduler.await.unwrap();
    let keys = store.raw(marked).await.unwrap();
    for tick in next..next + 3 {
        let prefix = format!("sched_every_second_{tick}_");
        let fired = keys[0]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k.as_str().unwrap().starts_with(&prefix));
        assert_eq!(fired.count(), 1, "tick {tick}: {keys:?}");
    }
    let forged = store
        .raw("SELECT VALUE [schedule, created_by] FROM job WHERE created_by != NONE")
        .await
        .unwrap();
    assert_eq!(forged[0].as_array().unwrap().len(), 6);
    for pair in forged[0].as_array().unwrap() {
        assert_eq!(
            pair[0],
            Value::Null,
            "a forged row passes for a tick: {pair}"
        );
        assert!(
            pair[1].as_str().is_some_and(|by| by.starts_with("user:")),
            "{pair}"
        );
    }
}

/// `schema --apply` over a Sp00ky table adds the runner's fields and index, and leaves the
/// table's own permissions exactly as they were.
#[tokio::test]
async fn applying_the_schema_never_loosens_a_sp00ky_table() {
    let store = mem_store().await;
    store.raw(crate::schema::SP00KY_TABLE).await.unwrap();
    let table = "RETURN (INFO FOR DB).tables.job";
    let before = store.raw(table).await.unwrap();
    store.apply_schema(&table_named("job")).await.unwrap();
    assert_eq!(store.raw(table).await.unwrap(), before);
    let info = store.table_info(&table_named("job")).await.unwrap();
    for field in ["due_at", "lease_token", "created_by", "schedule"] {
        assert!(info.fields.contains_key(field), "{field} was not added");
    }
}

/// What a live query delivered, up to the first notification of a `success`.
async fn notifications_until_success(
    live: &mut surrealdb::method::QueryStream<surrealdb::Notification<surrealdb::types::Value>>,
) -> Vec<Value> {
    let mut seen = Vec::new();
    while !seen.iter().any(|n: &Value| n["status"] == "success") {
        let next = tokio::time::timeout(WAIT, live.next()).await;
        let notification = next
            .expect("ada's job finishes on her live query")
            .unwrap()
            .unwrap();
        seen.push(notification.data.into_json_value());
    }
    seen
}
