//! An edge's own store, made to hold what its signed policy bundle says (see
//! [`crate::bundle`]): the edge's front door then decides, authenticates and injects credentials
//! with the same code as the central, from these rows.

use std::collections::BTreeSet;

use super::{Result, Store, Tx};
use crate::bundle::BundleSource;
use crate::secrets::Owner;

impl Store {
    /// Makes this store hold `source` (bundle `version`), in one transaction: sites, functions,
    /// vendors, their certificates, the trusted vendor CAs, devices and grants are written as the
    /// bundle says. A grant the bundle no longer holds is revoked (closing the live sessions it
    /// covered, with that reason), a device no longer there removed. A vendor left out (no grant
    /// here any more) keeps its row and certificates as last known: without a grant it opens
    /// nothing. Each vendor's used TOTP steps are kept (codes stay single-use).
    pub async fn mirror_bundle(&self, source: &BundleSource, version: i64, now: i64) -> Result<()> {
        let by = format!("central (policy v{version})");
        let mut tx = self.begin().await?;
        // Written first: on SQLite the first write takes the lock (see `Tx`).
        self.bump_revision(&mut *tx).await?;
        for site in &source.sites {
            sqlx::query(
                "INSERT INTO sites (name, region, created) VALUES ($1, NULL, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(site)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        self.mirror_functions(&mut tx, source).await?;
        self.mirror_vendors(&mut tx, source, now).await?;
        self.mirror_devices(&mut tx, source, now).await?;
        self.mirror_grants(&mut tx, source, &by, now).await?;
        set_meta(&mut *tx, "policy_fresh_until", now + source.offline_grace).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Each vendor's last used TOTP step here (what an edge reports to the central).
    pub async fn totp_steps(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as("SELECT name, totp_last_step FROM vendors WHERE totp_last_step >= 0")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Steps used elsewhere (at an edge) are spent here too; gives the vendors whose last step
    /// moved.
    pub async fn spend_totp_steps(&self, steps: &[(String, i64)]) -> Result<Vec<(String, i64)>> {
        let mut moved = Vec::new();
        for (vendor, step) in steps {
            let n = sqlx::query(
                "UPDATE vendors SET totp_last_step = $1 WHERE name = $2 AND totp_last_step < $1",
            )
            .bind(step)
            .bind(vendor)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n > 0 {
                moved.push((vendor.clone(), *step));
            }
        }
        Ok(moved)
    }

    /// The edge heard from the central at `now`: its policy counts as current for `grace` more.
    pub async fn policy_confirmed(&self, now: i64, grace: i64) -> Result<()> {
        set_meta(&self.pool, "policy_fresh_until", now + grace).await
    }

    /// At an edge's site node: until when its policy counts as current, and whether its
    /// evidence buffer is full (`(None, false)` at the central).
    pub async fn site_limits(&self) -> Result<(Option<i64>, bool)> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key, value FROM meta WHERE key IN ('policy_fresh_until', 'evidence_buffer_full')",
        )
        .fetch_all(&self.pool)
        .await?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        Ok((
            get("policy_fresh_until"),
            get("evidence_buffer_full").is_some_and(|v| v != 0),
        ))
    }

    /// At an edge's site node: new sessions are refused while `full` (fail-secure).
    pub async fn set_evidence_buffer_full(&self, full: bool) -> Result<()> {
        set_meta(&self.pool, "evidence_buffer_full", i64::from(full)).await
    }

    async fn mirror_functions(&self, tx: &mut Tx, source: &BundleSource) -> Result<()> {
        for f in &source.functions {
            sqlx::query(
                "INSERT INTO functions (name, allow, login, max_window, emergency, created, emergency_orgs, offline_ok) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE SET \
                 allow = excluded.allow, login = excluded.login, max_window = excluded.max_window, \
                 emergency = excluded.emergency, emergency_orgs = excluded.emergency_orgs, \
                 offline_ok = excluded.offline_ok",
            )
            .bind(&f.name)
            .bind(&f.allow)
            .bind(&f.login)
            .bind(f.max_window)
            .bind(i64::from(f.emergency))
            .bind(f.created)
            .bind(&f.emergency_orgs)
            .bind(i64::from(f.offline_ok))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn mirror_vendors(&self, tx: &mut Tx, source: &BundleSource, now: i64) -> Result<()> {
        for v in &source.vendors {
            sqlx::query(
                "INSERT INTO vendors (name, org, contract_end, disabled, totp_secret, totp_last_step, created) \
                 VALUES ($1, $2, $3, $4, $5, $7, $6) ON CONFLICT (name) DO UPDATE SET \
                 org = excluded.org, contract_end = excluded.contract_end, \
                 disabled = excluded.disabled, totp_secret = excluded.totp_secret, \
                 totp_last_step = CASE WHEN excluded.totp_last_step > vendors.totp_last_step \
                 THEN excluded.totp_last_step ELSE vendors.totp_last_step END",
            )
            .bind(&v.name)
            .bind(&v.org)
            .bind(v.contract_end)
            .bind(i64::from(v.disabled))
            .bind(self.seal(Owner::Vendor(&v.name), &v.totp_secret)?)
            .bind(now)
            .bind(v.totp_last_step)
            .execute(&mut **tx)
            .await?;
        }
        for c in &source.certificates {
            sqlx::query(
                "INSERT INTO certificates (serial, vendor, key_id, key_fingerprint, valid_after, valid_before, revoked, created, ca) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (serial) DO UPDATE SET \
                 revoked = excluded.revoked, valid_before = excluded.valid_before",
            )
            .bind(&c.serial)
            .bind(&c.vendor)
            .bind(&c.key_id)
            .bind(&c.key_fingerprint)
            .bind(c.valid_after)
            .bind(c.valid_before)
            .bind(i64::from(c.revoked))
            .bind(c.created)
            .bind(&c.ca)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("DELETE FROM vendor_cas")
            .execute(&mut **tx)
            .await?;
        for key in &source.vendor_cas {
            sqlx::query(
                "INSERT INTO vendor_cas (public_key, node, created) VALUES ($1, 'central', $2)",
            )
            .bind(key)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn mirror_devices(&self, tx: &mut Tx, source: &BundleSource, now: i64) -> Result<()> {
        for d in &source.devices {
            let owner = Owner::Device {
                site: &d.site,
                name: &d.name,
            };
            sqlx::query(
                "INSERT INTO devices (site, name, addr, login, credential_kind, credential, host_key, created) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (site, name) DO UPDATE SET \
                 addr = excluded.addr, login = excluded.login, credential_kind = excluded.credential_kind, \
                 credential = excluded.credential, host_key = excluded.host_key",
            )
            .bind(&d.site)
            .bind(&d.name)
            .bind(&d.addr)
            .bind(&d.login)
            .bind(d.credential_kind.as_str())
            .bind(self.seal(owner, &d.credential)?)
            .bind(&d.host_key)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        let keep: BTreeSet<(&str, &str)> = (source.devices.iter())
            .map(|d| (d.site.as_str(), d.name.as_str()))
            .collect();
        let held: Vec<(String, String)> = sqlx::query_as("SELECT site, name FROM devices")
            .fetch_all(&mut **tx)
            .await?;
        for (site, name) in held
            .iter()
            .filter(|(s, n)| !keep.contains(&(s.as_str(), n.as_str())))
        {
            sqlx::query("DELETE FROM devices WHERE site = $1 AND name = $2")
                .bind(site)
                .bind(name)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn mirror_grants(
        &self,
        tx: &mut Tx,
        source: &BundleSource,
        by: &str,
        now: i64,
    ) -> Result<()> {
        for g in &source.grants {
            sqlx::query(
                "INSERT INTO grants (id, vendor, site, function, valid_from, valid_until, granted_by, reason, created, devices) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, '', $8, $9) ON CONFLICT (id) DO UPDATE SET \
                 valid_from = excluded.valid_from, valid_until = excluded.valid_until, devices = excluded.devices",
            )
            .bind(&g.id)
            .bind(&g.vendor)
            .bind(&g.site)
            .bind(&g.function)
            .bind(g.valid_from)
            .bind(g.valid_until)
            .bind(by)
            .bind(now)
            .bind(&g.devices)
            .execute(&mut **tx)
            .await?;
        }
        let keep: BTreeSet<&str> = source.grants.iter().map(|g| g.id.as_str()).collect();
        // Only grants the central made: break-glass openings at the site are the site's own.
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM grants WHERE revoked_at IS NULL AND granted_by LIKE 'central (policy v%'",
        )
        .fetch_all(&mut **tx)
        .await?;
        for id in held.iter().filter(|id| !keep.contains(id.as_str())) {
            sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3")
                .bind(now)
                .bind(by)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// Sets the `meta` value `key` (a site node's limits), whatever it was.
async fn set_meta<'c, E>(exec: E, key: &str, value: i64) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(exec)
    .await?;
    Ok(())
}
