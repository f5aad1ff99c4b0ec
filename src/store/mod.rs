//! The only module that speaks SurrealQL. Every statement the runner sends is in this folder,
//! every result is checked, and every write-back is fenced by the claim's `lease_token`.
//!
//! One file per audience: [`queue`] is the hot path (find, claim, renew, write back, watch);
//! [`jobs`] creates, reads and repairs jobs for the admin API, the CLI and the benchmark;
//! [`schema`] defines and inspects the job tables; [`schedules`] keeps the scheduler's ticks;
//! [`bulk`] filters, retries and deletes many jobs at once for operators; [`ceiling`] is the
//! benchmark's ideal queue; [`status`] is the row status every other module compares with.
//! This module depends on nothing else in the crate.
//!
//! Table names are formatted into statements (SurrealQL cannot bind a table name into an indexed
//! `FROM`); they are checked by [`is_identifier`] when the configuration loads, and
//! [`Store::table`] refuses anything else, so no row or request can inject one.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use surrealdb::engine::any::Any;
use surrealdb::types::{RecordId, Value};
use surrealdb::{IndexedResults, Surreal};
use tokio::sync::watch;

pub mod bulk;
pub mod ceiling;
pub mod jobs;
pub mod live;
pub mod queue;
pub mod rates;
pub mod schedules;
pub mod schema;
pub mod status;
pub mod table;

pub use bulk::{JobFilter, PageKey};
pub use jobs::{NewJob, new_job_key, unguessable_hex};
pub use live::{DueHint, Watch};
pub use queue::{
    Candidate, Claim, ClaimedRow, DueRows, INLINE_CHARS, Look, LookAndClaim, WriteBack,
};
pub use rates::Grant;
pub use schema::{
    QUEUE_FIELDS, RUNNER_FIELDS, SCHEDULE_FIELD, SCHEMA, TableInfo, TableState, definitions_for,
    schema_for,
};
pub use status::{Finished, JobStatus, StatusCounts, UnknownStatus};
pub use table::TableName;

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
            StoreError::Query { source, .. } => is_conflict(source),
            _ => false,
        }
    }
}

/// Whether SurrealDB refused with a transaction conflict. The SDK types it
/// (`QueryError::TransactionConflict`, on the embedded engines and over WebSocket and HTTP
/// alike), here or anywhere in the cause chain, and the SDK says messages are not part of its
/// contract: so the typed reason decides first. The message is still read after it, for the
/// answers that carry no typed reason (a server that sends none, or a conflict that reached the
/// SDK wrapped in another kind); those are the answers this runner has always counted.
fn is_conflict(error: &surrealdb::Error) -> bool {
    use surrealdb::types::QueryError;
    let mut next = Some(error);
    while let Some(error) = next {
        if matches!(error.query_details(), Some(QueryError::TransactionConflict)) {
            return true;
        }
        next = error.cause();
    }
    let text = error.to_string().to_ascii_lowercase();
    text.contains("conflict") || text.contains("retried")
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
    /// Statements SurrealDB refused with a transaction conflict (another writer touched the same
    /// keys at once): what several runners on one database cost each other.
    conflicts: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            down: AtomicBool::new(false),
            reconnects: watch::Sender::new(0),
            conflicts: AtomicU64::new(0),
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

    /// Transaction conflicts seen so far, by every clone of this store.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
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
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(STATEMENT_TIMEOUT, query.into_future()).await;
        // For profiling a run (`RUST_LOG=sp00ky_job_runner::store=debug`): which requests a job
        // costs and how long each waited on the database.
        tracing::debug!(
            statement,
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        match outcome {
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
                Err(self.counted(query_err(statement)(source)))
            }
            Ok(Ok(response)) => {
                self.health.mark_up();
                response
                    .check()
                    .map_err(|source| self.counted(query_err(statement)(source)))
            }
        }
    }

    /// Counts `error` in [`Health::conflicts`] when it is a transaction conflict.
    fn counted(&self, error: StoreError) -> StoreError {
        if error.is_conflict() {
            self.health.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        error
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

    /// The underlying handle, for tests that need SurrealDB features the runner does not use.
    pub fn client(&self) -> &Surreal<Any> {
        &self.db
    }
}

/// The object appended to `errors`; the timestamp comes from the database clock, like `updated_at`.
const ERROR_ENTRY: &str = "{ code: $error_code, reason: $error_reason, kind: $error_kind, attempt: $error_attempt, at: time::now() }";

/// `errors` with one entry appended: the whole history, or (when it is full) its first entries,
/// a note saying what was left out, its last entries and the new one. `array::slice` takes an
/// end index that is excluded, or no end.
fn errors_set(trim: bool) -> String {
    if trim {
        format!(
            "errors = array::concat(array::slice(errors ?? [], 0, $errors_head), \
               [{{ code: 0, reason: $errors_note, kind: 'truncated', at: time::now() }}], \
               array::slice(errors ?? [], $errors_tail_from), [{ERROR_ENTRY}])"
        )
    } else {
        format!("errors = array::append(errors ?? [], {ERROR_ENTRY})")
    }
}

/// How a full `errors` history is cut before an entry is appended.
#[derive(Debug, Clone, Copy)]
pub struct Trim<'a> {
    /// The first entries kept.
    pub head: usize,
    /// Entries from this index on are kept (the old note, if any, lies before it).
    pub tail_from: usize,
    /// The note put between them: how many failures were left out.
    pub note: &'a str,
}

/// One entry of a row's `errors`, in the contract's stable shape. The store takes it as plain
/// values so that it depends on nothing above it; `job::failure` builds it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorEntry<'a> {
    /// The HTTP status, 0 when no response came.
    pub code: u16,
    pub reason: &'a str,
    /// One of the stable kinds (`validation`, `route`, `http`, ...).
    pub kind: &'static str,
    /// The attempt that failed, 1 for the first.
    pub attempt: u32,
    /// Set when the row's history is full: what to cut before appending.
    pub trim: Option<Trim<'a>>,
}

impl<'a> ErrorEntry<'a> {
    /// This entry, cutting a full history first as `trim` says.
    pub fn with_trim(self, trim: Option<Trim<'a>>) -> ErrorEntry<'a> {
        ErrorEntry { trim, ..self }
    }

    /// The `errors = ...` assignment that adds this entry.
    fn set(&self) -> String {
        errors_set(self.trim.is_some())
    }

    fn bindings(&self) -> surrealdb::types::Object {
        let mut vars = surrealdb::types::Object::new();
        vars.insert("error_code", i64::from(self.code));
        vars.insert("error_reason", self.reason.to_string());
        vars.insert("error_kind", self.kind.to_string());
        vars.insert("error_attempt", i64::from(self.attempt));
        if let Some(trim) = &self.trim {
            vars.insert("errors_head", trim.head as i64);
            vars.insert("errors_tail_from", trim.tail_from as i64);
            vars.insert("errors_note", trim.note.to_string());
        }
        vars
    }
}

/// Splits a returned row into its record id and the rest as JSON.
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

/// A plain SurrealQL identifier (letters, digits, `_`, not starting with a digit, at most 64
/// long): the only table names the runner formats into a statement.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("job"));
        assert!(is_identifier("_jobs_2"));
        assert!(!is_identifier("2job"));
        assert!(!is_identifier("job; DELETE"));
        assert!(!is_identifier("job`x"));
        assert!(!is_identifier(""));
    }

    #[test]
    fn conflicts_are_recognised_by_their_typed_reason_first() {
        use surrealdb::types::QueryError;
        let typed = surrealdb::Error::query("busy".into(), QueryError::TransactionConflict);
        assert!(is_conflict(&typed), "typed, whatever the message says");
        let caused = surrealdb::Error::internal("statement failed".into()).with_cause(typed);
        assert!(is_conflict(&caused), "typed, as the cause");
        let untyped = surrealdb::Error::internal(
            "Transaction conflict: write. This transaction can be retried".into(),
        );
        assert!(is_conflict(&untyped), "untyped: the message decides");
        let other = surrealdb::Error::query("timed out".into(), QueryError::NotExecuted);
        assert!(!is_conflict(&other));
        assert!(!is_conflict(&surrealdb::Error::internal(
            "Found 'x' for field `status`".into()
        )));
        let wrapped = StoreError::Query {
            statement: "UPDATE",
            source: Box::new(surrealdb::Error::query(
                "busy".into(),
                QueryError::TransactionConflict,
            )),
        };
        assert!(wrapped.is_conflict());
        let timeout = StoreError::Timeout {
            statement: "UPDATE",
        };
        assert!(!timeout.is_conflict());
    }
}
