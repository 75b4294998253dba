//! The operator's report for the accountable owners (`postern report`, the web dashboard): the
//! figures that make uncomfortable truths visible, over a window ending now. Everything here is
//! computed from the database, so every node and the CLI tell the same story.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::exceptions::{Exception, ExceptionLimits};
use crate::store::{SloKind, Store, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// How many exceptions the report names.
pub const OLDEST_SHOWN: usize = 10;

/// The report over `[since, generated]` (Unix seconds).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated: i64,
    pub since: i64,
    /// Open ways into devices that are not Postern's: should trend to zero.
    pub unbrokered: Trend,
    pub exceptions_open: usize,
    pub exceptions_by_kind: BTreeMap<&'static str, usize>,
    pub exception_age_median_seconds: i64,
    pub approval: Approval,
    pub certificate_issuance: Durations,
    pub revocation_propagation: Durations,
    pub edge_propagation: Durations,
    /// Sessions started in the window, by the sites' region (the site tier).
    pub sessions_by_tier: Vec<Tier>,
    pub sites_offline: Vec<SiteOffline>,
    /// The oldest open exceptions with their accountable approvers, oldest first.
    pub oldest_exceptions: Vec<Exception>,
}

/// A count now, at the window's start and at each week in between.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub now: i64,
    pub at_start: i64,
    /// `now - at_start`: below zero is progress.
    pub change: i64,
    /// `(time, count)` at the start, every 7 days after it, and now.
    pub points: Vec<(i64, i64)>,
}

/// Request-to-decision latency of the requests decided in the window, against `approval_slo`.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub slo_seconds: i64,
    pub decided: usize,
    pub p50_seconds: Option<i64>,
    pub p95_seconds: Option<i64>,
    /// Decided within the SLO (of `decided`).
    pub within_slo: usize,
    /// Requests escalated for waiting past the SLO in the window.
    pub slo_breaches: usize,
    pub pending: usize,
}

/// Measured durations of one kind in the window (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Durations {
    pub count: usize,
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// Sessions in the window at the sites of one region.
#[derive(Debug, Clone, Serialize)]
pub struct Tier {
    /// `""`: sites without a region.
    pub region: String,
    pub sites: usize,
    pub sessions: i64,
    pub breakglass: i64,
}

/// A site whose edge is out of contact now.
#[derive(Debug, Clone, Serialize)]
pub struct SiteOffline {
    pub site: String,
    pub edge: String,
    /// Last heard from (Unix seconds).
    pub since: i64,
}

/// The `q`-th quantile (0..=1) of sorted `v`, nearest rank.
pub fn quantile(v: &[i64], q: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The median of sorted `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[i64]) -> f64 {
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2] as f64,
        n => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
    }
}

impl Store {
    /// The report over `[since, now]`.
    pub async fn report(&self, limits: ExceptionLimits, now: i64, since: i64) -> Result<Report> {
        Ok(self.report_and_exceptions(limits, now, since).await?.0)
    }

    /// The report, and every open exception (oldest first) for a reader who shows only some.
    pub async fn report_and_exceptions(
        &self,
        limits: ExceptionLimits,
        now: i64,
        since: i64,
    ) -> Result<(Report, Vec<Exception>)> {
        let exceptions = self.exceptions(limits, now, None).await?;
        let mut ages: Vec<i64> = exceptions.iter().map(|e| now - e.opened).collect();
        ages.sort_unstable();
        let mut by_kind = BTreeMap::new();
        for e in &exceptions {
            *by_kind.entry(e.kind.as_str()).or_insert(0) += 1;
        }
        let durations = |mut v: Vec<i64>| {
            v.sort_unstable();
            Durations {
                count: v.len(),
                p50_ms: quantile(&v, 0.5),
                p95_ms: quantile(&v, 0.95),
            }
        };
        let (from_ms, to_ms) = (since * 1000, (now + 1) * 1000);
        let report = Report {
            generated: now,
            since,
            unbrokered: self.unbrokered_trend(now, since).await?,
            exceptions_open: exceptions.len(),
            exceptions_by_kind: by_kind,
            exception_age_median_seconds: median(&ages).round() as i64,
            approval: self
                .approval_figures(limits.approval_slo, now, since)
                .await?,
            certificate_issuance: durations(
                (self.sample_millis(SloKind::CertificateIssuance, from_ms, to_ms)).await?,
            ),
            revocation_propagation: durations(
                (self.sample_millis(SloKind::RevocationPropagation, from_ms, to_ms)).await?,
            ),
            edge_propagation: durations(
                (self.sample_millis(SloKind::EdgePropagation, from_ms, to_ms)).await?,
            ),
            sessions_by_tier: self.sessions_by_tier(since).await?,
            sites_offline: self.sites_offline(now).await?,
            oldest_exceptions: exceptions.iter().take(OLDEST_SHOWN).cloned().collect(),
        };
        Ok((report, exceptions))
    }

    async fn unbrokered_trend(&self, now: i64, since: i64) -> Result<Trend> {
        let spans: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT first_seen, closed_at FROM unbrokered_paths \
             WHERE closed_at IS NULL OR closed_at > $1",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        let open_at = |t: i64| {
            (spans.iter())
                .filter(|(first, closed)| *first <= t && closed.is_none_or(|c| c > t))
                .count() as i64
        };
        let mut points: Vec<(i64, i64)> = (0..)
            .map(|week| since + week * 7 * 86_400)
            .take_while(|t| *t < now)
            .map(|t| (t, open_at(t)))
            .collect();
        points.push((now, open_at(now)));
        let at_start = points.first().map_or(0, |p| p.1);
        let now_count = open_at(now);
        Ok(Trend {
            now: now_count,
            at_start,
            change: now_count - at_start,
            points,
        })
    }

    /// Decisions by approvers in the window (an expired request was decided by nobody).
    async fn approval_figures(&self, slo: i64, now: i64, since: i64) -> Result<Approval> {
        let decided: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT created, decided_at FROM requests WHERE decided_at >= $1 AND decided_at <= $2 \
             AND status IN ('approved', 'denied')",
        )
        .bind(since)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        let mut latencies: Vec<i64> = decided.iter().map(|(c, d)| d - c).collect();
        latencies.sort_unstable();
        let breaches: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE escalated_at >= $1")
                .bind(since)
                .fetch_one(self.pool())
                .await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE status = 'pending'")
                .fetch_one(self.pool())
                .await?;
        Ok(Approval {
            slo_seconds: slo,
            decided: latencies.len(),
            p50_seconds: quantile(&latencies, 0.5),
            p95_seconds: quantile(&latencies, 0.95),
            within_slo: latencies.iter().filter(|l| **l <= slo).count(),
            slo_breaches: breaches.max(0) as usize,
            pending: pending.max(0) as usize,
        })
    }

    async fn sessions_by_tier(&self, since: i64) -> Result<Vec<Tier>> {
        let counts: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT COALESCE(s.region, ''), COUNT(*), \
             SUM(CASE WHEN x.breakglass IS NULL THEN 0 ELSE 1 END) \
             FROM sessions x JOIN sites s ON s.name = x.site WHERE x.started >= $1 \
             GROUP BY COALESCE(s.region, '')",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        let mut tiers: BTreeMap<String, Tier> = BTreeMap::new();
        for region in self.site_regions().await?.into_values() {
            let region = region.unwrap_or_default();
            let t = tiers.entry(region.clone()).or_insert(Tier {
                region,
                sites: 0,
                sessions: 0,
                breakglass: 0,
            });
            t.sites += 1;
        }
        for (region, sessions, breakglass) in counts {
            if let Some(t) = tiers.get_mut(&region) {
                t.sessions = sessions;
                t.breakglass = breakglass;
            }
        }
        Ok(tiers.into_values().collect())
    }

    async fn sites_offline(&self, now: i64) -> Result<Vec<SiteOffline>> {
        let mut out = Vec::new();
        for e in self.edges().await? {
            if e.revoked.is_none() && !e.online(now) {
                let since = e.last_seen.unwrap_or(e.created);
                out.extend(e.sites.iter().map(|s| SiteOffline {
                    site: s.clone(),
                    edge: e.name.clone(),
                    since,
                }));
            }
        }
        out.sort_by(|a, b| (a.since, &a.site).cmp(&(b.since, &b.site)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!(quantile(&v, 0.5), Some(10));
        assert_eq!(quantile(&v, 0.95), Some(19));
        assert_eq!(quantile(&[7], 0.95), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(median(&[1, 2, 3, 10]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
