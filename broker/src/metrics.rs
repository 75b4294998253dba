//! The operator's metrics for Prometheus (`prometheus-client`), served on `metrics_listen`
//! (`GET /metrics`, text format). Figures that come from the database are computed by one
//! bounded background job every [`REFRESH`], never per scrape, so a scrape stays cheap however
//! large the estate.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use approvals::Store;
use approvals::exceptions::{ExceptionKind, ExceptionLimits};
use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How often database figures are recomputed.
pub const REFRESH: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The published figures.
pub struct Metrics {
    registry: Registry,
    exceptions_open: Family<KindLabel, Gauge>,
    exception_age_median: Gauge<f64, AtomicU64>,
    unbrokered: Gauge,
    requests_pending: Gauge,
    oldest_pending: Gauge<f64, AtomicU64>,
    edges: Family<StateLabel, Gauge>,
    edge_buffered: Gauge,
    decision: Histogram,
    slo_breaches: Counter,
    /// Decisions already observed: the newest decision time seen and the requests decided then.
    observed: std::sync::Mutex<(i64, std::collections::HashSet<String>)>,
}

/// Request-to-decision buckets, seconds: from half a minute to a day.
const DECISION_BUCKETS: [f64; 11] = [
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];

const KINDS: [ExceptionKind; 6] = [
    ExceptionKind::BreakglassUnreviewed,
    ExceptionKind::StandingGrant,
    ExceptionKind::RequestOverdue,
    ExceptionKind::StaleCredential,
    ExceptionKind::UnbrokeredPath,
    ExceptionKind::EdgeOffline,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postern");
        let m = Metrics {
            registry: Registry::default(),
            exceptions_open: Family::default(),
            exception_age_median: Gauge::default(),
            unbrokered: Gauge::default(),
            requests_pending: Gauge::default(),
            oldest_pending: Gauge::default(),
            edges: Family::default(),
            edge_buffered: Gauge::default(),
            decision: Histogram::new(DECISION_BUCKETS),
            slo_breaches: Counter::default(),
            observed: std::sync::Mutex::new((i64::MIN, Default::default())),
        };
        registry.register(
            "exceptions_open",
            "Access standing outside the just-in-time path, by kind (postern exceptions)",
            m.exceptions_open.clone(),
        );
        registry.register(
            "exception_age_median_seconds",
            "Median age of the open exceptions",
            m.exception_age_median.clone(),
        );
        registry.register(
            "unbrokered_access_paths",
            "Open ways into devices that are not Postern's, found by the scan",
            m.unbrokered.clone(),
        );
        registry.register(
            "requests_pending",
            "Access requests waiting for an approver",
            m.requests_pending.clone(),
        );
        registry.register(
            "request_oldest_pending_seconds",
            "Age of the oldest pending access request",
            m.oldest_pending.clone(),
        );
        registry.register("edges", "Site edges by state", m.edges.clone());
        registry.register(
            "edge_buffered_evidence_bytes",
            "Evidence waiting at edges to be shipped, as they last reported",
            m.edge_buffered.clone(),
        );
        registry.register(
            "request_decision_seconds",
            "Time from an access request to its decision",
            m.decision.clone(),
        );
        registry.register(
            "approval_slo_breaches",
            "Requests left undecided past approval_slo (escalated)",
            m.slo_breaches.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Recomputes the figures that come from the database.
    pub async fn refresh(
        &self,
        store: &Store,
        limits: ExceptionLimits,
    ) -> Result<(), approvals::StoreError> {
        let now = approvals::time::now();
        let exceptions = store.exceptions(limits, now, None).await?;
        for k in KINDS {
            let n = exceptions.iter().filter(|e| e.kind == k).count();
            self.exceptions_open
                .get_or_create(&KindLabel {
                    kind: k.as_str().to_owned(),
                })
                .set(n as i64);
        }
        let mut ages: Vec<i64> = exceptions.iter().map(|e| now - e.opened).collect();
        ages.sort_unstable();
        let median = match ages.len() {
            0 => 0.0,
            n if n % 2 == 1 => ages[n / 2] as f64,
            n => (ages[n / 2 - 1] + ages[n / 2]) as f64 / 2.0,
        };
        self.exception_age_median.set(median);
        self.unbrokered.set(store.open_unbrokered_count().await?);
        let requests = store.requests(None).await?;
        self.observe_decisions(&requests);
        let breaches = requests.iter().filter(|r| r.escalated_at.is_some()).count() as u64;
        let counted = self.slo_breaches.get();
        if breaches > counted {
            self.slo_breaches.inc_by(breaches - counted);
        }
        let pending: Vec<_> = (requests.iter())
            .filter(|r| r.status == approvals::RequestStatus::Pending)
            .collect();
        self.requests_pending.set(pending.len() as i64);
        let oldest = pending.iter().map(|r| now - r.created).max().unwrap_or(0);
        self.oldest_pending.set(oldest as f64);
        let edges = store.edges().await?;
        let online = edges
            .iter()
            .filter(|e| e.revoked.is_none() && e.online(now))
            .count();
        let revoked = edges.iter().filter(|e| e.revoked.is_some()).count();
        for (state, n) in [
            ("online", online),
            ("offline", edges.len() - online - revoked),
            ("revoked", revoked),
        ] {
            self.edges
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        let buffered: i64 = edges.iter().filter_map(|e| e.buffered_bytes).sum();
        self.edge_buffered.set(buffered);
        Ok(())
    }

    /// Observes each decision not observed before (decision times only move forward).
    fn observe_decisions(&self, requests: &[approvals::AccessRequestRow]) {
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let (mut newest, mut at_newest) = std::mem::take(&mut *observed);
        let mut decided: Vec<(i64, i64, &str)> = (requests.iter())
            .filter_map(|r| Some((r.decided_at?, r.latency()?, r.id.as_str())))
            .collect();
        decided.sort_unstable();
        for (at, latency, id) in decided {
            if at < newest || (at == newest && at_newest.contains(id)) {
                continue;
            }
            self.decision.observe(latency.max(0) as f64);
            if at > newest {
                newest = at;
                at_newest.clear();
            }
            at_newest.insert(id.to_owned());
        }
        *observed = (newest, at_newest);
    }

    /// The text a scrape gets.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Refreshes `metrics` for as long as the node runs.
pub async fn keep_fresh(metrics: Arc<Metrics>, store: Store, limits: ExceptionLimits) {
    loop {
        if let Err(e) = metrics.refresh(&store, limits).await {
            tracing::warn!(error = %e, "metrics not refreshed");
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.text(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}
