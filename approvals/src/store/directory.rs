//! Sites, devices and functions.

use super::{
    Conflict, Invalid, MAX_WINDOW, Missing, NewDevice, Result, Store, Thing, Tx, check_name,
    conflict_on_unique, insert_error,
};
use crate::model::{ChannelSet, Device, Function, Site};
use crate::secrets::Owner;

impl Store {
    pub async fn add_site(&self, name: &str, region: Option<&str>, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        self.add_site_in(&mut tx, name, region, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_site`] inside the caller's transaction.
    pub async fn add_site_in(
        &self,
        tx: &mut Tx,
        name: &str,
        region: Option<&str>,
        now: i64,
    ) -> Result<()> {
        check_name(Thing::Site, name)?;
        sqlx::query("INSERT INTO sites (name, region, created) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(region)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, Conflict::exists(Thing::Site, name)))?;
        Ok(())
    }

    pub async fn sites(&self) -> Result<Vec<Site>> {
        Ok(
            sqlx::query_as::<_, Site>("SELECT * FROM sites ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn add_device(&self, d: &NewDevice, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        self.add_device_in(&mut tx, d, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_device`] inside the caller's transaction (which sees sites it added itself).
    pub async fn add_device_in(&self, tx: &mut Tx, d: &NewDevice, now: i64) -> Result<()> {
        check_name(Thing::Device, &d.name)?;
        // The site is checked by its foreign key (see [`Tx`] for why not by a look-up first).
        sqlx::query("INSERT INTO devices (site, name, addr, login, credential_kind, credential, host_key, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&d.site)
            .bind(&d.name)
            .bind(&d.addr)
            .bind(&d.login)
            .bind(d.credential_kind.as_str())
            .bind(self.seal(
                Owner::Device {
                    site: &d.site,
                    name: &d.name,
                },
                &d.credential,
            )?)
            .bind(&d.host_key)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                insert_error(
                    e,
                    Conflict::DeviceExists {
                        site: d.site.clone(),
                        device: d.name.clone(),
                    },
                    Missing::SiteOfDevice(d.site.clone()),
                )
            })?;
        Ok(())
    }

    pub async fn device(&self, site: &str, name: &str) -> Result<Option<Device>> {
        sqlx::query_as::<_, Device>("SELECT * FROM devices WHERE site = $1 AND name = $2")
            .bind(site)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|d| self.open_device(d))
            .transpose()
    }

    pub async fn devices(&self) -> Result<Vec<Device>> {
        sqlx::query_as::<_, Device>("SELECT * FROM devices ORDER BY site, name")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|d| self.open_device(d))
            .collect()
    }

    /// The devices at one site (only theirs are read and opened).
    pub async fn devices_at(&self, site: &str) -> Result<Vec<Device>> {
        sqlx::query_as::<_, Device>("SELECT * FROM devices WHERE site = $1 ORDER BY name")
            .bind(site)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|d| self.open_device(d))
            .collect()
    }

    pub(crate) async fn site_exists(&self, site: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
            .bind(site)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Adds a site unless it exists (in any region); true if it was added.
    pub async fn add_site_if_new_in(
        &self,
        tx: &mut Tx,
        name: &str,
        region: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        check_name(Thing::Site, name)?;
        let n = sqlx::query("INSERT INTO sites (name, region, created) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(region)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn add_function(
        &self,
        name: &str,
        allow: &ChannelSet,
        login: Option<&str>,
        max_window: i64,
        emergency_orgs: Option<&[String]>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.add_function_in(&mut tx, name, allow, login, max_window, emergency_orgs, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_function`] inside the caller's transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_function_in(
        &self,
        tx: &mut Tx,
        name: &str,
        allow: &ChannelSet,
        login: Option<&str>,
        max_window: i64,
        emergency_orgs: Option<&[String]>,
        now: i64,
    ) -> Result<()> {
        check_name(Thing::Function, name)?;
        if max_window <= 0 {
            return Err(Invalid::MaxWindowNotPositive.into());
        }
        if max_window > MAX_WINDOW {
            return Err(Invalid::MaxWindowTooLong.into());
        }
        if emergency_orgs.is_some_and(|o| o.is_empty()) {
            return Err(Invalid::EmergencyWithoutOrgs.into());
        }
        let orgs = emergency_orgs.unwrap_or_default();
        sqlx::query("INSERT INTO functions (name, allow, login, max_window, emergency, emergency_orgs, created) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(name)
            .bind(allow.to_string())
            .bind(login)
            .bind(max_window)
            .bind(emergency_orgs.is_some() as i64)
            .bind(orgs.join(","))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, Conflict::exists(Thing::Function, name)))?;
        Ok(())
    }

    pub async fn function(&self, name: &str) -> Result<Option<Function>> {
        Ok(
            sqlx::query_as::<_, Function>("SELECT * FROM functions WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn functions(&self) -> Result<Vec<Function>> {
        let mut conn = self.pool.acquire().await?;
        Self::functions_on(&mut conn).await
    }

    /// [`Store::functions`] on a given connection (a transaction's, say).
    pub(crate) async fn functions_on(conn: &mut sqlx::AnyConnection) -> Result<Vec<Function>> {
        Ok(
            sqlx::query_as::<_, Function>("SELECT * FROM functions ORDER BY name")
                .fetch_all(conn)
                .await?,
        )
    }
}
