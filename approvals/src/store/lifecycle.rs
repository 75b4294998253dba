//! Changes to vendors, approvers and functions that reach live sessions: a vendor's contract end
//! and organisation, re-enabling a vendor, an approver's coverage, a function's channels and
//! longest window. Each `*_in` writes first (see [`Tx`]) and bumps the revision, so every node
//! re-checks its live sessions within a second.

use super::{Conflict, Invalid, MAX_WINDOW, Missing, Result, Store, Thing, Tx};
use crate::model::{Approver, ChannelSet, Function, Grant, Vendor};

/// A vendor as it was and as it is after an update.
#[derive(Debug, Clone)]
pub struct VendorChange {
    pub before: Vendor,
    pub after: Vendor,
}

/// A function after an update, and the grants cut to its new, shorter longest window.
#[derive(Debug, Clone)]
pub struct FunctionChange {
    pub function: Function,
    pub cut: Vec<CutGrant>,
}

/// A grant whose window was cut: it now ends at `until` (it ended at `was`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutGrant {
    pub grant: Grant,
    pub was: i64,
}

impl Store {
    /// Changes a vendor's organisation and/or contract end (`Some(None)`: no contract end).
    pub async fn update_vendor_in(
        &self,
        tx: &mut Tx,
        name: &str,
        org: Option<&str>,
        contract_end: Option<Option<i64>>,
    ) -> Result<VendorChange> {
        if org.is_none() && contract_end.is_none() {
            return Err(Invalid::NothingToChange.into());
        }
        // The revision is bumped first: it is the write that takes the lock (see `Tx`).
        self.bump_revision(&mut **tx).await?;
        let before = self
            .vendor_in(tx, name)
            .await?
            .ok_or_else(|| Missing::named(Thing::Vendor, name))?;
        if let Some(org) = org {
            sqlx::query("UPDATE vendors SET org = $1 WHERE name = $2")
                .bind(org)
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        if let Some(end) = contract_end {
            sqlx::query("UPDATE vendors SET contract_end = $1 WHERE name = $2")
                .bind(end)
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        let after = self
            .vendor_in(tx, name)
            .await?
            .ok_or_else(|| Missing::named(Thing::Vendor, name))?;
        Ok(VendorChange { before, after })
    }

    /// Enables a disabled vendor. Their revoked grants stay revoked: access needs new grants.
    pub async fn enable_vendor_in(&self, tx: &mut Tx, name: &str) -> Result<()> {
        let n = sqlx::query("UPDATE vendors SET disabled = 0 WHERE name = $1 AND disabled = 1")
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 1 {
            return Ok(());
        }
        match self.vendor_in(tx, name).await? {
            Some(_) => Err(Conflict::VendorNotDisabled(name.to_owned()).into()),
            None => Err(Missing::named(Thing::Vendor, name).into()),
        }
    }

    /// Replaces an approver's sites and/or regions. Takes effect at the approver's next page:
    /// the web UI reads the approver's coverage on every request.
    pub async fn update_approver_in(
        &self,
        tx: &mut Tx,
        name: &str,
        sites: Option<&[String]>,
        regions: Option<&[String]>,
    ) -> Result<Approver> {
        if sites.is_none() && regions.is_none() {
            return Err(Invalid::NothingToChange.into());
        }
        let mut found = 0;
        for (column, list) in [("sites", sites), ("regions", regions)] {
            let Some(list) = list else { continue };
            let sql = if column == "sites" {
                "UPDATE approvers SET sites = $1 WHERE name = $2"
            } else {
                "UPDATE approvers SET regions = $1 WHERE name = $2"
            };
            found = sqlx::query(sql)
                .bind(list.join(","))
                .bind(name)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        if found == 0 {
            return Err(Missing::named(Thing::Approver, name).into());
        }
        for s in sites.unwrap_or_default() {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
                .bind(s)
                .fetch_one(&mut **tx)
                .await?;
            if n == 0 {
                return Err(Missing::named(Thing::Site, s).into());
            }
        }
        let approver = sqlx::query_as::<_, Approver>("SELECT * FROM approvers WHERE name = $1")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
        let approver = self.open_approver(approver)?;
        if approver.sites.trim().is_empty() && approver.regions.trim().is_empty() {
            return Err(Invalid::ApproverWithoutScope.into());
        }
        Ok(approver)
    }

    /// Changes a function's channels and/or longest window; active grants longer than a new
    /// longest window are cut to it (to now at the earliest).
    pub async fn update_function_in(
        &self,
        tx: &mut Tx,
        name: &str,
        allow: Option<&ChannelSet>,
        max_window: Option<i64>,
        now: i64,
    ) -> Result<FunctionChange> {
        match max_window {
            None if allow.is_none() => return Err(Invalid::NothingToChange.into()),
            Some(m) if m <= 0 => return Err(Invalid::MaxWindowNotPositive.into()),
            Some(m) if m > MAX_WINDOW => return Err(Invalid::MaxWindowTooLong.into()),
            _ => {}
        }
        self.bump_revision(&mut **tx).await?;
        if let Some(allow) = allow {
            sqlx::query("UPDATE functions SET allow = $1 WHERE name = $2")
                .bind(allow.to_string())
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        if let Some(max) = max_window {
            sqlx::query("UPDATE functions SET max_window = $1 WHERE name = $2")
                .bind(max)
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        let function = sqlx::query_as::<_, Function>("SELECT * FROM functions WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Missing::named(Thing::Function, name))?;
        let cut = match max_window {
            Some(max) => self.cut_grants_in(tx, name, max, now).await?,
            None => Vec::new(),
        };
        Ok(FunctionChange { function, cut })
    }

    /// Cuts the function's active grants longer than `max` to `max` from their start.
    async fn cut_grants_in(
        &self,
        tx: &mut Tx,
        function: &str,
        max: i64,
        now: i64,
    ) -> Result<Vec<CutGrant>> {
        let long: Vec<Grant> = sqlx::query_as::<_, Grant>(
            "SELECT * FROM grants WHERE function = $1 AND revoked_at IS NULL AND valid_until > $2 AND valid_until - valid_from > $3 ORDER BY id",
        )
        .bind(function)
        .bind(now)
        .bind(max)
        .fetch_all(&mut **tx)
        .await?;
        let mut cut = Vec::with_capacity(long.len());
        for mut grant in long {
            let was = grant.valid_until;
            grant.valid_until = (grant.valid_from + max).max(now);
            sqlx::query("UPDATE grants SET valid_until = $1 WHERE id = $2")
                .bind(grant.valid_until)
                .bind(&grant.id)
                .execute(&mut **tx)
                .await?;
            cut.push(CutGrant { grant, was });
        }
        Ok(cut)
    }
}
