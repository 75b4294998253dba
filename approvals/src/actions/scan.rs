//! The unbrokered access scan, as actions: a scan's findings are stored with its `scan.run`
//! record in one transaction; removing foreign keys closes their paths with a `scan.remove`
//! record.

use super::{ActionRecord, Actions, Actor, Result};
use crate::store::FoundPath;

/// One device's scan: what was found, or why it could not be scanned (its stored paths are then
/// left as they were: an unreachable device is not clean).
#[derive(Debug, Clone)]
pub struct DeviceScan {
    pub site: String,
    pub device: String,
    pub outcome: std::result::Result<Vec<FoundPath>, String>,
}

impl Actions {
    /// Stores a scan of `scans`; audited `scan.run` with its counts.
    pub async fn record_scan(&self, actor: &Actor, scans: &[DeviceScan], now: i64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let (mut found, mut unscanned) = (0, Vec::new());
        for s in scans {
            match &s.outcome {
                Ok(paths) => {
                    found += paths.len();
                    self.store
                        .record_scan_in(&mut tx, &s.site, &s.device, paths, now)
                        .await?;
                }
                Err(_) => unscanned.push(format!("{}/{}", s.site, s.device)),
            }
        }
        let record = ActionRecord::ScanRun {
            devices: scans.len(),
            scanned: scans.len() - unscanned.len(),
            found,
            unscanned,
        };
        self.finish(tx, actor, record).await
    }

    /// Records foreign keys taken out of a device's authorized_keys and closes their paths.
    pub async fn foreign_keys_removed(
        &self,
        actor: &Actor,
        site: &str,
        device: &str,
        removed: &[FoundPath],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        for p in removed {
            self.store
                .close_path_in(&mut tx, site, device, p, now)
                .await?;
        }
        let record = ActionRecord::ScanRemove {
            site: site.to_owned(),
            device: device.to_owned(),
            file: removed
                .first()
                .map(|p| p.location.clone())
                .unwrap_or_default(),
            keys: removed.iter().map(|p| p.ident.clone()).collect(),
        };
        self.finish(tx, actor, record).await
    }
}
