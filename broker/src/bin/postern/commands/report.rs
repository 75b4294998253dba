//! `postern report`: the operator's table for the accountable owners (see `approvals::report`).

use anyhow::{Context, Result};
use approvals::report::{Durations, Report};
use approvals::time::{fmt_time, parse_duration};

use super::Env;
use super::device_rotate::age;

/// Prints the report over the last `since` (a duration such as `30d`).
pub async fn report(env: &Env, since: &str) -> Result<()> {
    let window = parse_duration(since).with_context(|| format!("--since {since}"))?;
    let limits = env.cfg.limits()?.exceptions();
    let now = approvals::time::now();
    let r = env.store.report(limits, now, now - window).await?;
    if env.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    print!("{}", text(&r));
    Ok(())
}

fn ms(v: Option<i64>) -> String {
    v.map_or("-".into(), |ms| format!("{:.2}s", ms as f64 / 1000.0))
}

fn secs(v: Option<i64>) -> String {
    v.map_or("-".into(), age)
}

fn durations(label: &str, d: &Durations) -> String {
    format!(
        "{label:<34} p50 {:>8}  p95 {:>8}  ({} measured)\n",
        ms(d.p50_ms),
        ms(d.p95_ms),
        d.count
    )
}

/// The report as the operator reads it.
pub fn text(r: &Report) -> String {
    let mut out = format!(
        "Postern report, {} to {}\n\n",
        fmt_time(r.since),
        fmt_time(r.generated)
    );
    let u = &r.unbrokered;
    let trend: Vec<String> = u.points.iter().map(|(_, n)| n.to_string()).collect();
    out += &format!(
        "{:<34} {} (was {} at the start: {:+}; weekly {})\n",
        "Unbrokered access paths",
        u.now,
        u.at_start,
        u.change,
        trend.join(" → ")
    );
    let kinds: Vec<String> = (r.exceptions_by_kind.iter())
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out += &format!(
        "{:<34} {} ({})\n",
        "Open exceptions",
        r.exceptions_open,
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        }
    );
    out += &format!(
        "{:<34} {}\n",
        "Median exception age",
        age(r.exception_age_median_seconds)
    );
    let a = &r.approval;
    out += &format!(
        "{:<34} p50 {:>8}  p95 {:>8}  (SLO {}: {} of {} decided within; {} breaches; {} pending)\n",
        "Approval latency",
        secs(a.p50_seconds),
        secs(a.p95_seconds),
        age(a.slo_seconds),
        a.within_slo,
        a.decided,
        a.slo_breaches,
        a.pending
    );
    out += &durations("Certificate issuance", &r.certificate_issuance);
    out += &durations(
        "Propagation: revocation to closed",
        &r.revocation_propagation,
    );
    out += &durations("Propagation: central to edge", &r.edge_propagation);
    out + &lists(r)
}

/// The report's lists: sessions per tier, sites offline, the oldest exceptions.
fn lists(r: &Report) -> String {
    let mut out = String::from("\nSessions by site tier (region)\n");
    out += &format!(
        "  {:<20} {:>7} {:>9} {:>11}\n",
        "REGION", "SITES", "SESSIONS", "BREAK-GLASS"
    );
    for t in &r.sessions_by_tier {
        let region = if t.region.is_empty() {
            "(none)"
        } else {
            &t.region
        };
        out += &format!(
            "  {region:<20} {:>7} {:>9} {:>11}\n",
            t.sites, t.sessions, t.breakglass
        );
    }
    out += &format!("\nSites offline: {}\n", r.sites_offline.len());
    for s in &r.sites_offline {
        out += &format!(
            "  {} (edge {}, since {})\n",
            s.site,
            s.edge,
            fmt_time(s.since)
        );
    }
    out += &format!(
        "\nOldest exceptions ({} shown)\n",
        r.oldest_exceptions.len()
    );
    for e in &r.oldest_exceptions {
        let owners = match e.owners.is_empty() {
            true => "(nobody)".to_owned(),
            false => e.owners.join(","),
        };
        out += &format!(
            "  {:>5}  {:<22} {:<16} {:<24} owners {owners}: {}\n",
            age(r.generated - e.opened),
            e.kind.as_str(),
            e.site,
            e.subject,
            e.detail
        );
    }
    out
}
