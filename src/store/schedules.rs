//! The scheduler's own table, `sp00ky_schedule`: the last tick each schedule produced, and the
//! claim of each tick.

use chrono::{DateTime, Utc};
use surrealdb::types::{RecordId, Value};

use super::{NewJob, Store, StoreError, TableName, query_err};

impl Store {
    /// The last tick a schedule produced (`sp00ky_schedule`, the runner's own table).
    pub async fn schedule_last_tick(
        &self,
        schedule: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        const STATEMENT: &str = "SELECT last_tick FROM sp00ky_schedule";
        let query = self
            .db
            .query(
                "DEFINE TABLE IF NOT EXISTS sp00ky_schedule SCHEMALESS PERMISSIONS NONE; \
                 SELECT VALUE last_tick FROM ONLY type::record('sp00ky_schedule', $key);",
            )
            .bind(("key", schedule.to_string()));
        let mut response = self.exec(STATEMENT, query).await?;
        let value: Option<Value> = response.take(1).map_err(query_err(STATEMENT))?;
        Ok(match value {
            Some(Value::Datetime(at)) => Some(at.into_inner()),
            _ => None,
        })
    }

    /// Moves a schedule's last tick forward (never back, whichever runner writes last).
    pub async fn record_schedule_tick(
        &self,
        schedule: &str,
        tick: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        const STATEMENT: &str = "UPSERT sp00ky_schedule";
        let query = self
            .db
            .query(
                "UPSERT type::record('sp00ky_schedule', $key) \
                 SET last_tick = IF last_tick = NONE OR last_tick < $tick THEN $tick ELSE last_tick END \
                 RETURN NONE",
            )
            .bind(("key", schedule.to_string()))
            .bind(("tick", tick));
        self.exec(STATEMENT, query).await?;
        Ok(())
    }
}

impl Store {
    /// Claims `tick` of the schedule whose state is `state_key` and creates its row under `key`,
    /// in one transaction: the claim is a compare-and-set moving `last_tick` forward, so of the
    /// runners racing for a tick exactly one creates its row (the others find `last_tick` moved,
    /// or conflict and find it moved on their retry). `Ok(false)`: another runner had it.
    pub async fn fire_tick(
        &self,
        table: &TableName,
        state_key: &str,
        key: &str,
        tick: DateTime<Utc>,
        job: NewJob,
    ) -> Result<bool, StoreError> {
        const STATEMENT: &str = "claim a schedule tick and CREATE its job";
        let id = RecordId::new(table.as_str(), key.to_string());
        let query = self
            .db
            .query(format!(
                "BEGIN TRANSACTION; \
                 LET $won = (UPSERT ONLY type::record('sp00ky_schedule', $state_key) \
                   SET fired = IF last_tick = NONE OR last_tick < $tick THEN $id ELSE fired END, \
                       last_tick = IF last_tick = NONE OR last_tick < $tick THEN $tick ELSE last_tick END \
                   RETURN VALUE fired) = $id; \
                 IF $won {{ CREATE ONLY $id SET {} RETURN NONE; }}; \
                 COMMIT TRANSACTION; \
                 SELECT VALUE id FROM ONLY $id;",
                job.set_clause()
            ))
            .bind(("state_key", state_key.to_string()))
            .bind(("tick", tick))
            .bind(("id", id))
            .bind(job.bindings());
        let mut response = self.exec(STATEMENT, query).await?;
        let last = response.num_statements() - 1;
        let created: Option<Value> = response.take(last).map_err(query_err(STATEMENT))?;
        Ok(created.is_some())
    }
}
