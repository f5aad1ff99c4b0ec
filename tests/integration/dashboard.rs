//! The dashboard's pages, overview and live feed, and the operator verbs behind its buttons:
//! list filters and paging, bulk retry and bulk delete, through the listener a browser talks to.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::ops::{ADMIN, AdminApi, call, prepared_runner, serve_ops};

#[tokio::test]
async fn the_pages_load_for_anyone_and_their_data_only_with_the_token() {
    let backend = TestBackend::ok().await;
    let (store, runner) = prepared_runner(&backend.url, "pages").await;
    let url = serve_ops(&store, &runner, Some(ADMIN)).await;

    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let response = reqwest::get(format!("{url}{path}")).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("default-src 'self'") && policy.contains("script-src 'self'"),
            "{policy}"
        );
        // Nothing from elsewhere: the only absolute URL is SVG's namespace name, which is never fetched.
        let body = response
            .text()
            .await
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path}"
        );
    }
    let page = reqwest::get(format!("{url}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/assets/app.js") && page.contains("/assets/app.css"));

    // The data: 401 without the token, for the overview and for the feed.
    for path in ["/v1/overview", "/v1/events", "/v1/jobs"] {
        let (code, body) = call(reqwest::Method::GET, format!("{url}{path}"), None, None).await;
        assert_eq!(code, 401, "{path}: {body}");
        let (code, _) = call(
            reqwest::Method::GET,
            format!("{url}{path}"),
            Some("wrong"),
            None,
        )
        .await;
        assert_eq!(code, 401, "{path}");
    }
    let api = AdminApi { url: url.clone() };
    job("/spookify")
        .payload(json!({"id": "a"}))
        .insert(&store)
        .await;
    let (code, overview) = api.get("/v1/overview").await;
    assert_eq!(code, 200, "{overview}");
    assert_eq!(overview["runner_id"], "pages");
    assert_eq!(overview["backends"][0]["name"], "api");
    assert_eq!(overview["backends"][0]["table"], "job");
    assert_eq!(
        overview["backends"][0]["counts"]["pending"], 1,
        "{overview}"
    );
    assert_eq!(
        overview["backends"][0]["series"]["finished"]
            .as_array()
            .unwrap()
            .len(),
        60
    );

    browser_mistakes_get_a_clear_4xx(&url).await;
}

/// Whatever a browser sends, a clear 4xx with a message, never a 500.
async fn browser_mistakes_get_a_clear_4xx(url: &str) {
    for (method, path, body) in [
        ("GET", "/v1/jobs?status=bogus", None),
        ("GET", "/v1/jobs?limit=0", None),
        ("GET", "/v1/jobs?cursor=zz", None),
        ("GET", "/v1/jobs?cursor=7c", None),
        ("GET", "/v1/jobs/not%20an%20id", None),
        ("GET", "/v1/jobs/other:abc", None),
        ("POST", "/v1/jobs/retry", Some(json!({"status": "success"}))),
        (
            "POST",
            "/v1/jobs/retry",
            Some(json!({"status": "failed", "since": "last week"})),
        ),
        (
            "POST",
            "/v1/jobs/delete",
            Some(json!({"status": "pending"})),
        ),
        (
            "POST",
            "/v1/jobs/delete",
            Some(json!({"status": "success", "older_than": "forever"})),
        ),
        ("POST", "/v1/jobs/delete", Some(json!({"stat": "success"}))),
        ("DELETE", "/v1/overview", None),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (code, answer) = call(method, format!("{url}{path}"), Some(ADMIN), body).await;
        assert!((400..500).contains(&code), "{path}: {code} {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {answer}"
        );
    }
}

/// Reads Server-Sent Events from `/v1/events` until `until` holds for the events so far.
async fn read_events(
    url: &str,
    within: Duration,
    until: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let response = reqwest::Client::new()
        .get(format!("{url}/v1/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !until(&events) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no more events within {within:?}; got {events:?}"))
            .expect("the feed stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim());
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_feed_carries_each_status_change_and_the_overview() {
    let backend = TestBackend::start(|request, _| {
        if request.json()["id"] == "bad" {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    let (store, runner) = prepared_runner(&backend.url, "feed").await;
    let url = serve_ops(&store, &runner, Some(ADMIN)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    let feed_url = url.clone();
    let watching = tokio::spawn(async move {
        read_events(&feed_url, Duration::from_secs(20), |events| {
            let finals = events
                .iter()
                .filter(|(name, e)| {
                    name == "job" && matches!(e["status"].as_str(), Some("success" | "failed"))
                })
                .count();
            let overviews = events.iter().filter(|(name, _)| name == "overview").count();
            finals == 2 && overviews >= 2
        })
        .await
    });
    // The feed is subscribed once its first overview arrives; give it that moment by waiting for
    // the listener to have a subscriber.
    wait_until("the feed to subscribe", Duration::from_secs(5), || async {
        call(
            reqwest::Method::GET,
            format!("{url}/v1/overview"),
            Some(ADMIN),
            None,
        )
        .await
        .0 == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let good = job("/spookify")
        .payload(json!({"id": "good"}))
        .insert(&store)
        .await;
    let bad = job("/spookify")
        .payload(json!({"id": "bad"}))
        .max_retries(0)
        .insert(&store)
        .await;
    let events = watching.await.unwrap();
    let of = |id: &surrealdb::types::RecordId| -> Vec<String> {
        let id = surrealdb::types::ToSql::to_sql(id);
        events
            .iter()
            .filter(|(name, e)| name == "job" && e["id"] == id.as_str())
            .map(|(_, e)| e["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of(&good), ["processing", "success"], "{events:?}");
    assert_eq!(of(&bad), ["processing", "failed"], "{events:?}");
    let job_event = events.iter().find(|(name, _)| name == "job").unwrap();
    assert_eq!(job_event.1["table"], "job");
    assert_eq!(job_event.1["backend"], "api");
    assert_eq!(job_event.1["path"], "/spookify");
    let (_, last_overview) = events
        .iter()
        .rev()
        .find(|(name, _)| name == "overview")
        .unwrap();
    assert_eq!(last_overview["backends"][0]["name"], "api");
    let _ = stop.send(());
    task.await.unwrap();
}

/// Failed and finished rows of two paths, some changed long ago, and one pending row.
async fn seed_finished_rows(store: &sp00ky_job_runner::store::Store) {
    let old = "2026-01-01T00:00:00Z";
    let rows = [
        ("/spookify", "failed", None),
        ("/spookify", "failed", None),
        ("/spookify", "failed", Some(old)),
        ("/threads/x/summary", "failed", None),
        ("/spookify", "success", Some(old)),
        ("/spookify", "success", None),
        ("/spookify", "pending", None),
    ];
    for (path, status, updated) in rows {
        let id = insert_row(
            store,
            "job",
            json!({"path": path, "payload": "{}", "status": status, "retries": 3}),
        )
        .await;
        if let Some(at) = updated {
            store
                .raw(&format!(
                    "UPDATE {} SET updated_at = <datetime> '{at}'",
                    surrealdb::types::ToSql::to_sql(&id)
                ))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn bulk_verbs_touch_only_matching_rows_and_say_how_many() {
    let backend = TestBackend::ok().await;
    let (store, runner) = prepared_runner(&backend.url, "bulk").await;
    let api = AdminApi {
        url: serve_ops(&store, &runner, Some(ADMIN)).await,
    };
    seed_finished_rows(&store).await;
    // Retry the failed /spookify jobs that failed this year... since a day ago: two of them.
    let (code, answer) = api
        .post(
            "/v1/jobs/retry",
            Some(json!({"status": "failed", "path": "/spookify", "since": "1d"})),
        )
        .await;
    assert_eq!(
        (code, answer.clone()),
        (200, json!({"touched": 2, "more": false})),
        "{answer}"
    );
    assert_eq!(
        count_status(&store, "job", "failed").await,
        2,
        "the old one and the other path stay failed"
    );
    // Delete successes finished more than a day ago: one.
    let (code, answer) = api
        .post(
            "/v1/jobs/delete",
            Some(json!({"status": "success", "older_than": "1d"})),
        )
        .await;
    assert_eq!(
        (code, answer.clone()),
        (200, json!({"touched": 1, "more": false})),
        "{answer}"
    );
    assert_eq!(count_status(&store, "job", "success").await, 1);
    // Every failed job, any path: the two left.
    let (_, answer) = api
        .post("/v1/jobs/retry", Some(json!({"status": "failed"})))
        .await;
    assert_eq!(answer["touched"], 2);
    assert_eq!(count_status(&store, "job", "failed").await, 0);
    assert_eq!(count_status(&store, "job", "pending").await, 5);
    let retried = store
        .raw("SELECT VALUE retries FROM job WHERE status = 'pending'")
        .await
        .unwrap();
    assert!(
        retried[0]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == 0 || r == 3),
        "{retried:?}"
    );
}

#[tokio::test]
async fn pages_are_newest_first_filtered_and_stay_correct_while_rows_change() {
    let backend = TestBackend::ok().await;
    let (store, runner) = prepared_runner(&backend.url, "paging").await;
    let api = AdminApi {
        url: serve_ops(&store, &runner, Some(ADMIN)).await,
    };
    let mut ids = Vec::new();
    for n in 0..7 {
        let id = format!("job:k{n}");
        store
            .raw(&format!("CREATE {id} SET path = '/spookify', payload = '{{}}', created_at = <datetime> '2026-11-0{}T00:00:00Z', assigned_to = thread:t{n}", n + 1))
            .await
            .unwrap();
        ids.push(id);
    }
    ids.reverse(); // newest first
    let (_, first) = api.get("/v1/jobs?limit=3").await;
    let page_ids = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(page_ids(&first), ids[..3]);
    // Meanwhile: a new job arrives, and one already shown is deleted.
    insert_row(&store, "job", json!({"path": "/spookify", "payload": "{}"})).await;
    store.raw(&format!("DELETE {}", ids[2])).await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = api.get(&format!("/v1/jobs?limit=3&cursor={cursor}")).await;
    assert_eq!(page_ids(&second), ids[3..6], "{second}");
    let (_, third) = api
        .get(&format!(
            "/v1/jobs?limit=3&cursor={}",
            second["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page_ids(&third), ids[6..], "{third}");
    assert!(third.get("next_cursor").is_none());

    // Filters: text in assigned_to, text in the id, path.
    let (_, by_thread) = api.get("/v1/jobs?q=thread:t3").await;
    assert_eq!(page_ids(&by_thread), ids[3..4], "{by_thread}");
    let (_, by_id) = api.get("/v1/jobs?q=job:k6").await;
    assert_eq!(page_ids(&by_id), ids[..1]);
    let (_, by_path) = api.get("/v1/jobs?path=/threads/x/summary").await;
    assert!(page_ids(&by_path).is_empty());
}
