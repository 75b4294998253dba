//! Shipping checkpoints: to the shared database and, in the same transaction, the webhook outbox.

use super::Checkpoint;
use crate::notify::Notifier;
use crate::store::{Invalid, Store, StoreError};

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    body: String,
}

impl Store {
    /// Ships a checkpoint to the database and, when a webhook is configured, to the outbox, in
    /// one transaction: both or neither. Shipping the same checkpoint again changes nothing.
    pub async fn ship_checkpoint(
        &self,
        cp: &Checkpoint,
        notifier: &Notifier,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(cp).map_err(Invalid::Checkpoint)?;
        let mut tx = self.begin().await?;
        let added = sqlx::query(
            "INSERT INTO checkpoints (installation, node, seq, hash, time, body) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&cp.installation)
        .bind(&cp.node)
        .bind(cp.seq as i64)
        .bind(cp.hash())
        .bind(cp.time)
        .bind(&body)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added == 1 {
            notifier.file_in(&mut tx, &cp.message()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The checkpoints the database holds (of one node, or all), by node and sequence.
    pub async fn checkpoints(&self, node: Option<&str>) -> Result<Vec<Checkpoint>, StoreError> {
        let rows =
            match node {
                Some(n) => sqlx::query_as::<_, CheckpointRow>(
                    "SELECT body FROM checkpoints WHERE node = $1 ORDER BY installation, node, seq",
                )
                .bind(n)
                .fetch_all(self.pool())
                .await?,
                None => {
                    sqlx::query_as::<_, CheckpointRow>(
                        "SELECT body FROM checkpoints ORDER BY installation, node, seq",
                    )
                    .fetch_all(self.pool())
                    .await?
                }
            };
        rows.iter()
            .map(|r| serde_json::from_str(&r.body).map_err(|e| Invalid::StoredCheckpoint(e).into()))
            .collect()
    }

    /// A node's latest checkpoint in the database: the next one chains onto it.
    pub async fn latest_checkpoint(
        &self,
        installation: &str,
        node: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query_as::<_, CheckpointRow>(
            "SELECT body FROM checkpoints WHERE installation = $1 AND node = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(installation)
        .bind(node)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| serde_json::from_str(&r.body).map_err(|e| Invalid::StoredCheckpoint(e).into()))
            .transpose()
    }
}
