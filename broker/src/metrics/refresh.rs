//! The background job behind the database figures: every [`REFRESH`] it reads a bounded set of
//! queries (exceptions, pending requests, decisions and SLO measurements since the last read,
//! edges) and sets the gauges; histograms observe each decision or measurement once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use approvals::exceptions::{ExceptionKind, ExceptionLimits};
use approvals::store::SloKind;
use prometheus_client::metrics::histogram::Histogram;

use super::{EdgeLabel, KindLabel, Metrics, PathLabel, RegionLabel, StateLabel};
use crate::session::Ctx;

/// How often database figures are recomputed.
pub const REFRESH: Duration = Duration::from_secs(15);

const KINDS: [ExceptionKind; 6] = [
    ExceptionKind::BreakglassUnreviewed,
    ExceptionKind::StandingGrant,
    ExceptionKind::RequestOverdue,
    ExceptionKind::StaleCredential,
    ExceptionKind::UnbrokeredPath,
    ExceptionKind::EdgeOffline,
];

/// What each histogram fed from the database has observed: the newest time seen and the items
/// seen at that time (times only move forward, so older items were observed already).
#[derive(Default)]
pub(super) struct Watermarks {
    marks: std::sync::Mutex<HashMap<&'static str, (i64, HashSet<String>)>>,
    /// Payload bytes already added to `recording_bytes`, audit failures already counted.
    counted: std::sync::Mutex<(u64, u64)>,
    /// Edges given a buffered-evidence gauge (removed when the edge goes).
    edges: std::sync::Mutex<HashSet<String>>,
    /// Regions given a live-sessions gauge (they read zero once their sessions end).
    regions: std::sync::Mutex<HashSet<String>>,
}

impl Watermarks {
    /// Where reading of `name` resumes (`i64::MIN` before the first read).
    fn since(&self, name: &'static str) -> i64 {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(name).map_or(i64::MIN, |m| m.0)
    }

    /// Observes into `h` each `(time, id, value)` not observed before.
    fn observe(&self, name: &'static str, items: Vec<(i64, String, f64)>, h: &Histogram) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let (newest, at_newest) = marks.entry(name).or_insert((i64::MIN, HashSet::new()));
        for (at, id, value) in items {
            if at < *newest || (at == *newest && at_newest.contains(&id)) {
                continue;
            }
            h.observe(value);
            if at > *newest {
                *newest = at;
                at_newest.clear();
            }
            at_newest.insert(id);
        }
    }
}

/// What one refresh reads besides the database: this node's own state.
pub struct Local<'a> {
    /// This node's name, if it ships evidence to a shared store (its upload lag is published).
    pub evidence_node: Option<&'a str>,
    /// The sites of this node's live sessions.
    pub live_sites: Vec<String>,
    /// Audit appends that failed in this process so far.
    pub audit_failures: u64,
}

impl Metrics {
    /// Recomputes the figures that come from the database and this node's live sessions.
    pub async fn refresh(
        &self,
        ctx: &Ctx,
        limits: ExceptionLimits,
        evidence_store: bool,
    ) -> Result<(), approvals::StoreError> {
        let local = Local {
            evidence_node: evidence_store.then_some(ctx.node.as_str()),
            live_sites: (ctx.live_sessions().iter())
                .map(|s| s.target.site.clone())
                .collect(),
            audit_failures: ctx.audit.failures(),
        };
        let now = approvals::time::now();
        self.refresh_from(&ctx.store, limits, now, &local).await
    }

    /// [`Metrics::refresh`] from its parts (benchmarks measure it so).
    pub async fn refresh_from(
        &self,
        store: &approvals::Store,
        limits: ExceptionLimits,
        now: i64,
        local: &Local<'_>,
    ) -> Result<(), approvals::StoreError> {
        let began = std::time::Instant::now();
        self.count_local(local.audit_failures);
        self.live_by_region(store, &local.live_sites).await?;
        let exceptions = store.exceptions(limits, now, None).await?;
        for k in KINDS {
            let of_kind = exceptions.iter().filter(|e| e.kind == k);
            let label = KindLabel::of(k.as_str());
            self.exceptions_open
                .get_or_create(&label)
                .set(of_kind.clone().count() as i64);
            let oldest = of_kind.map(|e| now - e.opened).max().unwrap_or(0);
            self.exception_oldest
                .get_or_create(&label)
                .set(oldest as f64);
        }
        let mut ages: Vec<i64> = exceptions.iter().map(|e| now - e.opened).collect();
        ages.sort_unstable();
        self.exception_age_median
            .set(approvals::report::median(&ages));
        self.unbrokered.set(store.open_unbrokered_count().await?);
        self.requests(store, now).await?;
        self.measurements(store).await?;
        self.edge_figures(store, now).await?;
        let lag = match local.evidence_node {
            Some(node) => (store.oldest_unstored_end(node).await?).map_or(0, |t| (now - t).max(0)),
            None => 0,
        };
        self.evidence_lag.set(lag as f64);
        self.refresh_took.set(began.elapsed().as_secs_f64());
        Ok(())
    }

    /// Brings the counters kept elsewhere in the process up to date.
    fn count_local(&self, failed: u64) {
        let mut counted = (self.watermarks.counted.lock()).unwrap_or_else(|p| p.into_inner());
        let recorded = self.recorded.load(Ordering::Relaxed);
        self.recording_bytes
            .inc_by(recorded.saturating_sub(counted.0));
        self.audit_failures.inc_by(failed.saturating_sub(counted.1));
        *counted = (recorded, failed);
    }

    async fn live_by_region(
        &self,
        store: &approvals::Store,
        live: &[String],
    ) -> Result<(), approvals::StoreError> {
        let regions = match live.is_empty() {
            true => HashMap::new(),
            false => store.site_regions().await?,
        };
        let mut by_region: HashMap<String, i64> = (regions.values())
            .map(|r| (r.clone().unwrap_or_default(), 0))
            .collect();
        for site in live {
            let region = regions.get(site).cloned().flatten();
            *by_region.entry(region.unwrap_or_default()).or_insert(0) += 1;
        }
        let mut shown = (self.watermarks.regions.lock()).unwrap_or_else(|p| p.into_inner());
        for region in shown.iter() {
            by_region.entry(region.clone()).or_insert(0);
        }
        for (region, n) in by_region {
            shown.insert(region.clone());
            self.sessions_live
                .get_or_create(&RegionLabel::of(region))
                .set(n);
        }
        Ok(())
    }

    async fn requests(
        &self,
        store: &approvals::Store,
        now: i64,
    ) -> Result<(), approvals::StoreError> {
        let since = self.watermarks.since("decision");
        let decided = store.decided_requests_since(since).await?;
        let items = (decided.into_iter())
            .filter_map(|r| Some((r.decided_at?, r.latency()?.max(0) as f64, r.id)))
            .map(|(at, latency, id)| (at, id, latency))
            .collect();
        self.watermarks.observe("decision", items, &self.decision);
        let breaches = store.escalated_requests().await?.max(0) as u64;
        self.slo_breaches
            .inc_by(breaches.saturating_sub(self.slo_breaches.get()));
        let pending = store
            .requests(Some(approvals::RequestStatus::Pending))
            .await?;
        self.requests_pending.set(pending.len() as i64);
        let oldest = pending.iter().map(|r| now - r.created).max().unwrap_or(0);
        self.oldest_pending.set(oldest.max(0) as f64);
        Ok(())
    }

    /// Observes the SLO measurements taken since the last refresh.
    async fn measurements(&self, store: &approvals::Store) -> Result<(), approvals::StoreError> {
        for kind in SloKind::ALL {
            let name = kind.as_str();
            let since = self.watermarks.since(name);
            let items = (store.samples_since(kind, since).await?)
                .into_iter()
                .map(|s| (s.at_ms, s.subject, s.millis as f64 / 1000.0))
                .collect();
            let h = match kind {
                SloKind::CertificateIssuance => self.issuance.clone(),
                SloKind::RevocationPropagation => self
                    .propagation
                    .get_or_create_owned(&PathLabel::of("revocation")),
                SloKind::EdgePropagation => {
                    self.propagation.get_or_create_owned(&PathLabel::of("edge"))
                }
            };
            self.watermarks.observe(name, items, &h);
        }
        Ok(())
    }

    async fn edge_figures(
        &self,
        store: &approvals::Store,
        now: i64,
    ) -> Result<(), approvals::StoreError> {
        let edges = store.edges().await?;
        let online = (edges.iter())
            .filter(|e| e.revoked.is_none() && e.online(now))
            .count();
        let revoked = edges.iter().filter(|e| e.revoked.is_some()).count();
        for (state, n) in [
            ("online", online),
            ("offline", edges.len() - online - revoked),
            ("revoked", revoked),
        ] {
            self.edges
                .get_or_create(&StateLabel::of(state))
                .set(n as i64);
        }
        let mut shown = (self.watermarks.edges.lock()).unwrap_or_else(|p| p.into_inner());
        let current: HashSet<String> = (edges.iter())
            .filter(|e| e.revoked.is_none())
            .map(|e| e.name.clone())
            .collect();
        for gone in shown.difference(&current) {
            self.edge_buffered.remove(&EdgeLabel::of(gone.clone()));
        }
        for e in edges.iter().filter(|e| e.revoked.is_none()) {
            (self
                .edge_buffered
                .get_or_create(&EdgeLabel::of(e.name.clone())))
            .set(e.buffered_bytes.unwrap_or(0));
        }
        *shown = current;
        Ok(())
    }
}

/// Refreshes `metrics` for as long as the node runs, serving them on `listener` from the end of
/// the first refresh: a scrape never sees the database's totals jump from zero after a restart
/// (which `increase()` would read as that many new events).
pub async fn keep_fresh(
    metrics: Arc<Metrics>,
    ctx: Arc<Ctx>,
    limits: ExceptionLimits,
    evidence_store: bool,
    listener: tokio::net::TcpListener,
) {
    let mut listener = Some(listener);
    loop {
        if let Err(e) = metrics.refresh(&ctx, limits, evidence_store).await {
            tracing::warn!(error = %e, "metrics not refreshed");
        }
        if let Some(l) = listener.take() {
            tokio::spawn(super::serve(metrics.clone(), l));
        }
        tokio::time::sleep(REFRESH).await;
    }
}
