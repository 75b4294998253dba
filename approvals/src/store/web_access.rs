//! Vendors' browser access to device web UIs: one-time sign-in links (from `ssh VENDOR:web`), the
//! browser sessions they open, and which device UIs a vendor's grants reach now.

use serde::Serialize;

use super::{Result, Store, Tx};
use crate::model::{Channel, ChannelSet, Function, Grant};

/// A device UI a vendor may open now, through the grant that allows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebTarget {
    pub site: String,
    pub device: String,
    pub url: String,
    pub function: String,
    pub grant: String,
    pub until: i64,
}

impl Store {
    /// The vendor's grants open at `now` whose function allows a web UI port.
    pub async fn web_grants(&self, vendor: &str, now: i64) -> Result<Vec<(Grant, Function)>> {
        let mut conn = self.pool.acquire().await?;
        Self::web_grants_on(&mut conn, vendor, now).await
    }

    /// [`Store::web_grants`] inside the caller's transaction (which, on SQLite, holds the write
    /// lock: a read on another pooled connection would tie up a second one meanwhile).
    pub async fn web_grants_in(
        &self,
        tx: &mut Tx,
        vendor: &str,
        now: i64,
    ) -> Result<Vec<(Grant, Function)>> {
        Self::web_grants_on(tx, vendor, now).await
    }

    async fn web_grants_on(
        conn: &mut sqlx::AnyConnection,
        vendor: &str,
        now: i64,
    ) -> Result<Vec<(Grant, Function)>> {
        let grants: Vec<Grant> = sqlx::query_as(
            "SELECT * FROM grants WHERE vendor = $1 AND revoked_at IS NULL \
             AND valid_from <= $2 AND valid_until > $2 ORDER BY site, id",
        )
        .bind(vendor)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        let functions = Self::functions_on(conn).await?;
        Ok(grants
            .into_iter()
            .filter_map(|g| {
                let f = functions.iter().find(|f| f.name == g.function)?.clone();
                let webs = ChannelSet::parse(&f.allow)
                    .map(|c| c.webs)
                    .unwrap_or_default();
                (!webs.is_empty()).then_some((g, f))
            })
            .collect())
    }

    /// The device UIs the vendor's grants reach now: a device with a web UI on a port its grant's
    /// function allows, at the grant's site, covered by the grant.
    pub async fn web_targets(&self, vendor: &str, now: i64) -> Result<Vec<WebTarget>> {
        let grants = self.web_grants(vendor, now).await?;
        // Only the UIs at the grants' sites are read (an estate has tens of thousands).
        let mut sites: Vec<&str> = grants.iter().map(|(g, _)| g.site.as_str()).collect();
        sites.sort_unstable();
        sites.dedup();
        let mut webs = Vec::new();
        for site in sites {
            webs.extend(self.device_webs_at(site).await?);
        }
        let mut out = Vec::new();
        for (g, f) in grants {
            let allowed = ChannelSet::parse(&f.allow).unwrap_or_default();
            for w in webs
                .iter()
                .filter(|w| w.site == g.site && g.covers(&w.device))
            {
                let port = crate::store::device_web::port_of(&w.url);
                if port.is_some_and(|p| allowed.allows(Channel::Web(p)))
                    && !out
                        .iter()
                        .any(|t: &WebTarget| t.site == w.site && t.device == w.device)
                {
                    out.push(WebTarget {
                        site: w.site.clone(),
                        device: w.device.clone(),
                        url: w.url.clone(),
                        function: g.function.clone(),
                        grant: g.id.clone(),
                        until: g.valid_until,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Files a one-time sign-in link's token hash for `vendor`, valid until `expires`.
    pub async fn add_web_entry_in(
        &self,
        tx: &mut Tx,
        token_hash: &str,
        vendor: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO web_entries (token_hash, vendor, created, expires) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(vendor)
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Forgets links and browser sessions over a day past their end: they are spent (the audit
    /// log keeps their record), and the tables stay as small as the live ones.
    pub async fn prune_web_in(&self, tx: &mut Tx, now: i64) -> Result<()> {
        let before = now - 86_400;
        sqlx::query("DELETE FROM web_entries WHERE expires < $1")
            .bind(before)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM web_sessions WHERE expires < $1 OR ended < $1")
            .bind(before)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Uses a sign-in link: its vendor, if it was unused and unexpired at `now` (then never again).
    pub async fn claim_web_entry_in(
        &self,
        tx: &mut Tx,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let claimed = sqlx::query(
            "UPDATE web_entries SET used = $1 WHERE token_hash = $2 AND used IS NULL AND expires > $1",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar("SELECT vendor FROM web_entries WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&mut **tx)
                .await?,
        )
    }

    /// Opens a browser session (its cookie's hash) for `vendor` until `expires`.
    pub async fn add_web_session_in(
        &self,
        tx: &mut Tx,
        id_hash: &str,
        vendor: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, vendor, created, expires) VALUES ($1, $2, $3, $4)",
        )
        .bind(id_hash)
        .bind(vendor)
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The vendor of a browser session open at `now`: not ended, not expired, its vendor enabled
    /// and under contract.
    pub async fn web_session(&self, id_hash: &str, now: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT s.vendor FROM web_sessions s JOIN vendors v ON v.name = s.vendor \
             WHERE s.id_hash = $1 AND s.ended IS NULL AND s.expires > $2 AND v.disabled = 0 \
             AND (v.contract_end IS NULL OR v.contract_end > $2)",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }
}
