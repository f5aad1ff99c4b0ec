//! The only module that speaks SurrealQL. Every statement the runner sends is in this file, every
//! result is checked, and every write-back is fenced by the claim's `lease_token`.
//!
//! Table names are formatted into statements (SurrealQL cannot bind a table name into an indexed
//! `FROM`); they are checked by [`crate::config::is_identifier`] when the configuration loads,
//! and [`Store::table`] refuses anything else, so no row or request can inject one.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use surrealdb::engine::any::Any;
use surrealdb::types::{RecordId, Value};
use surrealdb::{IndexedResults, Surreal};
use tokio::sync::watch;

use crate::claim::Look;
use crate::config::is_identifier;
use crate::failure::Failure;

/// The shipped schema, written for a table named `job`.
pub const SCHEMA: &str = include_str!("../schema/job.surql");

/// Fields the claim query reads on every table, SCHEMAFULL or not: their defaults are what put a
/// row written by a Sp00ky client into the queue.
pub const QUEUE_FIELDS: [&str; 2] = ["due_at", "priority"];

/// Fields the runner writes: a SCHEMAFULL table without them cannot store its results.
pub const RUNNER_FIELDS: [&str; 7] = [
    "status",
    "retries",
    "errors",
    "updated_at",
    "due_at",
    "assignee",
    "lease_token",
];

/// A failure to talk to SurrealDB, as opposed to a job's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to SurrealDB at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: Box<surrealdb::Error>,
    },
    #[error(
        "SurrealDB namespace `{namespace}` or database `{database}` does not exist: run `sp00ky-job-runner schema --apply` to define them ({source})"
    )]
    Missing {
        namespace: String,
        database: String,
        source: Box<surrealdb::Error>,
    },
    #[error("SurrealDB refused `{statement}`: {source}")]
    Query {
        statement: &'static str,
        source: Box<surrealdb::Error>,
    },
    #[error("SurrealDB did not answer `{statement}` within {} s", STATEMENT_TIMEOUT.as_secs())]
    Timeout { statement: &'static str },
    #[error("unexpected answer to `{statement}`: {detail}")]
    Shape {
        statement: &'static str,
        detail: String,
    },
}

impl StoreError {
    /// A transaction conflict means another runner touched the same rows at the same moment:
    /// the statement is tried again later, and it is never a job failure.
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::Query { source, .. } => {
                let text = source.to_string().to_ascii_lowercase();
                text.contains("conflict") || text.contains("retried")
            }
            _ => false,
        }
    }
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// `mem://`, `surrealkv://path`, `ws://host:port`, `http://...`: anything `engine::any` takes.
    pub endpoint: String,
    pub namespace: String,
    pub database: String,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

impl DbSettings {
    /// Embedded engines live in this process: the runner owns them, so it may define the
    /// namespace and database itself.
    pub fn is_embedded(&self) -> bool {
        let scheme = self.endpoint.split("://").next().unwrap_or_default();
        matches!(scheme, "mem" | "memory" | "surrealkv" | "rocksdb" | "file")
    }
}

/// What `INFO FOR TABLE` says, reduced to what the start-up check needs.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    pub exists: bool,
    pub schemafull: bool,
    pub fields: BTreeMap<String, String>,
    pub indexes: BTreeMap<String, String>,
}

/// A row that may be claimed: its id and what the claim must compare against.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: RecordId,
    /// `pending`, or `processing` for a row whose lease has run out.
    pub status: String,
    /// The fencing token seen; the rescue of an expired lease compares against it.
    pub lease_token: String,
    pub due_at: Option<DateTime<Utc>>,
}

/// A live query on a table's pending rows: its id on the database, and its hints.
pub struct Watch {
    id: surrealdb::types::Value,
    pub hints: futures::stream::BoxStream<'static, Option<DueHint>>,
}

/// What a look at a table found.
#[derive(Debug, Default)]
pub struct DueRows {
    /// Higher priorities first, then priority 0 oldest first, lower priorities, expired leases.
    pub candidates: Vec<Candidate>,
    /// `due_at` of the oldest due priority-0 row, when such rows filled the limit (a backlog:
    /// more are likely due after them).
    pub backlog_from: Option<DateTime<Utc>>,
}

/// A claimed row: the id, and the rest of the row as JSON for the lenient reader in `claim`.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: RecordId,
    pub fields: serde_json::Value,
}

/// How a finished attempt is written back.
#[derive(Debug, Clone)]
pub enum WriteBack<'a> {
    Success,
    /// Back to `pending`, due at the given time, with the failure appended.
    Retry {
        failure: &'a Failure,
        attempt: u32,
        due_at: DateTime<Utc>,
    },
    /// `failed`, with the failure appended.
    Failed {
        failure: &'a Failure,
        attempt: u32,
    },
}

/// The database handle. Cloning shares one connection and one session: the SDK opens a new
/// server-side session for every clone of a `Surreal` handle and signs it in again, which costs
/// the server a password hash per clone (measured: most of a SurrealDB server's CPU when a
/// handle was cloned per job or per HTTP request).
#[derive(Clone)]
pub struct Store {
    db: Arc<Surreal<Any>>,
    settings: DbSettings,
    health: Arc<Health>,
}

/// The longest one request to SurrealDB may take. While a server is unreachable the client
/// reconnects in the background and requests wait; this bound turns the wait into an error the
/// caller can retry, so no job task hangs on a dead connection.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the database answers, and how often it came back. Remote clients reconnect and
/// re-authenticate by themselves, but live queries do not survive a server restart: the runner
/// re-arms them whenever [`Health::reconnects`] moves.
#[derive(Debug)]
pub struct Health {
    down: AtomicBool,
    reconnects: watch::Sender<u64>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            down: AtomicBool::new(false),
            reconnects: watch::Sender::new(0),
        }
    }
}

impl Health {
    fn mark_down(&self) {
        if !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!("lost the database connection; retrying until it is back");
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            self.reconnects.send_modify(|n| *n += 1);
            tracing::info!("database connection is back");
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Changes each time the database comes back after being down.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}

fn query_err(statement: &'static str) -> impl FnOnce(surrealdb::Error) -> StoreError {
    move |source| StoreError::Query {
        statement,
        source: Box::new(source),
    }
}

impl Store {
    /// Connects, signs in when a user is given, and selects the namespace and database. On an
    /// embedded engine the namespace and database are defined when missing.
    pub async fn connect(settings: DbSettings) -> Result<Store, StoreError> {
        let endpoint = settings.endpoint.clone();
        let connect_err = |source| StoreError::Connect {
            endpoint: endpoint.clone(),
            source: Box::new(source),
        };
        let db = surrealdb::engine::any::connect(settings.endpoint.as_str())
            .await
            .map_err(connect_err)?;
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default();
            db.signin(surrealdb::opt::auth::Root {
                username: username.clone(),
                password,
            })
            .await
            .map_err(connect_err)?;
        }
        let store = Store {
            db: Arc::new(db),
            settings,
            health: Arc::new(Health::default()),
        };
        if store.settings.is_embedded() {
            store.define_namespace_and_database().await?;
        }
        store
            .db
            .use_ns(store.settings.namespace.as_str())
            .use_db(store.settings.database.as_str())
            .await
            .map_err(connect_err)?;
        Ok(store)
    }

    pub fn settings(&self) -> &DbSettings {
        &self.settings
    }

    /// Sends one request, bounded by [`STATEMENT_TIMEOUT`], checks every statement's result, and
    /// keeps [`Store::health`] current: a connection error or a timeout marks the database down,
    /// the next answer marks it up again.
    async fn exec<Q>(&self, statement: &'static str, query: Q) -> Result<IndexedResults, StoreError>
    where
        Q: IntoFuture<Output = surrealdb::Result<IndexedResults>>,
    {
        match tokio::time::timeout(STATEMENT_TIMEOUT, query.into_future()).await {
            Err(_) => {
                self.health.mark_down();
                Err(StoreError::Timeout { statement })
            }
            Ok(Err(source)) => {
                if source.is_connection() {
                    self.health.mark_down();
                } else {
                    self.health.mark_up();
                }
                Err(query_err(statement)(source))
            }
            Ok(Ok(response)) => {
                self.health.mark_up();
                response.check().map_err(query_err(statement))
            }
        }
    }

    /// A connection of its own on a server (an embedded store has one handle, which is shared).
    /// Live queries use one: a server closes a WebSocket whose notification queue overflows (a
    /// bulk insert of many jobs does that), and that must never take the claims and write-backs
    /// down with it.
    pub async fn own_connection(&self) -> Result<Store, StoreError> {
        if self.settings.is_embedded() {
            Ok(self.clone())
        } else {
            Store::connect(self.settings.clone()).await
        }
    }

    /// Connection state shared by every clone of this store.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// `DEFINE NAMESPACE` and `DEFINE DATABASE`, idempotently.
    pub async fn define_namespace_and_database(&self) -> Result<(), StoreError> {
        const STATEMENT: &str = "DEFINE NAMESPACE IF NOT EXISTS; DEFINE DATABASE IF NOT EXISTS";
        let ns = ident(&self.settings.namespace);
        let db = ident(&self.settings.database);
        let query = self.db.query(format!(
            "DEFINE NAMESPACE IF NOT EXISTS {ns}; USE NS {ns}; DEFINE DATABASE IF NOT EXISTS {db};"
        ));
        self.exec(STATEMENT, query).await?;
        Ok(())
    }

    /// Checks that the namespace and database exist, with an error that says how to fix it.
    pub async fn check_database(&self) -> Result<(), StoreError> {
        match self.exec("INFO FOR DB", self.db.query("INFO FOR DB")).await {
            Ok(_) => Ok(()),
            Err(StoreError::Query { source, .. })
                if source.to_string().contains("does not exist") =>
            {
                Err(StoreError::Missing {
                    namespace: self.settings.namespace.clone(),
                    database: self.settings.database.clone(),
                    source,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// The table name, checked once more at the last moment before it enters a statement.
    fn table(table: &str) -> Result<&str, StoreError> {
        if is_identifier(table) {
            Ok(table)
        } else {
            Err(StoreError::Shape {
                statement: "(table name)",
                detail: format!("{table:?} is not a plain identifier"),
            })
        }
    }

    pub async fn table_info(&self, table: &str) -> Result<TableInfo, StoreError> {
        let table = Self::table(table)?;
        let query = self.db.query("INFO FOR DB");
        let mut response = self.exec("INFO FOR DB", query).await?;
        let db_info: Option<serde_json::Value> =
            response.take(0).map_err(query_err("INFO FOR DB"))?;
        let db_info = db_info.unwrap_or_default();
        let Some(definition) = db_info
            .get("tables")
            .and_then(|t| t.get(table))
            .and_then(|d| d.as_str())
        else {
            return Ok(TableInfo::default());
        };
        let query = self.db.query(format!("INFO FOR TABLE {table}"));
        let mut response = self.exec("INFO FOR TABLE", query).await?;
        let info: Option<serde_json::Value> =
            response.take(0).map_err(query_err("INFO FOR TABLE"))?;
        let info = info.unwrap_or_default();
        let strings = |key: &str| -> BTreeMap<String, String> {
            info.get(key)
                .and_then(|v| v.as_object())
                .map(|map| {
                    map.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(TableInfo {
            exists: true,
            schemafull: definition.contains("SCHEMAFULL"),
            fields: strings("fields"),
            indexes: strings("indexes"),
        })
    }

    /// Applies the shipped schema to `table`; every statement is `IF NOT EXISTS`.
    pub async fn apply_schema(&self, table: &str) -> Result<(), StoreError> {
        let table = Self::table(table)?;
        self.exec("schema/job.surql", self.db.query(schema_for(table)))
            .await?;
        Ok(())
    }

    /// Rows written before the table had a `due_at` default (or by Sp00ky's reference runner,
    /// which leaves crashed jobs `processing` forever) get one, so the claim query sees them.
    pub async fn backfill_due(&self, table: &str) -> Result<usize, StoreError> {
        const STATEMENT: &str = "UPDATE ... SET due_at, priority WHERE either is NONE";
        let table = Self::table(table)?;
        let query = self.db.query(format!(
            "UPDATE {table} SET due_at = due_at ?? created_at ?? time::now(), priority = priority ?? 0 \
                 WHERE (due_at = NONE OR priority = NONE) AND status IN ['pending', 'processing'] RETURN id"
        ));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.len())
    }

    /// Due rows: pending ones by priority (higher first), then oldest first; then processing ones
    /// whose lease has run out (when `look.expired`). The priority-0 scan starts at `look.from`
    /// (see [`crate::claim::Watermark`] for why). Non-zero priorities are expected to be the
    /// minority: the priority-0 rows come straight off the index in order, and the others are
    /// first probed for with a forward `LIMIT 1`. Only when some exist is the `ORDER BY priority
    /// DESC` query run, in a second round trip: a descending scan starts from the end of
    /// SurrealKV's memtable and walks back to the range (measured: most of an embedded runner's
    /// CPU once the memtable held a few thousand finished jobs), so the common case never runs
    /// one.
    pub async fn due_candidates(
        &self,
        table: &str,
        now: DateTime<Utc>,
        limit: usize,
        look: Look,
    ) -> Result<DueRows, StoreError> {
        const STATEMENT: &str = "SELECT due rows";
        const FIELDS: &str = "id, status, lease_token, due_at";
        let table = Self::table(table)?;
        // The planner takes one bound of `due_at` as the index range, the first it reads; the
        // other is a filter. A narrow look's range is its lower bound.
        let range = if look.from.is_some() {
            "due_at >= $from AND due_at <= $now"
        } else {
            "due_at <= $now"
        };
        let expired = if look.expired {
            format!(
                "SELECT {FIELDS} FROM {table} \
                   WHERE status = 'processing' AND due_at <= $now ORDER BY due_at LIMIT $limit;"
            )
        } else {
            String::new()
        };
        let query = self
            .db
            .query(format!(
                "SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority > 0 AND due_at <= $now LIMIT 1; \
                 SELECT {FIELDS} FROM {table} \
                   WHERE status = 'pending' AND priority = 0 AND {range} \
                   ORDER BY due_at LIMIT $limit; \
                 SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority < 0 AND due_at <= $now LIMIT 1; \
                 {expired}"
            ))
            .bind(("now", now))
            .bind(("from", look.from))
            .bind(("limit", limit as i64));
        let mut response = self.exec(STATEMENT, query).await?;
        let higher: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        let normal: Vec<Value> = response.take(1).map_err(query_err(STATEMENT))?;
        let lower: Vec<Value> = response.take(2).map_err(query_err(STATEMENT))?;
        let expired: Vec<Value> = if look.expired {
            response.take(3).map_err(query_err(STATEMENT))?
        } else {
            Vec::new()
        };
        let (higher, lower) = if higher.is_empty() && lower.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let query = self
                .db
                .query(format!(
                    "SELECT {FIELDS} FROM {table} \
                       WHERE status = 'pending' AND priority > 0 AND due_at <= $now \
                       ORDER BY priority DESC, due_at LIMIT $limit; \
                     SELECT {FIELDS} FROM {table} \
                       WHERE status = 'pending' AND priority < 0 AND due_at <= $now \
                       ORDER BY priority DESC, due_at LIMIT $limit;"
                ))
                .bind(("now", now))
                .bind(("limit", limit as i64));
            let mut response = self.exec(STATEMENT, query).await?;
            (
                response.take(0).map_err(query_err(STATEMENT))?,
                response.take(1).map_err(query_err(STATEMENT))?,
            )
        };
        let read = |row: Value| -> Result<Candidate, StoreError> {
            let (id, fields) = split_row(row, STATEMENT)?;
            Ok(Candidate {
                id,
                status: fields["status"].as_str().unwrap_or_default().to_string(),
                lease_token: fields["lease_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                due_at: fields["due_at"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&Utc)),
            })
        };
        let first_normal = higher.len();
        let backlog = !normal.is_empty() && normal.len() >= limit;
        let candidates = higher
            .into_iter()
            .chain(normal)
            .chain(lower)
            .chain(expired)
            .map(read)
            .collect::<Result<Vec<_>, _>>()?;
        let backlog_from = candidates
            .get(first_normal)
            .filter(|_| backlog)
            .and_then(|c| c.due_at);
        Ok(DueRows {
            candidates,
            backlog_from,
        })
    }

    /// Claims pending rows by compare-and-set: a row is taken only if it is still pending and due.
    /// Returns the rows this call won; rows another runner took are simply absent.
    pub async fn claim_pending(
        &self,
        ids: Vec<RecordId>,
        runner: &str,
        token: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        const STATEMENT: &str = "UPDATE ... SET status = 'processing' WHERE status = 'pending'";
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let query = self
            .db
            .query(
                "UPDATE $ids SET status = 'processing', assignee = $runner, lease_token = $claim_token, \
                   due_at = $lease_until, updated_at = time::now() \
                 WHERE status = 'pending' AND due_at <= $now RETURN AFTER",
            )
            .bind(("ids", ids))
            .bind(("runner", runner.to_string()))
            .bind(("claim_token", token.to_string()))
            .bind(("now", now))
            .bind(("lease_until", lease_until));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        rows.into_iter()
            .map(|row| {
                let (id, fields) = split_row(row, STATEMENT)?;
                Ok(ClaimedRow { id, fields })
            })
            .collect()
    }

    /// Takes over a processing row whose lease ran out. The lost attempt is recorded as a failure
    /// (kind `lease_expired`): the previous call may have reached the backend. `give_up` ends the
    /// row `failed` instead of claiming it, when it has no attempts left.
    #[allow(clippy::too_many_arguments)]
    pub async fn rescue_expired(
        &self,
        candidate: &Candidate,
        failure: &Failure,
        lost_attempt: u32,
        give_up: bool,
        runner: &str,
        token: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<ClaimedRow>, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... WHERE status = 'processing' AND lease expired";
        let set = if give_up {
            "status = 'failed', assignee = NONE, lease_token = NONE"
        } else {
            "retries = $lost_attempt, assignee = $runner, lease_token = $claim_token, due_at = $lease_until"
        };
        let query = self
            .db
            .query(format!(
                "UPDATE ONLY $id SET {set}, updated_at = time::now(), \
                   errors = array::append(errors ?? [], {ERROR_ENTRY}) \
                 WHERE status = 'processing' AND (lease_token ?? '') = $seen AND due_at <= $now \
                 RETURN AFTER"
            ))
            .bind(("id", candidate.id.clone()))
            .bind(("seen", candidate.lease_token.clone()))
            .bind(error_bindings(failure, lost_attempt))
            .bind(("lost_attempt", i64::from(lost_attempt)))
            .bind(("runner", runner.to_string()))
            .bind(("claim_token", token.to_string()))
            .bind(("now", now))
            .bind(("lease_until", lease_until));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        match row {
            Some(row) if !give_up => {
                let (id, fields) = split_row(row, STATEMENT)?;
                Ok(Some(ClaimedRow { id, fields }))
            }
            _ => Ok(None),
        }
    }

    /// Moves the lease end while the call runs. `false` means the lease is gone.
    pub async fn extend_lease(
        &self,
        id: &RecordId,
        token: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET due_at (lease)";
        let query = self
            .db
            .query(
                "UPDATE ONLY $id SET due_at = $lease_until, updated_at = time::now() \
                 WHERE status = 'processing' AND lease_token = $claim_token RETURN id",
            )
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()))
            .bind(("lease_until", lease_until));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.is_some())
    }

    /// Writes the outcome of an attempt, if this runner still holds the lease. `false` means
    /// another runner owns the job now and nothing was written.
    pub async fn write_back(
        &self,
        id: &RecordId,
        token: &str,
        retries: u32,
        outcome: WriteBack<'_>,
    ) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... (write back) WHERE lease_token = $claim_token";
        let set = match outcome {
            WriteBack::Success => "status = 'success'".to_string(),
            WriteBack::Retry { .. } => {
                format!(
                    "status = 'pending', due_at = $due_at, errors = array::append(errors ?? [], {ERROR_ENTRY})"
                )
            }
            WriteBack::Failed { .. } => {
                format!("status = 'failed', errors = array::append(errors ?? [], {ERROR_ENTRY})")
            }
        };
        let mut query = self
            .db
            .query(format!(
                "UPDATE ONLY $id SET {set}, retries = $retries, assignee = NONE, lease_token = NONE, \
                   updated_at = time::now() \
                 WHERE status = 'processing' AND lease_token = $claim_token RETURN id"
            ))
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()))
            .bind(("retries", i64::from(retries)));
        match outcome {
            WriteBack::Success => {}
            WriteBack::Retry {
                failure,
                attempt,
                due_at,
            } => {
                query = query
                    .bind(error_bindings(failure, attempt))
                    .bind(("due_at", due_at));
            }
            WriteBack::Failed { failure, attempt } => {
                query = query.bind(error_bindings(failure, attempt));
            }
        }
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.is_some())
    }

    /// Records several successes in one statement, each fenced by its own claim token: a burst
    /// of finished jobs then costs one commit instead of one each. `retries` is left as it is,
    /// which is what a success writes. Returns the ids written; an id missing from the answer
    /// lost its lease and nothing was written for it.
    pub async fn write_successes(
        &self,
        fences: Vec<(RecordId, String)>,
    ) -> Result<Vec<RecordId>, StoreError> {
        const STATEMENT: &str =
            "UPDATE $ids SET status = 'success' WHERE [id, lease_token] INSIDE $fences";
        if fences.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<RecordId> = fences.iter().map(|(id, _)| id.clone()).collect();
        let query = self
            .db
            .query(
                "UPDATE $ids SET status = 'success', assignee = NONE, lease_token = NONE, \
                   updated_at = time::now() \
                 WHERE status = 'processing' AND [id, lease_token] INSIDE $fences RETURN id",
            )
            .bind(("ids", ids))
            .bind(("fences", fences));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        rows.into_iter()
            .map(|row| split_row(row, STATEMENT).map(|(id, _)| id))
            .collect()
    }

    /// Puts a claimed row back to `pending` without spending an attempt (shutdown).
    pub async fn release(&self, id: &RecordId, token: &str) -> Result<bool, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET status = 'pending' (release)";
        let query = self
            .db
            .query(
                "UPDATE ONLY $id SET status = 'pending', assignee = NONE, lease_token = NONE, \
                   due_at = time::now(), updated_at = time::now() \
                 WHERE status = 'processing' AND lease_token = $claim_token RETURN id",
            )
            .bind(("id", id.clone()))
            .bind(("claim_token", token.to_string()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.is_some())
    }

    /// A stream that yields once per change to a pending row of `table`, with the row's id when
    /// it is due already: the runner claims such a row straight away, without first asking which
    /// rows are due. Notifications are only ever a hint; the due query stays the source of truth
    /// (notifications can be missed, and a hinted row may be taken by another runner first).
    ///
    /// End it with [`Store::end_watch`] on this same store: dropping the stream alone leaves the
    /// live query running on the database (the SDK kills it from another session, which the
    /// server refuses), and each one left behind costs the database work on every write to the
    /// table.
    pub async fn watch_pending(&self, table: &str) -> Result<Watch, StoreError> {
        const STATEMENT: &str = "LIVE SELECT";
        let table = Self::table(table)?;
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

    /// Creates a pending job the way `db.run` does; returns its id.
    pub async fn enqueue(&self, table: &str, job: NewJob) -> Result<RecordId, StoreError> {
        let key = new_job_key();
        self.create_job(table, &key, job)
            .await?
            .ok_or(StoreError::Shape {
                statement: "CREATE ONLY job",
                detail: format!("a job with the new random key {key} already exists"),
            })
    }

    /// Creates a job under `key`; `None` when a row with that id already exists (a schedule's
    /// tick that another runner created first).
    pub async fn create_job(
        &self,
        table: &str,
        key: &str,
        job: NewJob,
    ) -> Result<Option<RecordId>, StoreError> {
        const STATEMENT: &str = "CREATE ONLY job";
        let table = Self::table(table)?;
        let id = RecordId::new(table, key.to_string());
        let query = self
            .db
            .query(
                "CREATE ONLY $id SET path = $path, payload = $payload, max_retries = $max_retries, \
                   retry_strategy = $retry_strategy, timeout = $timeout, assigned_to = $assigned_to, \
                   delay = $delay, priority = $priority, \
                   due_at = $run_at ?? (time::now() + duration::from_millis($delay)) \
                 RETURN id",
            )
            .bind(("id", id.clone()))
            .bind(("path", job.path))
            .bind(("payload", job.payload))
            .bind(("max_retries", i64::from(job.max_retries)))
            .bind(("retry_strategy", job.retry_strategy))
            .bind(("timeout", job.timeout.map(i64::from)))
            .bind(("assigned_to", job.assigned_to))
            .bind(("delay", job.delay_ms as i64))
            .bind(("priority", job.priority))
            .bind(("run_at", job.run_at));
        match self.exec(STATEMENT, query).await {
            Ok(mut response) => {
                let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
                Ok(row.map(|_| id))
            }
            Err(StoreError::Query { source, .. })
                if source.to_string().contains("already exists") =>
            {
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

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

    /// Creates many pending jobs in one statement (the benchmark's and tests' bulk loader).
    pub async fn enqueue_many(&self, table: &str, jobs: Vec<NewJob>) -> Result<usize, StoreError> {
        const STATEMENT: &str = "INSERT INTO ... (bulk)";
        let table = Self::table(table)?;
        let count = jobs.len();
        let rows: Vec<serde_json::Value> = jobs
            .into_iter()
            .map(|job| {
                serde_json::json!({
                    "id": new_job_key(),
                    "path": job.path,
                    "payload": job.payload,
                    "max_retries": job.max_retries,
                    "retry_strategy": job.retry_strategy,
                    "priority": job.priority,
                })
            })
            .collect();
        let query = self
            .db
            .query(format!("INSERT INTO {table} $rows RETURN NONE"))
            .bind(("rows", rows));
        self.exec(STATEMENT, query).await?;
        Ok(count)
    }

    /// Deletes finished (`success`) rows of `table`; the benchmark keeps its table small this way.
    pub async fn delete_succeeded(&self, table: &str) -> Result<(), StoreError> {
        const STATEMENT: &str = "DELETE ... WHERE status = 'success'";
        let table = Self::table(table)?;
        // In slices: one statement deleting tens of thousands of rows outlasts the statement bound.
        loop {
            let query = self.db.query(format!(
                "DELETE (SELECT VALUE id FROM {table} WHERE status = 'success' LIMIT 2000) RETURN BEFORE"
            ));
            let mut response = self.exec(STATEMENT, query).await?;
            let deleted: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
            if deleted.is_empty() {
                return Ok(());
            }
        }
    }

    /// How many rows of `table` are `success`.
    pub async fn count_succeeded(&self, table: &str) -> Result<u64, StoreError> {
        const STATEMENT: &str = "SELECT count() WHERE status = 'success'";
        let table = Self::table(table)?;
        let query = self.db.query(format!(
            "SELECT count() AS n FROM {table} WHERE status = 'success' GROUP ALL"
        ));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<serde_json::Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0))
    }

    /// Reads one row as JSON (tests and the CLI).
    pub async fn get(&self, id: &RecordId) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "SELECT * FROM ONLY $id";
        let query = self
            .db
            .query("SELECT * FROM ONLY $id")
            .bind(("id", id.clone()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }

    /// A page of rows in id order, after `after` (keyset paging: stable while rows change).
    pub async fn list_jobs(
        &self,
        table: &str,
        status: Option<&str>,
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "SELECT page of jobs";
        let table = Self::table(table)?;
        let query = self
            .db
            .query(format!(
                "SELECT * FROM {table} WHERE ($status = NONE OR status = $status) \
                   AND ($after = NONE OR id > $after) ORDER BY id LIMIT $limit"
            ))
            .bind(("status", status.map(str::to_string)))
            .bind(("after", after))
            .bind(("limit", limit as i64));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.into_iter().map(Value::into_json_value).collect())
    }

    /// Puts a `failed` job back to `pending` with a fresh attempt budget; its `errors` stay.
    /// `None` when the job is not failed (or does not exist).
    pub async fn retry_failed(
        &self,
        id: &RecordId,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET status = 'pending' WHERE status = 'failed'";
        let query = self
            .db
            .query(
                "UPDATE ONLY $id SET status = 'pending', retries = 0, due_at = time::now(), \
                   assignee = NONE, lease_token = NONE, updated_at = time::now() \
                 WHERE status = 'failed' RETURN AFTER",
            )
            .bind(("id", id.clone()));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }

    /// Ends a `pending` job `failed` with the given failure appended. `None` when the job is not
    /// pending (or does not exist).
    pub async fn cancel_pending(
        &self,
        id: &RecordId,
        failure: &Failure,
        attempt: u32,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const STATEMENT: &str = "UPDATE ONLY ... SET status = 'failed' WHERE status = 'pending'";
        let query = self
            .db
            .query(format!(
                "UPDATE ONLY $id SET status = 'failed', updated_at = time::now(), \
                   errors = array::append(errors ?? [], {ERROR_ENTRY}) \
                 WHERE status = 'pending' RETURN AFTER"
            ))
            .bind(("id", id.clone()))
            .bind(error_bindings(failure, attempt));
        let mut response = self.exec(STATEMENT, query).await?;
        let row: Option<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(row.map(Value::into_json_value))
    }

    /// How many rows of `table` are `pending` and `processing` (both counts use the index).
    pub async fn count_open(&self, table: &str) -> Result<(u64, u64), StoreError> {
        const STATEMENT: &str = "SELECT count() per status";
        let table = Self::table(table)?;
        let query = self.db.query(format!(
            "SELECT count() AS n FROM {table} WHERE status = 'pending' GROUP ALL; \
             SELECT count() AS n FROM {table} WHERE status = 'processing' GROUP ALL;"
        ));
        let mut response = self.exec(STATEMENT, query).await?;
        let mut counts = [0u64; 2];
        for (index, count) in counts.iter_mut().enumerate() {
            let rows: Vec<serde_json::Value> =
                response.take(index).map_err(query_err(STATEMENT))?;
            *count = rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
        }
        Ok((counts[0], counts[1]))
    }

    /// Runs arbitrary SurrealQL: only for tests and `schema --apply`'s callers, never with row data.
    pub async fn raw(&self, statements: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        let query = self.db.query(statements);
        let mut response = self.exec("(raw)", query).await?;
        let mut out = Vec::new();
        for index in 0..response.num_statements() {
            let value: Value = response.take(index).map_err(query_err("(raw)"))?;
            out.push(value.into_json_value());
        }
        Ok(out)
    }

    /// The underlying handle, for tests that need SurrealDB features the runner does not use.
    pub fn client(&self) -> &Surreal<Any> {
        &self.db
    }
}

/// A job to create, with the defaults of `db.run` already applied.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub path: String,
    /// Stored as Sp00ky's client stores it: a JSON string.
    pub payload: String,
    pub max_retries: u32,
    pub retry_strategy: String,
    pub timeout: Option<u32>,
    pub assigned_to: Option<RecordId>,
    /// Milliseconds before the job first runs.
    pub delay_ms: u64,
    /// An absolute first run time; wins over `delay_ms`.
    pub run_at: Option<DateTime<Utc>>,
    pub priority: i64,
}

/// `job:<32 hex chars>`, like the Sp00ky client.
pub fn new_job_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The object appended to `errors`; the timestamp comes from the database clock, like `updated_at`.
const ERROR_ENTRY: &str = "{ code: $error_code, reason: $error_reason, kind: $error_kind, attempt: $error_attempt, at: time::now() }";

fn error_bindings(failure: &Failure, attempt: u32) -> surrealdb::types::Object {
    let mut vars = surrealdb::types::Object::new();
    vars.insert("error_code", i64::from(failure.code));
    vars.insert("error_reason", failure.reason.clone());
    vars.insert("error_kind", failure.kind.as_str().to_string());
    vars.insert("error_attempt", i64::from(attempt));
    vars
}

/// Splits a returned row into its record id and the rest as JSON.
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

fn split_row(
    row: Value,
    statement: &'static str,
) -> Result<(RecordId, serde_json::Value), StoreError> {
    let Value::Object(object) = row else {
        return Err(StoreError::Shape {
            statement,
            detail: format!("expected a row, got {row:?}"),
        });
    };
    let mut map = object.into_inner();
    let id = match map.remove("id") {
        Some(Value::RecordId(id)) => id,
        other => {
            return Err(StoreError::Shape {
                statement,
                detail: format!("row without a record id: {other:?}"),
            });
        }
    };
    let fields = serde_json::Value::Object(
        map.into_iter()
            .map(|(k, v)| (k, v.into_json_value()))
            .collect(),
    );
    Ok((id, fields))
}

/// A namespace or database name as a SurrealQL identifier (backtick-quoted when needed).
fn ident(name: &str) -> String {
    if is_identifier(name) {
        name.to_string()
    } else {
        format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
    }
}

/// The shipped schema with every whole-word `job` (outside comments) renamed to `table`.
pub fn schema_for(table: &str) -> String {
    SCHEMA
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .map(|line| rename_word(line, "job", table))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The statements that define `fields` on `table`, copied from the shipped schema, for the
/// start-up refusal message.
pub fn definitions_for(table: &str, fields: &[&str]) -> String {
    let schema = schema_for(table);
    let mut out = Vec::new();
    for statement in schema.split(';') {
        let statement = statement.trim();
        let defines = |field: &str| {
            statement.starts_with(&format!("DEFINE FIELD IF NOT EXISTS {field} ON"))
                || statement.starts_with(&format!("DEFINE FIELD IF NOT EXISTS {field}.*."))
        };
        if fields.iter().any(|f| defines(f))
            || (statement.starts_with("DEFINE INDEX")
                && QUEUE_FIELDS.iter().any(|f| fields.contains(f)))
        {
            out.push(format!("{statement};"));
        }
    }
    out.join("\n")
}

fn rename_word(line: &str, word: &str, replacement: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        // `job_due` (the index name) is renamed too, so a second table gets its own index name.
        let starts = before.is_none_or(|c| !is_word(c));
        let ends = after.is_none_or(|c| !is_word(c) || c == '_');
        if starts && ends {
            out.push_str(replacement);
        } else {
            out.push_str(word);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_renames_only_the_table() {
        let schema = schema_for("spooky_jobs");
        assert!(schema.contains("DEFINE TABLE IF NOT EXISTS spooky_jobs TYPE NORMAL SCHEMAFULL"));
        assert!(schema.contains(
            "DEFINE INDEX IF NOT EXISTS spooky_jobs_due ON spooky_jobs FIELDS status, priority, due_at"
        ));
        assert!(!schema.contains(" job "));
        assert!(!schema.contains("--"));
    }

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

    #[test]
    fn definitions_cover_the_missing_fields() {
        let text = definitions_for("job", &["due_at", "lease_token"]);
        assert!(text.contains("DEFINE FIELD IF NOT EXISTS due_at ON job"));
        assert!(text.contains("DEFINE FIELD IF NOT EXISTS lease_token ON job"));
        assert!(text.contains("DEFINE INDEX IF NOT EXISTS job_due"));
        assert!(!text.contains("DEFINE FIELD IF NOT EXISTS status"));
        let errors = definitions_for("job", &["errors"]);
        assert!(errors.contains("errors.*.kind"));
    }
}
