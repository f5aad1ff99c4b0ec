//! What the runner did lately, kept for the dashboard: every status change it wrote, as an
//! event for live pages, and per backend a short history of finished jobs and attempt times.
//! All of it comes from the runner's own attempts, so a page updating live costs the database
//! nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::job::record::Decision;
use crate::job::row::Job;
use crate::store::JobStatus;

/// How long one bucket of [`Series`] covers, and how many are kept (five minutes).
pub const STEP: Duration = Duration::from_secs(5);
pub const BUCKETS: usize = 60;

/// A status the runner wrote to a row.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub id: String,
    pub table: String,
    pub backend: String,
    pub path: Option<String>,
    /// `processing`, `success`, `failed`, or `pending` (a retry is scheduled).
    pub status: JobStatus,
    pub retries: u32,
    pub at: DateTime<Utc>,
}

/// Per bucket, oldest first; the last bucket ends at `end`.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub step_s: u64,
    pub end: DateTime<Utc>,
    pub finished: Vec<u64>,
    pub failed: Vec<u64>,
    /// Mean attempt time in the bucket; `None` when no attempt ended in it.
    pub latency_ms: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which STEP since the epoch this bucket holds.
    index: i64,
    finished: u64,
    failed: u64,
    attempts: u64,
    attempt_ms: f64,
}

/// The feed and the history; one per runner.
pub struct Activity {
    events: broadcast::Sender<JobEvent>,
    /// Backend name → ring of buckets, indexed by bucket index modulo [`BUCKETS`].
    buckets: Mutex<HashMap<String, Vec<Bucket>>>,
    tables: HashMap<String, String>,
}

/// Events a slow page may fall behind by before it misses some (it then reloads what it shows).
const EVENTS_KEPT: usize = 1024;

impl Activity {
    /// `tables`: backend name → its job table.
    pub fn new(tables: HashMap<String, String>) -> Activity {
        Activity {
            events: broadcast::Sender::new(EVENTS_KEPT),
            buckets: Mutex::new(HashMap::new()),
            tables,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// The last five minutes of `backend`, ending with the bucket that holds `now`.
    pub fn series(&self, backend: &str, now: DateTime<Utc>) -> Series {
        let current = bucket_index(now);
        let buckets = self.buckets.lock().expect("activity lock");
        let ring = buckets.get(backend);
        let mut series = Series {
            step_s: STEP.as_secs(),
            end: DateTime::from_timestamp((current + 1) * STEP.as_secs() as i64, 0).unwrap_or(now),
            finished: Vec::with_capacity(BUCKETS),
            failed: Vec::with_capacity(BUCKETS),
            latency_ms: Vec::with_capacity(BUCKETS),
        };
        for index in current + 1 - BUCKETS as i64..=current {
            let bucket = ring
                .map(|ring| ring[slot(index)])
                .filter(|b| b.index == index)
                .unwrap_or_default();
            series.finished.push(bucket.finished);
            series.failed.push(bucket.failed);
            series
                .latency_ms
                .push((bucket.attempts > 0).then(|| bucket.attempt_ms / bucket.attempts as f64));
        }
        series
    }

    pub(super) fn started(&self, backend: &str, job: &Job) {
        self.send(backend, job, JobStatus::Processing, job.retries);
    }

    pub(super) fn recorded(
        &self,
        backend: &str,
        job: &Job,
        decision: &Decision,
        elapsed: Duration,
    ) {
        let now = Utc::now();
        let status = decision.status();
        {
            let index = bucket_index(now);
            let mut buckets = self.buckets.lock().expect("activity lock");
            let ring = buckets
                .entry(backend.to_string())
                .or_insert_with(|| vec![Bucket::default(); BUCKETS]);
            let bucket = &mut ring[slot(index)];
            if bucket.index != index {
                *bucket = Bucket {
                    index,
                    ..Bucket::default()
                };
            }
            bucket.attempts += 1;
            bucket.attempt_ms += elapsed.as_secs_f64() * 1000.0;
            match status {
                JobStatus::Success => bucket.finished += 1,
                JobStatus::Failed => bucket.failed += 1,
                JobStatus::Pending | JobStatus::Processing => {}
            }
        }
        self.send(backend, job, status, decision.retries_after(job));
    }

    fn send(&self, backend: &str, job: &Job, status: JobStatus, retries: u32) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let _ = self.events.send(JobEvent {
            id: job.display_id.clone(),
            table: self.tables.get(backend).cloned().unwrap_or_default(),
            backend: backend.to_string(),
            path: job.row.as_ref().ok().map(|row| row.path.clone()),
            status,
            retries,
            at: Utc::now(),
        });
    }
}

fn bucket_index(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(STEP.as_secs() as i64)
}

fn slot(index: i64) -> usize {
    index.rem_euclid(BUCKETS as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_older_than_the_window_are_not_shown() {
        let activity = Activity::new(HashMap::new());
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        {
            let mut buckets = activity.buckets.lock().unwrap();
            let ring = buckets
                .entry("api".into())
                .or_insert_with(|| vec![Bucket::default(); BUCKETS]);
            let stale = bucket_index(now) - BUCKETS as i64;
            ring[slot(stale)] = Bucket {
                index: stale,
                finished: 7,
                ..Bucket::default()
            };
            let fresh = bucket_index(now);
            ring[slot(fresh)] = Bucket {
                index: fresh,
                finished: 3,
                failed: 1,
                attempts: 4,
                attempt_ms: 40.0,
            };
        }
        let series = activity.series("api", now);
        assert_eq!(series.finished.len(), BUCKETS);
        assert_eq!(
            series.finished.iter().sum::<u64>(),
            3,
            "the stale 7 is gone"
        );
        assert_eq!(series.failed[BUCKETS - 1], 1);
        assert_eq!(series.latency_ms[BUCKETS - 1], Some(10.0));
        assert_eq!(series.latency_ms[0], None);
        assert_eq!(series.end.timestamp(), (bucket_index(now) + 1) * 5);
    }
}
