//! `sp00ky-job-runner dev`: the runner plus every backend's `dev` command, for local work.
//!
//! Each child runs in its own process group with the database settings in its environment
//! (`SPKY_DB_*`), its `env-file` loaded, in its `workdir`. Its output is prefixed
//! `[backend.<name>.dev]`, in a colour of its own when stdout is a terminal. A child that exits
//! is reported, not silently lost; Ctrl+C (or SIGTERM) stops the runner and every child.

use std::io::{IsTerminal, Write};
use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::args::{GlobalArgs, RunArgs};
use super::error::AppError;
use super::remote::dev_token_file;
use super::{service, settings};
use crate::config::{self, ConfigError, DevCommand, DevSpec, EnvLookup, EnvSource};
use crate::job::retry::RetryPolicy;
use crate::store::DbSettings;

/// Prefix colours, one per backend in turn.
const COLOURS: [&str; 6] = ["36", "35", "33", "32", "34", "31"];

/// How long children get to stop after SIGTERM before they are killed.
const CHILD_GRACE: Duration = Duration::from_secs(5);

/// Runs `run` with every backend's dev command beside it.
pub async fn dev(global: &GlobalArgs, args: RunArgs, env: EnvLookup<'_>) -> Result<(), AppError> {
    // Before any child starts: Ctrl+C at any moment stops them all.
    let shutdown = service::shutdown_signal();
    let config = config::load(&global.config, env, RetryPolicy::default())?;
    let db = settings::db_settings(global, &config.database, env);
    // The token this run makes stays in memory (the runner gets it as an argument, never as a
    // flag); its file is removed however `dev` ends (a child that cannot start included).
    let make_token = args.admin_token_file.is_none() && env("SPKY_RUNNER_ADMIN_TOKEN").is_none();
    let (made_token, _token_file) = if make_token {
        let file = dev_token_file(&global.config);
        let token = write_dev_token(&file).map_err(|e| {
            AppError::Usage(format!(
                "cannot write the dev admin token to {}: {e}",
                file.display()
            ))
        })?;
        tracing::info!(
            token_file = %file.display(),
            "made an admin token for this run: sign in to the dashboard with it (`cat` the file); the CLI's `jobs` and `enqueue` find it there"
        );
        (Some(token), Some(TokenFile(file)))
    } else {
        (None, None)
    };
    let colour = std::io::stdout().is_terminal() && env("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut children = Vec::new();
    for (index, backend) in config.backends.iter().enumerate() {
        let Some(spec) = &backend.dev else {
            tracing::info!(backend = %backend.name, "no `dev` command; expecting the backend to be running already");
            continue;
        };
        let prefix = if colour {
            format!(
                "\x1b[{}m[{}]\x1b[0m",
                COLOURS[index % COLOURS.len()],
                spec.label
            )
        } else {
            format!("[{}]", spec.label)
        };
        let child = spawn(spec, &db, &backend.name, env).map_err(|message| {
            AppError::Config(ConfigError {
                origin: config.origin.clone(),
                key: spec.label.clone(),
                message,
            })
        })?;
        children.push(supervise(child, prefix));
    }
    let result = service::run_with_token(global, args, env, made_token, shutdown).await;
    for child in children {
        child.stop().await;
    }
    result
}

/// The token file `dev` wrote; removed when `dev` ends.
struct TokenFile(std::path::PathBuf);

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A random token for this run's admin API: 32 random bytes from the operating system,
/// hex-encoded, written to a new file only its owner can read (for the CLI in another
/// terminal). The runner keeps its own copy in memory, so the file is never read back.
fn write_dev_token(file: &std::path::Path) -> std::io::Result<secrecy::SecretString> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(token.as_bytes())?;
    Ok(secrecy::SecretString::from(token))
}

fn spawn(spec: &DevSpec, db: &DbSettings, name: &str, env: EnvLookup<'_>) -> Result<Child, String> {
    let mut command = match &spec.command {
        DevCommand::Shell(line) => shell(line),
        DevCommand::Npm { script } => {
            let mut command = Command::new("npm");
            command.args(["run", script]);
            command
        }
        DevCommand::Uv { script } => {
            let mut command = Command::new("uv");
            command.args(["run", script]);
            command
        }
        DevCommand::Docker { file, port, env } => {
            let image = format!("sp00ky-dev-{}", name.to_ascii_lowercase());
            let mut run = vec!["docker run --rm --init".to_string()];
            if let Some(port) = port {
                run.push(format!("-p {port}:{port}"));
            }
            for (key, value) in env {
                run.push(format!("-e {}", shell_quote(&format!("{key}={value}"))));
            }
            run.push(image.clone());
            shell(&format!(
                "docker build -f {} -t {image} . && exec {}",
                shell_quote(&file.display().to_string()),
                run.join(" ")
            ))
        }
    };
    command.envs(environment(&spec.env, env)?);
    command.env("SPKY_DB_WS", &db.endpoint);
    command.env("SPKY_DB_URL", &db.endpoint);
    command.env("SPKY_DB_NS", &db.namespace);
    command.env("SPKY_DB_NAME", &db.database);
    if let Some(user) = &db.username {
        command.env("SPKY_DB_USER", user);
    }
    if let Some(pass) = &db.password {
        command.env("SPKY_DB_PASS", pass.expose_secret());
    }
    // A runner killed outright (SIGKILL, a crash) cannot stop its children: the kernel sends
    // them SIGTERM when it dies, so none is left holding its port.
    // SAFETY: prctl(2) in the forked child before exec touches no memory of the parent.
    unsafe {
        command.pre_exec(
            || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            },
        );
    }
    command
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start the dev command in {}: {e}",
                spec.workdir.display()
            )
        })
}

/// A dev command's variables from its sources, in order (a later one wins).
fn environment(sources: &[EnvSource], env: EnvLookup<'_>) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for source in sources {
        match source {
            EnvSource::File(path) => vars.extend(config::read_dotenv(path)?),
            EnvSource::Vars(list) => vars.extend(list.iter().cloned()),
            EnvSource::Process(names) => {
                for name in names {
                    match env(name) {
                        Some(value) => vars.push((name.clone(), value)),
                        None => {
                            tracing::warn!(variable = %name, "env.vault names a variable this process does not have")
                        }
                    }
                }
            }
        }
    }
    Ok(vars)
}

fn shell(line: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", line]);
    command
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A running dev child and the task that reports its exit.
struct Supervised {
    pid: Option<u32>,
    waiter: tokio::task::JoinHandle<()>,
}

fn supervise(mut child: Child, prefix: String) -> Supervised {
    let pid = child.id();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(prefix_lines(stdout, prefix.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(prefix_lines(stderr, prefix.clone()));
    }
    let waiter = tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => print_line(&prefix, &format!("exited with {status}")),
            Err(e) => print_line(&prefix, &format!("could not be waited for: {e}")),
        }
    });
    Supervised { pid, waiter }
}

impl Supervised {
    /// SIGTERM to the child's whole process group, then SIGKILL after [`CHILD_GRACE`].
    async fn stop(mut self) {
        let Some(pid) = self.pid else { return };
        let group = -(pid as i32);
        // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
        unsafe { libc::kill(group, libc::SIGTERM) };
        if tokio::time::timeout(CHILD_GRACE, &mut self.waiter)
            .await
            .is_err()
        {
            // SAFETY: as above.
            unsafe { libc::kill(group, libc::SIGKILL) };
            let _ = self.waiter.await;
        }
    }
}

async fn prefix_lines(stream: impl AsyncRead + Unpin, prefix: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        print_line(&prefix, &line);
    }
}

/// One whole line per write, so lines of different children never interleave.
fn print_line(prefix: &str, line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{prefix} {line}");
    let _ = out.flush();
}
