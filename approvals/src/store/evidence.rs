//! Which ended sessions' recordings are in the shared evidence store yet (migration 0023).

use super::{Result, Store};
use crate::model::Session;

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

    /// Adds a session recorded elsewhere (an edge's site node) whose recording was shipped here
    /// and checked; `false` if a session with that id is here already (a repeated shipment).
    pub async fn import_session(&self, s: &Session, now: i64) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO sessions (id, vendor, site, device, function, grant_id, node, source, recording, \
             started, ended, end_reason, kill_requested, records, final_hash, breakglass, evidence_stored) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $15, $16) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&s.id)
        .bind(&s.vendor)
        .bind(&s.site)
        .bind(&s.device)
        .bind(&s.function)
        .bind(&s.grant_id)
        .bind(&s.node)
        .bind(&s.source)
        .bind(&s.recording)
        .bind(s.started)
        .bind(s.ended)
        .bind(&s.end_reason)
        .bind(s.records)
        .bind(&s.final_hash)
        .bind(&s.breakglass)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// When the oldest session of `node` that ended and is not in the evidence store yet ended.
    pub async fn oldest_unstored_end(&self, node: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(ended) FROM sessions WHERE node = $1 AND ended IS NOT NULL \
             AND evidence_stored IS NULL",
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The recordings of `node`'s sessions not shipped or stored yet, live ones included.
    pub async fn unstored_recordings(&self, node: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT recording FROM sessions WHERE node = $1 AND evidence_stored IS NULL",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds a break-glass opening made at an edge (it arrives with the session it opened), so it
    /// waits in the review queue like one opened here; `false` if it is here already.
    pub async fn import_breakglass(&self, b: &crate::BreakGlass) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO breakglass (id, vendor, org, site, device, function, reason, grant_id, opened, valid_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&b.id)
        .bind(&b.vendor)
        .bind(&b.org)
        .bind(&b.site)
        .bind(&b.device)
        .bind(&b.function)
        .bind(&b.reason)
        .bind(&b.grant_id)
        .bind(b.opened)
        .bind(b.valid_until)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// What edge `edge` reported waiting to be shipped.
    pub async fn set_edge_backlog(&self, edge: &str, sessions: i64, bytes: i64) -> Result<()> {
        sqlx::query("UPDATE edges SET buffered_sessions = $1, buffered_bytes = $2 WHERE name = $3")
            .bind(sessions)
            .bind(bytes)
            .bind(edge)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
