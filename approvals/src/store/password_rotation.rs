//! What password rotation keeps: each device's rotate command, and the new password set aside
//! while a rotation applies it (see migration 0020).

use super::{Missing, Result, Store, Tx};
use crate::secrets::Owner;

impl Store {
    /// Sets (or with `None` removes) a device's rotate command, inside the caller's transaction.
    pub async fn set_rotate_command_in(
        &self,
        tx: &mut Tx,
        site: &str,
        device: &str,
        command: Option<&str>,
    ) -> Result<()> {
        // A write first takes the lock (see `Tx`).
        sqlx::query("DELETE FROM device_rotate_commands WHERE site = $1 AND device = $2")
            .bind(site)
            .bind(device)
            .execute(&mut **tx)
            .await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM devices WHERE site = $1 AND name = $2")
                .bind(site)
                .bind(device)
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_none() {
            return Err(Missing::Device {
                site: site.to_owned(),
                device: device.to_owned(),
            }
            .into());
        }
        if let Some(command) = command {
            sqlx::query(
                "INSERT INTO device_rotate_commands (site, device, command) VALUES ($1, $2, $3)",
            )
            .bind(site)
            .bind(device)
            .bind(command)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// A device's rotate command, if it has one.
    pub async fn rotate_command(&self, site: &str, device: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT command FROM device_rotate_commands WHERE site = $1 AND device = $2",
        )
        .bind(site)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The devices that have a rotate command (for the scheduled rotation's sweep).
    pub async fn devices_with_rotate_command(
        &self,
    ) -> Result<std::collections::HashSet<(String, String)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT site, device FROM device_rotate_commands")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Sets a new password aside before a rotation applies it (replacing an older one).
    pub async fn set_pending_credential(
        &self,
        site: &str,
        device: &str,
        credential: &str,
        now: i64,
    ) -> Result<()> {
        let sealed = self.seal(Owner::PendingDevice { site, name: device }, credential)?;
        sqlx::query(
            "INSERT INTO device_pending_credentials (site, device, credential, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (site, device) DO UPDATE SET \
             credential = excluded.credential, created_at = excluded.created_at",
        )
        .bind(site)
        .bind(device)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The password a rotation set aside and did not finish storing, if any.
    pub async fn pending_credential(&self, site: &str, device: &str) -> Result<Option<String>> {
        let sealed: Option<String> = sqlx::query_scalar(
            "SELECT credential FROM device_pending_credentials WHERE site = $1 AND device = $2",
        )
        .bind(site)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        sealed
            .map(|s| self.open_secret(Owner::PendingDevice { site, name: device }, &s))
            .transpose()
    }

    /// Forgets a pending password (its rotation was undone, or it was stored).
    pub async fn clear_pending_credential(&self, site: &str, device: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        self.clear_pending_credential_in(&mut tx, site, device)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn clear_pending_credential_in(
        &self,
        tx: &mut Tx,
        site: &str,
        device: &str,
    ) -> Result<()> {
        sqlx::query("DELETE FROM device_pending_credentials WHERE site = $1 AND device = $2")
            .bind(site)
            .bind(device)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
