//! Device web UIs: where each device serves its UI and the certificate pinned for it.

use serde::Serialize;

use super::{Missing, Result, Store, Tx};

/// A device's web UI endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeviceWeb {
    pub site: String,
    pub device: String,
    /// `https://HOST:PORT` or `http://HOST:PORT`.
    pub url: String,
    /// SHA-256 (hex) of the certificate pinned for an HTTPS UI; `None` for plain HTTP.
    pub cert_sha256: Option<String>,
    pub created: i64,
}

/// The port of a stored web UI address (`https://HOST:PORT`).
pub(crate) fn port_of(url: &str) -> Option<u16> {
    url.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
}

impl Store {
    /// Sets (or replaces) a device's web UI endpoint inside `tx`; `NotFound` for no such device.
    pub async fn set_device_web_in(&self, tx: &mut Tx, w: &DeviceWeb) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE device_web SET url = $1, cert_sha256 = $2, created = $3 \
             WHERE site = $4 AND device = $5",
        )
        .bind(&w.url)
        .bind(&w.cert_sha256)
        .bind(w.created)
        .bind(&w.site)
        .bind(&w.device)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let inserted = sqlx::query(
                "INSERT INTO device_web (site, device, url, cert_sha256, created) \
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS \
                 (SELECT 1 FROM devices WHERE site = $1 AND name = $2)",
            )
            .bind(&w.site)
            .bind(&w.device)
            .bind(&w.url)
            .bind(&w.cert_sha256)
            .bind(w.created)
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

    /// One device's web UI endpoint, if it has one.
    pub async fn device_web(&self, site: &str, device: &str) -> Result<Option<DeviceWeb>> {
        Ok(sqlx::query_as(
            "SELECT site, device, url, cert_sha256, created FROM device_web \
             WHERE site = $1 AND device = $2",
        )
        .bind(site)
        .bind(device)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every device web UI endpoint.
    pub async fn device_webs(&self) -> Result<Vec<DeviceWeb>> {
        Ok(sqlx::query_as(
            "SELECT site, device, url, cert_sha256, created FROM device_web ORDER BY site, device",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
