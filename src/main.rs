//! Thin binary: parse arguments, set up logging, run the command, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use sp00ky_job_runner::commands::args::{self, Cli};
use sp00ky_job_runner::commands::{self, logging};
use sp00ky_job_runner::config;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Some(args::Command::Bench(_)));
    logging::init(cli.global.log_format, quiet);
    match commands::main(cli, &config::process_env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
