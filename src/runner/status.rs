//! What the operations listener and systemd read about a running runner.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::attempt::Observer;
use crate::job::record::Decision;
use crate::job::row::Job;
use crate::runner::activity::Activity;
use crate::runner::metrics::Metrics;
use crate::store::{StatusCounts, Store, TableName};

/// Each job table with its rows per status, in the order the backends are configured.
pub type RowCounts = Arc<Vec<(TableName, StatusCounts)>>;

/// Counting every row of every table is a scan, so however short the poll interval, the counts
/// are read at most this often.
const ROWS_EVERY_AT_LEAST: Duration = Duration::from_secs(2);

/// The last read of the row counts.
#[derive(Default)]
struct RowsRead {
    /// When a read was last tried, successful or not: a database that does not answer is asked
    /// again only after the interval too.
    at: Option<Instant>,
    /// The last counts that were read.
    counts: Option<RowCounts>,
}

/// What the operations listener and systemd need to know about a running runner.
pub struct RunnerStatus {
    /// This runner's `assignee` name, and its slots.
    pub runner_id: String,
    pub concurrency: usize,
    pub metrics: Arc<Metrics>,
    /// What the dashboard shows live.
    pub activity: Activity,
    tables: Vec<TableName>,
    /// Live queries currently armed; ready when every table has one.
    pub(super) live_armed: AtomicUsize,
    /// When the main loop last went round, so the watchdog only pings a loop that is alive.
    last_tick: Mutex<Instant>,
    /// The row counts `/metrics` and the dashboard show: read at most once per `rows_every`,
    /// however often either asks. Held across the read, so callers arriving together wait for
    /// one read instead of each making their own.
    rows_read: tokio::sync::Mutex<RowsRead>,
    rows_every: Duration,
    /// The store's conflict count when it was last copied into the metric.
    conflicts_copied: Mutex<u64>,
}

impl RunnerStatus {
    /// `backends`: each backend's name and job table.
    pub(super) fn new(
        options: &super::RunnerOptions,
        backends: Vec<(String, TableName)>,
    ) -> RunnerStatus {
        let tables = backends.iter().map(|(_, table)| table.clone()).collect();
        let rows_every = options.poll_interval.max(ROWS_EVERY_AT_LEAST);
        RunnerStatus {
            runner_id: options.runner_id.clone(),
            concurrency: options.concurrency,
            metrics: Arc::new(Metrics::new()),
            activity: Activity::new(
                backends
                    .into_iter()
                    .map(|(name, table)| (name, table.to_string()))
                    .collect(),
            ),
            tables,
            live_armed: AtomicUsize::new(0),
            last_tick: Mutex::new(Instant::now()),
            rows_read: tokio::sync::Mutex::new(RowsRead::default()),
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

    /// How old the row counts may be: the poll interval, but at least two seconds.
    pub fn rows_every(&self) -> Duration {
        self.rows_every
    }

    /// Rows per status of every table, read now unless they were read (or a read was tried)
    /// less than [`RunnerStatus::rows_every`] ago; each read also sets the row gauges. The one
    /// cache behind both `/metrics` and the dashboard, so they show the same numbers and cost
    /// the database one read per interval between them. `None` until a read has succeeded.
    pub async fn row_counts(&self, store: &Store) -> Option<RowCounts> {
        let mut read = self.rows_read.lock().await;
        if read.at.is_some_and(|at| at.elapsed() < self.rows_every) {
            return read.counts.clone();
        }
        read.at = Some(Instant::now());
        let tables: Vec<&TableName> = self.tables.iter().collect();
        match store.counts_by_status(&tables).await {
            Ok(counts) => {
                let counts: RowCounts = Arc::new(self.tables.iter().cloned().zip(counts).collect());
                for (table, of_table) in counts.iter() {
                    self.metrics.set_rows(table, of_table);
                }
                read.counts = Some(counts.clone());
                Some(counts)
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not count rows; showing the last counts");
                read.counts.clone()
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

    fn panicked(&self, backend: &str) {
        self.metrics.panicked(backend);
    }

    fn recorded(&self, backend: &str, job: &Job, decision: &Decision, elapsed: Duration) {
        self.metrics.recorded(backend, job, decision, elapsed);
        self.activity.recorded(backend, job, decision, elapsed);
    }
}
