//! What the operations listener and systemd read about a running runner.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::attempt::Observer;
use crate::job::record::Decision;
use crate::job::row::Job;
use crate::runner::activity::Activity;
use crate::runner::metrics::{Metrics, TableLabels};
use crate::store::Store;

/// What the operations listener and systemd need to know about a running runner.
pub struct RunnerStatus {
    /// This runner's `assignee` name, and its slots.
    pub runner_id: String,
    pub concurrency: usize,
    pub metrics: Arc<Metrics>,
    /// What the dashboard shows live.
    pub activity: Activity,
    tables: Vec<String>,
    /// Live queries currently armed; ready when every table has one.
    pub(super) live_armed: AtomicUsize,
    /// When the main loop last went round, so the watchdog only pings a loop that is alive.
    last_tick: Mutex<Instant>,
    /// When the row gauges were last read from the database: at most once per `rows_every`,
    /// however often `/metrics` is scraped. Held across the read, so concurrent scrapes wait for
    /// one read instead of each making their own.
    rows_read: tokio::sync::Mutex<Option<Instant>>,
    rows_every: Duration,
    /// The store's conflict count when it was last copied into the metric.
    conflicts_copied: Mutex<u64>,
}

impl RunnerStatus {
    /// `backends`: each backend's name and job table.
    pub(super) fn new(
        options: &super::RunnerOptions,
        backends: Vec<(String, String)>,
    ) -> RunnerStatus {
        let tables = backends.iter().map(|(_, table)| table.clone()).collect();
        let rows_every = options.poll_interval;
        RunnerStatus {
            runner_id: options.runner_id.clone(),
            concurrency: options.concurrency,
            metrics: Arc::new(Metrics::new()),
            activity: Activity::new(backends.into_iter().collect()),
            tables,
            live_armed: AtomicUsize::new(0),
            last_tick: Mutex::new(Instant::now()),
            rows_read: tokio::sync::Mutex::new(None),
            rows_every,
            conflicts_copied: Mutex::new(0),
        }
    }

    pub fn live_queries_armed(&self) -> bool {
        self.live_armed.load(Ordering::SeqCst) >= self.tables.len()
    }

    /// Whether the main loop went round within `within`.
    pub fn loop_alive(&self, within: Duration) -> bool {
        self.last_tick.lock().expect("tick lock").elapsed() <= within
    }

    pub(super) fn tick(&self) {
        *self.last_tick.lock().expect("tick lock") = Instant::now();
    }

    /// Brings the transaction-conflict counter up to the store's own count.
    pub fn copy_conflicts(&self, store: &Store) {
        let seen = store.health().conflicts();
        let mut copied = self.conflicts_copied.lock().expect("conflicts lock");
        if seen > *copied {
            self.metrics.transaction_conflicts.inc_by(seen - *copied);
            *copied = seen;
        }
    }

    /// Reads the pending and processing counts of every table into the row gauges, unless they
    /// were read less than one poll interval ago.
    pub async fn refresh_row_counts(&self, store: &Store) {
        let mut read = self.rows_read.lock().await;
        if read.is_some_and(|at| at.elapsed() < self.rows_every) {
            return;
        }
        *read = Some(Instant::now());
        for table in &self.tables {
            for status in ["pending", "processing"] {
                match store.count(table, status).await {
                    Ok(count) => {
                        let labels = TableLabels {
                            table: table.clone(),
                            status: status.into(),
                        };
                        self.metrics.rows.get_or_create(&labels).set(count as i64);
                    }
                    Err(e) => {
                        tracing::debug!(%table, error = %e, "could not count rows for metrics")
                    }
                }
            }
        }
    }
}

/// An attempt reports to the metrics and to the activity feed.
impl Observer for RunnerStatus {
    fn started(&self, backend: &str, job: &Job, lag: Option<Duration>) {
        self.metrics.started(backend, job, lag);
        self.activity.started(backend, job);
    }

    fn ended(&self) {
        self.metrics.ended();
    }

    fn recorded(&self, backend: &str, job: &Job, decision: &Decision, elapsed: Duration) {
        self.metrics.recorded(backend, job, decision, elapsed);
        self.activity.recorded(backend, job, decision, elapsed);
    }
}
