//! Many end users, one queue: what one app user's job tells the backend, and what an app user
//! can read of what the runner wrote.

use serde_json::Value;

use super::WAIT;
use super::app_users::{create_as, rows};
use crate::helpers::*;

/// An embedded store with table `job` prepared (for a backend nobody calls) and the app's
/// record access defined.
async fn store_with_app_users() -> sp00ky_job_runner::store::Store {
    let store = mem_store().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &backends("http://127.0.0.1:9", "job"))
        .await
        .unwrap();
    define_app_access(&store).await;
    store
}

/// Every call names the record user who created the job and the record it concerns, from the
/// row (the database wrote `created_by`); a system user's job names no user.
#[tokio::test]
async fn the_backend_is_told_who_asked_and_about_what() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;
    create_as(
        &ada,
        "a1000000000000000000000000000000",
        ", assigned_to = thread:t1",
    )
    .await
    .unwrap();
    job("/spookify")
        .payload(serde_json::json!({"id": "s"}))
        .insert(&store)
        .await;
    wait_until("both jobs called", WAIT, || async { backend.count() == 2 }).await;
    runner.stop().await;

    let ada_id = store
        .raw("SELECT VALUE id FROM user WHERE name = 'ada'")
        .await
        .unwrap()[0][0]
        .clone();
    let requests = backend.requests();
    let call_of = |key: &str| {
        requests
            .iter()
            .find(|r| {
                r.header("idempotency-key")
                    .is_some_and(|k| k.ends_with(key))
            })
            .unwrap_or_else(|| panic!("no call for {key}: {requests:?}"))
    };
    let ada_call = call_of("a1000000000000000000000000000000");
    assert_eq!(ada_call.header("x-sp00ky-user"), ada_id.as_str());
    assert_eq!(ada_call.header("x-sp00ky-assigned-to"), Some("thread:t1"));
    let system_call = requests
        .iter()
        .find(|r| !std::ptr::eq(*r, ada_call))
        .unwrap();
    assert_eq!(system_call.header("x-sp00ky-user"), None);
    assert_eq!(system_call.header("x-sp00ky-assigned-to"), None);
}

/// The `errors` an app user reads of its own jobs name no runner (host, pid) and no backend URL:
/// a call that never reached its backend, and a lease another runner left to expire.
#[tokio::test]
async fn what_an_app_user_reads_names_no_runner_and_no_url() {
    let store = mem_store().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{closed}");
    let options = fast_options("runner-host:4242:cafe");
    let runner = start_runner(&store, backends(&url, "job"), options).await;
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;
    create_as(&ada, "a2000000000000000000000000000000", "")
        .await
        .unwrap();
    // Not due for an hour, then made a job whose runner died holding it.
    create_as(
        &ada,
        "a3000000000000000000000000000000",
        ", delay = 3600000",
    )
    .await
    .unwrap();
    store
        .raw(
            "UPDATE job:a3000000000000000000000000000000 SET status = 'processing', \
             assignee = 'gone-host:99:dead', lease_token = 'old', due_at = time::now() - 1s",
        )
        .await
        .unwrap();
    wait_until("both jobs failed", WAIT, || async {
        count_status(&store, "job", "failed").await == 2
    })
    .await;
    runner.stop().await;

    let mine = rows(&ada, "SELECT * FROM job ORDER BY id").await.unwrap();
    let kinds: Vec<&Value> = mine.iter().map(|row| &row["errors"][0]["kind"]).collect();
    assert_eq!(kinds, ["transport", "lease_expired"], "{mine:?}");
    let read = serde_json::to_string(&mine).unwrap();
    for internal in ["127.0.0.1", "http://", "runner-host", "gone-host", ":4242"] {
        assert!(
            !read.contains(internal),
            "{internal} in what ada reads: {read}"
        );
    }
}

/// Written while no runner ran: 40 rows with 4 MB payloads (by a system user, or before the
/// schema bounded payloads) around one app user's job with no retries. A claim's reply leaves
/// each big payload out, so the batch stays small: the user's job is called once and succeeds,
/// each big row fails (`row`) on its own, and no lease expires anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_rows_cannot_fail_another_users_job() {
    let _turn = crate::processes::ONE_AT_A_TIME.lock().await;
    let server = crate::processes::Server::start().await;
    let store = server.store().await;
    let backend = TestBackend::ok().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &backends(&backend.url, "job"))
        .await
        .unwrap();
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;
    let payload = serde_json::json!({"id": "x".repeat(4 * 1024 * 1024)}).to_string();
    let big = serde_json::json!({"path": "/spookify", "max_retries": 0, "payload": payload});
    for _ in 0..20 {
        insert_row(&store, "job", big.clone()).await;
    }
    create_as(&ada, "a4000000000000000000000000000000", "")
        .await
        .unwrap();
    for _ in 0..20 {
        insert_row(&store, "job", big.clone()).await;
    }

    let runner = runner_for(&store, &backend.url).await;
    wait_until("every job ended", WAIT, || async {
        count_status(&store, "job", "success").await + count_status(&store, "job", "failed").await
            == 41
    })
    .await;
    runner.stop().await;

    let ada_job = &rows(&ada, "SELECT * FROM job").await.unwrap()[0];
    assert_eq!(ada_job["status"], "success", "{ada_job}");
    assert_eq!(backend.count(), 1, "only ada's job was called");
    let kinds = store
        .raw("SELECT VALUE errors[0].kind FROM job WHERE status = 'failed'")
        .await
        .unwrap();
    let kinds = kinds[0].as_array().unwrap();
    assert_eq!(kinds.len(), 40);
    assert!(kinds.iter().all(|k| k == "row"), "{kinds:?}");
}

/// The schema bounds what a record user may write, before any runner reads it: a payload over
/// 1 MiB, a path over 2048 characters and a record key over 256 are refused at creation.
#[tokio::test]
async fn an_app_user_cannot_write_an_oversized_row() {
    let store = store_with_app_users().await;
    let ada = app_user(&store, "ada").await;
    let system = &store;
    let create = |key: String, path: String, payload: String| {
        let ada = ada.clone();
        async move {
            let query =
                format!("CREATE ONLY job:`{key}` SET path = '{path}', payload = '{payload}'");
            let _ = rows(&ada, &query).await;
            let check = format!("SELECT VALUE id FROM job:`{key}`");
            !system.raw(&check).await.unwrap()[0]
                .as_array()
                .unwrap()
                .is_empty()
        }
    };
    // A key of exactly `n` characters.
    let key = |n: usize| format!("{:a<n$}", "k");
    let path = "/spookify".to_string();
    let small = "{\"id\":\"t\"}".to_string();
    assert!(
        create(key(32), path.clone(), small.clone()).await,
        "a normal row is created"
    );
    let payload = format!("{{\"id\":\"{}\"}}", "x".repeat(1024 * 1024));
    assert!(
        !create(key(33), path.clone(), payload).await,
        "payload over 1 MiB"
    );
    let long_path = format!("/{}", "p".repeat(2048));
    assert!(
        !create(key(34), long_path, small.clone()).await,
        "path over 2048"
    );
    assert!(
        !create(key(257), path, small).await,
        "key over 256 characters"
    );
}

/// One user cannot grow the queue without bound: with the default `limits.perUser.pending`
/// (1000), the database refuses that user's 1001st pending job at `db.run()` time with a message
/// the app can show; another user, and a system user, are not refused.
#[tokio::test]
async fn the_database_refuses_a_users_job_over_the_pending_quota() {
    let store = store_with_app_users().await;
    let ada = app_user(&store, "ada").await;
    let bob = app_user(&store, "bob").await;
    rows(
        &ada,
        "FOR $n IN 0..1000 { CREATE job SET path = '/spookify', payload = '{}' }",
    )
    .await
    .unwrap();
    let refused = create_as(&ada, "a6000000000000000000000000000000", "")
        .await
        .expect_err("the 1001st pending job is refused");
    assert!(
        refused.to_string().contains(
            "too many pending jobs: at most 1000 of yours may wait at once (limits.perUser.pending)"
        ),
        "{refused}"
    );
    create_as(&bob, "b6000000000000000000000000000000", "")
        .await
        .expect("another user is not refused");
    store
        .raw("CREATE job SET path = '/spookify', payload = '{}'")
        .await
        .expect("a system user is never limited");
    let pending = count_status(&store, "job", "pending").await;
    assert_eq!(pending, 1002);
}

/// `limits.perUser.pending` from the config is what the database enforces once a runner has
/// prepared the table.
#[tokio::test]
async fn the_configured_quota_is_the_one_enforced() {
    let store = mem_store().await;
    let limited = backends_with(
        "http://127.0.0.1:9",
        "job",
        "baseMs: 50\n    limits:\n      perUser:\n        pending: 2",
    );
    assert_eq!(limited[0].backend.row_limits.pending_per_user, 2);
    sp00ky_job_runner::commands::prepare_tables(&store, &limited)
        .await
        .unwrap();
    define_app_access(&store).await;
    let ada = app_user(&store, "ada").await;
    for key in [
        "a7000000000000000000000000000001",
        "a7000000000000000000000000000002",
    ] {
        create_as(&ada, key, "").await.unwrap();
    }
    let refused = create_as(&ada, "a7000000000000000000000000000003", "")
        .await
        .expect_err("the third pending job is refused");
    assert!(
        refused.to_string().contains("at most 2 of yours"),
        "{refused}"
    );
}
