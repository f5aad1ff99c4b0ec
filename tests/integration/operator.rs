//! The operator's loop from a terminal: `dev` holding the embedded store while the CLI verbs go
//! through its admin API, and `run --once`.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::processes::free_port;

fn runner() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"));
    command
        .env_remove("SPKY_JOB_CONFIG")
        .env_remove("SPKY_DB_WS")
        .env_remove("SPKY_DB_URL")
        .env_remove("SPKY_RUNNER_ADMIN_TOKEN")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    command
}

/// A project folder: the current-shape sp00ky.yml and the fixture spec, its backend at `url`.
struct Project {
    dir: tempfile::TempDir,
    db: String,
    backend_url: String,
}

impl Project {
    fn new(backend_url: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("openapi.yml"), dir.path().join("openapi.yml")).unwrap();
        std::fs::copy(fixture("sp00ky-current.yml"), dir.path().join("sp00ky.yml")).unwrap();
        let db = format!(
            "surrealkv://{}",
            dir.path().join(".sp00ky").join("db").display()
        );
        Project {
            dir,
            db,
            backend_url: backend_url.into(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = runner();
        command
            .current_dir(self.dir.path())
            .env("TEST_BASE_URL", &self.backend_url)
            .args(["--db", &self.db])
            .args(args);
        command
    }

    async fn run(&self, listen: u16, args: &[&str]) -> Output {
        self.command(args)
            .env("SPKY_RUNNER_LISTEN", format!("127.0.0.1:{listen}"))
            .output()
            .await
            .unwrap()
    }
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn while_dev_holds_the_embedded_store_the_cli_goes_through_its_admin_api() {
    let backend = TestBackend::ok().await;
    let project = Project::new(&backend.url);
    let port = free_port();
    let mut dev = project
        .command(&[
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll-interval",
            "200ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("dev to be ready", Duration::from_secs(30), || async {
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let token_file = project.dir.path().join(".sp00ky/admin-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only its owner reads the dev token");

    // A job that runs: enqueued from the second terminal, run by dev, seen succeeding.
    let created = project
        .run(
            port,
            &[
                "enqueue",
                "api",
                "/spookify",
                "--payload",
                r#"{"id": "one"}"#,
            ],
        )
        .await;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(id.starts_with("job:"), "{id}");
    wait_until("the job to succeed", Duration::from_secs(20), || async {
        json_of(&project.run(port, &["jobs", "show", &id]).await)["status"] == "success"
    })
    .await;
    assert_eq!(backend.count(), 1);

    same_answers_as_the_direct_path(&project, port).await;

    // Stopping dev removes the token it made.
    crate::processes::signal(dev.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!token_file.exists());
}

/// The verbs through a running runner: the same answers and exit codes as the direct path.
async fn same_answers_as_the_direct_path(project: &Project, port: u16) {
    let refused = project
        .run(
            port,
            &[
                "enqueue",
                "api",
                "/spookify",
                "--payload",
                r#"{"count": 1}"#,
            ],
        )
        .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"id\" is a required property"));
    let later = project
        .run(
            port,
            &[
                "enqueue",
                "api",
                "/spookify",
                "--payload",
                r#"{"id": "later"}"#,
                "--delay",
                "1h",
            ],
        )
        .await;
    let later = String::from_utf8_lossy(&later.stdout).trim().to_string();
    let cancelled = json_of(&project.run(port, &["jobs", "cancel", &later]).await);
    assert_eq!(cancelled["errors"][0]["kind"], "cancelled");
    let again = project.run(port, &["jobs", "cancel", &later]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("only a pending job can be cancelled"));
    let failed = json_of(
        &project
            .run(port, &["jobs", "list", "--status", "failed"])
            .await,
    );
    assert_eq!(failed["jobs"][0]["id"], later.as_str());
    let deleted = json_of(
        &project
            .run(port, &["jobs", "delete", "--status", "failed"])
            .await,
    );
    assert_eq!(deleted["touched"], 1);
    assert_eq!(
        project
            .run(port, &["jobs", "show", &later])
            .await
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_once_processes_every_job_due_now_and_exits() {
    let backend = TestBackend::ok().await;
    let project = Project::new(&backend.url);
    let port = free_port();
    for n in 0..3 {
        let created = project
            .run(
                port,
                &[
                    "enqueue",
                    "api",
                    "/spookify",
                    "--payload",
                    &format!(r#"{{"id": "n{n}"}}"#),
                ],
            )
            .await;
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let later = project
        .run(
            port,
            &[
                "enqueue",
                "api",
                "/spookify",
                "--payload",
                r#"{"id": "later"}"#,
                "--delay",
                "1h",
            ],
        )
        .await;
    assert!(later.status.success());
    let once = tokio::time::timeout(
        Duration::from_secs(60),
        project
            .command(&["run", "--once", "--listen", &format!("127.0.0.1:{port}")])
            .output(),
    )
    .await
    .expect("--once exits by itself")
    .unwrap();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    assert_eq!(
        backend.count(),
        3,
        "the three due jobs, not the delayed one"
    );
    let done = json_of(
        &project
            .run(port, &["jobs", "list", "--status", "success"])
            .await,
    );
    assert_eq!(done["jobs"].as_array().unwrap().len(), 3);
    let pending = json_of(
        &project
            .run(port, &["jobs", "list", "--status", "pending"])
            .await,
    );
    assert_eq!(pending["jobs"].as_array().unwrap().len(), 1);
}
