//! What the listener's handlers share.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::ops::admin::Admin;
use crate::runner::RunnerStatus;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct OpsState {
    pub store: Store,
    /// Also holds the row counts the dashboard shows ([`RunnerStatus::row_counts`]), the same
    /// ones `/metrics` shows, read once per interval for both.
    pub status: Arc<RunnerStatus>,
    pub admin: Admin,
    pub admin_token: Option<Arc<SecretString>>,
    /// How often the live feed sends the overview.
    pub refresh: Duration,
    /// Cancelled when the runner stops: live feeds end then, so that no open page holds the
    /// listener's graceful shutdown. Never cancelled unless [`OpsState::with_stop`] hands one
    /// in (tests).
    pub stop: CancellationToken,
    /// Where the listener is bound, when the server knows it: on loopback, only requests that
    /// name a loopback host are answered (a page in the operator's browser cannot reach it by
    /// DNS rebinding); elsewhere `/metrics` also needs the admin token.
    pub bound: Option<std::net::SocketAddr>,
}

impl OpsState {
    /// `refresh`: how often the live feed sends the overview. Its row counts are never read
    /// more often than [`RunnerStatus::rows_every`], however short this is.
    pub fn new(
        store: Store,
        status: Arc<RunnerStatus>,
        admin: Admin,
        admin_token: Option<SecretString>,
        refresh: Duration,
    ) -> OpsState {
        OpsState {
            store,
            status,
            admin,
            admin_token: admin_token.map(Arc::new),
            refresh,
            stop: CancellationToken::new(),
            bound: None,
        }
    }

    /// Answers as the listener bound to `addr` must (see [`OpsState::bound`]).
    pub fn bound_to(mut self, addr: std::net::SocketAddr) -> OpsState {
        self.bound = Some(addr);
        self
    }

    /// Ends live feeds once `stop` is cancelled.
    pub fn with_stop(mut self, stop: CancellationToken) -> OpsState {
        self.stop = stop;
        self
    }
}
