//! The operator's metrics for Prometheus (`prometheus-client`), served on `metrics_listen`
//! (`GET /metrics`, OpenMetrics text).
//!
//! Two kinds of figure live here. Events this node saw (sessions, denials, authentication
//! failures, recording bytes, audit and notification failures) are counted as they happen.
//! Figures that come from the database (exceptions, requests, SLO measurements, edges) are
//! computed by one bounded background job every [`refresh::REFRESH`] ([`refresh`]), never per
//! scrape, so a scrape stays cheap however large the estate. Database figures are the same on
//! every node of an installation: aggregate them with `max`, the event counters with `sum`.

pub mod refresh;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use refresh::keep_fresh;

/// A metric's one label. Each family's values come from a fixed set chosen by Postern (kinds,
/// reasons, outcomes) or from the directory (regions, edges), never from a client.
macro_rules! label {
    ($name:ident, $field:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
            $field: String,
        }
        impl $name {
            fn of(v: impl Into<String>) -> Self {
                $name { $field: v.into() }
            }
        }
    };
}

label!(KindLabel, kind);
label!(StateLabel, state);
label!(RegionLabel, region);
label!(OutcomeLabel, outcome);
label!(ReasonLabel, reason);
label!(EdgeLabel, edge);
label!(PathLabel, path);

type Seconds = Gauge<f64, AtomicU64>;

/// Session setup (policy decision to the device logged in), seconds.
const SETUP_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];
/// Request-to-decision, seconds: from half a minute to a day.
const DECISION_BUCKETS: [f64; 11] = [
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
];
/// Certificate issuance, seconds.
const ISSUANCE_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];
/// Policy propagation, seconds (the revocation SLO is one second).
const PROPAGATION_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// How an authentication attempt failed, for `postern_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No certificate, an untrusted, expired or revoked one, or a plain key.
    Certificate,
    /// A wrong or replayed second factor.
    Totp,
    /// Refused for going too fast (per source or per vendor).
    RateLimited,
}

impl AuthFailure {
    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Certificate => "certificate",
            AuthFailure::Totp => "totp",
            AuthFailure::RateLimited => "rate_limited",
        }
    }
}

/// The published figures.
pub struct Metrics {
    registry: Registry,
    // Events on this node.
    sessions_live: Family<RegionLabel, Gauge>,
    sessions_started: Counter,
    sessions_ended: Family<OutcomeLabel, Counter>,
    session_setup: Histogram,
    denials: Family<ReasonLabel, Counter>,
    auth_failures: Family<KindLabel, Counter>,
    recording_bytes: Counter,
    audit_failures: Counter,
    notification_failures: Counter,
    // From the database.
    exceptions_open: Family<KindLabel, Gauge>,
    exception_oldest: Family<KindLabel, Seconds>,
    exception_age_median: Seconds,
    unbrokered: Gauge,
    requests_pending: Gauge,
    oldest_pending: Seconds,
    edges: Family<StateLabel, Gauge>,
    edge_buffered: Family<EdgeLabel, Gauge>,
    evidence_lag: Seconds,
    decision: Histogram,
    slo_breaches: Counter,
    issuance: Histogram,
    propagation: Family<PathLabel, Histogram>,
    refresh_took: Seconds,
    approval_slo: Gauge,
    refresh_failures: Counter,
    /// Payload bytes recorded, shared with every recording this node writes.
    recorded: Arc<AtomicU64>,
    watermarks: refresh::Watermarks,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            sessions_live: Family::default(),
            sessions_started: Counter::default(),
            sessions_ended: Family::default(),
            session_setup: Histogram::new(SETUP_BUCKETS),
            denials: Family::default(),
            auth_failures: Family::default(),
            recording_bytes: Counter::default(),
            audit_failures: Counter::default(),
            notification_failures: Counter::default(),
            exceptions_open: Family::default(),
            exception_oldest: Family::default(),
            exception_age_median: Gauge::default(),
            unbrokered: Gauge::default(),
            requests_pending: Gauge::default(),
            oldest_pending: Gauge::default(),
            edges: Family::default(),
            edge_buffered: Family::default(),
            evidence_lag: Gauge::default(),
            decision: Histogram::new(DECISION_BUCKETS),
            slo_breaches: Counter::default(),
            issuance: Histogram::new(ISSUANCE_BUCKETS),
            propagation: Family::new_with_constructor(|| Histogram::new(PROPAGATION_BUCKETS)),
            refresh_took: Gauge::default(),
            approval_slo: Gauge::default(),
            refresh_failures: Counter::default(),
            recorded: Arc::default(),
            watermarks: Default::default(),
        };
        let registry = m.register();
        Metrics { registry, ..m }
    }
}

impl Metrics {
    fn register(&self) -> Registry {
        let mut r = Registry::with_prefix("postern");
        self.register_events(&mut r);
        self.register_figures(&mut r);
        r
    }

    /// What this node saw, counted as it happens.
    fn register_events(&self, r: &mut Registry) {
        r.register(
            "sessions_live",
            "Live sessions on this node, by the site's region",
            self.sessions_live.clone(),
        );
        r.register(
            "sessions_started",
            "Sessions opened on this node",
            self.sessions_started.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions closed on this node, by outcome",
            self.sessions_ended.clone(),
        );
        r.register(
            "session_setup_seconds",
            "From the access decision to the device logged in",
            self.session_setup.clone(),
        );
        r.register(
            "denials",
            "Access refused by policy, by reason",
            self.denials.clone(),
        );
        r.register(
            "auth_failures",
            "Failed vendor authentications, by kind",
            self.auth_failures.clone(),
        );
        r.register(
            "recording_bytes",
            "Session bytes written to recordings on this node",
            self.recording_bytes.clone(),
        );
        r.register(
            "audit_append_failures",
            "Audit log appends that failed (the action did not happen)",
            self.audit_failures.clone(),
        );
        r.register(
            "notification_failures",
            "Webhook notification deliveries that failed",
            self.notification_failures.clone(),
        );
    }

    /// What the database says, set by the refresh job.
    fn register_figures(&self, r: &mut Registry) {
        r.register(
            "exceptions_open",
            "Access standing outside the just-in-time path, by kind (postern exceptions)",
            self.exceptions_open.clone(),
        );
        r.register(
            "exception_oldest_seconds",
            "Age of the oldest open exception, by kind",
            self.exception_oldest.clone(),
        );
        r.register(
            "exception_age_median_seconds",
            "Median age of the open exceptions",
            self.exception_age_median.clone(),
        );
        r.register(
            "unbrokered_access_paths",
            "Open ways into devices that are not Postern's, found by the scan",
            self.unbrokered.clone(),
        );
        r.register(
            "requests_pending",
            "Access requests waiting for an approver",
            self.requests_pending.clone(),
        );
        r.register(
            "request_oldest_pending_seconds",
            "Age of the oldest pending access request",
            self.oldest_pending.clone(),
        );
        r.register("edges", "Site edges by state", self.edges.clone());
        r.register(
            "edge_buffered_evidence_bytes",
            "Evidence waiting at an edge to be shipped, as it last reported",
            self.edge_buffered.clone(),
        );
        r.register(
            "evidence_upload_lag_seconds",
            "Age of this node's oldest ended session not yet in the shared evidence store",
            self.evidence_lag.clone(),
        );
        r.register(
            "request_decision_seconds",
            "Time from an access request to its decision",
            self.decision.clone(),
        );
        r.register(
            "approval_slo_breaches",
            "Requests left undecided past approval_slo (escalated)",
            self.slo_breaches.clone(),
        );
        r.register(
            "certificate_issuance_seconds",
            "From a certificate request to its certificate registered",
            self.issuance.clone(),
        );
        r.register("policy_propagation_seconds", "From a policy change to its effect: revocation (live session closed), edge (edge holds it)", self.propagation.clone());
        r.register(
            "approval_slo_seconds",
            "The approval SLO this node holds requests to (approval_slo)",
            self.approval_slo.clone(),
        );
        r.register(
            "metrics_refresh_seconds",
            "How long the last refresh of the database figures took",
            self.refresh_took.clone(),
        );
        r.register(
            "metrics_refresh_failures",
            "Refreshes of the database figures that failed (the figures are then as of the last one that worked)",
            self.refresh_failures.clone(),
        );
    }

    /// A session opened.
    pub fn session_started(&self) {
        self.sessions_started.inc();
    }

    /// A session's device login finished `setup` after its access decision.
    pub fn session_setup(&self, setup: std::time::Duration) {
        self.session_setup.observe(setup.as_secs_f64());
    }

    /// A session closed with `outcome` (a fixed name: see `EndReason::outcome`).
    pub fn session_ended(&self, outcome: &'static str) {
        self.sessions_ended
            .get_or_create(&OutcomeLabel::of(outcome))
            .inc();
    }

    /// Access refused by policy for `reason` (`Deny::code`).
    pub fn denied(&self, reason: &'static str) {
        self.denials.get_or_create(&ReasonLabel::of(reason)).inc();
    }

    pub fn auth_failed(&self, kind: AuthFailure) {
        self.auth_failures
            .get_or_create(&KindLabel::of(kind.as_str()))
            .inc();
    }

    pub fn notification_failed(&self) {
        self.notification_failures.inc();
    }

    /// The counter recordings add their payload bytes to.
    pub fn recorded_bytes(&self) -> Arc<AtomicU64> {
        self.recorded.clone()
    }

    /// The text a scrape gets.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
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
