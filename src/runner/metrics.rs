//! Prometheus metrics, encoded by `prometheus-client` (the Prometheus project's own Rust client)
//! rather than formatted by hand.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::job::attempt::Observer;
use crate::job::record::Decision;
use crate::job::row::Job;

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
    /// Rows per table and status, refreshed on each scrape.
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sp00ky_runner");
        let attempts = Family::<OutcomeLabels, Counter>::default();
        let jobs_finished = Family::<OutcomeLabels, Counter>::default();
        let retries = Family::<BackendLabels, Counter>::default();
        let attempt_seconds =
            Family::<BackendLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                attempt_histogram,
            );
        let claim_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let in_flight = Gauge::default();
        let rows = Family::<TableLabels, Gauge>::default();
        let db_reconnects = Counter::default();
        let transaction_conflicts = Counter::default();
        let lease_rescues = Counter::default();
        let retention_deleted = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "attempts",
            "Attempts that ended, by backend and outcome",
            attempts.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached success or failed",
            jobs_finished.clone(),
        );
        registry.register("retries", "Retries scheduled", retries.clone());
        registry.register(
            "attempt_duration_seconds",
            "Time from claim to recorded outcome",
            attempt_seconds.clone(),
        );
        registry.register(
            "claim_lag_seconds",
            "Time from a job becoming due to its claim",
            claim_lag_seconds.clone(),
        );
        registry.register(
            "in_flight_jobs",
            "Jobs being worked on now",
            in_flight.clone(),
        );
        registry.register("job_rows", "Rows per job table and status", rows.clone());
        registry.register(
            "db_reconnects",
            "Times the database came back after being unreachable",
            db_reconnects.clone(),
        );
        registry.register(
            "transaction_conflicts",
            "Statements refused with a transaction conflict (retried, never a job failure)",
            transaction_conflicts.clone(),
        );
        registry.register(
            "lease_rescues",
            "Expired leases taken over by this runner",
            lease_rescues.clone(),
        );
        registry.register(
            "retention_deleted",
            "Finished rows deleted by retention, by backend and status",
            retention_deleted.clone(),
        );
        Metrics {
            registry,
            attempts,
            jobs_finished,
            retries,
            attempt_seconds,
            claim_lag_seconds,
            in_flight,
            rows,
            db_reconnects,
            transaction_conflicts,
            lease_rescues,
            retention_deleted,
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

    fn recorded(
        &self,
        backend: &str,
        _job: &Job,
        decision: &Decision,
        elapsed: std::time::Duration,
    ) {
        let label = match decision {
            Decision::Success => "success",
            Decision::Retry { .. } => "retry",
            Decision::Failed { .. } => "failed",
        };
        let outcome = self.outcome(backend, label);
        self.attempts.get_or_create(&outcome).inc();
        if let Decision::Retry { .. } = decision {
            self.retries.get_or_create(&self.backend(backend)).inc();
        } else {
            self.jobs_finished.get_or_create(&outcome).inc();
        }
        self.attempt_seconds
            .get_or_create(&self.backend(backend))
            .observe(elapsed.as_secs_f64());
    }
}
