//! The job table's definition (`schema/job.surql`), reading what a table has, and preparing it.

use std::collections::BTreeMap;

use surrealdb::types::Value;

use super::{Store, StoreError, TableName, ident, query_err};

/// The shipped schema, written for a table named `job`.
pub const SCHEMA: &str = include_str!("../../schema/job.surql");

/// Fields the claim query reads on every table, SCHEMAFULL or not: their defaults are what put a
/// row written by a Sp00ky client into the queue.
pub const QUEUE_FIELDS: [&str; 2] = ["due_at", "priority"];

/// The field that marks a schedule's row; written only by backends with schedules.
pub const SCHEDULE_FIELD: &str = "schedule";

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

/// What `INFO FOR TABLE` says, reduced to what the start-up check needs.
#[derive(Debug, Clone, Default)]
pub struct TableInfo {
    pub exists: bool,
    pub schemafull: bool,
    pub fields: BTreeMap<String, String>,
    pub indexes: BTreeMap<String, String>,
}

/// What a job table is, for the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableState {
    /// Missing; the runner creates it from the shipped schema.
    Missing,
    /// It exists but lacks fields the runner writes (or the claim reads), named here.
    Lacks(Vec<&'static str>),
    /// Ready; `indexed`: it has some index (without one, the claim query scans the table).
    Ready { indexed: bool },
}

impl TableInfo {
    /// What this table is for a runner that also writes `schedule` when `writes_schedule`.
    /// `due_at` and `priority` must be defined even on a schemaless table: their DEFAULTs are
    /// what put a row written by a Sp00ky client into the claim query.
    pub fn state(&self, writes_schedule: bool) -> TableState {
        if !self.exists {
            return TableState::Missing;
        }
        let schedule = writes_schedule.then_some(&SCHEDULE_FIELD);
        let mut missing: Vec<&'static str> = Vec::new();
        for field in RUNNER_FIELDS.iter().chain(&QUEUE_FIELDS).chain(schedule) {
            let needed = self.schemafull || QUEUE_FIELDS.contains(field);
            if needed && !self.fields.contains_key(*field) && !missing.contains(field) {
                missing.push(field);
            }
        }
        match missing.is_empty() {
            true => TableState::Ready {
                indexed: !self.indexes.is_empty(),
            },
            false => TableState::Lacks(missing),
        }
    }
}

impl Store {
    /// What `table` is for a runner that writes `schedule` when `writes_schedule`.
    pub async fn inspect_table(
        &self,
        table: &TableName,
        writes_schedule: bool,
    ) -> Result<TableState, StoreError> {
        Ok(self.table_info(table).await?.state(writes_schedule))
    }

    /// Sets the pending-job quota of one record user in `table` (`fn::<table>_quota` reads it;
    /// see `schema/job.surql`): the configured `limits.perUser.pending` takes effect when the
    /// runner starts, also on a table created earlier.
    pub async fn set_pending_quota(&self, table: &TableName, limit: u32) -> Result<(), StoreError> {
        const STATEMENT: &str = "DEFINE PARAM OVERWRITE $<table>_pending_per_user";
        let query = self.db.query(format!(
            "DEFINE PARAM OVERWRITE ${table}_pending_per_user VALUE {limit}"
        ));
        self.exec(STATEMENT, query).await?;
        Ok(())
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

    pub async fn table_info(&self, table: &TableName) -> Result<TableInfo, StoreError> {
        let query = self.db.query("INFO FOR DB");
        let mut response = self.exec("INFO FOR DB", query).await?;
        let db_info: Option<serde_json::Value> =
            response.take(0).map_err(query_err("INFO FOR DB"))?;
        let db_info = db_info.unwrap_or_default();
        let Some(definition) = db_info
            .get("tables")
            .and_then(|t| t.get(table.as_str()))
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
    pub async fn apply_schema(&self, table: &TableName) -> Result<(), StoreError> {
        self.exec("schema/job.surql", self.db.query(schema_for(table)))
            .await?;
        Ok(())
    }

    /// Rows written before the table had a `due_at` default (or by Sp00ky's reference runner,
    /// which leaves crashed jobs `processing` forever) get one, so the claim query sees them.
    pub async fn backfill_due(&self, table: &TableName) -> Result<usize, StoreError> {
        const STATEMENT: &str = "UPDATE ... SET due_at, priority WHERE either is NONE";
        let query = self.db.query(format!(
            "UPDATE {table} SET due_at = due_at ?? created_at ?? time::now(), priority = priority ?? 0 \
                 WHERE (due_at = NONE OR priority = NONE) AND status IN ['pending', 'processing'] RETURN id"
        ));
        let mut response = self.exec(STATEMENT, query).await?;
        let rows: Vec<Value> = response.take(0).map_err(query_err(STATEMENT))?;
        Ok(rows.len())
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
            || (statement.starts_with(&format!("DEFINE INDEX IF NOT EXISTS {table}_due "))
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
    fn a_table_is_ready_only_with_every_field_the_runner_writes() {
        let with = |schemafull: bool, fields: &[&str], indexed: bool| TableInfo {
            exists: true,
            schemafull,
            fields: fields
                .iter()
                .map(|f| (f.to_string(), String::new()))
                .collect(),
            indexes: match indexed {
                true => [("job_due".to_string(), String::new())].into(),
                false => BTreeMap::new(),
            },
        };
        let all: Vec<&str> = RUNNER_FIELDS.iter().chain(&QUEUE_FIELDS).copied().collect();
        assert_eq!(TableInfo::default().state(false), TableState::Missing);
        assert_eq!(
            with(true, &all, true).state(false),
            TableState::Ready { indexed: true }
        );
        assert_eq!(
            with(true, &all, false).state(true),
            TableState::Lacks(vec!["schedule"]),
            "a backend with schedules writes `schedule`"
        );
        assert_eq!(
            with(false, &[], false).state(false),
            TableState::Lacks(vec!["due_at", "priority"]),
            "a schemaless table needs only the queue's fields"
        );
        assert_eq!(
            with(true, &["status", "due_at", "priority"], true).state(false),
            TableState::Lacks(vec![
                "retries",
                "errors",
                "updated_at",
                "assignee",
                "lease_token"
            ])
        );
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
