//! The operator's figures after a scripted day: requests decided at known delays, one left past
//! `approval_slo`, a break-glass, a foreign key found by the scan, a denial of each kind, each
//! kind of authentication failure, a revocation that closes a live session. The metrics endpoint
//! (checked by `promtool check metrics`) and `postern report --json` must say exactly that.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Pty, World, free_port, keygen, run, unix_now};

const T: Duration = Duration::from_secs(15);

/// Moves a request's filing time `secs` into the past, as if it had waited that long.
fn backdate_request(w: &World, id: &str, secs: u64) {
    let sql = format!("UPDATE requests SET created = created - {secs} WHERE id = '{id}'");
    let o = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(w.data.join("postern.db"))
        .arg(sql));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Files a request as `vendor` at site-a, backdates it by `secs`; returns its id and the vendor's
/// waiting connection.
fn waited_request(w: &World, vendor: &str, secs: u64) -> (String, Pty) {
    let v = w.vendor(vendor, &[]);
    let login = format!("{vendor}:site-a/dev:maint");
    let sh = w.file_request(&v, &login, "scripted day", "30m");
    let id = w.pending_request(vendor);
    backdate_request(w, &id, secs);
    (id, sh)
}

/// `GET /metrics` until `line` is in it (the database figures refresh every 15 seconds).
fn scrape_until(port: u16, line: &str) -> String {
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        let text = crate::exceptions::scrape(port);
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(Instant::now() < end, "{line} never came:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The sample lines of an exposition (no comments).
fn samples(body: &str) -> Vec<&str> {
    (body.lines())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn a_scripted_day_reads_exactly_on_the_metrics_endpoint_and_in_the_report() {
    let port = free_port();
    let w = World::with_config(
        9,
        "5m",
        &format!("approval_slo = \"2h\"\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let olga = w.approver("olga", &["--sites", "site-a"]);
    w.emergency_function();
    let mut vendors = 0;

    // Requests decided after 100 s, 1000 s and 5000 s (approved, approved, denied), and one
    // left waiting 8000 s, past the two-hour SLO (escalated: one breach).
    let (r1, mut s1) = waited_request(&w, "rae", 100);
    w.ok(&["request", "approve", &r1]);
    s1.expect("access until", T);
    let (r2, mut s2) = waited_request(&w, "dee", 1000);
    w.ok(&["request", "approve", &r2]);
    s2.expect("access until", T);
    let (r3, _s3) = waited_request(&w, "kit", 5000);
    w.ok(&["request", "deny", &r3]);
    let (_r4, _s4) = waited_request(&w, "lou", 8000);
    vendors += 4;
    w.wait_audit("escalation", |e| e["event"] == "request.escalated");

    // A break-glass, unreviewed (it also starts with a no-grant denial, as every request does).
    let ivy = w.vendor("ivy", &[]);
    vendors += 1;
    let mut bg = w.shell(&ivy, "ivy:site-a/dev:emergency");
    bg.expect("Reason for the emergency (empty to cancel): ", T);
    bg.send("pump controller offline\r");
    bg.expect("For how long?", T);
    bg.send("\r");
    bg.expect("access until", T);

    // A foreign key on a device, found by the scan.
    let dev = crate::rotation::RotDevice::start(&w);
    w.ok(&["site", "add", "site-s"]);
    w.add_device_at("site-s/scan", &format!("127.0.0.1:{}", dev.port));
    let (line, _) = crate::scan::foreign_key(&w, "intruder");
    let keys = std::fs::read_to_string(dev.keys_file()).unwrap();
    std::fs::write(dev.keys_file(), format!("{keys}{line}\n")).unwrap();
    w.ok(&["scan", "--site", "site-s"]);

    // A denial of each kind: no grant, not yet open, window ended, a channel the function does
    // not allow, a device that does not exist.
    let bob = w.vendor("bob", &[]);
    assert!(!w.ssh(&bob, "bob:site-a/dev", &["true"]).status.success());
    let fay = w.vendor("fay", &[]);
    w.grant_window("fay", "site-a", "maint", "+1h", "+2h");
    assert!(!w.ssh(&fay, "fay:site-a/dev", &["true"]).status.success());
    let gus = w.vendor("gus", &[]);
    w.grant_window("gus", "site-a", "maint", "now", "+2s");
    let hal = w.vendor("hal", &[]);
    w.grant("hal", "site-a", "shell-only");
    assert!(!w.ssh(&hal, "hal:site-a/dev", &["id"]).status.success());
    assert!(!w.ssh(&hal, "hal:site-a/nosuch", &["true"]).status.success());
    std::thread::sleep(Duration::from_secs(3));
    assert!(!w.ssh(&gus, "gus:site-a/dev", &["true"]).status.success());
    vendors += 4;

    // Authentication failures: a certificate from a CA nobody trusts and an expired one
    // (certificate, one per connection); five wrong codes (totp), then the lock they bring
    // (rate limited).
    let mal = w.vendor("mal", &[]);
    let rogue = w.dir.path().join("rogue_ca");
    keygen(&rogue, "rogue");
    let signed = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&rogue)
        .args(["-I", "rogue", "-n", "mal", "-V", "-5m:+1h"])
        .arg(mal.key.with_extension("pub")));
    assert!(signed.status.success());
    assert!(!w.ssh(&mal, "mal:site-a/dev", &["true"]).status.success());
    let ed = w.vendor_with_cert("ed", &[], &["--from", "-2h", "--validity", "1h"]);
    assert!(!w.ssh(&ed, "ed:site-a/dev", &["true"]).status.success());
    let tom = w.vendor("tom", &[]);
    vendors += 3;
    w.grant("tom", "site-a", "maint");
    for i in 0..6 {
        let wrong = approvals::totp::code_at(&tom.secret, unix_now() + 3600 + i * 30).unwrap();
        let o = run(w
            .client("ssh", &tom, &wrong)
            .arg("tom:site-a/dev@127.0.0.1")
            .arg("true"));
        assert!(!o.status.success());
    }

    // A live session closed by revoking its grant.
    let gil = w.vendor("gil", &[]);
    vendors += 1;
    let g = w.grant("gil", "site-a", "maint");
    let mut sh = w.shell(&gil, "gil:site-a/dev");
    sh.expect("access until", T);
    sh.send("echo ready-$((6*7))\r");
    sh.expect("ready-42", T);
    w.ok(&["grant", "revoke", &g]);
    sh.wait_exit(T);

    // The endpoint: events as this node counted them, database figures once refreshed.
    let text = scrape_until(
        port,
        "postern_policy_propagation_seconds_count{path=\"revocation\"} 1",
    );
    let body = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b);
    crate::monitoring::check_metrics_text(body);
    let samples = samples(body);
    let want = [
        "postern_requests_pending 1".to_owned(),
        "postern_approval_slo_seconds 7200".into(),
        "postern_approval_slo_breaches_total 1".into(),
        "postern_request_decision_seconds_count 3".into(),
        "postern_request_decision_seconds_bucket{le=\"60.0\"} 0".into(),
        "postern_request_decision_seconds_bucket{le=\"120.0\"} 1".into(),
        "postern_request_decision_seconds_bucket{le=\"1800.0\"} 2".into(),
        "postern_request_decision_seconds_bucket{le=\"7200.0\"} 3".into(),
        "postern_exceptions_open{kind=\"breakglass_unreviewed\"} 1".into(),
        "postern_exceptions_open{kind=\"request_overdue\"} 1".into(),
        "postern_exceptions_open{kind=\"unbrokered_path\"} 1".into(),
        "postern_exceptions_open{kind=\"standing_grant\"} 0".into(),
        "postern_unbrokered_access_paths 1".into(),
        // rae, dee, kit, lou and ivy were denied before their requests; bob had no grant.
        "postern_denials_total{reason=\"no_grant\"} 6".into(),
        "postern_denials_total{reason=\"not_yet_open\"} 1".into(),
        "postern_denials_total{reason=\"window_ended\"} 1".into(),
        "postern_denials_total{reason=\"channel_not_allowed\"} 1".into(),
        "postern_denials_total{reason=\"unknown_device\"} 1".into(),
        "postern_auth_failures_total{kind=\"certificate\"} 2".into(),
        "postern_auth_failures_total{kind=\"totp\"} 5".into(),
        "postern_auth_failures_total{kind=\"rate_limited\"} 1".into(),
        // rae, dee, ivy, gil, and hal's (whose exec was refused: it closed).
        "postern_sessions_started_total 5".into(),
        "postern_sessions_ended_total{outcome=\"revoked\"} 1".into(),
        "postern_sessions_ended_total{outcome=\"closed\"} 1".into(),
        // site-a and site-b are in region north.
        "postern_sessions_live{region=\"north\"} 3".into(),
        "postern_sessions_live{region=\"\"} 0".into(),
        format!("postern_certificate_issuance_seconds_count {vendors}"),
        "postern_audit_append_failures_total 0".into(),
        "postern_notification_failures_total 0".into(),
    ];
    for line in &want {
        assert!(samples.contains(&line.as_str()), "{line} not in:\n{text}");
    }
    let bucket = "postern_policy_propagation_seconds_bucket{le=\"2.0\",path=\"revocation\"} 1";
    assert!(samples.contains(&bucket), "revocation within 2 s:\n{text}");
    // Every family served is one the monitoring files know.
    for l in &samples {
        let name = l.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|x| name.strip_suffix(x))
            .filter(|f| crate::monitoring::PUBLISHED.contains(f))
            .unwrap_or(name);
        assert!(
            crate::monitoring::PUBLISHED.contains(&family),
            "{name} is not in PUBLISHED"
        );
    }
    let recorded: u64 = (samples.iter())
        .find_map(|l| l.strip_prefix("postern_recording_bytes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(recorded > 0, "{text}");

    // The report says the same.
    let r: Value = serde_json::from_str(&w.ok(&["report", "--since", "1d", "--json"])).unwrap();
    let a = &r["approval"];
    assert_eq!(a["slo_seconds"], 7200, "{r}");
    assert_eq!(a["decided"], 3, "{r}");
    assert_eq!(a["within_slo"], 3, "{r}");
    assert_eq!(a["slo_breaches"], 1, "{r}");
    assert_eq!(a["pending"], 1, "{r}");
    let p50 = a["p50_seconds"].as_i64().unwrap();
    let p95 = a["p95_seconds"].as_i64().unwrap();
    assert!((1000..1060).contains(&p50), "{r}");
    assert!((5000..5060).contains(&p95), "{r}");
    assert_eq!(r["unbrokered"]["now"], 1, "{r}");
    assert_eq!(r["unbrokered"]["at_start"], 0, "{r}");
    assert_eq!(r["unbrokered"]["change"], 1, "{r}");
    assert_eq!(r["exceptions_open"], 3, "{r}");
    assert_eq!(r["certificate_issuance"]["count"], vendors, "{r}");
    assert_eq!(r["revocation_propagation"]["count"], 1, "{r}");
    assert!(
        r["revocation_propagation"]["p95_ms"].as_i64().unwrap() < 2000,
        "{r}"
    );
    let tiers = r["sessions_by_tier"].as_array().unwrap();
    let tier = |region: &str| {
        tiers
            .iter()
            .find(|t| t["region"] == region)
            .unwrap()
            .clone()
    };
    assert_eq!(tier("north")["sites"], 2, "{r}");
    assert_eq!(tier("north")["sessions"], 5, "{r}");
    assert_eq!(tier("north")["breakglass"], 1, "{r}");
    assert_eq!(tier("")["sessions"], 0, "{r}");
    let oldest = &r["oldest_exceptions"][0];
    assert_eq!(oldest["kind"], "request_overdue", "{r}");
    assert_eq!(oldest["owners"], serde_json::json!(["olga"]), "{r}");
    let age = r["exception_age_median_seconds"].as_i64().unwrap();
    assert!(age < 600, "the median of 8000 s and two fresh ones: {r}");
    let text = w.ok(&["report"]);
    assert!(
        text.contains("Unbrokered access paths") && text.contains("olga"),
        "{text}"
    );

    // The approvers' dashboard: the same figures, and olga's own sites' exceptions named (the
    // unbrokered path at site-s is no site of hers).
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);
    let page = web.get("/dashboard");
    assert_eq!(page.status, 200, "{}", page.body);
    for needle in [
        "Unbrokered access paths",
        "+1 in 30 days",
        "Median exception age",
        "request_overdue",
        "breakglass_unreviewed",
        "Sites offline",
        "width=device-width",
    ] {
        assert!(
            page.body.contains(needle),
            "{needle} not on the dashboard:\n{}",
            page.body
        );
    }
    assert!(!page.body.contains("site-s"), "{}", page.body);
    drop((s1, s2, bg, dev));
}
