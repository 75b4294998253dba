//! The dashboard: the figures of `postern report` (last 30 days) on one phone-sized page, computed
//! at most once a minute. The figures are the installation's (the owners' view of the program);
//! the exceptions and offline sites named are the approver's own sites only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;

use super::super::html::{self, Nav, dur, esc, time};
use super::super::{Signed, WebState};
use super::{Page, Scope, St, store_error};
use crate::exceptions::Exception;
use crate::report::{Durations, OLDEST_SHOWN, Report};

/// The window the dashboard covers.
const WINDOW: i64 = 30 * 86_400;

/// How long computed figures are shown before they are computed again.
const FRESH: Duration = Duration::from_secs(60);

/// The report and every open exception, as computed at `at`.
pub struct DashboardFigures {
    at: Instant,
    report: Arc<Report>,
    exceptions: Arc<Vec<Exception>>,
}

pub async fn dashboard(axum::extract::State(state): St, s: Signed) -> Page {
    let (report, exceptions) = figures(&state).await?;
    let scope = Scope::load(&state).await?;
    let mine: Vec<&Exception> = (exceptions.iter())
        .filter(|e| scope.covers(&s, &e.site))
        .take(OLDEST_SHOWN)
        .collect();
    let body = render(&report, &mine, |site| scope.covers(&s, site));
    Ok(html::page(
        "Dashboard",
        Nav::Dashboard,
        s.name(),
        &s.login.csrf,
        &body,
    ))
}

/// The figures, computed again once they are older than [`FRESH`].
async fn figures(state: &WebState) -> Result<(Arc<Report>, Arc<Vec<Exception>>), Response> {
    let mut cached = state.dashboard.lock().await;
    if let Some(f) = cached.as_ref().filter(|f| f.at.elapsed() < FRESH) {
        return Ok((f.report.clone(), f.exceptions.clone()));
    }
    let limits = state.exception_limits.unwrap_or_default();
    let now = crate::time::now();
    let (report, exceptions) = (state.store)
        .report_and_exceptions(limits, now, now - WINDOW)
        .await
        .map_err(store_error)?;
    let f = DashboardFigures {
        at: Instant::now(),
        report: Arc::new(report),
        exceptions: Arc::new(exceptions),
    };
    let out = (f.report.clone(), f.exceptions.clone());
    *cached = Some(f);
    Ok(out)
}

fn figure(label: &str, value: &str, note: &str) -> String {
    format!(
        r#"<div class="figure"><dt>{}</dt><dd><b>{}</b> <small>{}</small></dd></div>"#,
        esc(label),
        esc(value),
        esc(note)
    )
}

fn millis(d: &Durations) -> (String, String) {
    let s = |v: Option<i64>| {
        v.map_or("–".to_owned(), |ms| {
            format!("{:.2} s", ms as f64 / 1000.0)
        })
    };
    (
        format!("p95 {}", s(d.p95_ms)),
        format!("p50 {}, {} measured", s(d.p50_ms), d.count),
    )
}

fn render(r: &Report, oldest: &[&Exception], mine: impl Fn(&str) -> bool) -> String {
    let mut body = format!(
        r#"<h1>Dashboard</h1><p class="empty">The installation, {} to {}.</p><dl class="figures card">"#,
        time(r.since),
        time(r.generated)
    );
    let u = &r.unbrokered;
    body += &figure(
        "Unbrokered access paths",
        &u.now.to_string(),
        &format!("{:+} in 30 days (should trend to zero)", u.change),
    );
    body += &figure(
        "Median exception age",
        &dur(r.exception_age_median_seconds),
        &format!("{} open", r.exceptions_open),
    );
    let a = &r.approval;
    body += &figure(
        "Approval latency",
        &format!("p95 {}", a.p95_seconds.map_or("–".into(), dur)),
        &format!(
            "p50 {}; SLO {}: {} of {} within, {} breaches, {} pending",
            a.p50_seconds.map_or("–".into(), dur),
            dur(a.slo_seconds),
            a.within_slo,
            a.decided,
            a.slo_breaches,
            a.pending
        ),
    );
    for (label, d) in [
        ("Certificate issuance", &r.certificate_issuance),
        ("Revocation to session closed", &r.revocation_propagation),
        ("Policy to edge", &r.edge_propagation),
    ] {
        let (value, note) = millis(d);
        body += &figure(label, &value, &note);
    }
    body += &figure("Sites offline", &r.sites_offline.len().to_string(), "");
    body += "</dl><h2>Sessions by site tier</h2><ul class=\"list\">";
    for t in &r.sessions_by_tier {
        let region = if t.region.is_empty() {
            "(no region)"
        } else {
            &t.region
        };
        body += &format!(
            "<li><b>{}</b>: {} sessions at {} sites ({} break-glass)</li>",
            esc(region),
            t.sessions,
            t.sites,
            t.breakglass
        );
    }
    body += "</ul><h2>Your sites offline</h2><ul class=\"list\">";
    for o in r.sites_offline.iter().filter(|o| mine(&o.site)) {
        body += &format!(
            "<li><b>{}</b> (edge {}) since {}</li>",
            esc(&o.site),
            esc(&o.edge),
            time(o.since)
        );
    }
    body += "</ul><h2>Oldest exceptions at your sites</h2><ul class=\"list\">";
    for e in oldest {
        body += &format!(
            "<li><b>{}</b> {} at {}: {} <small>(open {}; owners {})</small></li>",
            esc(e.kind.as_str()),
            esc(&e.subject),
            esc(&e.site),
            esc(&e.detail),
            dur(r.generated - e.opened),
            esc(&e.owners.join(", "))
        );
    }
    body + "</ul>"
}
