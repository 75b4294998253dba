//! Which ended sessions' recordings are in the shared evidence store yet (migration 0023).

use super::{Result, Store};

impl Store {
    /// Up to `limit` ended sessions of `node` whose recordings are not in the shared store yet,
    /// oldest first, as `(id, recording file name)`.
    pub async fn recordings_to_store(
        &self,
        node: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, recording FROM sessions WHERE node = $1 AND ended IS NOT NULL \
             AND evidence_stored IS NULL ORDER BY ended, id LIMIT $2",
        )
        .bind(node)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The recording of session `id` is in the shared store since `now`.
    pub async fn recording_stored(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET evidence_stored = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
