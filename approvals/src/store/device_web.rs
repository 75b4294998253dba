//! Device web UIs: where each device serves its UI and the certificate pinned for it.

use serde::Serialize;

use super::{Missing, Result, Store, Tx};
use crate::secrets::Owner;

/// A device's web UI endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeviceWeb {
    pub site: String,
    pub device: String,
    /// `https://HOST:PORT` or `http://HOST:PORT`.
    pub url: String,
    /// SHA-256 (hex) of the certificate pinned for an HTTPS UI; `None` for plain HTTP.
    pub cert_sha256: Option<String>,
    pub created: i64,
    /// The user Postern signs in to the UI as with HTTP basic auth, if it does.
    pub basic_user: Option<String>,
    /// That user's password, in the clear in memory only (sealed in the database); read only by
    /// [`Store::device_web`], for the proxy.
    #[serde(skip)]
    pub basic_password: Option<String>,
}

/// The port of a stored web UI address (`https://HOST:PORT`).
pub(crate) fn port_of(url: &str) -> Option<u16> {
    url.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
}

impl std::fmt::Debug for DeviceWeb {
    /// Without the password: a `{:?}` in a log must not carry it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWeb")
            .field("site", &self.site)
            .field("device", &self.device)
            .field("url", &self.url)
            .field("cert_sha256", &self.cert_sha256)
            .field("created", &self.created)
            .field("basic_user", &self.basic_user)
            .field(
                "basic_password",
                &self.basic_password.as_ref().map(|_| "(sealed)"),
            )
            .finish()
    }
}

impl Store {
    /// Sets (or replaces) a device's web UI endpoint inside `tx`; `NotFound` for no such device.
    pub async fn set_device_web_in(&self, tx: &mut Tx, w: &DeviceWeb) -> Result<()> {
        let owner = Owner::DeviceWeb {
            site: &w.site,
            name: &w.device,
        };
        let sealed = match &w.basic_password {
            Some(p) => Some(self.seal(owner, p)?),
            None => None,
        };
        let updated = sqlx::query(
            "UPDATE device_web SET url = $1, cert_sha256 = $2, created = $3, basic_user = $4, \
             basic_password = $5 WHERE site = $6 AND device = $7",
        )
        .bind(&w.url)
        .bind(&w.cert_sha256)
        .bind(w.created)
        .bind(&w.basic_user)
        .bind(&sealed)
        .bind(&w.site)
        .bind(&w.device)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let inserted = sqlx::query(
                "INSERT INTO device_web (site, device, url, cert_sha256, created, basic_user, \
                 basic_password) SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS \
                 (SELECT 1 FROM devices WHERE site = $1 AND name = $2)",
            )
            .bind(&w.site)
            .bind(&w.device)
            .bind(&w.url)
            .bind(&w.cert_sha256)
            .bind(w.created)
            .bind(&w.basic_user)
            .bind(&sealed)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(Missing::Device {
                    site: w.site.clone(),
                    device: w.device.clone(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// One device's web UI endpoint, if it has one, its basic-auth password opened.
    pub async fn device_web(&self, site: &str, device: &str) -> Result<Option<DeviceWeb>> {
        let w: Option<DeviceWeb> = sqlx::query_as(
            "SELECT site, device, url, cert_sha256, created, basic_user, basic_password \
             FROM device_web WHERE site = $1 AND device = $2",
        )
        .bind(site)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        let Some(mut w) = w else { return Ok(None) };
        if let Some(sealed) = &w.basic_password {
            let owner = Owner::DeviceWeb { site, name: device };
            w.basic_password = Some(self.open_secret(owner, sealed)?);
        }
        Ok(Some(w))
    }

    /// How many device web UIs answer to this site and device name once case is ignored, as a
    /// DNS name does: more than one means their origins would be one.
    pub async fn web_uis_named_alike(&self, site: &str, device: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM device_web WHERE lower(site) = lower($1) \
             AND lower(device) = lower($2)",
        )
        .bind(site)
        .bind(device)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The web UI endpoints of one site's devices (no password: it is not even read).
    pub async fn device_webs_at(&self, site: &str) -> Result<Vec<DeviceWeb>> {
        Ok(sqlx::query_as(
            "SELECT site, device, url, cert_sha256, created, basic_user, \
             CAST(NULL AS TEXT) AS basic_password FROM device_web WHERE site = $1 ORDER BY device",
        )
        .bind(site)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every device web UI endpoint (no password: `device list` names the user only).
    pub async fn device_webs(&self) -> Result<Vec<DeviceWeb>> {
        Ok(sqlx::query_as(
            "SELECT site, device, url, cert_sha256, created, basic_user, \
             CAST(NULL AS TEXT) AS basic_password FROM device_web ORDER BY site, device",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
