//! Rows are untrusted, and so is every value inside them: a row may only reach declared routes
//! under its backend's baseUrl, the token never leaks, app users stay in their lane, and no row
//! can cost without bound. One test per vector; the modules below group them.

use std::time::Duration;

use serde_json::json;
use sp00ky_job_runner::config;
use sp00ky_job_runner::job::retry::RetryPolicy;
use sp00ky_job_runner::job::validate::Routes;
use sp00ky_job_runner::runner::BackendRuntime;

use crate::helpers::*;

mod app_users;
mod bounded;
mod claims;
mod params;
mod tenants;

const WAIT: Duration = Duration::from_secs(20);

fn hostile_paths(evil: &str) -> Vec<String> {
    let host = evil.trim_start_matches("http://");
    vec![
        format!("@{host}/x"),
        format!("//{host}/x"),
        format!("{evil}/"),
        format!("/@{host}/x"),
        format!("/spookify@{host}"),
        "/../admin".into(),
        "/spookify/../admin".into(),
        "/%2e%2e/admin".into(),
        "/%2E%2E/spookify".into(),
        "/spookify%2F..%2Fadmin".into(),
        "/spookify\r\nHost: evil.example".into(),
        "/spookify\\..\\admin".into(),
        "/admin".into(),
        "/spookify/".into(),
        "/spookify?x=1".into(),
        "/spookify#frag".into(),
        "spookify".into(),
        "".into(),
        "/SPOOKIFY".into(),
        "/threads/x/summary".into(),
    ]
}

/// Every hostile path fails with kind `route` and no request reaches either server.
#[tokio::test]
async fn hostile_paths_never_reach_anything() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let evil = TestBackend::ok().await;
    let runner = runner_for(&store, &format!("{}/api", backend.url)).await;

    let paths = hostile_paths(&evil.url);
    let mut ids = Vec::new();
    for path in &paths {
        ids.push(job(path).payload(json!({"id": "t"})).insert(&store).await);
    }
    for (path, id) in paths.iter().zip(&ids) {
        let done = wait_final(&store, id, WAIT).await;
        assert_eq!(done["status"], "failed", "{path:?}: {done}");
        assert_eq!(done["errors"][0]["kind"], "route", "{path:?}: {done}");
        assert_eq!(done["retries"], 0);
    }
    runner.stop().await;
    assert_eq!(backend.count(), 0, "{:?}", backend.requests());
    assert_eq!(evil.count(), 0, "{:?}", evil.requests());
}

/// A backend from SPKY_JOB_CONFIG has no spec: plain paths run, anything else is refused.
#[tokio::test]
async fn backends_without_spec_only_take_plain_paths() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let evil = TestBackend::ok().await;
    let json = json!([{
        "name": "api", "table": "job", "base_url": format!("{}/base", backend.url),
        "auth_token": TOKEN, "timeout": 5, "timeout_overridable": false
    }])
    .to_string();
    let config = config::from_env_json(&json, &|_| None, RetryPolicy::default()).unwrap();
    let runtimes: Vec<BackendRuntime> = config
        .backends
        .into_iter()
        .map(|backend| BackendRuntime {
            backend,
            routes: Routes::Unchecked,
        })
        .collect();
    let runner = start_runner(&store, runtimes, fast_options("r1")).await;

    let plain = job("/any/route")
        .payload(json!({"free": "form"}))
        .max_retries(0)
        .insert(&store)
        .await;
    let mut hostile = Vec::new();
    for path in hostile_paths(&evil.url).into_iter().filter(|p| {
        p.contains(['@', '%', '\\', '\r', '?', '#'])
            || p.contains("..")
            || !p.starts_with('/')
            || p.starts_with("//")
    }) {
        hostile.push((
            path.clone(),
            job(&path)
                .payload(json!({}))
                .max_retries(0)
                .insert(&store)
                .await,
        ));
    }
    assert!(hostile.len() >= 10, "{} hostile paths", hostile.len());
    assert_eq!(wait_final(&store, &plain, WAIT).await["status"], "success");
    for (path, id) in &hostile {
        let done = wait_final(&store, id, WAIT).await;
        assert_eq!(done["errors"][0]["kind"], "route", "{path:?}: {done}");
    }
    runner.stop().await;
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, "/base/any/route");
    assert_eq!(evil.count(), 0);
}

/// The token is sent to the backend, and appears nowhere else: not in stored rows (even when the
/// backend echoes it back in an error body), not in any log line of this whole test binary.
#[tokio::test]
async fn the_token_never_leaks() {
    let store = mem_store().await;
    let backend = TestBackend::start(|request, _| {
        let echoed = request
            .header("authorization")
            .unwrap_or_default()
            .to_string();
        Reply::status(400).body(format!("bad request, you sent {echoed}"))
    })
    .await;
    let runner = runner_for(&store, &backend.url).await;
    let id = job("/spookify")
        .payload(json!({"id": "t"}))
        .max_retries(0)
        .insert(&store)
        .await;
    let done = wait_final(&store, &id, WAIT).await;
    runner.stop().await;

    assert_eq!(
        backend.requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let stored = done.to_string();
    assert!(stored.contains("[redacted]"), "{stored}");
    assert!(!stored.contains(TOKEN), "{stored}");
    let everything = store.raw("SELECT * FROM job").await.unwrap();
    assert!(!serde_json::to_string(&everything).unwrap().contains(TOKEN));
    let logs = captured_logs();
    assert!(logs.contains("job failed"), "the runner logged this job");
    assert!(!logs.contains(TOKEN), "the token appears in the logs");
    let config = backends(&backend.url, "job");
    assert!(
        !format!("{:?}", config[0].backend).contains(TOKEN),
        "Debug prints the token"
    );
}
