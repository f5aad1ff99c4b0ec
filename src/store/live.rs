//! The live query that hints at new rows: the runner claims a hinted row by id at once, and
//! polls for whatever a notification misses.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use surrealdb::types::{RecordId, Value};

use super::{Store, StoreError, TableName, query_err};

/// A live query on a table's pending rows: its id on the database, and its hints.
pub struct Watch {
    id: surrealdb::types::Value,
    pub hints: futures::stream::BoxStream<'static, Option<DueHint>>,
}

impl Store {
    /// A stream that yields once per change to a pending row of `table`, with the row's id when
    /// it is due already: the runner claims such a row straight away, without first asking which
    /// rows are due. Notifications are only ever a hint; the due query stays the source of truth
    /// (notifications can be missed, and a hinted row may be taken by another runner first).
    ///
    /// End it with [`Store::end_watch`] on this same store: dropping the stream alone leaves the
    /// live query running on the database (the SDK kills it from another session, which the
    /// server refuses), and each one left behind costs the database work on every write to the
    /// table.
    pub async fn watch_pending(&self, table: &TableName) -> Result<Watch, StoreError> {
        const STATEMENT: &str = "LIVE SELECT";
        let query = self.db.query(format!(
            "LIVE SELECT id, due_at FROM {table} WHERE status = 'pending'"
        ));
        let mut response = self.exec(STATEMENT, query).await?;
        let id: surrealdb::types::Value = response.take(0).map_err(query_err(STATEMENT))?;
        let stream = response
            .stream::<surrealdb::Notification<Value>>(0)
            .map_err(query_err(STATEMENT))?;
        let hints = stream
            .map(|item| {
                let notification = item.ok()?;
                match notification.action {
                    surrealdb::types::Action::Create | surrealdb::types::Action::Update => {
                        due_hint(notification.data, Utc::now())
                    }
                    _ => None,
                }
            })
            .boxed();
        Ok(Watch { id, hints })
    }

    /// Ends a live query started by [`Store::watch_pending`] on this store.
    pub async fn end_watch(&self, watch: Watch) -> Result<(), StoreError> {
        const STATEMENT: &str = "KILL";
        let Watch { id, hints } = watch;
        drop(hints);
        self.exec(STATEMENT, self.db.query("KILL $id").bind(("id", id)))
            .await?;
        Ok(())
    }
}

/// A pending row a live query reported as due.
#[derive(Debug, Clone)]
pub struct DueHint {
    pub id: RecordId,
    pub due_at: DateTime<Utc>,
}

/// Reads a live-query row into a hint when it is due at `now`.
fn due_hint(row: Value, now: DateTime<Utc>) -> Option<DueHint> {
    let Value::Object(object) = row else {
        return None;
    };
    let mut map = object.into_inner();
    let Some(Value::RecordId(id)) = map.remove("id") else {
        return None;
    };
    let Some(Value::Datetime(due_at)) = map.remove("due_at") else {
        return None;
    };
    let due_at: DateTime<Utc> = due_at.into();
    (due_at <= now).then_some(DueHint { id, due_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_due_rows_become_hints() {
        let now = Utc::now();
        let row = |due_at: DateTime<Utc>| {
            let mut object = surrealdb::types::Object::new();
            object.insert("id", RecordId::new("job", "a"));
            object.insert("due_at", surrealdb::types::Datetime::from(due_at));
            Value::Object(object)
        };
        let hint = due_hint(row(now - chrono::Duration::milliseconds(1)), now).unwrap();
        assert_eq!(hint.id, RecordId::new("job", "a"));
        assert!(due_hint(row(now + chrono::Duration::seconds(5)), now).is_none());
        assert!(due_hint(Value::None, now).is_none());
    }
}
