//! Device credential rotation: replacing a device's stored credential, and the last rotation
//! result of each device (credential age, `ok` or the step that failed).
//!
//! [`Store::set_device_credential_in`] is the one place a stored device credential is replaced:
//! whatever the store does to credentials on the way in (as [`Store::add_device_in`] does) applies
//! here too.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Missing, Result, Store, Tx};
use crate::model::CredentialKind;

/// A device's last rotation, as `postern device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRotation {
    pub site: String,
    pub device: String,
    /// When the credential in use was set by a rotation (`None`: still the enrolment one).
    pub credential_set: Option<i64>,
    pub last_at: i64,
    /// `ok`, or the step that failed.
    pub last_result: String,
    pub last_error: Option<String>,
}

/// How a rotation attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationOutcome<'a> {
    Ok,
    /// Failed at `step`; the credential did not change.
    Failed {
        step: &'a str,
        error: &'a str,
    },
}

fn rotation_of(row: &AnyRow) -> sqlx::Result<DeviceRotation> {
    Ok(DeviceRotation {
        site: row.try_get("site")?,
        device: row.try_get("device")?,
        credential_set: row.try_get("credential_set")?,
        last_at: row.try_get("last_at")?,
        last_result: row.try_get("last_result")?,
        last_error: row.try_get("last_error")?,
    })
}

impl Store {
    /// Replaces a device's credential inside the caller's transaction.
    pub async fn set_device_credential_in(
        &self,
        tx: &mut Tx,
        site: &str,
        device: &str,
        kind: CredentialKind,
        credential: &str,
    ) -> Result<()> {
        // Stored as every device credential is: sealed for this row (see `Store::seal`).
        let sealed = self.seal(
            crate::secrets::Owner::Device { site, name: device },
            credential,
        )?;
        let n = sqlx::query(
            "UPDATE devices SET credential_kind = $1, credential = $2 WHERE site = $3 AND name = $4",
        )
        .bind(kind.as_str())
        .bind(&sealed)
        .bind(site)
        .bind(device)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Missing::Device {
                site: site.to_owned(),
                device: device.to_owned(),
            }
            .into());
        }
        // A password set aside by a rotation is settled once a credential is stored.
        self.clear_pending_credential_in(tx, site, device).await
    }

    /// Records a rotation attempt; a successful one also dates the credential.
    pub async fn record_rotation_in(
        &self,
        tx: &mut Tx,
        site: &str,
        device: &str,
        at: i64,
        outcome: RotationOutcome<'_>,
    ) -> Result<()> {
        let (result, error, credential_set) = match outcome {
            RotationOutcome::Ok => ("ok", None, Some(at)),
            RotationOutcome::Failed { step, error } => (step, Some(error), None),
        };
        sqlx::query(
            "INSERT INTO device_rotations (site, device, credential_set, last_at, last_result, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (site, device) DO UPDATE SET \
             credential_set = COALESCE(excluded.credential_set, device_rotations.credential_set), \
             last_at = excluded.last_at, last_result = excluded.last_result, \
             last_error = excluded.last_error",
        )
        .bind(site)
        .bind(device)
        .bind(credential_set)
        .bind(at)
        .bind(result)
        .bind(error)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Every device's last rotation (devices never rotated have no row).
    pub async fn device_rotations(&self) -> Result<Vec<DeviceRotation>> {
        let rows = sqlx::query("SELECT * FROM device_rotations ORDER BY site, device")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(rotation_of).collect::<sqlx::Result<_>>()?)
    }
}

impl Store {
    /// One device's last rotation, if it was ever rotated.
    pub async fn device_rotation(
        &self,
        site: &str,
        device: &str,
    ) -> Result<Option<DeviceRotation>> {
        let row = sqlx::query("SELECT * FROM device_rotations WHERE site = $1 AND device = $2")
            .bind(site)
            .bind(device)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(rotation_of).transpose()?)
    }

    /// Claims a device for a scheduled rotation by `node`: true if no other node holds a claim
    /// on it younger than `stale_before` (one statement, so two nodes cannot both win).
    pub async fn claim_rotation(
        &self,
        site: &str,
        device: &str,
        node: &str,
        now: i64,
        stale_before: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO device_rotation_claims (site, device, node, claimed_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (site, device) DO UPDATE SET \
             node = excluded.node, claimed_at = excluded.claimed_at \
             WHERE device_rotation_claims.claimed_at < $5",
        )
        .bind(site)
        .bind(device)
        .bind(node)
        .bind(now)
        .bind(stale_before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Gives up `node`'s claim on a device (a claim taken over by another node stays).
    pub async fn release_rotation(&self, site: &str, device: &str, node: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM device_rotation_claims WHERE site = $1 AND device = $2 AND node = $3",
        )
        .bind(site)
        .bind(device)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Sets whether every session of `function` ends with a rotation, inside the caller's
    /// transaction.
    /// Marks an emergency function offline-ok (or not): edges past their offline grace still
    /// open it as break-glass.
    pub async fn set_function_offline_ok_in(
        &self,
        tx: &mut Tx,
        function: &str,
        on: bool,
    ) -> Result<()> {
        // Written first: on SQLite the first write takes the lock (see `Tx`).
        let n = sqlx::query("UPDATE functions SET offline_ok = $1 WHERE name = $2")
            .bind(i64::from(on))
            .bind(function)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Missing::Named {
                thing: super::Thing::Function,
                name: function.to_owned(),
            }
            .into());
        }
        let emergency: i64 = sqlx::query_scalar("SELECT emergency FROM functions WHERE name = $1")
            .bind(function)
            .fetch_one(&mut **tx)
            .await?;
        if on && emergency == 0 {
            return Err(super::Invalid::OfflineOkNotEmergency.into());
        }
        Ok(())
    }

    pub async fn set_function_rotate_after_session_in(
        &self,
        tx: &mut Tx,
        function: &str,
        on: bool,
    ) -> Result<()> {
        // Inside the transaction: it may hold the pool's only connection (SQLite).
        let exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM functions WHERE name = $1")
                .bind(function)
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_none() {
            return Err(Missing::Named {
                thing: super::Thing::Function,
                name: function.to_owned(),
            }
            .into());
        }
        sqlx::query(
            "INSERT INTO function_rotation (function, after_session) VALUES ($1, $2) \
             ON CONFLICT (function) DO UPDATE SET after_session = excluded.after_session",
        )
        .bind(function)
        .bind(i64::from(on))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The functions every session of which ends with a rotation (for listings).
    pub async fn functions_rotating_after_session(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT function FROM function_rotation WHERE after_session = 1 ORDER BY function",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether every session of `function` ends with a rotation of the device's credential.
    pub async fn function_rotates_after_session(&self, function: &str) -> Result<bool> {
        let on: Option<i64> =
            sqlx::query_scalar("SELECT after_session FROM function_rotation WHERE function = $1")
                .bind(function)
                .fetch_optional(&self.pool)
                .await?;
        Ok(on.unwrap_or(0) != 0)
    }
}
