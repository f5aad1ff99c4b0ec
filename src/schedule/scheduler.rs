//! Creates the rows of recurring jobs (see [`crate::schedule`]) on time, on every runner; each
//! tick is claimed in `sp00ky_schedule` by compare-and-set, so exactly one runner creates it.

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use crate::schedule::{Every, Missed, Schedule};
use crate::store::{NewJob, Store, StoreError};

/// One schedule of one backend's table.
#[derive(Debug, Clone)]
pub struct Planned {
    pub table: crate::store::TableName,
    pub schedule: Schedule,
}

impl Planned {
    /// The key of this schedule's state row: unique per table and schedule.
    fn state_key(&self) -> String {
        format!("{}:{}", self.table, self.schedule.name)
    }

    fn job(&self, tick: Option<DateTime<Utc>>) -> NewJob {
        let schedule = &self.schedule;
        NewJob {
            path: schedule.path.clone(),
            payload: schedule.payload.to_string(),
            max_retries: schedule.max_retries,
            retry_strategy: schedule.retry_strategy.as_str(),
            timeout: None,
            assigned_to: None,
            delay_ms: 0,
            run_at: tick,
            priority: schedule.priority,
            schedule: Some(schedule.name.clone()),
        }
    }

    /// Creates the row of `tick`; `Ok(false)` when another runner already did. The tick is
    /// claimed in the runner's own `sp00ky_schedule` table, which app users can neither read nor
    /// write, and the row gets an id nobody can guess: a row an app user made up can neither
    /// take a tick's place nor stop it from firing.
    async fn fire(&self, store: &Store, tick: DateTime<Utc>) -> Result<bool, StoreError> {
        let created = store
            .fire_tick(
                &self.table,
                &self.state_key(),
                &self.schedule.tick_key(tick),
                tick,
                self.job(Some(tick)),
            )
            .await?;
        if created {
            tracing::info!(schedule = %self.schedule.name, table = %self.table, %tick, "scheduled job created");
        }
        Ok(created)
    }
}

/// Runs every schedule until `stop` completes.
pub async fn run(store: Store, planned: Vec<Planned>, stop: impl Future<Output = ()>) {
    let mut tasks = JoinSet::new();
    for plan in planned {
        tasks.spawn(drive(store.clone(), plan));
    }
    stop.await;
    tasks.abort_all();
}

/// Keeps trying a store call through a database outage.
async fn persist<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::warn!(error = %e, "schedule: could not {what}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
}

async fn drive(store: Store, plan: Planned) {
    let schedule = &plan.schedule;
    if let Every::Reboot = schedule.every {
        let key = format!(
            "sched_{}_reboot_{}",
            schedule.name,
            crate::store::unguessable_hex()
        );
        persist("create the @reboot job", || {
            store.create_job(&plan.table, &key, plan.job(None))
        })
        .await;
        return;
    }
    let now = Utc::now();
    let state = plan.state_key();
    let last = persist("read the schedule's state", || {
        store.schedule_last_tick(&state)
    })
    .await;
    match (last, schedule.every.previous_at_or_before(now)) {
        // First start of this schedule: begin from now, nothing is missed.
        (None, _) => {
            persist("record the schedule's start", || {
                store.record_schedule_tick(&state, now)
            })
            .await
        }
        (Some(last), Some(previous)) if previous > last => match schedule.missed {
            Missed::RunOnce => {
                tracing::info!(schedule = %schedule.name, %previous, "catching up the most recent missed tick once");
                persist("create the missed tick", || plan.fire(&store, previous)).await;
            }
            Missed::Skip => {
                tracing::info!(schedule = %schedule.name, %previous, "skipping missed ticks");
                persist("skip the missed ticks", || {
                    store.record_schedule_tick(&state, previous)
                })
                .await;
            }
        },
        _ => {}
    }
    let mut after = now;
    while let Some(tick) = schedule.every.next_after(after) {
        let wait = (tick - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        persist("create the tick's job", || plan.fire(&store, tick)).await;
        after = tick;
    }
}
