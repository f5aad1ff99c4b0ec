//! Thin binary: parse arguments, set up logging, run the command, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use sp00ky_job_runner::{app, cli::Cli, config, logging};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.global.log_format);
    match app::main(cli, &config::process_env).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
