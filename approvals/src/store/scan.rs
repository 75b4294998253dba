//! Unbrokered access paths (`postern scan`): each way into a device that is not Postern's, with
//! when it was first and last seen. A path a later scan of its device no longer finds is closed;
//! the count of open ones is the "unbrokered remote access count".

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, Tx};

/// One way in, as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoundPath {
    /// `key` (an authorized_keys entry) or `port` (a listening service).
    pub kind: String,
    /// The authorized_keys file, or `tcp` for a port.
    pub location: String,
    /// A key's fingerprint, or the port number.
    pub ident: String,
    pub comment: String,
    pub options: String,
}

/// A stored path with its device and dates (`closed_at` is `None` while open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnbrokeredPath {
    pub site: String,
    pub device: String,
    #[serde(flatten)]
    pub path: FoundPath,
    pub first_seen: i64,
    pub last_seen: i64,
    pub closed_at: Option<i64>,
}

fn path_of(row: &AnyRow) -> sqlx::Result<UnbrokeredPath> {
    Ok(UnbrokeredPath {
        site: row.try_get("site")?,
        device: row.try_get("device")?,
        path: FoundPath {
            kind: row.try_get("kind")?,
            location: row.try_get("location")?,
            ident: row.try_get("ident")?,
            comment: row.try_get("comment")?,
            options: row.try_get("options")?,
        },
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        closed_at: row.try_get("closed_at")?,
    })
}

impl Store {
    /// Stores one device's scan: what it found is open (first seen now unless it already was
    /// open), what was open and is not found any more is closed.
    pub async fn record_scan_in(
        &self,
        tx: &mut Tx,
        site: &str,
        device: &str,
        found: &[FoundPath],
        now: i64,
    ) -> Result<()> {
        for p in found {
            sqlx::query(
                "INSERT INTO unbrokered_paths (site, device, kind, location, ident, comment, options, \
                 first_seen, last_seen, closed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL) \
                 ON CONFLICT (site, device, kind, location, ident) DO UPDATE SET \
                 first_seen = CASE WHEN unbrokered_paths.closed_at IS NULL \
                 THEN unbrokered_paths.first_seen ELSE excluded.first_seen END, \
                 last_seen = excluded.last_seen, comment = excluded.comment, \
                 options = excluded.options, closed_at = NULL",
            )
            .bind(site)
            .bind(device)
            .bind(&p.kind)
            .bind(&p.location)
            .bind(&p.ident)
            .bind(&p.comment)
            .bind(&p.options)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        let open = sqlx::query(
            "SELECT * FROM unbrokered_paths WHERE site = $1 AND device = $2 AND closed_at IS NULL",
        )
        .bind(site)
        .bind(device)
        .fetch_all(&mut **tx)
        .await?;
        for row in &open {
            let stored = path_of(row)?.path;
            let still = found.iter().any(|f| {
                (&f.kind, &f.location, &f.ident) == (&stored.kind, &stored.location, &stored.ident)
            });
            if !still {
                self.close_path_in(tx, site, device, &stored, now).await?;
            }
        }
        Ok(())
    }

    /// Closes one open path (removed, or not found any more).
    pub async fn close_path_in(
        &self,
        tx: &mut Tx,
        site: &str,
        device: &str,
        path: &FoundPath,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE unbrokered_paths SET closed_at = $1 WHERE site = $2 AND device = $3 \
             AND kind = $4 AND location = $5 AND ident = $6 AND closed_at IS NULL",
        )
        .bind(now)
        .bind(site)
        .bind(device)
        .bind(&path.kind)
        .bind(&path.location)
        .bind(&path.ident)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The open paths, oldest first.
    pub async fn open_unbrokered_paths(&self) -> Result<Vec<UnbrokeredPath>> {
        let rows = sqlx::query(
            "SELECT * FROM unbrokered_paths WHERE closed_at IS NULL \
             ORDER BY first_seen, site, device, kind, location, ident",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(path_of).collect::<sqlx::Result<_>>()?)
    }

    /// How many unbrokered access paths are open: the figure the metrics publish.
    pub async fn open_unbrokered_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM unbrokered_paths WHERE closed_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}
