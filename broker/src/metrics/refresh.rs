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

/// How far behind its newest row each read of a table looks again (seconds for decisions,
/// milliseconds for measurements): a row stamped before a later one but committed after it, or
/// by a node whose clock is behind, is still observed, once.
const LOOKBACK_S: i64 = 30;
const LOOKBACK_MS: i64 = 30_000;

/// One histogram's progress through its table: the newest time read and the rows read within
/// the look-back behind it.
struct Mark {
    newest: i64,
    seen: HashMap<String, i64>,
}

/// What each histogram fed from the database has observed. A node starts at the table's newest
/// row: what was there before it started is not replayed (Prometheus sees a fresh histogram, as
/// after any restart, not a burst of old events).
#[derive(Default)]
pub(super) struct Watermarks {
    marks: std::sync::Mutex<HashMap<&'static str, Mark>>,
    /// Payload bytes already added to `recording_bytes`, audit failures already counted.
    counted: std::sync::Mutex<(u64, u64)>,
    /// Edges given a buffered-evidence gauge (removed when the edge goes).
    edges: std::sync::Mutex<HashSet<String>>,
    /// Regions given a live-sessions gauge (they read zero once their sessions end).
    regions: std::sync::Mutex<HashSet<String>>,
}

impl Watermarks {
    /// Where the next read of `name` starts; `None` before its first read (which starts at the
    /// table's newest row less the look-back).
    fn resume(&self, name: &'static str, lookback: i64) -> Option<i64> {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        marks.get(name).map(|m| m.newest.saturating_sub(lookback))
    }

    /// Observes into `h` each `(time, id, value)` of a read not observed before; the first
    /// read's rows are only noted.
    fn observe(
        &self,
        name: &'static str,
        items: Vec<(i64, String, f64)>,
        h: &Histogram,
        lookback: i64,
    ) {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let first = !marks.contains_key(name);
        let m = marks.entry(name).or_insert(Mark {
            newest: i64::MIN,
            seen: HashMap::new(),
        });
        let full = items.len() as i64 >= approvals::store::SAMPLES_PER_READ;
        let last = items.last().map(|i| i.0);
        let mut new = 0;
        for (at, id, value) in items {
            if m.seen.contains_key(&id) {
                continue;
            }
            if !first {
                h.observe(value);
            }
            new += 1;
            m.newest = m.newest.max(at);
            m.seen.insert(id, at);
        }
        // A full read of rows all seen (more than a read's worth inside the look-back): move on.
        if let Some(last) = last.filter(|_| full && new == 0) {
            m.newest = m.newest.max(last.saturating_add(lookback));
        }
        let keep = m.newest.saturating_sub(lookback);
        m.seen.retain(|_, at| *at >= keep);
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
        self.approval_slo.set(limits.approval_slo);
        self.count_local(local.audit_failures);
        self.live_by_region(store, &local.live_sites).await?;
        let exceptions = store.exceptions(limits, now, None).await?;
        for k in ExceptionKind::ALL {
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
        let since = match self.watermarks.resume("decision", LOOKBACK_S) {
            Some(since) => since,
            None => (store.newest_decision().await?).map_or(i64::MIN, |n| n - LOOKBACK_S),
        };
        let decided = store.decided_requests_since(since).await?;
        let items = (decided.into_iter())
            .filter_map(|r| Some((r.decided_at?, r.latency()?.max(0) as f64, r.id)))
            .map(|(at, latency, id)| (at, id, latency))
            .collect();
        (self.watermarks).observe("decision", items, &self.decision, LOOKBACK_S);
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
            let since = match self.watermarks.resume(name, LOOKBACK_MS) {
                Some(since) => since,
                None => (store.newest_sample(kind).await?).map_or(i64::MIN, |n| n - LOOKBACK_MS),
            };
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
            self.watermarks.observe(name, items, &h, LOOKBACK_MS);
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
        // Only edges holding evidence get a series: at 30,000 edges, one each would make every
        // scrape megabytes of zeros. An edge that drained reads 0 once, then goes.
        let mut shown = (self.watermarks.edges.lock()).unwrap_or_else(|p| p.into_inner());
        let holding: HashMap<&str, i64> = (edges.iter())
            .filter(|e| e.revoked.is_none())
            .filter_map(|e| Some((e.name.as_str(), e.buffered_bytes.filter(|b| *b > 0)?)))
            .collect();
        // One family guard at a time (two in one expression deadlock: client_rust #231).
        let mut still = HashSet::new();
        for name in shown.iter().filter(|n| !holding.contains_key(n.as_str())) {
            let label = EdgeLabel::of(name.clone());
            let was = self.edge_buffered.get(&label).map(|g| g.get());
            if was.unwrap_or(0) == 0 {
                self.edge_buffered.remove(&label);
            } else {
                self.edge_buffered.get_or_create_owned(&label).set(0);
                still.insert(name.clone());
            }
        }
        for (name, bytes) in &holding {
            let label = EdgeLabel::of((*name).to_owned());
            self.edge_buffered.get_or_create_owned(&label).set(*bytes);
            still.insert((*name).to_owned());
        }
        *shown = still;
        Ok(())
    }
}

/// Refreshes the node's metrics (`Ctx::metrics`) for as long as the node runs, serving them on
/// `listener` from the end of the first refresh that worked: a scrape never sees the database's totals jump from zero after
/// a restart (which `increase()` would read as that many new events). Until then the node does
/// not answer scrapes, and Prometheus says so (`up` is 0).
pub async fn keep_fresh(
    ctx: Arc<Ctx>,
    limits: ExceptionLimits,
    evidence_store: bool,
    listener: tokio::net::TcpListener,
) {
    let metrics = ctx.metrics.clone();
    let mut listener = Some(listener);
    loop {
        match metrics.refresh(&ctx, limits, evidence_store).await {
            Ok(()) => {
                if let Some(l) = listener.take() {
                    tokio::spawn(super::serve(metrics.clone(), l));
                }
            }
            Err(e) => {
                metrics.refresh_failures.inc();
                tracing::warn!(error = %e, "metrics not refreshed");
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}
