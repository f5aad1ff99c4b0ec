//! Log setup: readable text on a terminal, one JSON object per line for machines, level from
//! `RUST_LOG` (default: the runner's own events at `info`, its dependencies' only from `warn`,
//! since SurrealDB's embedded engine is chatty at `info`). Lines go to stderr and are written whole, one at a time, so a
//! parent process that prefixes each line (like `spky dev`) never splits one.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::commands::args::LogFormat;

pub fn init(format: LogFormat, quiet: bool) {
    // The benchmark would otherwise spend its time writing a line per job.
    // The SurrealDB client warns about things it handles itself (a live query it could not kill
    // on a closed session), so only its errors show by default.
    let default = if quiet {
        "warn,surrealdb=error"
    } else {
        "warn,surrealdb=error,sp00ky_job_runner=info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color())
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
}

/// <https://no-color.org>: a set, non-empty `NO_COLOR` turns colour off.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}
