//! Calls per time window to one backend, shared by every runner on the database: each runner asks
//! for a number of calls before it claims, and gets what is left of the window's budget.

use std::time::Duration;

use surrealdb::types::Value;

use super::{Store, StoreError, query_err};

/// What a runner may call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Calls granted, 0 to the number asked for.
    pub calls: usize,
    /// How long to wait before making them: grants made just before a window starts count
    /// against that window, and their calls wait for it, so that however late a call leaves (up
    /// to that lead), it lands inside its own window.
    pub wait: Duration,
}

impl Store {
    /// Asks for `want` calls to the backend of `key` within windows of `window` holding
    /// `limit` calls each (on the database's clock, the same for every runner). Counted in
    /// `sp00ky_rate`, the runner's own table, in one row per key.
    pub async fn grant_calls(
        &self,
        key: &str,
        window: Duration,
        limit: u32,
        want: usize,
        lead: Duration,
    ) -> Result<Grant, StoreError> {
        const STATEMENT: &str = "UPSERT sp00ky_rate (grant calls)";
        let query = self
            .db
            .query(
                "DEFINE TABLE IF NOT EXISTS sp00ky_rate SCHEMALESS PERMISSIONS NONE; \
                 LET $now = time::now(); \
                 LET $w = time::floor($now + duration::from_millis($lead_ms), duration::from_millis($window_ms)); \
                 UPSERT ONLY type::record('sp00ky_rate', $key) \
                   SET used = IF window = $w THEN (used ?? 0) + $want ELSE $want END, window = $w \
                   RETURN VALUE { used: used, window: $w, now: $now };",
            )
            .bind(("key", key.to_string()))
            .bind(("window_ms", window.as_millis() as i64))
            .bind(("lead_ms", lead.as_millis() as i64))
            .bind(("want", want as i64));
        let mut response = self.exec(STATEMENT, query).await?;
        let answer: Option<Value> = response.take(3).map_err(query_err(STATEMENT))?;
        let answer = answer.map(Value::into_json_value).unwrap_or_default();
        let used = answer["used"].as_u64().unwrap_or(u64::MAX);
        let before = used.saturating_sub(want as u64);
        let calls = u64::from(limit).saturating_sub(before).min(want as u64) as usize;
        let at = |field: &str| {
            answer[field]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        let wait = match (at("window"), at("now")) {
            (Some(window), Some(now)) => (window - now).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        Ok(Grant { calls, wait })
    }
}
