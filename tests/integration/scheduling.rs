//! Delays, priorities and schedules.

use std::time::{Duration, Instant};

use serde_json::json;
use sp00ky_job_runner::ops::admin::{Admin, EnqueueRequest};
use std::sync::Arc;

use crate::helpers::*;

/// A row's `delay` keeps it pending until created_at + delay; it runs soon after.
#[tokio::test]
async fn delayed_jobs_wait_then_run_promptly() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    let runner = runner_for(&store, &backend.url).await;
    let created = Instant::now();
    let delayed = insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"later\"}", "delay": 1500}),
    )
    .await;
    let now = job("/spookify")
        .payload(json!({"id": "now"}))
        .max_retries(0)
        .insert(&store)
        .await;
    assert_eq!(
        wait_final(&store, &now, Duration::from_secs(20)).await["status"],
        "success"
    );
    assert_eq!(
        row(&store, &delayed).await["status"],
        "pending",
        "not picked before its delay"
    );
    let done = wait_final(&store, &delayed, Duration::from_secs(20)).await;
    runner.stop().await;
    assert_eq!(done["status"], "success");
    let requests = backend.requests();
    let later = requests.iter().find(|r| r.json()["id"] == "later").unwrap();
    let waited = later.at - created;
    assert!(
        waited >= Duration::from_millis(1500),
        "ran after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(1500) + Duration::from_secs(2),
        "picked late: {waited:?}"
    );
}

/// `enqueue` takes a delay or an absolute time, and a priority.
#[tokio::test]
async fn enqueue_accepts_delay_run_at_and_priority() {
    let store = mem_store().await;
    let runtimes = backends("http://127.0.0.1:9", "job");
    sp00ky_job_runner::commands::prepare_tables(&store, &runtimes)
        .await
        .unwrap();
    let admin = Admin::new(
        store.clone(),
        Arc::new(runtimes.into_iter().map(Arc::new).collect()),
    );
    let request =
        |delay_ms: Option<u64>, run_at: Option<&str>, priority: Option<i64>| EnqueueRequest {
            backend: "api".into(),
            path: "/spookify".into(),
            payload: json!({"id": "x"}),
            max_retries: None,
            retry_strategy: None,
            assigned_to: None,
            timeout: None,
            delay_ms,
            run_at: run_at.map(str::to_string),
            priority,
        };
    let delayed = admin
        .enqueue(request(Some(60_000), None, Some(5)))
        .await
        .unwrap();
    let row = store.get(&delayed).await.unwrap().unwrap();
    let due: chrono::DateTime<chrono::Utc> = row["due_at"].as_str().unwrap().parse().unwrap();
    let created: chrono::DateTime<chrono::Utc> =
        row["created_at"].as_str().unwrap().parse().unwrap();
    let wait = (due - created).num_milliseconds();
    assert!((59_000..=61_000).contains(&wait), "{wait} ms");
    assert_eq!(
        (row["delay"].as_i64(), row["priority"].as_i64()),
        (Some(60_000), Some(5))
    );

    let at = admin
        .enqueue(request(None, Some("2031-01-02T03:04:05Z"), None))
        .await
        .unwrap();
    let row = store.get(&at).await.unwrap().unwrap();
    assert_eq!(row["due_at"], "2031-01-02T03:04:05Z");
    assert!(
        admin
            .enqueue(request(Some(1), Some("2031-01-02T03:04:05Z"), None))
            .await
            .is_err()
    );
    assert!(
        admin
            .enqueue(request(None, Some("tomorrow"), None))
            .await
            .is_err()
    );
}

/// Among due jobs, higher priority runs first; equal priorities keep oldest-first.
#[tokio::test]
async fn priorities_order_due_jobs() {
    let store = mem_store().await;
    let backend = TestBackend::ok().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &backends(&backend.url, "job"))
        .await
        .unwrap();
    let plan: Vec<(&str, i64)> = vec![
        ("low-1", -5),
        ("plain-1", 0),
        ("high-1", 10),
        ("plain-2", 0),
        ("mid-1", 3),
        ("high-2", 10),
        ("low-2", -5),
        ("plain-3", 0),
        ("mid-2", 3),
    ];
    for (name, priority) in &plan {
        insert_row(&store, "job", json!({"path": "/spookify", "payload": json!({"id": name}).to_string(), "priority": priority})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // A backlog of plain jobs behind them must not bury a high-priority job added later.
    for n in 0..40 {
        insert_row(&store, "job", json!({"path": "/spookify", "payload": json!({"id": format!("backlog-{n}")}).to_string()})).await;
    }
    insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"urgent\"}", "priority": 100}),
    )
    .await;
    let mut options = fast_options("r1");
    options.concurrency = 1;
    let runner = start_runner(&store, backends(&backend.url, "job"), options).await;
    wait_until("all jobs to run", Duration::from_secs(60), || async {
        backend.count() == plan.len() + 41
    })
    .await;
    runner.stop().await;
    let order = backend.called_ids();
    assert_eq!(
        &order[..6],
        ["urgent", "high-1", "high-2", "mid-1", "mid-2", "plain-1"],
        "{order:?}"
    );
    assert_eq!(&order[order.len() - 2..], ["low-1", "low-2"], "{order:?}");
    let plain: Vec<&String> = order
        .iter()
        .filter(|o| o.starts_with("plain") || o.starts_with("backlog"))
        .collect();
    assert_eq!(plain[..3], ["plain-1", "plain-2", "plain-3"]);
}

pub(crate) fn schedule(
    name: &str,
    expression: &str,
    missed: &str,
) -> sp00ky_job_runner::schedule::scheduler::Planned {
    let yaml = format!(
        "backends:\n  api:\n    baseUrl: http://127.0.0.1:9\n    spec: ./openapi.yml\n    method:\n      type: outbox\n      table: job\n    schedules:\n      - name: {name}\n        schedule: \"{expression}\"\n        path: /spookify\n        payload: {{id: tick}}\n        missed: {missed}\n"
    );
    let config = sp00ky_job_runner::config::from_yaml(
        &yaml,
        sp00ky_job_runner::config::Origin::File("s.yml".into()),
        &fixture(""),
        &|_| None,
        sp00ky_job_runner::job::retry::RetryPolicy::default(),
    )
    .unwrap();
    sp00ky_job_runner::schedule::scheduler::Planned {
        table: table_named("job"),
        schedule: config.backends[0].schedules[0].clone(),
    }
}

async fn tick_rows(store: &sp00ky_job_runner::store::Store, name: &str) -> Vec<i64> {
    let rows = store
        .raw("SELECT VALUE record::id(id) FROM job")
        .await
        .unwrap();
    let prefix = format!("sched_{name}_");
    let mut ticks: Vec<i64> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|key| {
            let rest = key.as_str()?.strip_prefix(&prefix)?;
            // `<unix seconds>_<random suffix>`
            rest.split('_').next()?.parse().ok()
        })
        .collect();
    ticks.sort();
    ticks
}

/// Three runners' schedulers over several ticks of a per-second schedule: one row per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_create_exactly_one_row_per_tick() {
    let store = mem_store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    let plan = schedule("every_second", "* * * * * *", "run-once");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(sp00ky_job_runner::schedule::scheduler::run(
            store.clone(),
            vec![plan.clone()],
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
    }
    wait_until("four ticks", Duration::from_secs(20), || async {
        tick_rows(&store, "every_second").await.len() >= 4
    })
    .await;
    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let ticks = tick_rows(&store, "every_second").await;
    let total = store
        .raw("SELECT count() AS n FROM job GROUP ALL")
        .await
        .unwrap()[0][0]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(total as usize, ticks.len(), "only tick rows exist");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1,
            "one row per second, no gap and no duplicate: {ticks:?}"
        );
    }
    let first = store
        .raw(&format!(
            "SELECT * FROM ONLY job WHERE schedule = 'every_second' AND due_at = <datetime> '{}' LIMIT 1",
            chrono::DateTime::from_timestamp(ticks[0], 0).unwrap().to_rfc3339()
        ))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first["payload"], "{\"id\":\"tick\"}");
    assert_eq!(first["status"], "pending");
}

/// After downtime the most recent missed tick runs once (not once per missed tick), or is skipped.
#[tokio::test]
async fn missed_ticks_run_once_or_are_skipped() {
    for (missed, expected_rows) in [("run-once", 1usize), ("skip", 0)] {
        let store = mem_store().await;
        store.apply_schema(&table_named("job")).await.unwrap();
        let name = format!("minutely_{}", missed.replace('-', "_"));
        let plan = schedule(&name, "rate(1 minutes)", missed);
        // The last tick this schedule produced was ten minutes ago: nine ticks were missed.
        let ten_minutes_ago = chrono::Utc::now() - chrono::Duration::minutes(10);
        store
            .record_schedule_tick(&format!("job:{name}"), ten_minutes_ago)
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sp00ky_job_runner::schedule::scheduler::run(
            store.clone(),
            vec![plan],
            async move {
                let _ = stopped.await;
            },
        ));
        let state_moved = || async {
            store
                .schedule_last_tick(&format!("job:{name}"))
                .await
                .unwrap()
                > Some(ten_minutes_ago)
        };
        wait_until(
            "the missed ticks to be handled",
            Duration::from_secs(10),
            state_moved,
        )
        .await;
        let _ = stop.send(());
        task.await.unwrap();
        let ticks = tick_rows(&store, &name).await;
        assert_eq!(ticks.len(), expected_rows, "{missed}: {ticks:?}");
        if let Some(tick) = ticks.first() {
            let now = chrono::Utc::now().timestamp();
            assert_eq!(tick % 60, 0);
            assert!(
                now - tick < 60,
                "the most recent missed tick, not an old one"
            );
        }
    }
}

/// A bad schedule fails when the configuration loads, naming the key.
#[test]
fn invalid_schedules_fail_at_load() {
    let load = |entry: &str| {
        let yaml = format!(
            "backends:\n  api:\n    baseUrl: http://127.0.0.1:9\n    spec: ./openapi.yml\n    method:\n      type: outbox\n      table: job\n    schedules:\n      - {entry}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("openapi.yml"), dir.path().join("openapi.yml")).unwrap();
        std::fs::write(dir.path().join("sp00ky.yml"), yaml).unwrap();
        let global = sp00ky_job_runner::commands::args::GlobalArgs {
            config: dir.path().join("sp00ky.yml"),
            db: None,
            namespace: None,
            database: None,
            user: None,
            pass: None,
            connect_timeout: None,
            log_format: sp00ky_job_runner::commands::args::LogFormat::Text,
        };
        sp00ky_job_runner::commands::load_backends(&global, Default::default(), &|_| None)
            .err()
            .map(|e| e.to_string())
    };
    let cron =
        load("{name: bad, schedule: '61 * * * *', path: /spookify, payload: {id: x}}").unwrap();
    assert!(
        cron.contains("backends.api.schedules[0].schedule: \"61 * * * *\" is not a valid schedule"),
        "{cron}"
    );
    let payload =
        load("{name: bad, schedule: '@daily', path: /spookify, payload: {count: 1}}").unwrap();
    assert!(
        payload.contains("backends.api.schedules[0].payload: payload does not match"),
        "{payload}"
    );
    let route = load("{name: bad, schedule: '@daily', path: /nowhere, payload: {}}").unwrap();
    assert!(
        route.contains("backends.api.schedules[0].payload: path \"/nowhere\" is not a route"),
        "{route}"
    );
    let zone = load("{name: bad, schedule: '0 9 * * *', timezone: Mars/Olympus, path: /spookify, payload: {id: x}}").unwrap();
    assert!(zone.contains("IANA"), "{zone}");
    assert!(
        load("{name: good, schedule: 'rate(5 minutes)', path: /spookify, payload: {id: x}}")
            .is_none()
    );
}

/// While a backlog drains, the runner looks and claims in one request, and full looks come only
/// once per poll interval (here longer than the whole test). A high-priority job added in the
/// middle must still run next, not after the backlog.
#[tokio::test]
async fn a_priority_job_added_while_a_backlog_drains_runs_next() {
    const BACKLOG: usize = 30;
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(20))).await;
    insert_in_order(&store, &backend.url, BACKLOG).await;
    let mut options = fast_options("r1");
    options.concurrency = 1;
    options.poll_interval = Duration::from_secs(60);
    let runner = start_runner(&store, backends(&backend.url, "job"), options).await;
    wait_until(
        "a few backlog jobs to run",
        Duration::from_secs(30),
        || async { backend.count() >= 5 },
    )
    .await;
    insert_row(
        &store,
        "job",
        json!({"path": "/spookify", "payload": "{\"id\":\"urgent\"}", "priority": 10}),
    )
    .await;
    let called_before = backend.count();
    wait_until("every job to run", Duration::from_secs(30), || async {
        backend.count() == BACKLOG + 1
    })
    .await;
    runner.stop().await;
    let order = backend.called_ids();
    let at = order.iter().position(|id| id == "urgent").unwrap();
    // One slot: at most the job in its call when the urgent one arrived runs before it.
    assert!(
        at <= called_before + 1,
        "urgent ran {at}th, {called_before} had been called when it arrived: {order:?}"
    );
}

/// Backends take turns: with one slot and a backlog in each of two tables, the claim round starts
/// with the other backend each time, so neither table waits for the other to drain. A round that
/// fills the slots ends early; it must still pass the first turn on.
#[tokio::test]
async fn two_backlogs_take_turns_for_one_slot() {
    const EACH: usize = 8;
    let backend = TestBackend::ok().await;
    let yaml = format!(
        "backends:\n{}{}",
        backend_entry("left", &backend.url, ""),
        backend_entry("right", &backend.url, "")
    );
    let store = mem_store().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &runtimes_of(&yaml))
        .await
        .unwrap();
    for n in 0..EACH {
        for side in ["left", "right"] {
            let payload = json!({"id": format!("{side}-{n}")}).to_string();
            insert_row(
                &store,
                &format!("{side}_job"),
                json!({"path": "/spookify", "payload": payload}),
            )
            .await;
        }
    }
    let mut options = fast_options("turns");
    options.concurrency = 1;
    let runner = start_runner(&store, runtimes_of(&yaml), options).await;
    wait_until("every job to run", Duration::from_secs(30), || async {
        backend.count() == 2 * EACH
    })
    .await;
    runner.stop().await;
    let order = backend.called_ids();
    let first_half = &order[..EACH];
    let left = first_half
        .iter()
        .filter(|id| id.starts_with("left"))
        .count();
    // Strict turns give EACH / 2 to each; one backend draining first gives EACH to one.
    assert!(
        (EACH / 2 - 1..=EACH / 2 + 1).contains(&left),
        "the first {EACH} calls took {left} from one table: {order:?}"
    );
}
