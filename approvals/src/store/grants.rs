//! Grants, and the facts the policy decision reads.

use super::{
    Conflict, Invalid, Missing, NewGrant, Result, Store, StoreError, Thing, Tx, check_name, new_id,
};
use crate::model::{Facts, Function, Grant};

impl Store {
    /// Adds a grant after checking that everything it names exists and that the window is
    /// well-formed and no longer than the function allows.
    pub async fn add_grant(&self, g: &NewGrant, now: i64) -> Result<Grant> {
        let mut tx = self.begin().await?;
        let grant = self.add_grant_in(&mut tx, g, now).await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// [`Store::add_grant`] inside the caller's transaction.
    pub async fn add_grant_in(&self, tx: &mut Tx, g: &NewGrant, now: i64) -> Result<Grant> {
        let vendor = self
            .vendor(&g.vendor)
            .await?
            .ok_or_else(|| Missing::named(Thing::Vendor, &g.vendor))?;
        if vendor.is_disabled() {
            return Err(Invalid::VendorDisabled(g.vendor.clone()).into());
        }
        if !self.site_exists(&g.site).await? {
            return Err(Missing::named(Thing::Site, &g.site).into());
        }
        let func = self
            .function(&g.function)
            .await?
            .ok_or_else(|| Missing::named(Thing::Function, &g.function))?;
        if g.valid_until <= g.valid_from {
            return Err(Invalid::WindowEndsBeforeStart.into());
        }
        if g.valid_until <= now {
            return Err(Invalid::WindowOver.into());
        }
        if g.valid_until - g.valid_from > func.max_window {
            return Err(Invalid::WindowTooLong {
                function: func.name,
                asked: g.valid_until - g.valid_from,
                max: func.max_window,
            }
            .into());
        }
        let devices = self.check_grant_devices(&g.site, &g.devices).await?;
        let grant = Grant {
            id: new_id("g"),
            vendor: g.vendor.clone(),
            site: g.site.clone(),
            function: g.function.clone(),
            valid_from: g.valid_from,
            valid_until: g.valid_until,
            granted_by: g.granted_by.clone(),
            reason: g.reason.clone(),
            created: now,
            revoked_at: None,
            revoked_by: None,
            devices,
        };
        sqlx::query("INSERT INTO grants (id, vendor, site, function, valid_from, valid_until, granted_by, reason, created, devices) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&grant.id)
            .bind(&grant.vendor)
            .bind(&grant.site)
            .bind(&grant.function)
            .bind(grant.valid_from)
            .bind(grant.valid_until)
            .bind(&grant.granted_by)
            .bind(&grant.reason)
            .bind(now)
            .bind(&grant.devices)
            .execute(&mut **tx)
            .await?;
        // Edges learn of new grants from the change counter, as of revocations.
        self.bump_revision(&mut **tx).await?;
        Ok(grant)
    }

    /// A grant's device list as stored (sorted, comma-separated; empty for the whole site), after
    /// checking that every device named exists at the site.
    async fn check_grant_devices(&self, site: &str, devices: &[String]) -> Result<String> {
        let mut names: Vec<&str> = devices.iter().map(|d| d.trim()).collect();
        // A blank name must not quietly widen the grant to the whole site.
        if names.iter().any(|d| d.is_empty()) {
            return Err(Invalid::EmptyDeviceName.into());
        }
        names.sort_unstable();
        names.dedup();
        for d in &names {
            check_name(Thing::Device, d)?;
            if self.device(site, d).await?.is_none() {
                return Err(Missing::Device {
                    site: site.to_owned(),
                    device: (*d).to_owned(),
                }
                .into());
            }
        }
        Ok(names.join(","))
    }

    pub async fn grants(&self) -> Result<Vec<Grant>> {
        Ok(
            sqlx::query_as::<_, Grant>("SELECT * FROM grants ORDER BY created, id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        Ok(
            sqlx::query_as::<_, Grant>("SELECT * FROM grants WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn revoke_grant(&self, id: &str, by: &str, now: i64) -> Result<Grant> {
        let mut tx = self.begin().await?;
        let grant = self.revoke_grant_in(&mut tx, id, by, now).await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// [`Store::revoke_grant`] inside the caller's transaction.
    pub async fn revoke_grant_in(
        &self,
        tx: &mut Tx,
        id: &str,
        by: &str,
        now: i64,
    ) -> Result<Grant> {
        let n = sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(by)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let grant = sqlx::query_as::<_, Grant>("SELECT * FROM grants WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Missing::id(Thing::Grant, id))?;
        if n == 0 {
            return Err(Conflict::GrantRevoked(id.to_owned()).into());
        }
        self.bump_revision(&mut **tx).await?;
        Ok(grant)
    }

    /// Loads what the policy decision needs for one vendor and target.
    pub async fn facts(
        &self,
        vendor: &str,
        site: &str,
        device: &str,
        function: Option<&str>,
    ) -> Result<Facts> {
        // Independent lookups, in parallel: on PostgreSQL each is a network round trip.
        let grants =
            sqlx::query_as::<_, Grant>("SELECT * FROM grants WHERE vendor = $1 AND site = $2")
                .bind(vendor)
                .bind(site)
                .fetch_all(&self.pool);
        let functions = sqlx::query_as::<_, Function>(
            "SELECT * FROM functions WHERE name = $3 OR name IN (SELECT function FROM grants WHERE vendor = $1 AND site = $2)",
        )
        .bind(vendor)
        .bind(site)
        .bind(function.unwrap_or(""))
        .fetch_all(&self.pool);
        let (
            grants,
            functions,
            vendor,
            site_exists,
            device,
            (policy_fresh_until, evidence_buffer_full),
        ) = tokio::try_join!(
            async { grants.await.map_err(StoreError::from) },
            async { functions.await.map_err(StoreError::from) },
            self.vendor(vendor),
            self.site_exists(site),
            self.device(site, device),
            self.site_limits(),
        )?;
        Ok(Facts {
            vendor,
            site_exists,
            device,
            grants,
            functions: functions.into_iter().map(|f| (f.name.clone(), f)).collect(),
            policy_fresh_until,
            evidence_buffer_full,
        })
    }
}
