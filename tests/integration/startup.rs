//! A first start that never depends on start-up order: a runner started before its database
//! waits for it (health up, readiness down), then serves; a one-shot command gives up after
//! its `--connect-timeout` with a clear message.

use std::time::Duration;

use crate::helpers::*;
use crate::processes::{RunnerProcess, Server, insert_jobs, project};

/// The address the runner's listener bound, from its log line.
fn listen_address(logs: &str) -> Option<String> {
    let line = logs
        .lines()
        .find(|l| l.contains("health, metrics and admin API listening"))?;
    let at = line.find("listen=")? + "listen=".len();
    Some(line[at..].split_whitespace().next()?.to_string())
}

async fn status_of(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

/// The runner starts 3 s before SurrealDB: meanwhile `/healthz` answers 200 and `/readyz` 503,
/// and it never exits; once the server is up it checks its tables and runs the jobs, and
/// `/readyz` turns 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_started_before_its_database_waits_then_runs_jobs() {
    let _turn = crate::processes::ONE_AT_A_TIME.lock().await;
    let backend = TestBackend::ok().await;
    let project = project(&backend.url, 100, 1000);
    let mut server = Server::not_started();
    let mut runner = RunnerProcess::spawn(&server, project.path(), &[]);
    runner
        .wait_for_log("waiting for the database", Duration::from_secs(30))
        .await;
    let address = listen_address(&runner.logs()).expect("the listener is up while waiting");
    assert_eq!(
        status_of(&format!("http://{address}/healthz")).await,
        Some(200)
    );
    assert_eq!(
        status_of(&format!("http://{address}/readyz")).await,
        Some(503)
    );

    // The scenario: the database comes three seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        runner.child.try_wait().unwrap().is_none(),
        "{}",
        runner.logs()
    );
    assert_eq!(
        status_of(&format!("http://{address}/readyz")).await,
        Some(503)
    );
    server.start_now().await;

    runner
        .wait_for_log("runner started", Duration::from_secs(60))
        .await;
    let store = server.store().await;
    let ids = insert_jobs(&store, 5, 3, "linear").await;
    for id in &ids {
        assert_eq!(
            wait_final(&store, id, Duration::from_secs(30)).await["status"],
            "success"
        );
    }
    wait_until("readiness", Duration::from_secs(30), || async {
        status_of(&format!("http://{address}/readyz")).await == Some(200)
    })
    .await;
    assert!(
        runner.child.try_wait().unwrap().is_none(),
        "{}",
        runner.logs()
    );
    let logs = runner.logs();
    assert_eq!(
        logs.matches("waiting for the database").count(),
        1,
        "one line per state change, not one per attempt:\n{logs}"
    );
    assert!(logs.contains("database is up"), "{logs}");
}

/// `check` against a database that never comes gives up after `--connect-timeout`, exit 1, and
/// says what it waited for and how to wait longer.
#[test]
fn check_gives_up_after_its_connect_timeout() {
    let dir = project("http://127.0.0.1:9", 100, 1000);
    let port = crate::processes::free_port();
    let started = std::time::Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"))
        .current_dir(dir.path())
        .env("API_TOKEN", TOKEN)
        .env_remove("SPKY_JOB_CONFIG")
        .args([
            "--db",
            &format!("ws://127.0.0.1:{port}"),
            "--connect-timeout",
            "1s",
            "check",
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("ws://127.0.0.1:{port}"))
            && stderr.contains("did not answer within 1s")
            && stderr.contains("--connect-timeout"),
        "{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "gave up after {elapsed:?}"
    );
}
