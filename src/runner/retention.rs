//! Retention: deletes finished rows older than a backend's `retention:` setting. Off unless set:
//! a Sp00ky app may show its users their finished jobs, and rows it reads must not vanish behind
//! its back.
//!
//! Every runner runs this loop, but each turn (one per [`limits::RETENTION_EVERY`]) is taken by
//! one runner only, through a compare-and-set in `sp00ky_schedule`, so several runners on one
//! database never repeat each other's deletes. A turn deletes at most
//! [`limits::RETENTION_BATCH`] rows per status and backend, in slices: a large backlog shrinks in
//! bounded steps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Retention, limits};
use crate::runner::metrics::Metrics;
use crate::store::{Finished, JobFilter, Store};

/// One backend whose finished rows are kept for a while.
#[derive(Debug, Clone)]
pub struct Kept {
    pub backend: String,
    pub table: crate::store::TableName,
    pub retention: Retention,
}

/// Takes a turn every `every` until `stop` completes.
pub async fn run(
    store: Store,
    kept: Vec<Kept>,
    holder: String,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let turn = next_turn(Utc::now(), every);
        let wait = (turn - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
        }
        for backend in &kept {
            take_turn(&store, backend, &holder, turn, &metrics).await;
        }
    }
}

/// The start of the next period of length `every` after `now`.
fn next_turn(now: DateTime<Utc>, every: Duration) -> DateTime<Utc> {
    let step = every.as_millis().max(1) as i64;
    let next = (now.timestamp_millis().div_euclid(step) + 1) * step;
    DateTime::from_timestamp_millis(next).unwrap_or(now)
}

/// One backend's turn `turn`, if this runner gets it.
pub async fn take_turn(
    store: &Store,
    kept: &Kept,
    holder: &str,
    turn: DateTime<Utc>,
    metrics: &Metrics,
) {
    // A schedule's key is `table:name`; a table name has no `/`, so this never meets one.
    let key = format!("retention/{}", kept.table);
    match store.take_turn(&key, turn, holder).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(table = %kept.table, error = %e, "retention: could not take a turn");
            return;
        }
    }
    for (status, keep) in [
        (Finished::Success, kept.retention.success),
        (Finished::Failed, kept.retention.failed),
    ] {
        let Some(keep) = keep else { continue };
        let Ok(keep) = chrono::TimeDelta::from_std(keep) else {
            continue;
        };
        let filter = JobFilter {
            changed_before: Some(Utc::now() - keep),
            ..JobFilter::default()
        };
        match store
            .delete_finished_matching(&kept.table, status, &filter, limits::RETENTION_BATCH)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(table = %kept.table, status = status.as_str(), deleted, "retention: deleted finished rows");
                metrics
                    .retention_deleted
                    .get_or_create(&metrics.outcome(&kept.backend, status.as_str()))
                    .inc_by(deleted);
            }
            Err(e) => {
                tracing::warn!(table = %kept.table, error = %e, "retention: could not delete finished rows")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_start_on_the_boundary_after_now() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:30Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            next_turn(now, Duration::from_secs(60)).to_rfc3339(),
            "2026-11-25T12:01:00+00:00"
        );
        let on = DateTime::parse_from_rfc3339("2026-11-25T12:01:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            next_turn(on, Duration::from_secs(60)).to_rfc3339(),
            "2026-11-25T12:02:00+00:00"
        );
    }
}
