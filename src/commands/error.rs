//! Why a command stopped, and the exit code that tells scripts which kind of problem it was.

use std::process::ExitCode;

use crate::config::ConfigError;
use crate::job::validate::SpecError;
use crate::ops::admin::AdminError;
use crate::store::StoreError;

/// Why a command stopped; the exit code tells scripts which kind of problem it was.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The database's tables are not ready for the runner; the message says what to apply.
    #[error("{0}")]
    Schema(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(
        "SurrealDB at {endpoint} did not answer within {waited} (--connect-timeout sets how long to wait): {source}"
    )]
    Unreachable {
        endpoint: String,
        waited: String,
        source: StoreError,
    },
    #[error("not healthy: {0}")]
    Unhealthy(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl AppError {
    /// 78 (EX_CONFIG) for anything the user must fix in configuration or schema; 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AppError::Config(_) | AppError::Spec(_) | AppError::Schema(_) => ExitCode::from(78),
            AppError::Usage(_) => ExitCode::from(2),
            AppError::Admin(AdminError::Store(_)) => ExitCode::FAILURE,
            AppError::Admin(_) => ExitCode::from(2),
            AppError::Listen { .. } => ExitCode::from(78),
            AppError::Store(_) | AppError::Unhealthy(_) | AppError::Unreachable { .. } => {
                ExitCode::FAILURE
            }
        }
    }
}
