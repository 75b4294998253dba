//! The store's side of secrets at rest (see [`crate::secrets`]): unlocking with the master key,
//! sealing every secret written and opening every secret read, re-wrapping the data keys under a
//! new master key, and sealing rows written in the clear by an older version.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sqlx::Row;

use super::{Result, Store, Tx};
use crate::model::{Approver, Device, Vendor};
use crate::secrets::{DataKey, MasterKey, Owner, SecretError, Secrets, is_sealed};

/// The data key every node creates if none exists yet: one fixed id, so nodes starting together
/// on one PostgreSQL database agree on it (the second insert is ignored).
const FIRST_DATA_KEY: &str = "dk-1";

/// How many rows held plain secrets and were sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlainSealed {
    pub devices: u64,
    pub vendors: u64,
    pub approvers: u64,
}

impl PlainSealed {
    pub fn total(&self) -> u64 {
        self.devices + self.vendors + self.approvers
    }
}

impl Store {
    /// Whether any data key is stored yet (a data directory that has never been unlocked).
    pub async fn has_data_keys(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Unlocks the store with the master key: creates the first data key if there is none, then
    /// unwraps every data key. A master key that does not open them is refused with its id and
    /// the id they were wrapped under.
    pub async fn unlock(mut self, master: &MasterKey) -> Result<Store> {
        // Written only when missing: opening a data directory is otherwise read-only here.
        if !self.has_data_keys().await? {
            let fresh = DataKey::generate();
            sqlx::query("INSERT INTO data_keys (id, wrapped, created) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
                .bind(FIRST_DATA_KEY)
                .bind(master.wrap(FIRST_DATA_KEY, &fresh))
                .bind(crate::time::now())
                .execute(&self.pool)
                .await?;
        }
        let rows = sqlx::query("SELECT id, wrapped FROM data_keys ORDER BY created, id")
            .fetch_all(&self.pool)
            .await?;
        let mut keys = HashMap::new();
        let mut current = String::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let wrapped: String = row.try_get("wrapped")?;
            keys.insert(id.clone(), master.unwrap(&id, &wrapped)?);
            current = id;
        }
        self.secrets = Some(Arc::new(Secrets::new(keys, current)?));
        Ok(self)
    }

    fn secrets(&self) -> Result<&Secrets> {
        Ok(self.secrets.as_deref().ok_or(SecretError::Locked)?)
    }

    /// Seals a secret for storage. Nothing is written in the clear: a locked store refuses.
    pub(crate) fn seal(&self, owner: Owner<'_>, plain: &str) -> Result<String> {
        if plain.is_empty() {
            return Ok(String::new());
        }
        Ok(self.secrets()?.seal(owner, plain)?)
    }

    /// Opens a stored secret (a plain legacy value is returned as it is).
    pub(crate) fn open_secret(&self, owner: Owner<'_>, stored: &str) -> Result<String> {
        if !stored.starts_with(crate::secrets::SEALED_PREFIX) {
            return Ok(stored.to_owned());
        }
        Ok(self.secrets()?.open(owner, stored)?)
    }

    pub(crate) fn open_vendor(&self, mut v: Vendor) -> Result<Vendor> {
        v.totp_secret = self.open_secret(Owner::Vendor(&v.name), &v.totp_secret)?;
        Ok(v)
    }

    pub(crate) fn open_device(&self, mut d: Device) -> Result<Device> {
        d.credential = self.open_secret(
            Owner::Device {
                site: &d.site,
                name: &d.name,
            },
            &d.credential,
        )?;
        Ok(d)
    }

    pub(crate) fn open_approver(&self, mut a: Approver) -> Result<Approver> {
        a.totp_secret = self.open_secret(Owner::Approver(&a.name), &a.totp_secret)?;
        Ok(a)
    }

    /// Re-wraps every data key under `new` (the caller's transaction; `old` must open them).
    /// The sealed secrets themselves do not change, so running nodes, which hold the data keys
    /// already, keep working.
    pub async fn rewrap_data_keys_in(
        &self,
        tx: &mut Tx,
        old: &MasterKey,
        new: &MasterKey,
    ) -> Result<u64> {
        // A write first takes the lock (see `Tx`).
        sqlx::query("UPDATE data_keys SET wrapped = wrapped WHERE id = $1")
            .bind(FIRST_DATA_KEY)
            .execute(&mut **tx)
            .await?;
        let rows = sqlx::query("SELECT id, wrapped FROM data_keys ORDER BY id")
            .fetch_all(&mut **tx)
            .await?;
        let mut n = 0;
        for row in rows {
            let id: String = row.try_get("id")?;
            let wrapped: String = row.try_get("wrapped")?;
            let key = old.unwrap(&id, &wrapped)?;
            sqlx::query("UPDATE data_keys SET wrapped = $1 WHERE id = $2")
                .bind(new.wrap(&id, &key))
                .bind(&id)
                .execute(&mut **tx)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether any secret is still stored in the clear (a quick look before taking a lock).
    pub async fn has_plain_secrets(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM devices WHERE credential <> '' AND credential NOT LIKE 'enc:v1:%') \
             + (SELECT COUNT(*) FROM vendors WHERE totp_secret <> '' AND totp_secret NOT LIKE 'enc:v1:%') \
             + (SELECT COUNT(*) FROM approvers WHERE totp_secret <> '' AND totp_secret NOT LIKE 'enc:v1:%')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// On SQLite, moves the write-ahead log into the database file and empties it, so clear
    /// values just replaced leave no copy in either file. Best effort: busy readers may delay it.
    pub async fn checkpoint_wal(&self) -> Result<()> {
        if !self.postgres {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Seals every secret still stored in the clear (rows an older version wrote). Idempotent:
    /// a second run finds nothing. Each update names the plain value it replaces, so two nodes
    /// doing this at once count each row once.
    pub async fn seal_plain_rows_in(&self, tx: &mut Tx) -> Result<PlainSealed> {
        let mut done = PlainSealed::default();
        // A write first takes the lock (see `Tx`).
        sqlx::query("UPDATE meta SET value = value WHERE key = 'revision'")
            .execute(&mut **tx)
            .await?;
        let devices = sqlx::query("SELECT site, name, credential FROM devices")
            .fetch_all(&mut **tx)
            .await?;
        for row in devices {
            let (site, name, plain): (String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            if is_sealed(&plain) {
                continue;
            }
            let sealed = self.seal(
                Owner::Device {
                    site: &site,
                    name: &name,
                },
                &plain,
            )?;
            let r = sqlx::query("UPDATE devices SET credential = $1 WHERE site = $2 AND name = $3 AND credential = $4")
                .bind(sealed)
                .bind(&site)
                .bind(&name)
                .bind(&plain)
                .execute(&mut **tx)
                .await?;
            done.devices += r.rows_affected();
        }
        done.vendors = self.seal_plain_totp_in(tx, "vendors").await?;
        done.approvers = self.seal_plain_totp_in(tx, "approvers").await?;
        Ok(done)
    }

    async fn seal_plain_totp_in(&self, tx: &mut Tx, table: &'static str) -> Result<u64> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT name, totp_secret FROM {table}"
        )))
        .fetch_all(&mut **tx)
        .await?;
        let mut n = 0;
        for row in rows {
            let (name, plain): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if is_sealed(&plain) {
                continue;
            }
            let owner = if table == "vendors" {
                Owner::Vendor(&name)
            } else {
                Owner::Approver(&name)
            };
            let sealed = self.seal(owner, &plain)?;
            let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET totp_secret = $1 WHERE name = $2 AND totp_secret = $3"
            )))
            .bind(sealed)
            .bind(&name)
            .bind(&plain)
            .execute(&mut **tx)
            .await?;
            n += r.rows_affected();
        }
        Ok(n)
    }
}
