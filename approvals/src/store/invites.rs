//! One-time enrolment codes (`postern vendor invite`), stored as their SHA-256 only.

use sqlx::Row;

use super::{Missing, Result, Store, Thing, Tx, insert_error};
use crate::secrets::Owner;

/// What trying to burn an enrolment code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteClaim {
    /// The code was unused and in time: it is burnt now, for this vendor.
    Claimed { vendor: String },
    /// No such code.
    Unknown,
    /// Already burnt (by an earlier or a racing use).
    Used,
    /// Past its time to live.
    Expired,
}

/// The SHA-256 of an enrolment code, as stored: the code itself is never kept.
pub fn invite_hash(code: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(code.trim().as_bytes()))
}

impl Store {
    /// Stores a new enrolment code's hash for `vendor`, valid until `expires`.
    pub async fn add_invite_in(
        &self,
        tx: &mut Tx,
        code_hash: &str,
        vendor: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO vendor_invites (code_hash, vendor, created, expires) VALUES ($1, $2, $3, $4)")
            .bind(code_hash)
            .bind(vendor)
            .bind(now)
            .bind(expires)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                insert_error(
                    e,
                    super::Conflict::exists(Thing::Vendor, vendor),
                    Missing::named(Thing::Vendor, vendor),
                )
            })?;
        Ok(())
    }

    /// The vendor an enrolment code was made for, if it exists (used or not): enrolment signs
    /// the certificate before it burns the code, in one transaction with its registration.
    pub async fn invite_vendor(&self, code_hash: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT vendor FROM vendor_invites WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("vendor")?),
            None => None,
        })
    }

    /// Burns every unused enrolment code of `vendor` (a disable); returns how many.
    pub async fn burn_invites_in(&self, tx: &mut Tx, vendor: &str, now: i64) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE vendor_invites SET used_at = $1, used_key = 'burnt by vendor disable' WHERE vendor = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(vendor)
        .execute(&mut **tx)
        .await?
        .rows_affected())
    }

    /// Burns an enrolment code for the key with fingerprint `key`, if it is unused and in time.
    /// The conditional update is the one step that decides: of two racing uses, one wins.
    pub async fn claim_invite_in(
        &self,
        tx: &mut Tx,
        code_hash: &str,
        key: &str,
        now: i64,
    ) -> Result<InviteClaim> {
        let burnt = sqlx::query("UPDATE vendor_invites SET used_at = $1, used_key = $2 WHERE code_hash = $3 AND used_at IS NULL AND expires > $1")
            .bind(now)
            .bind(key)
            .bind(code_hash)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let row = sqlx::query(
            "SELECT vendor, used_at, used_key FROM vendor_invites WHERE code_hash = $1",
        )
        .bind(code_hash)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(InviteClaim::Unknown);
        };
        let vendor: String = row.try_get("vendor")?;
        Ok(match (burnt, row.try_get::<Option<i64>, _>("used_at")?) {
            (1, _) => InviteClaim::Claimed { vendor },
            (_, Some(_)) => InviteClaim::Used,
            (_, None) => InviteClaim::Expired,
        })
    }

    /// A vendor's new TOTP secret (enrolment): earlier codes' steps no longer matter.
    pub async fn set_totp_secret_in(&self, tx: &mut Tx, vendor: &str, secret: &str) -> Result<()> {
        let n =
            sqlx::query("UPDATE vendors SET totp_secret = $1, totp_last_step = -1 WHERE name = $2")
                .bind(self.seal(Owner::Vendor(vendor), secret)?)
                .bind(vendor)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Err(Missing::named(Thing::Vendor, vendor).into());
        }
        Ok(())
    }
}
