//! The registry of issued vendor certificates (listing, revocation) and the vendor CA set's
//! rotation. Every change that can end live sessions bumps the revision, so every node's watch
//! re-checks its sessions within a second.

use super::{Result, Store, Tx};
use crate::model::{IssuedCertificate, VendorCa};

/// How many serials one lookup binds (well below SQLite's and PostgreSQL's limits).
const SERIALS_PER_QUERY: usize = 500;

impl Store {
    /// A vendor's certificates, oldest first.
    pub async fn certificates_of(&self, vendor: &str) -> Result<Vec<IssuedCertificate>> {
        Ok(sqlx::query_as::<_, IssuedCertificate>(
            "SELECT * FROM certificates WHERE vendor = $1 ORDER BY created, serial",
        )
        .bind(vendor)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One certificate, as the caller's transaction sees it.
    pub async fn certificate_in(
        &self,
        tx: &mut Tx,
        serial: &str,
    ) -> Result<Option<IssuedCertificate>> {
        Ok(
            sqlx::query_as::<_, IssuedCertificate>("SELECT * FROM certificates WHERE serial = $1")
                .bind(serial)
                .fetch_optional(&mut **tx)
                .await?,
        )
    }

    /// Revokes `vendor`'s certificate `serial`, or all of them (`None`); returns the serials this
    /// call revoked (already revoked ones are not repeated).
    pub async fn revoke_certificates_in(
        &self,
        tx: &mut Tx,
        vendor: &str,
        serial: Option<&str>,
    ) -> Result<Vec<String>> {
        let serials: Vec<String> = match serial {
            Some(s) => sqlx::query_scalar(
                "SELECT serial FROM certificates WHERE vendor = $1 AND serial = $2 AND revoked = 0",
            )
            .bind(vendor)
            .bind(s)
            .fetch_all(&mut **tx)
            .await?,
            None => sqlx::query_scalar(
                "SELECT serial FROM certificates WHERE vendor = $1 AND revoked = 0 ORDER BY serial",
            )
            .bind(vendor)
            .fetch_all(&mut **tx)
            .await?,
        };
        for s in &serials {
            sqlx::query("UPDATE certificates SET revoked = 1 WHERE serial = $1")
                .bind(s)
                .execute(&mut **tx)
                .await?;
        }
        if !serials.is_empty() {
            self.bump_revision(&mut **tx).await?;
        }
        Ok(serials)
    }

    /// Which of `serials` are revoked (or no longer in the registry at all): the sessions they
    /// authenticated must end.
    pub async fn revoked_among(&self, serials: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for chunk in serials.chunks(SERIALS_PER_QUERY) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT serial FROM certificates WHERE revoked = 0 AND serial IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
            for s in chunk {
                q = q.bind(s);
            }
            let good = q.fetch_all(&self.pool).await?;
            out.extend(chunk.iter().filter(|s| !good.contains(s)).cloned());
        }
        Ok(out)
    }

    /// Every registered vendor CA, retired ones included, oldest first.
    pub async fn vendor_ca_rows(&self) -> Result<Vec<VendorCa>> {
        Ok(
            sqlx::query_as::<_, VendorCa>("SELECT * FROM vendor_cas ORDER BY created, public_key")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Registers a new vendor CA (rotation) inside the caller's transaction; false if the key
    /// was registered before (and so may be retired: a retired key is never trusted again).
    pub async fn add_vendor_ca_in(
        &self,
        tx: &mut Tx,
        public_key: &str,
        node: &str,
        now: i64,
    ) -> Result<bool> {
        let known: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM vendor_cas WHERE public_key = $1")
                .bind(public_key)
                .fetch_one(&mut **tx)
                .await?;
        if known > 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO vendor_cas (public_key, node, created) VALUES ($1, $2, $3)")
            .bind(public_key)
            .bind(node)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        self.bump_revision(&mut **tx).await?;
        Ok(true)
    }

    /// Retires the vendor CA `public_key` (whose fingerprint is `fingerprint`) and revokes every
    /// certificate it signed; returns those serials, or `None` if no trusted CA has that key.
    pub async fn retire_vendor_ca_in(
        &self,
        tx: &mut Tx,
        public_key: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Option<Vec<String>>> {
        let n = sqlx::query(
            "UPDATE vendor_cas SET retired = $1 WHERE public_key = $2 AND retired IS NULL",
        )
        .bind(now)
        .bind(public_key)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let serials: Vec<String> = sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE ca = $1 AND revoked = 0 ORDER BY serial",
        )
        .bind(fingerprint)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query("UPDATE certificates SET revoked = 1 WHERE ca = $1 AND revoked = 0")
            .bind(fingerprint)
            .execute(&mut **tx)
            .await?;
        self.bump_revision(&mut **tx).await?;
        Ok(Some(serials))
    }
}
