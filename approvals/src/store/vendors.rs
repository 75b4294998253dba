//! Vendors, the certificates issued to them, and the keys every node registers (seal keys,
//! vendor CAs).

use super::{
    Conflict, Missing, Result, Store, Thing, Tx, check_name, conflict_on_unique, insert_error,
};
use crate::model::{IssuedCertificate, Vendor};
use crate::secrets::Owner;

impl Store {
    pub async fn add_vendor(
        &self,
        name: &str,
        org: &str,
        contract_end: Option<i64>,
        totp_secret: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.add_vendor_in(&mut tx, name, org, contract_end, totp_secret, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_vendor`] inside the caller's transaction.
    pub async fn add_vendor_in(
        &self,
        tx: &mut Tx,
        name: &str,
        org: &str,
        contract_end: Option<i64>,
        totp_secret: &str,
        now: i64,
    ) -> Result<()> {
        check_name(Thing::Vendor, name)?;
        sqlx::query("INSERT INTO vendors (name, org, contract_end, disabled, totp_secret, totp_last_step, created) VALUES ($1, $2, $3, 0, $4, -1, $5)")
            .bind(name)
            .bind(org)
            .bind(contract_end)
            .bind(self.seal(Owner::Vendor(name), totp_secret)?)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, Conflict::exists(Thing::Vendor, name)))?;
        Ok(())
    }

    /// One vendor, as the caller's transaction sees it.
    pub async fn vendor_in(&self, tx: &mut Tx, name: &str) -> Result<Option<Vendor>> {
        sqlx::query_as::<_, Vendor>("SELECT * FROM vendors WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .map(|v| self.open_vendor(v))
            .transpose()
    }

    pub async fn vendor(&self, name: &str) -> Result<Option<Vendor>> {
        sqlx::query_as::<_, Vendor>("SELECT * FROM vendors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|v| self.open_vendor(v))
            .transpose()
    }

    pub async fn vendors(&self) -> Result<Vec<Vendor>> {
        sqlx::query_as::<_, Vendor>("SELECT * FROM vendors ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|v| self.open_vendor(v))
            .collect()
    }

    /// Disables a vendor and revokes all their grants; returns the ids of the grants revoked.
    pub async fn disable_vendor(&self, name: &str, by: &str, now: i64) -> Result<Vec<String>> {
        let mut tx = self.begin().await?;
        let ids = self.disable_vendor_in(&mut tx, name, by, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// [`Store::disable_vendor`] inside the caller's transaction.
    /// Takes the vendor's row lock for the rest of `tx` (a write that changes nothing): a
    /// certificate issued for the vendor then serialises with a disable or a revocation of all
    /// their certificates instead of slipping past it on PostgreSQL.
    pub async fn lock_vendor_in(&self, tx: &mut Tx, name: &str) -> Result<()> {
        sqlx::query("UPDATE vendors SET disabled = disabled WHERE name = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn disable_vendor_in(
        &self,
        tx: &mut Tx,
        name: &str,
        by: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        let n = sqlx::query("UPDATE vendors SET disabled = 1 WHERE name = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Missing::named(Thing::Vendor, name).into());
        }
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM grants WHERE vendor = $1 AND revoked_at IS NULL AND valid_until > $2",
        )
        .bind(name)
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE vendor = $3 AND revoked_at IS NULL AND valid_until > $1")
            .bind(now)
            .bind(by)
            .bind(name)
            .execute(&mut **tx)
            .await?;
        self.bump_revision(&mut **tx).await?;
        Ok(ids)
    }

    /// Marks a TOTP step as used if it is later than the last one used: each code works once.
    /// Returns false for a replayed (or older) code. Atomic across broker nodes.
    pub async fn consume_totp_step(&self, vendor: &str, step: i64) -> Result<bool> {
        self.consume_step(
            "UPDATE vendors SET totp_last_step = $1 WHERE name = $2 AND totp_last_step < $1",
            vendor,
            step,
        )
        .await
    }

    /// The single-use rule for vendors' and approvers' TOTP codes alike: `update` sets the last
    /// used step of `name` to `step` only if it is later.
    pub(crate) async fn consume_step(
        &self,
        update: &'static str,
        name: &str,
        step: i64,
    ) -> Result<bool> {
        let n = sqlx::query(update)
            .bind(step)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn record_certificate(&self, c: &IssuedCertificate) -> Result<()> {
        let mut tx = self.begin().await?;
        self.record_certificate_in(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::record_certificate`] inside the caller's transaction.
    pub async fn record_certificate_in(&self, tx: &mut Tx, c: &IssuedCertificate) -> Result<()> {
        sqlx::query("INSERT INTO certificates (serial, vendor, key_id, key_fingerprint, valid_after, valid_before, revoked, created, ca) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8)")
            .bind(&c.serial)
            .bind(&c.vendor)
            .bind(&c.key_id)
            .bind(&c.key_fingerprint)
            .bind(c.valid_after)
            .bind(c.valid_before)
            .bind(c.created)
            .bind(&c.ca)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                insert_error(
                    e,
                    Conflict::CertificateRecorded(c.serial.clone()),
                    Missing::named(Thing::Vendor, &c.vendor),
                )
            })?;
        Ok(())
    }

    pub async fn certificates_for_key(&self, fingerprint: &str) -> Result<Vec<IssuedCertificate>> {
        Ok(sqlx::query_as::<_, IssuedCertificate>(
            "SELECT * FROM certificates WHERE key_fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Registers a node's seal public key (idempotent).
    pub async fn register_seal_key(&self, public_key: &str, node: &str, now: i64) -> Result<()> {
        let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seal_keys WHERE public_key = $1")
            .bind(public_key)
            .fetch_one(&self.pool)
            .await?;
        if known == 0 {
            sqlx::query("INSERT INTO seal_keys (public_key, node, created) VALUES ($1, $2, $3)")
                .bind(public_key)
                .bind(node)
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn seal_keys(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT public_key FROM seal_keys ORDER BY created")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Registers a node's vendor CA public key (OpenSSH format) so every node trusts the
    /// certificates it issues. A new key bumps the revision so running nodes reload the set.
    pub async fn register_vendor_ca(&self, public_key: &str, node: &str, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        // One statement that cannot fail on a key already there (two nodes starting at once
        // register the same key): the revision moves only when it was new.
        let added = sqlx::query(
            "INSERT INTO vendor_cas (public_key, node, created) VALUES ($1, $2, $3) \
             ON CONFLICT (public_key) DO NOTHING",
        )
        .bind(public_key)
        .bind(node)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added > 0 {
            self.bump_revision(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every trusted (registered, not retired) vendor CA public key (OpenSSH format).
    pub async fn vendor_cas(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT public_key FROM vendor_cas WHERE retired IS NULL ORDER BY created",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
