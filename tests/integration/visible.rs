//! Every status the runner writes reaches an app watching its jobs, exactly once, even when many
//! jobs finish together and their results are written in one batch: counted per job by a record
//! user's LIVE SELECT over a SurrealDB server, and by a table event.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;

use crate::helpers::*;
use crate::processes::Server;

/// Logs every status change of a job, in the database, in order.
const STATUS_EVENT: &str = "
DEFINE TABLE status_log SCHEMALESS PERMISSIONS NONE;
DEFINE EVENT status_log ON job WHEN $before.status != $after.status THEN {
    CREATE status_log SET job = $after.id, status = $after.status, at = time::now(), seq = sequence::nextval('status_seq')
};
DEFINE SEQUENCE status_seq;
";

/// The statuses a job passes through: created pending; then `processing` and an outcome per
/// attempt. The backend fails `flaky` jobs once (503, retried) and `broken` ones always (503,
/// one retry, then failed).
fn expected(kind: &str) -> Vec<&'static str> {
    match kind {
        "ok" => vec!["pending", "processing", "success"],
        "flaky" => vec!["pending", "processing", "pending", "processing", "success"],
        _ => vec!["pending", "processing", "pending", "processing", "failed"],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_reaches_a_live_query_and_an_event_exactly_once() {
    let _turn = crate::processes::ONE_AT_A_TIME.lock().await;
    let server = Server::start().await;
    let store = server.store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    store.raw(STATUS_EVENT).await.unwrap();
    define_app_access(&store).await;
    let app = app_session(&server).await;
    let mut live = app
        .query("LIVE SELECT id, status FROM job")
        .await
        .unwrap()
        .stream::<surrealdb::Notification<surrealdb::types::Value>>(0)
        .unwrap();

    let backend = flaky_backend().await;
    let mut jobs: HashMap<String, &str> = HashMap::new();
    for n in 0..60 {
        let kind = ["ok", "flaky", "broken"][n % 3];
        let key = format!("j{n:031x}");
        let payload = serde_json::json!({"id": format!("{kind}-{n}")}).to_string();
        app.query("CREATE ONLY type::record('job', $key) SET path = '/spookify', payload = $payload, max_retries = 1")
            .bind(("key", key.clone()))
            .bind(("payload", payload))
            .await
            .and_then(|r| r.check())
            .unwrap();
        jobs.insert(format!("job:{key}"), kind);
    }
    let fast = backends_with(&backend.url, "job", "baseMs: 20\n      maxDelayMs: 50");
    let runner = start_runner(&store, fast, fast_options("r1")).await;
    let mut statuses: HashMap<String, Vec<String>> = HashMap::new();
    let finished = |statuses: &HashMap<String, Vec<String>>| {
        jobs.iter().all(|(id, kind)| {
            statuses
                .get(id)
                .is_some_and(|s| s.len() >= expected(kind).len())
        })
    };
    while !finished(&statuses) {
        let next = tokio::time::timeout(Duration::from_secs(30), live.next()).await;
        let Ok(Some(Ok(notification))) = next else {
            let total: usize = statuses.values().map(Vec::len).sum();
            let rows = store
                .raw("SELECT status, count() FROM job GROUP BY status")
                .await
                .unwrap();
            panic!(
                "notifications stopped after {total} for {} jobs: {next:?}; rows {rows:?}; {statuses:?}",
                statuses.len()
            );
        };
        let data = notification.data.into_json_value();
        let id = data["id"].as_str().unwrap_or_default().to_string();
        statuses
            .entry(id)
            .or_default()
            .push(data["status"].as_str().unwrap_or_default().into());
    }
    runner.stop().await;

    let logged = status_log(&store).await;
    for (id, kind) in &jobs {
        let want = expected(kind);
        assert_eq!(statuses[id], want, "live query of {id} ({kind})");
        // The event fires on the creation (no status before) and on every change.
        assert_eq!(logged[id], want, "event log of {id}");
    }
}

/// A session of the app user `ada` over the server's WebSocket, as an app's client has one.
async fn app_session(server: &Server) -> surrealdb::Surreal<surrealdb::engine::any::Any> {
    let app: surrealdb::Surreal<surrealdb::engine::any::Any> =
        surrealdb::engine::any::connect(server.endpoint())
            .await
            .unwrap();
    app.signup(surrealdb::opt::auth::Record {
        namespace: "test".into(),
        database: "test".into(),
        access: "app".into(),
        params: serde_json::json!({"name": "ada"}),
    })
    .await
    .unwrap();
    app
}

/// Answers `ok-*` jobs at once, fails `flaky-*` ones the first time and `broken-*` ones always.
async fn flaky_backend() -> TestBackend {
    let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    TestBackend::start(move |request, _| {
        let id = request.json()["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut counts = counts.lock().unwrap();
        let calls = counts.entry(id.clone()).or_default();
        *calls += 1;
        let fail = id.starts_with("broken") || (id.starts_with("flaky") && *calls == 1);
        if fail {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await
}

/// The statuses the event logged, per job, in order.
async fn status_log(store: &sp00ky_job_runner::store::Store) -> HashMap<String, Vec<String>> {
    let log = store
        .raw("SELECT VALUE [<string> job, status] FROM status_log ORDER BY seq")
        .await
        .unwrap();
    let mut logged: HashMap<String, Vec<String>> = HashMap::new();
    for entry in log[0].as_array().unwrap() {
        let (job, status) = (entry[0].as_str().unwrap(), entry[1].as_str().unwrap());
        logged
            .entry(job.to_string())
            .or_default()
            .push(status.to_string());
    }
    logged
}
