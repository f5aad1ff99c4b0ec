//! What the listener's handlers share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::ops::admin::Admin;
use crate::runner::RunnerStatus;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct OpsState {
    pub store: Store,
    pub status: Arc<RunnerStatus>,
    pub admin: Admin,
    pub admin_token: Option<Arc<SecretString>>,
    /// The dashboard's row counts, read at most once per refresh interval.
    pub counts: Arc<CountsCache>,
    /// Turns true when the runner stops: live feeds end then, so that no open page holds the
    /// listener's graceful shutdown. `None`: never (tests).
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl OpsState {
    /// `refresh`: how often the dashboard's counts may be read (the runner's poll interval).
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
            counts: Arc::new(CountsCache::new(refresh)),
            stop: None,
        }
    }

    /// Ends live feeds once `stop` turns true.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> OpsState {
        self.stop = Some(stop);
        self
    }
}

/// Row counts read at most once per refresh interval, shared by every caller.
pub struct CountsCache {
    every: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Vec<[u64; 4]>)>>,
}

impl CountsCache {
    pub fn new(every: Duration) -> CountsCache {
        CountsCache {
            every,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// The counts of `tables`, read now unless a read less than one interval old exists.
    /// Held across the read, so callers arriving together wait for one read.
    pub(crate) async fn get(&self, store: &Store, tables: &[&str]) -> Option<Vec<[u64; 4]>> {
        let mut last = self.last.lock().await;
        if let Some((at, counts)) = last.as_ref()
            && at.elapsed() < self.every
        {
            return Some(counts.clone());
        }
        match store.counts_by_status(tables).await {
            Ok(counts) => {
                *last = Some((Instant::now(), counts.clone()));
                Some(counts)
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not count rows for the dashboard");
                last.as_ref().map(|(_, counts)| counts.clone())
            }
        }
    }
}
