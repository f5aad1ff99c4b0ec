//! A job table's name, checked once where it enters the runner (the config, `--table`), so the
//! store can format it into statements without checking it again.

use super::is_identifier;

/// A plain SurrealQL identifier (letters, digits, `_`, not starting with a digit, at most 64
/// long): the only table names the store formats into a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct TableName(String);

impl TableName {
    pub fn new(name: &str) -> Result<TableName, String> {
        match is_identifier(name) {
            true => Ok(TableName(name.to_string())),
            false => Err(format!(
                "table name {name:?} must be letters, digits and underscores, not starting with a digit (at most 64)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TableName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TableName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TableName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TableName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::str::FromStr for TableName {
    type Err = String;

    fn from_str(name: &str) -> Result<TableName, String> {
        TableName::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_table_names() {
        assert_eq!(TableName::new("spooky_jobs").unwrap(), "spooky_jobs");
        for bad in ["", "1job", "job;DROP", "job table", "jöb", &"x".repeat(65)] {
            assert!(TableName::new(bad).is_err(), "{bad:?}");
        }
    }
}
