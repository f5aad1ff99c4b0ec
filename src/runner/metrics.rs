//! Prometheus metrics, encoded by `prometheus-client` (the Prometheus project's own Rust client)
//! rather than formatted by hand.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use crate::job::attempt::Observer;
use crate::job::record::Decision;
use crate::job::row::Job;
use crate::store::StatusCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub backend: String,
    /// `success`, `retry` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
    pub status: String,
}

/// A new metric of its default value, registered under `name`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    with(registry, name, help, M::default())
}

/// `metric`, registered under `name`.
fn with<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn attempt_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the runner keeps.
pub struct Metrics {
    registry: Registry,
    /// Attempts that ended, by backend and outcome (`success`, `retry`, `failed`).
    pub attempts: Family<OutcomeLabels, Counter>,
    /// Jobs that reached a final state, by backend and outcome (`success`, `failed`).
    pub jobs_finished: Family<OutcomeLabels, Counter>,
    /// Retries scheduled, by backend.
    pub retries: Family<BackendLabels, Counter>,
    /// Time from claim to recorded outcome, by backend.
    pub attempt_seconds: Family<BackendLabels, Histogram, fn() -> Histogram>,
    /// Time from a job becoming due to its claim.
    pub claim_lag_seconds: Histogram,
    /// Jobs being worked on right now.
    pub in_flight: Gauge,
    /// Rows per table and status, from the row counts `RunnerStatus` reads at most once per
    /// interval (see [`Metrics::set_rows`]).
    pub rows: Family<TableLabels, Gauge>,
    /// Times the database came back after being unreachable.
    pub db_reconnects: Counter<u64, AtomicU64>,
    /// Statements SurrealDB refused with a transaction conflict (copied from the store's count on
    /// each scrape): what runners sharing a database cost each other.
    pub transaction_conflicts: Counter<u64, AtomicU64>,
    /// Expired leases taken over by this runner.
    pub lease_rescues: Counter<u64, AtomicU64>,
    /// Finished rows retention deleted, by backend and status (`outcome` label).
    pub retention_deleted: Family<OutcomeLabels, Counter>,
    /// Attempts that panicked, by backend: a defect of the runner; each row was released.
    pub attempt_panics: Family<BackendLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sp00ky_runner");
        let r = &mut registry;
        let attempt_seconds =
            Family::<BackendLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                attempt_histogram,
            );
        let claim_lag = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let conflicts_help =
            "Statements refused with a transaction conflict (retried, never a job failure)";
        let panics_help = "Attempts that panicked (a runner defect; the job was released)";
        Metrics {
            attempts: registered(r, "attempts", "Attempts that ended, by backend and outcome"),
            jobs_finished: registered(r, "jobs_finished", "Jobs that reached success or failed"),
            retries: registered(r, "retries", "Retries scheduled"),
            attempt_seconds: with(
                r,
                "attempt_duration_seconds",
                "Time from claim to recorded outcome",
                attempt_seconds,
            ),
            claim_lag_seconds: with(
                r,
                "claim_lag_seconds",
                "Time from a job becoming due to its claim",
                claim_lag,
            ),
            in_flight: registered(r, "in_flight_jobs", "Jobs being worked on now"),
            rows: registered(r, "job_rows", "Rows per job table and status"),
            db_reconnects: registered(
                r,
                "db_reconnects",
                "Times the database came back after being unreachable",
            ),
            transaction_conflicts: registered(r, "transaction_conflicts", conflicts_help),
            lease_rescues: registered(
                r,
                "lease_rescues",
                "Expired leases taken over by this runner",
            ),
            retention_deleted: registered(
                r,
                "retention_deleted",
                "Finished rows deleted by retention, by backend and status",
            ),
            attempt_panics: registered(r, "attempt_panics", panics_help),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn outcome(&self, backend: &str, outcome: &str) -> OutcomeLabels {
        OutcomeLabels {
            backend: backend.to_string(),
            outcome: outcome.to_string(),
        }
    }

    /// The row gauges of `table`, for all four statuses: a status with no rows shows 0 rather
    /// than the last number it had.
    pub fn set_rows(&self, table: &str, counts: &StatusCounts) {
        for (status, n) in counts.iter() {
            let labels = TableLabels {
                table: table.to_string(),
                status: status.as_str().to_string(),
            };
            self.rows
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn backend(&self, backend: &str) -> BackendLabels {
        BackendLabels {
            backend: backend.to_string(),
        }
    }
}

impl Observer for Metrics {
    fn started(&self, _backend: &str, job: &Job, lag: Option<std::time::Duration>) {
        if job.rescued {
            self.lease_rescues.inc();
        }
        if let Some(lag) = lag {
            self.claim_lag_seconds.observe(lag.as_secs_f64());
        }
        self.in_flight.inc();
    }

    fn ended(&self) {
        self.in_flight.dec();
    }

    fn panicked(&self, backend: &str) {
        self.attempt_panics
            .get_or_create(&self.backend(backend))
            .inc();
    }

    fn recorded(
        &self,
        backend: &str,
        _job: &Job,
        decision: &Decision,
        elapsed: std::time::Duration,
    ) {
        // A retry is labelled `retry` (the status it writes, `pending`, says nothing about the
        // attempt); the others by the final status they write.
        let status = decision.status();
        let label = if status.is_final() {
            status.as_str()
        } else {
            "retry"
        };
        let outcome = self.outcome(backend, label);
        self.attempts.get_or_create(&outcome).inc();
        if status.is_final() {
            self.jobs_finished.get_or_create(&outcome).inc();
        } else {
            self.retries.get_or_create(&self.backend(backend)).inc();
        }
        self.attempt_seconds
            .get_or_create(&self.backend(backend))
            .observe(elapsed.as_secs_f64());
    }
}
