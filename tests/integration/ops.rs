//! The operations listener: health, readiness, metrics, and the admin API with its token.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use sp00ky_job_runner::ops::admin::Admin;
use sp00ky_job_runner::ops::listener::{self, OpsState};
use sp00ky_job_runner::runner::Runner;
use sp00ky_job_runner::store::Store;

use crate::helpers::*;

pub(crate) const ADMIN: &str = "admin-secret-for-tests";

/// Serves the ops router on 127.0.0.1:0 for `runner` (not started) and returns its base URL.
pub(crate) async fn serve_ops(store: &Store, runner: &Runner, token: Option<&str>) -> String {
    let state = OpsState::new(
        store.clone(),
        runner.status(),
        Admin::new(store.clone(), runner.backends()),
        token.map(|t| SecretString::from(t.to_string())),
        std::time::Duration::from_secs(1),
    );
    serve_state_on(state, "127.0.0.1:0").await
}

/// Serves `state` on a listener bound to `addr`, as the service binds it; its URL on loopback.
async fn serve_state_on(state: OpsState, addr: &str) -> String {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let url = format!("http://127.0.0.1:{}", bound.port());
    let state = state.bound_to(bound);
    tokio::spawn(listener::serve(listener, state, std::future::pending()));
    url
}

/// A loopback listener answers only requests that name a loopback host (no DNS rebinding from
/// a page in the operator's browser); an exposed one asks for the admin token on `/metrics`.
#[tokio::test]
async fn the_listener_answers_only_whom_it_should() {
    let (store, runner) = prepared_runner("http://127.0.0.1:9", "hosts").await;
    let local = serve_ops(&store, &runner, Some(ADMIN)).await;
    let get = |url: String, host: Option<&'static str>, token: Option<&'static str>| async move {
        let mut request = client().get(url);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(get(format!("{local}/healthz"), None, None).await, 200);
    assert_eq!(
        get(format!("{local}/healthz"), Some("localhost:1"), None).await,
        200
    );
    assert_eq!(
        get(format!("{local}/metrics"), Some("attacker.example"), None).await,
        421
    );
    let admin = get(
        format!("{local}/v1/jobs"),
        Some("attacker.example:80"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(admin, 421, "not even with the token");

    let state = OpsState::new(
        store.clone(),
        runner.status(),
        Admin::new(store.clone(), runner.backends()),
        Some(SecretString::from(ADMIN.to_string())),
        std::time::Duration::from_secs(1),
    );
    let exposed = serve_state_on(state, "0.0.0.0:0").await;
    assert_eq!(get(format!("{exposed}/metrics"), None, None).await, 401);
    assert_eq!(
        get(format!("{exposed}/metrics"), None, Some(ADMIN)).await,
        200
    );
    assert_eq!(
        get(format!("{exposed}/healthz"), Some("anything.example"), None).await,
        200
    );
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub(crate) async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

/// The metrics after two successes and one permanent failure, nothing left running.
fn metrics_count_the_three_jobs(text: &str) {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let api = [("backend", "api")];
    assert_eq!(
        metric(
            &scrape,
            "sp00ky_runner_jobs_finished_total",
            &[("backend", "api"), ("outcome", "success")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "sp00ky_runner_jobs_finished_total",
            &[("backend", "api"), ("outcome", "failed")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "sp00ky_runner_attempt_duration_seconds_count",
            &api
        )
        .or(metric(
            &scrape,
            "sp00ky_runner_attempt_duration_seconds",
            &api
        )),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "sp00ky_runner_claim_lag_seconds_count", &[]).or(metric(
            &scrape,
            "sp00ky_runner_claim_lag_seconds",
            &[]
        )),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "sp00ky_runner_in_flight_jobs", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "sp00ky_runner_job_rows",
            &[("table", "job"), ("status", "pending")]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &scrape,
            "sp00ky_runner_job_rows",
            &[("table", "job"), ("status", "processing")]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&scrape, "sp00ky_runner_db_reconnects_total", &[]),
        Some(0.0),
        "{text}"
    );
}

/// A fresh store with the `job` table, and a runner (not started) over the fixture backend.
pub(crate) async fn prepared_runner(backend_url: &str, runner_id: &str) -> (Store, Runner) {
    let store = mem_store().await;
    let backends = backends(backend_url, "job");
    sp00ky_job_runner::commands::prepare_tables(&store, &backends)
        .await
        .unwrap();
    let runner = Runner::new(store.clone(), backends, fast_options(runner_id));
    (store, runner)
}

#[tokio::test]
async fn health_readiness_and_metrics_after_known_jobs() {
    let backend = TestBackend::start(|request, _| {
        if request.json()["id"] == "missing" {
            Reply::status(404)
        } else {
            Reply::ok()
        }
    })
    .await;
    let (store, runner) = prepared_runner(&backend.url, "metrics").await;
    let url = serve_ops(&store, &runner, None).await;
    let status = runner.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));

    let mut ids = Vec::new();
    for id in ["a", "b", "missing"] {
        ids.push(
            job("/spookify")
                .payload(json!({"id": id}))
                .max_retries(0)
                .insert(&store)
                .await,
        );
    }
    for id in &ids {
        wait_final(&store, id, Duration::from_secs(20)).await;
    }
    wait_until("live queries armed", Duration::from_secs(10), || async {
        status.live_queries_armed()
    })
    .await;

    let health = client().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (code, ready) = call(reqwest::Method::GET, format!("{url}/readyz"), None, None).await;
    assert_eq!(
        (code, ready),
        (200, json!({"database": true, "live_queries": true}))
    );

    let text = client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics_count_the_three_jobs(&text);

    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn the_admin_api_needs_the_right_token() {
    let (store, runner) = prepared_runner("http://127.0.0.1:9", "admin").await;
    let open = serve_ops(&store, &runner, None).await;
    let guarded = serve_ops(&store, &runner, Some(ADMIN)).await;

    let (code, body) = call(reqwest::Method::GET, format!("{open}/v1/jobs"), None, None).await;
    assert_eq!(
        code, 403,
        "no token configured: the admin API is off: {body}"
    );
    let (code, body) = call(
        reqwest::Method::GET,
        format!("{guarded}/v1/jobs"),
        None,
        None,
    )
    .await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("missing"));
    let (code, _) = call(
        reqwest::Method::GET,
        format!("{guarded}/v1/jobs"),
        Some("wrong"),
        None,
    )
    .await;
    assert_eq!(code, 401);
    let (code, body) = call(
        reqwest::Method::GET,
        format!("{guarded}/v1/jobs"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!((code, body), (200, json!({"jobs": []})));
    // No cache may keep an admin answer, granted or refused.
    for token in [Some(ADMIN), Some("wrong"), None] {
        let mut request = client().get(format!("{guarded}/v1/jobs"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let cache = response.headers().get("cache-control");
        assert_eq!(
            cache.and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{token:?}"
        );
    }
    // Health and metrics stay open: they carry no job data.
    assert_eq!(
        client()
            .get(format!("{guarded}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    assert!(listener::check_exposure(&"0.0.0.0:8787".parse().unwrap(), None).is_err());
    assert!(
        listener::check_exposure(
            &"0.0.0.0:8787".parse().unwrap(),
            Some(&SecretString::from("t"))
        )
        .is_ok()
    );
    assert!(listener::check_exposure(&"127.0.0.1:8787".parse().unwrap(), None).is_ok());
    assert!(listener::check_exposure(&"[::1]:8787".parse().unwrap(), None).is_ok());
}

/// The admin API of a test listener, called with the test token.
pub(crate) struct AdminApi {
    pub(crate) url: String,
}

impl AdminApi {
    pub(crate) async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        call(
            reqwest::Method::POST,
            format!("{}{path}", self.url),
            Some(ADMIN),
            body,
        )
        .await
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        call(
            reqwest::Method::GET,
            format!("{}{path}", self.url),
            Some(ADMIN),
            None,
        )
        .await
    }
}

/// Bad enqueue requests and malformed bodies: each a 4xx with a JSON error, never a crash.
/// Cancelling a pending job ends it `failed` (again: 409), and a bulk retry leaves what an
/// operator cancelled alone.
async fn cancel_then_retry_in_bulk(api: &AdminApi, id: &str) {
    // Cancel a pending job; cancelling again conflicts.
    let (code, cancelled) = api.post(&format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "failed");
    assert_eq!(cancelled["errors"][0]["kind"], "cancelled");
    assert_eq!(
        api.post(&format!("/v1/jobs/{id}/cancel"), None).await.0,
        409
    );

    // A retry by id still takes it (below).
    let (code, bulk) = api
        .post("/v1/jobs/retry", Some(json!({"status": "failed"})))
        .await;
    assert_eq!((code, bulk["touched"].as_u64()), (200, Some(0)), "{bulk}");
    assert_eq!(
        api.get(&format!("/v1/jobs/{id}")).await.1["status"],
        "failed"
    );
}

async fn bad_requests_get_clear_errors(api: &AdminApi) {
    for (body, expected) in [
        (
            json!({"backend": "api", "path": "/spookify", "payload": {}}),
            "\"id\" is a required property",
        ),
        (
            json!({"backend": "nope", "path": "/spookify", "payload": {"id": "x"}}),
            "no backend named",
        ),
        (
            json!({"backend": "api", "path": "/admin", "payload": {"id": "x"}}),
            "not a route",
        ),
        (
            json!({"backend": "api", "path": "/spookify", "payload": {"id": "x"}, "retry_strategy": "fibonacci"}),
            "linear or exponential",
        ),
        (
            json!({"backend": "api", "path": "/spookify", "payload": {"id": "x"}, "timeout": 0}),
            "1 to 3600",
        ),
    ] {
        let (code, body) = api.post("/v1/jobs", Some(body)).await;
        assert_eq!(code, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(expected), "{body}");
    }
    // Malformed bodies: not JSON, wrong types, unknown fields. Each gets a JSON error, never a crash.
    let raw = client()
        .post(format!("{}/v1/jobs", api.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(raw.json::<Value>().await.unwrap()["error"].is_string());
    for body in [
        json!([1, 2]),
        json!({"backend": 5}),
        json!({"backend": "api", "path": "/spookify", "extra": true}),
    ] {
        let (code, body) = api.post("/v1/jobs", Some(body)).await;
        assert!((400..500).contains(&code), "{code} {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(api.get("/v1/jobs/not-an-id").await.0, 400);
    assert_eq!(
        api.get("/v1/jobs/user:abc").await.0,
        404,
        "other tables are not reachable"
    );
    assert_eq!(api.get("/v1/jobs/job:doesnotexist").await.0, 404);
    assert_eq!(api.get("/v1/jobs?status=weird").await.0, 400);
    assert_eq!(api.get("/v1/jobs?limit=0").await.0, 400);
    assert_eq!(api.get("/v1/jobs?limit=abc").await.0, 400);
    assert_eq!(api.get("/v1/nothing").await.0, 404);
}

#[tokio::test]
async fn admin_verbs_and_malformed_requests() {
    let (store, runner) = prepared_runner("http://127.0.0.1:9", "admin").await;
    let url = serve_ops(&store, &runner, Some(ADMIN)).await;
    let api = AdminApi { url: url.clone() };

    // Enqueue, validated like db.run.
    let (code, created) = api.post("/v1/jobs", Some(json!({"backend": "api", "path": "/spookify", "payload": {"id": "t1"}, "max_retries": 1}))).await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job:") && id.len() == 36, "{id}");
    let (code, shown) = api.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (shown["status"].as_str(), shown["max_retries"].as_u64()),
        (Some("pending"), Some(1))
    );
    assert_eq!(
        shown["payload"], "{\"id\":\"t1\"}",
        "stored as the Sp00ky client stores it"
    );

    bad_requests_get_clear_errors(&api).await;

    cancel_then_retry_in_bulk(&api, &id).await;

    // Retry the failed job: pending again, fresh budget, history kept.
    let (code, retried) = api.post(&format!("/v1/jobs/{id}/retry"), None).await;
    assert_eq!(code, 200, "{retried}");
    assert_eq!(
        (retried["status"].as_str(), retried["retries"].as_u64()),
        (Some("pending"), Some(0))
    );
    assert_eq!(retried["errors"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.post(&format!("/v1/jobs/{id}/retry"), None).await.0,
        409,
        "only failed jobs can be retried"
    );

    // Paging: five more jobs, pages of two, every job exactly once.
    for n in 0..5 {
        assert_eq!(api.post("/v1/jobs", Some(json!({"backend": "api", "path": "/spookify", "payload": {"id": format!("p{n}")}}))).await.0, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_string(),
        };
        let (code, page) = api.get(&path).await;
        assert_eq!(code, 200, "{page}");
        for job in page["jobs"].as_array().unwrap() {
            seen.push(job["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (6, 6), "{seen:?}");
    let (_, pending) = api.get("/v1/jobs?status=pending&limit=500").await;
    assert_eq!(pending["jobs"].as_array().unwrap().len(), 6);
}
