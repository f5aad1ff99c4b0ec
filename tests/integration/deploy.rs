//! The ways users run the service: `spky dev`'s sidecar environment, `dev` mode, and the
//! Docker and systemd files (checked as far as this machine allows: no Docker engine runs here;
//! `.ci/run` also runs `systemd-analyze verify` on the unit).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Reply, TOKEN, TestBackend, fixture, row, table_named, wait_until};
use crate::processes::{ROOT_PASS, ROOT_USER, Server, wait_exit};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Started with only what `spky dev` gives its sidecar (SPKY_JOB_CONFIG, SPKY_DB_*, RUST_LOG)
/// and no flags, the runner does its whole job; its log lines are whole and plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_only_start_runs_jobs() {
    let _turn = crate::processes::ONE_AT_A_TIME.lock().await;
    let server = Server::start().await;
    let store = server.store().await;
    store.apply_schema(&table_named("job")).await.unwrap();
    let backend = TestBackend::start(|_, _| Reply::ok()).await;
    let empty = tempfile::tempdir().unwrap();
    let job_config = json!([{
        "name": "api", "table": "job", "base_url": backend.url, "auth_token": TOKEN,
        "timeout": 10, "timeout_overridable": false
    }]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"))
        .current_dir(empty.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("SPKY_JOB_CONFIG", job_config.to_string())
        .env("SPKY_DB_WS", server.endpoint())
        .env("SPKY_DB_NS", "test")
        .env("SPKY_DB_NAME", "test")
        .env("SPKY_DB_USER", ROOT_USER)
        .env("SPKY_DB_PASS", ROOT_PASS)
        .env("SPKY_RUNNER_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ids = crate::processes::insert_jobs(&store, 3, 1, "linear").await;
    wait_until("the jobs to succeed", Duration::from_secs(60), || async {
        let mut all = true;
        for id in &ids {
            all &= row(&store, id).await["status"] == "success";
        }
        all
    })
    .await;
    assert_eq!(backend.count(), 3);
    assert_eq!(
        backend.requests()[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    crate::processes::signal(child.id(), "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20))
        .await
        .expect("exits on SIGTERM");
    assert!(status.success());
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(
        !logs.contains('\x1b'),
        "no colour codes when stderr is not a terminal"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("INFO") && l.contains("job succeeded")),
        "{logs}"
    );
    assert!(
        logs.lines().all(|l| l.contains("INFO")
            || l.contains("WARN")
            || l.contains("ERROR")
            || l.contains("DEBUG")),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN));
}

/// `dev` starts every backend's dev command (string form from the project root; typed npm form
/// with workdir and env-file, through a stand-in `npm`), prefixes their output, reports a child that exits, and stops them
/// all on SIGINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_runs_and_stops_every_backend() {
    let project = dev_project();
    let root = project.path();

    let mut child = spawn_dev(root);
    let lines = capture_lines(child.stdout.take().unwrap());
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_until(
        "every dev command to report",
        Duration::from_secs(60),
        || async {
            has("[app.alpha.dev] ready alpha in")
                && has("[app.beta.dev] ready beta hello from env-file in beta db=devtest")
                && has("[app.gamma.dev] exited with exit status: 3")
        },
    )
    .await;
    let all = lines.lock().unwrap().clone();
    assert!(
        all.iter().all(|l| l.starts_with("[app.")),
        "every child line is prefixed: {all:?}"
    );
    assert!(
        !all.iter().any(|l| l.contains('\x1b')),
        "no colours when stdout is not a terminal"
    );
    let project_dir = root.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        has(&format!("ready alpha in {project_dir}")),
        "string form runs from the project root: {all:?}"
    );

    let (alpha, beta) = children_pids(root).await;
    assert!(alive(alpha) && alive(beta));

    crate::processes::signal(child.id(), "INT");
    let status = wait_exit(&mut child, Duration::from_secs(30))
        .await
        .expect("dev mode exits on SIGINT");
    assert!(status.success(), "{status}");
    wait_until(
        "the children to be gone",
        Duration::from_secs(10),
        || async { !alive(alpha) && !alive(beta) },
    )
    .await;
}

/// `dev` in `root` on an embedded database, with the stand-in `npm` and `uv` on its PATH.
fn spawn_dev(root: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"))
        .current_dir(root)
        .env("PATH", stand_in_path(root))
        .env_remove("SPKY_JOB_CONFIG")
        .args([
            "--db",
            "mem://",
            "--namespace",
            "devtest",
            "dev",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pids of the alpha and beta children, once both wrote them (each prints its line before
/// it writes its pid: wait for the number, not the file).
async fn children_pids(root: &Path) -> (i32, i32) {
    let pid = |file: &str| -> Option<i32> {
        std::fs::read_to_string(root.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    wait_until(
        "both children wrote their pid",
        Duration::from_secs(60),
        || async { pid("alpha.pid").is_some() && pid("beta.pid").is_some() },
    )
    .await;
    (pid("alpha.pid").unwrap(), pid("beta.pid").unwrap())
}

/// Whether `pid` runs (a zombie left for a parent that does not reap it counts as gone).
fn alive(pid: i32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists && !zombie
}

/// A runner killed outright (SIGKILL, no chance to stop anything) takes its dev children with
/// it: each is started with a parent-death signal, so the next `dev` finds its ports free.
#[tokio::test]
async fn dev_children_end_when_the_runner_is_killed() {
    let project = dev_project();
    let root = project.path();
    let mut child = spawn_dev(root);
    let (alpha, beta) = children_pids(root).await;
    assert!(alive(alpha) && alive(beta));
    crate::processes::signal(child.id(), "KILL");
    wait_exit(&mut child, Duration::from_secs(10))
        .await
        .expect("a killed runner exits");
    wait_until(
        "the children to be gone",
        Duration::from_secs(10),
        || async { !alive(alpha) && !alive(beta) },
    )
    .await;
}

/// A project with three backends whose `dev` commands are the string form (alpha), the npm form
/// with a workdir and an env-file (beta), and one that exits at once (gamma).
fn dev_project() -> tempfile::TempDir {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    std::fs::copy(fixture("openapi.yml"), root.join("openapi.yml")).unwrap();
    std::fs::create_dir_all(root.join("services/beta")).unwrap();
    std::fs::write(
        root.join("services/beta/.env.dev"),
        "# dev settings\n\nGREETING=\"hello from env-file\"\n",
    )
    .unwrap();
    std::fs::write(
        root.join("services/beta/package.json"),
        r#"{"name": "beta", "private": true, "scripts": {"dev": "sh ./serve.sh"}}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("services/beta/serve.sh"),
        "echo \"ready beta $GREETING in $(basename \"$PWD\") db=$SPKY_DB_NS\"\necho $$ > ../../beta.pid\nexec sleep 600\n",
    )
    .unwrap();
    let backend = |name: &str, table: &str, dev: &str| {
        format!(
            "  {name}:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: http://127.0.0.1:9\n    method:\n      type: outbox\n      table: {table}\n    dev:{dev}\n"
        )
    };
    let config = format!(
        "apps:\n{}{}{}",
        backend(
            "alpha",
            "alpha_job",
            " echo \"ready alpha in $(basename \"$PWD\")\"; echo $$ > alpha.pid; exec sleep 600"
        ),
        backend(
            "beta",
            "beta_job",
            "\n      type: npm\n      script: dev\n      workdir: ./services/beta\n      env-file: ./services/beta/.env.dev"
        ),
        backend("gamma", "gamma_job", " echo 'gamma gives up'; exit 3"),
    );
    std::fs::write(root.join("sp00ky.yml"), config).unwrap();
    project
}

/// `PATH` with a stand-in `npm` first (the tests need neither Node nor npm): it accepts only
/// `npm run dev`, which is what the npm form must run, and then does what the test's
/// package.json says its dev script does (`sh ./serve.sh`).
fn stand_in_path(root: &std::path::Path) -> String {
    let bin = root.join("stand-in-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let npm = bin.join("npm");
    std::fs::write(
        &npm,
        "#!/bin/sh\n[ \"$*\" = \"run dev\" ] || { echo \"unexpected: npm $*\" >&2; exit 64; }\nexec sh ./serve.sh\n",
    )
    .unwrap();
    std::fs::set_permissions(&npm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Collects the lines `stdout` prints, on a thread of its own.
fn capture_lines(
    stdout: std::process::ChildStdout,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Every form of an app's `env:` reaches its dev command (which prints what it got); the output
/// prefix follows the key the backend came from; an app without `method.table` drains a table
/// named after it.
#[tokio::test]
async fn dev_children_get_every_env_form_under_their_key() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    std::fs::copy(fixture("openapi.yml"), root.join("openapi.yml")).unwrap();
    std::fs::write(
        root.join(".env.dev"),
        "export FROM_FILE=\"from file\" # a comment\n",
    )
    .unwrap();
    let print = "echo \"file=$FROM_FILE map=$FROM_MAP vault=$FROM_VAULT dev=$FROM_DEV cloud=${FROM_CLOUD:-none}\"; exec sleep 600";
    let config = format!(
        "apps:\n  envs:\n    type: backend\n    spec: ./openapi.yml\n    baseUrl: http://127.0.0.1:9\n    method:\n      type: outbox\n    dev: '{print}'\n    env:\n      - ./.env.dev\n      - FROM_MAP: 42\n      - vault: [FROM_VAULT]\n      - dev: {{FROM_DEV: on}}\n        cloud: {{FROM_CLOUD: yes}}\nbackends:\n  docs:\n    type: http\n    spec: ./openapi.yml\n    baseUrl: http://127.0.0.1:9\n    method:\n      type: outbox\n      table: docs_job\n    dev: 'echo documented; exec sleep 600'\n"
    );
    std::fs::write(root.join("sp00ky.yml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sp00ky-job-runner"))
        .current_dir(root)
        .env("FROM_VAULT", "from the environment")
        .env_remove("SPKY_JOB_CONFIG")
        .args(["--db", "mem://", "dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = capture_lines(child.stdout.take().unwrap());
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_until(
        "both dev commands to print",
        Duration::from_secs(60),
        || async { has("[app.envs.dev] file=") && has("[backend.docs.dev] documented") },
    )
    .await;
    assert!(
        has("[app.envs.dev] file=from file map=42 vault=from the environment dev=on cloud=none"),
        "{:?}",
        lines.lock().unwrap()
    );
    crate::processes::signal(child.id(), "INT");
    let status = wait_exit(&mut child, Duration::from_secs(30))
        .await
        .expect("dev mode exits on SIGINT");
    assert!(status.success(), "{status}");
    let config =
        sp00ky_job_runner::config::load(&root.join("sp00ky.yml"), &|_| None, Default::default())
            .unwrap();
    let envs = config.backends.iter().find(|b| b.name == "envs").unwrap();
    assert_eq!(envs.table, "envs", "named after the app");
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo("docker/Dockerfile")).unwrap()
}

/// The distribution build command the README gives, and the one the image runs.
fn readme_build_command() -> String {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cargo build --profile dist"))
        .expect("the README gives the distribution build command");
    line.trim().to_string()
}

#[test]
fn the_dockerfile_builds_with_the_readme_command_and_copies_what_exists() {
    let text = dockerfile();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        instructions
            .iter()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2,
        "multi-stage"
    );
    assert!(
        instructions.contains(&format!("RUN {}", readme_build_command()).as_str()),
        "{text}"
    );
    for copy in instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let parts: Vec<&str> = copy.split_whitespace().skip(1).collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo(source).exists(), "COPY source {source} does not exist");
        }
    }
    let user = instructions
        .iter()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(instructions.iter().any(|l| l.starts_with("HEALTHCHECK")
        || l.starts_with("CMD [\"sp00ky-job-runner\", \"health\"]")));
    assert!(text.contains("\"sp00ky-job-runner\", \"health\""));
}

#[test]
fn the_compose_file_parses_and_everything_it_mounts_exists() {
    let compose: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("docker/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    let base = repo("docker");
    let services = compose["services"].as_object().unwrap();
    for name in ["surrealdb", "example-backend", "schema", "runner"] {
        assert!(services.contains_key(name), "service {name}");
    }
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = base.join(build["context"].as_str().unwrap());
            assert!(
                context
                    .join(build["dockerfile"].as_str().unwrap())
                    .is_file(),
                "{name}: dockerfile"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') {
                assert!(
                    base.join(host).exists(),
                    "{name}: volume source {host} does not exist"
                );
            }
        }
        for env_file in service["env_file"].as_array().into_iter().flatten() {
            let path = env_file["path"].as_str().unwrap();
            assert!(
                base.join(format!("{path}.example")).is_file(),
                "{name}: {path}.example documents {path}"
            );
        }
        for (dependency, condition) in service["depends_on"].as_object().into_iter().flatten() {
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
            let condition = condition["condition"].as_str().unwrap();
            assert!(["service_healthy", "service_completed_successfully"].contains(&condition));
            if condition == "service_healthy" {
                assert!(
                    services[dependency].get("healthcheck").is_some(),
                    "{dependency} needs a healthcheck"
                );
            }
        }
    }
    let hosts = services["runner"]["extra_hosts"].as_array().unwrap();
    assert!(hosts.contains(&json!("host.docker.internal:host-gateway")));
    assert_eq!(services["runner"]["command"][1], "/etc/sp00ky/sp00ky.yml");
    // The secrets come from the env file, not the compose file.
    assert!(
        !std::fs::read_to_string(repo("docker/docker-compose.yml"))
            .unwrap()
            .contains("change-me")
    );
}

#[test]
fn the_systemd_unit_has_what_a_production_service_needs() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/sp00ky-job-runner.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "EnvironmentFile=/etc/sp00ky-job-runner/env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "missing {line}");
    }
    assert!(repo("deploy/systemd/sp00ky-job-runner.env").is_file());
}
