//! The benchmark's ceiling: the cheapest batched queue the database allows, with none of the
//! runner's care (no priorities, no watermark, no fencing token per claim, no row read back).
//! It exists so that `bench` can say how much of the database's own capacity the runner uses;
//! the runner never sends these statements.

use surrealdb::types::RecordId;

use super::{Store, StoreError, TableName, query_err};

impl Store {
    /// One round of the ideal queue on `table`: up to `batch` due pending ids, one conditional
    /// claim of them, one result write. Three round trips, as a batched queue needs at least
    /// (the claim must see which rows it won before it may call anything). Returns the rows
    /// written `success`.
    pub async fn ceiling_round(
        &self,
        table: &TableName,
        batch: usize,
    ) -> Result<usize, StoreError> {
        const FIND: &str = "SELECT VALUE id ... LIMIT $batch (ceiling)";
        const CLAIM: &str = "UPDATE $ids ... WHERE status = 'pending' (ceiling)";
        const RESULT: &str = "UPDATE $ids SET status = 'success' (ceiling)";
        let query = self
            .db
            .query(format!(
                "SELECT VALUE id FROM {table} \
                   WHERE status = 'pending' AND priority = 0 AND due_at <= time::now() \
                   ORDER BY due_at LIMIT $batch"
            ))
            .bind(("batch", batch as i64));
        let mut response = self.exec(FIND, query).await?;
        let ids: Vec<RecordId> = response.take(0).map_err(query_err(FIND))?;
        if ids.is_empty() {
            return Ok(0);
        }
        let token = format!("{:016x}", fastrand::u64(..));
        let query = self
            .db
            .query(
                "UPDATE $ids SET status = 'processing', lease_token = $claim_token, \
                   due_at = time::now() + 1m, updated_at = time::now() \
                 WHERE status = 'pending' RETURN VALUE id",
            )
            .bind(("ids", ids))
            .bind(("claim_token", token.clone()));
        let mut response = self.exec(CLAIM, query).await?;
        let won: Vec<RecordId> = response.take(0).map_err(query_err(CLAIM))?;
        let query = self
            .db
            .query(
                "UPDATE $ids SET status = 'success', lease_token = NONE, updated_at = time::now() \
                 WHERE lease_token = $claim_token RETURN NONE",
            )
            .bind(("ids", won.clone()))
            .bind(("claim_token", token));
        self.exec(RESULT, query).await?;
        Ok(won.len())
    }
}
