//! Exceptions: access that stands outside the normal just-in-time path, each with the time it
//! opened and the approvers accountable for its site. Older exceptions are often permanent
//! vulnerabilities: they are listed oldest first.

use std::collections::HashMap;

use serde::Serialize;

use crate::model::RequestStatus;
use crate::store::{Store, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// What kind of exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionKind {
    /// A break-glass opening nobody has reviewed yet.
    BreakglassUnreviewed,
    /// A live grant longer than `standing_grant_threshold`.
    StandingGrant,
    /// An access request still undecided past `approval_slo`.
    RequestOverdue,
    /// A device credential older than `rotate_every`.
    StaleCredential,
    /// A way into a device that is not Postern's, found by the scan and still open.
    UnbrokeredPath,
    /// A site edge out of contact for longer than `edge_offline_grace`.
    EdgeOffline,
}

impl ExceptionKind {
    pub const ALL: [ExceptionKind; 6] = [
        ExceptionKind::BreakglassUnreviewed,
        ExceptionKind::StandingGrant,
        ExceptionKind::RequestOverdue,
        ExceptionKind::StaleCredential,
        ExceptionKind::UnbrokeredPath,
        ExceptionKind::EdgeOffline,
    ];

    /// The name in listings and metric labels (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionKind::BreakglassUnreviewed => "breakglass_unreviewed",
            ExceptionKind::StandingGrant => "standing_grant",
            ExceptionKind::RequestOverdue => "request_overdue",
            ExceptionKind::StaleCredential => "stale_credential",
            ExceptionKind::UnbrokeredPath => "unbrokered_path",
            ExceptionKind::EdgeOffline => "edge_offline",
        }
    }
}

/// One exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exception {
    pub kind: ExceptionKind,
    pub site: String,
    /// What it is about (a break-glass id, a grant, a device, an edge).
    pub subject: String,
    pub detail: String,
    /// When it began (Unix seconds).
    pub opened: i64,
    /// The approvers accountable for the site.
    pub owners: Vec<String>,
}

/// The thresholds that make ordinary things exceptions (seconds).
#[derive(Debug, Clone, Copy)]
pub struct ExceptionLimits {
    pub standing_grant: i64,
    pub approval_slo: i64,
    /// `None`: credentials have no rotation schedule, none is stale.
    pub rotate_every: Option<i64>,
    pub edge_offline_grace: i64,
}

impl Default for ExceptionLimits {
    /// The configuration's defaults: standing grants past 24 hours, requests past 15 minutes,
    /// no rotation schedule, edges out of contact past 24 hours.
    fn default() -> Self {
        ExceptionLimits {
            standing_grant: 86_400,
            approval_slo: 900,
            rotate_every: None,
            edge_offline_grace: 86_400,
        }
    }
}

impl Store {
    /// Every open exception at `now` (at `site` only, if given), oldest first.
    pub async fn exceptions(
        &self,
        limits: ExceptionLimits,
        now: i64,
        site: Option<&str>,
    ) -> Result<Vec<Exception>> {
        let mut found: Vec<(ExceptionKind, String, String, String, i64)> = Vec::new();
        for b in self.breakglass_list(true).await? {
            let detail = format!(
                "{} opened {} on {}: {}",
                b.vendor, b.function, b.device, b.reason
            );
            found.push((
                ExceptionKind::BreakglassUnreviewed,
                b.site,
                b.id,
                detail,
                b.opened,
            ));
        }
        for g in self.standing_grants(now, limits.standing_grant).await? {
            let days = (g.valid_until - g.valid_from) as f64 / 86_400.0;
            let detail = format!("{} holds {} for {days:.1} days", g.vendor, g.function);
            found.push((
                ExceptionKind::StandingGrant,
                g.site,
                g.id,
                detail,
                g.valid_from,
            ));
        }
        for r in self.requests(Some(RequestStatus::Pending)).await? {
            if now - r.created > limits.approval_slo {
                let detail = format!("{} asked for {} on {}", r.vendor, r.function, r.device);
                found.push((
                    ExceptionKind::RequestOverdue,
                    r.site,
                    r.id,
                    detail,
                    r.created,
                ));
            }
        }
        if let Some(every) = limits.rotate_every {
            let rotated: HashMap<(String, String), Option<i64>> = (self.device_rotations().await?)
                .into_iter()
                .map(|r| ((r.site, r.device), r.credential_set))
                .collect();
            for d in self.devices_listed().await? {
                let set = rotated
                    .get(&(d.0.clone(), d.1.clone()))
                    .copied()
                    .flatten()
                    .unwrap_or(d.2);
                if now - set > every {
                    let detail = "credential not rotated within rotate_every".to_owned();
                    found.push((ExceptionKind::StaleCredential, d.0, d.1, detail, set));
                }
            }
        }
        for p in self.open_unbrokered_paths().await? {
            let detail = format!("{} {}", p.path.kind, p.path.location);
            found.push((
                ExceptionKind::UnbrokeredPath,
                p.site,
                p.device,
                detail,
                p.first_seen,
            ));
        }
        for e in self.edges().await? {
            let since = e.last_seen.unwrap_or(e.created);
            if e.revoked.is_none() && !e.online(now) && now - since > limits.edge_offline_grace {
                for s in &e.sites {
                    let detail = "its edge is out of contact past the offline grace".to_owned();
                    found.push((
                        ExceptionKind::EdgeOffline,
                        s.clone(),
                        e.name.clone(),
                        detail,
                        since,
                    ));
                }
            }
        }
        found.retain(|f| site.is_none_or(|s| s == f.1));
        found.sort_by_key(|f| f.4);
        // Owners from one read of the approvers and the regions, however many sites.
        let (approvers, regions) = if found.is_empty() {
            Default::default()
        } else {
            (self.approvers().await?, self.site_regions().await?)
        };
        let mut owners: HashMap<String, Vec<String>> = HashMap::new();
        let mut out = Vec::with_capacity(found.len());
        for (kind, site, subject, detail, opened) in found {
            let names = owners.entry(site.clone()).or_insert_with(|| {
                let region = regions.get(&site).and_then(|r| r.as_deref());
                (approvers.iter())
                    .filter(|a| a.covers(&site, region))
                    .map(|a| a.name.clone())
                    .collect()
            });
            out.push(Exception {
                kind,
                owners: names.clone(),
                site,
                subject,
                detail,
                opened,
            });
        }
        Ok(out)
    }

    /// Grants open at `now` and longer than `threshold` seconds (one scheduled for later is not
    /// standing yet).
    async fn standing_grants(&self, now: i64, threshold: i64) -> Result<Vec<crate::model::Grant>> {
        Ok(sqlx::query_as(
            // `+valid_until`: the length index (few grants are long), not the end's (many
            // grants may end in the future), for SQLite's planner; no-op arithmetic elsewhere.
            "SELECT * FROM grants WHERE valid_until - valid_from > $2 AND +valid_until > $1 \
             AND +valid_from <= $1 AND revoked_at IS NULL ORDER BY valid_from, id",
        )
        .bind(now)
        .bind(threshold)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every site's region.
    pub async fn site_regions(&self) -> Result<HashMap<String, Option<String>>> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as("SELECT name, region FROM sites")
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Every device as `(site, name, created)`, without opening credentials.
    async fn devices_listed(&self) -> Result<Vec<(String, String, i64)>> {
        Ok(
            sqlx::query_as("SELECT site, name, created FROM devices ORDER BY site, name")
                .fetch_all(self.pool())
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_serialised_ones() {
        for k in ExceptionKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
