//! The binary itself: exit codes and messages as a person or a script sees them.

use std::process::Command;

use crate::helpers::fixture;

/// A project in a fresh directory: the fixture spec, and the fixture `sp00ky.yml` with `extra`
/// appended to its backend (indented keys such as `    limits:\n      payloadBytes: 1024\n`).
fn project(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("openapi.yml"), dir.path().join("openapi.yml")).unwrap();
    let config = std::fs::read_to_string(fixture("sp00ky-current.yml")).unwrap();
    let config = format!("{}\n{extra}", config.trim_end());
    std::fs::write(dir.path().join("sp00ky.yml"), config).unwrap();
    dir
}

/// Runs the binary with `args` in `dir`, on a SurrealKV database of its own there.
fn run_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let db = format!("surrealkv://{}", dir.join("db").display());
    runner()
        .current_dir(dir)
        .env("TEST_BASE_URL", "http://127.0.0.1:9/api")
        .arg("--db")
        .arg(&db)
        .args(args)
        .output()
        .unwrap()
}

fn runner() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"));
    command
        .env_remove("SPKY_JOB_CONFIG")
        .env_remove("SPKY_DB_WS")
        .env_remove("SPKY_DB_URL");
    command
}

#[test]
fn a_config_error_exits_78_and_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sp00ky.yml");
    std::fs::write(&config, "apps:\n  api:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: ${UNSET_FOR_THIS_TEST}\n    method:\n      type: outbox\n      table: job\n").unwrap();
    let output = runner()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: apps.api.baseUrl: environment variable UNSET_FOR_THIS_TEST is not set",
            config.display()
        )),
        "{stderr}"
    );
}

/// The admin verbs' CLI twins, straight against the database, on the pending job `id`.
fn the_job_verbs_work_on(run: &dyn Fn(&[&str]) -> std::process::Output, id: &str) {
    let json = |output: std::process::Output| -> serde_json::Value {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("prints JSON")
    };
    let shown = json(run(&["jobs", "show", id]));
    assert_eq!(
        (shown["status"].as_str(), shown["max_retries"].as_u64()),
        (Some("pending"), Some(0))
    );
    let cancelled = json(run(&["jobs", "cancel", id]));
    assert_eq!(cancelled["status"], "failed");
    assert_eq!(cancelled["errors"][0]["kind"], "cancelled");
    let again = run(&["jobs", "cancel", id]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a failed job cannot be cancelled"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("only a pending job can be cancelled"));
    let retried = json(run(&["jobs", "retry", id]));
    assert_eq!(
        (retried["status"].as_str(), retried["retries"].as_u64()),
        (Some("pending"), Some(0))
    );
    let listed = json(run(&["jobs", "list", "--status", "pending"]));
    assert_eq!(listed["jobs"][0]["id"], id);
    assert_eq!(run(&["jobs", "show", "user:nope"]).status.code(), Some(2));
}

#[test]
fn check_prints_the_manifest_and_enqueue_validates_like_db_run() {
    let dir = project("");
    let run = |args: &[&str]| run_in(dir.path(), args);

    let check = run(&["check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.contains("backend:   api"), "{stdout}");
    assert!(stdout.contains("POST /spookify (validated)"), "{stdout}");
    assert!(
        stdout.contains("POST /threads/{id}/summary (validated)"),
        "{stdout}"
    );
    assert!(stdout.contains("bearer token (hidden)"), "{stdout}");
    assert!(!stdout.contains("default-token"), "{stdout}");

    let refused = run(&["enqueue", "api", "/spookify", "--payload", "{\"count\": 1}"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"id\" is a required property"));
    let unknown = run(&["enqueue", "api", "/nope", "--payload", "{}"]);
    assert_eq!(unknown.status.code(), Some(2));

    let created = run(&[
        "enqueue",
        "api",
        "/spookify",
        "--payload",
        "{\"id\": \"thread:1\"}",
        "--max-retries",
        "0",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let key = id.strip_prefix("job:").expect("prints the job id");
    assert_eq!(key.len(), 32);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));

    the_job_verbs_work_on(&run, &id);
}

/// `enqueue` reads a new job as the claim will: a payload over the backend's
/// `limits.payloadBytes` exits 2 with the claim's reason and writes nothing.
#[test]
fn enqueue_refuses_a_payload_over_the_backends_limit() {
    let dir = project("    limits:\n      payloadBytes: 1024\n");
    let run = |args: &[&str]| run_in(dir.path(), args);
    let big = serde_json::json!({"id": "x".repeat(5000)}).to_string();
    let refused = run(&["enqueue", "api", "/spookify", "--payload", &big]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("more than the backend's limit of 1024 (limits.payloadBytes)"),
        "{stderr}"
    );
    assert!(!stderr.contains("xxxxxxxx"), "{stderr}");
    let listed = run(&["jobs", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["jobs"], serde_json::json!([]), "nothing was written");
}

#[test]
fn a_public_listener_without_an_admin_token_is_refused() {
    let dir = project("");
    let output = runner()
        .current_dir(dir.path())
        .env("TEST_BASE_URL", "http://127.0.0.1:9")
        .env_remove("SPKY_RUNNER_ADMIN_TOKEN")
        .args(["--db", "mem://", "run", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

/// A short admin token is refused at start, naming where it came from, never quoting it.
#[test]
fn a_short_admin_token_is_refused() {
    let dir = project("");
    let output = runner()
        .current_dir(dir.path())
        .env("TEST_BASE_URL", "http://127.0.0.1:9")
        .env("SPKY_RUNNER_ADMIN_TOKEN", "admin")
        .args(["--db", "mem://", "run", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("SPKY_RUNNER_ADMIN_TOKEN")
            && stderr.contains("must be at least 16 characters (it has 5)"),
        "{stderr}"
    );
    assert!(!stderr.contains("admin\""), "{stderr}");
}

#[test]
fn schema_prints_the_table_definition() {
    let output = runner()
        .args([
            "--config",
            "/nonexistent.yml",
            "schema",
            "--table",
            "spooky_jobs",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains("DEFINE TABLE IF NOT EXISTS spooky_jobs TYPE NORMAL SCHEMAFULL"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DEFINE INDEX IF NOT EXISTS spooky_jobs_due ON spooky_jobs"),
        "{stdout}"
    );
}

#[test]
fn check_lists_each_schedule_with_its_next_fire_times() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("openapi.yml"), dir.path().join("openapi.yml")).unwrap();
    std::fs::write(
        dir.path().join("sp00ky.yml"),
        "backends:\n  api:\n    baseUrl: http://127.0.0.1:9\n    spec: ./openapi.yml\n    method:\n      type: outbox\n      table: job\n    schedules:\n      - name: nightly\n        schedule: '0 3 * * *'\n        path: /spookify\n        payload: {id: all}\n",
    )
    .unwrap();
    let output = runner()
        .current_dir(dir.path())
        .args(["--db", "mem://", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("schedule: nightly"))
        .expect("the schedule is listed");
    assert!(line.contains("`0 3 * * *` /spookify -> next:"), "{line}");
    assert_eq!(line.matches("03:00:00 UTC").count(), 3, "{line}");
}

/// A proxy named by the environment never sees the CLI's calls to a runner (which carry the
/// admin token); backend calls build their client the same way (`Caller::new`).
#[tokio::test]
async fn calls_never_go_through_a_proxy_from_the_environment() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let runner_listener = crate::helpers::TestBackend::ok().await;
    let listen = runner_listener
        .url
        .trim_start_matches("http://")
        .to_string();
    let output = tokio::task::spawn_blocking(move || {
        runner()
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .args(["health", "--listen", &listen])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(runner_listener.count(), 1, "the call reached the runner");
    assert!(proxy.accept().is_err(), "the proxy was asked");
}
