//! What a user starts: each command in a file of its own, from arguments that [`args`] parses
//! and [`settings`] merges with the environment and the config file.

pub mod args;
pub mod bench;
pub mod check;
pub mod dev;
pub mod error;
pub mod jobs;
pub mod logging;
pub mod remote;
pub mod service;
pub mod settings;

pub use error::AppError;
pub use service::prepare_tables;
pub use settings::{db_settings, load_backends};

use args::{Cli, Command, RunArgs};

use crate::config::{self, EnvLookup};

/// Runs the parsed command line. Logging must already be set up.
pub async fn main(cli: Cli, env: EnvLookup<'_>) -> Result<(), AppError> {
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Run(args) => {
            service::run(&cli.global, args, env, service::shutdown_signal()).await
        }
        Command::Dev(args) => dev::dev(&cli.global, args, env).await,
        Command::Check => check::check(&cli.global, env).await,
        Command::Schema(args) => check::schema(&cli.global, args, env).await,
        Command::Enqueue(args) => jobs::enqueue(&cli.global, args, env).await,
        Command::Jobs(args) => jobs::jobs(&cli.global, args, env).await,
        Command::Health { listen } => jobs::health(listen, env).await,
        Command::Bench(args) => {
            let settings = db_settings(&cli.global, &config::FileDatabase::default(), env);
            bench::bench(args, settings.username, settings.password)
                .await
                .map_err(|e| AppError::Usage(format!("bench: {e}")))
        }
    }
}
