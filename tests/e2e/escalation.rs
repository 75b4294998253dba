//! Requests nobody decides: past `approval_slo` a pending request is escalated once (audit,
//! webhook naming the region's approvers and `escalate_to`, overdue in `request list` and the web
//! UI); past `request_ttl` it expires and the vendor still waiting in ssh is told. From the CLI,
//! `--as` decides as an approver within their coverage only, and the audited actor is the Unix
//! user of the uid even with `$USER` unset.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Receiver, World, postern_bin, run};

fn requests(w: &World) -> Vec<Value> {
    serde_json::from_str(&w.ok(&["request", "list", "--json"])).unwrap()
}

fn count(w: &World, event: &str, id: &str) -> usize {
    w.audit()
        .iter()
        .filter(|e| e["event"] == event && e["request"] == id)
        .count()
}

#[test]
fn overdue_request_escalates_once_then_expires_and_the_vendor_is_told() {
    let hook = Receiver::start(false);
    let config = format!(
        "webhook_url = \"{}\"\napproval_slo = \"2s\"\nrequest_ttl = \"10s\"\nescalate_to = [\"boss\"]",
        hook.url
    );
    let w = World::with_config(9, "5m", &config);
    // site-a is in region north: `reg` covers the region, `loc` the site, `boss` another site.
    let reg = w.approver("reg", &["--regions", "north"]);
    w.approver("loc", &["--sites", "site-a"]);
    w.approver("boss", &["--sites", "site-b"]);
    let eve = w.vendor("eve", &[]);
    let mut sh = w.file_request(&eve, "eve:site-a/dev:maint", "router stuck", "30m");
    let id = w.pending_request("eve");

    let esc = hook.wait_for("request.escalated");
    assert_eq!(esc["request"], id.as_str(), "{esc}");
    let named: Vec<&str> = esc["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(named, ["reg", "boss"], "region approvers, then escalate_to");
    assert!(esc["text"].as_str().unwrap().contains("OVERDUE"), "{esc}");
    let audited = w.wait_audit("request.escalated", |e| {
        e["event"] == "request.escalated" && e["request"] == id.as_str()
    });
    assert!(audited["waited"].as_i64().unwrap() >= 2, "{audited}");
    assert!(audited["actor"].as_str().unwrap().starts_with("broker:"));

    // Overdue in the CLI listing (JSON and table) and in the region approver's web UI.
    let row = requests(&w)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (&row["status"], &row["overdue"]),
        (&"pending".into(), &true.into())
    );
    assert!(row["escalated_at"].as_i64().is_some(), "{row}");
    assert!(w.ok(&["request", "list"]).contains("OVERDUE"));
    let web = w.web();
    assert_eq!(web.login(&reg).status, 303);
    let page = web.get("/requests").body;
    assert!(page.contains("Overdue") && page.contains(&id), "{page}");

    // Expiry: the vendor waiting in ssh is told, once, and the request is closed.
    sh.expect(
        "expired: no approver decided within 10s",
        Duration::from_secs(15),
    );
    sh.wait_exit(Duration::from_secs(10));
    w.wait_audit("request.expired", |e| {
        e["event"] == "request.expired" && e["request"] == id.as_str()
    });
    let expired = hook.wait_for("request.expired");
    assert_eq!(expired["request"], id.as_str());
    let row = requests(&w)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (&row["status"], &row["overdue"]),
        (&"expired".into(), &false.into())
    );
    // Escalated exactly once, expired exactly once, although the sweep ran every second.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&w, "request.escalated", &id), 1);
    assert_eq!(count(&w, "request.expired", &id), 1);
    let hooks = hook.bodies.lock().unwrap();
    assert_eq!(
        hooks
            .iter()
            .filter(|b| b["event"] == "request.escalated")
            .count(),
        1
    );
}

#[test]
fn decide_as_an_approver_within_coverage_and_name_the_unix_user() {
    let w = World::new(9, "5m");
    let t = Duration::from_secs(15);
    let me = String::from_utf8_lossy(&run(Command::new("id").arg("-un")).stdout)
        .trim()
        .to_owned();
    w.approver("loc", &["--sites", "site-a"]);
    w.approver("far", &["--sites", "site-b"]);
    let ann = w.vendor("ann", &[]);
    let mut sh = w.file_request(&ann, "ann:site-a/dev:maint", "swap the fan", "30m");
    let id = w.pending_request("ann");

    // Without coverage (or as nobody): one line, one audit event, nothing decided.
    for (approver, action, line) in [
        ("far", "approve", "approver far does not cover site site-a"),
        ("far", "deny", "approver far does not cover site site-a"),
        ("nobody", "approve", "no approver is named nobody"),
    ] {
        let o = w.postern(&["request", action, &id, "--as", approver]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(line), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let refused: Vec<Value> = w
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "request.decision_refused" && e["request"] == id.as_str())
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(refused[0]["actor"], format!("operator:{me} as far"));
    assert_eq!(w.pending_request("ann"), id);

    // With coverage: decided as the approver, the Unix user on record too.
    let out = w.ok(&["request", "approve", &id, "--as", "loc"]);
    assert!(out.contains("approved"), "{out}");
    sh.expect("granted by loc", t);
    sh.send("exit\r");
    sh.wait_exit(t);
    let approved = w.wait_audit("request.approve", |e| {
        e["event"] == "request.approve" && e["request"] == id.as_str()
    });
    assert_eq!(approved["actor"], format!("operator:{me} as loc"));

    // No `--as` and no $USER: the actor is still the uid's name, never "unknown".
    let bo = w.vendor("bo", &[]);
    let mut sh = w.file_request(&bo, "bo:site-a/dev:maint", "reboot", "30m");
    let id = w.pending_request("bo");
    let o = run(Command::new("env")
        .args(["-u", "USER", "-u", "LOGNAME", "-u", "SUDO_USER"])
        .arg(postern_bin())
        .args(["request", "approve", &id, "--data"])
        .arg(&w.data));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sh.expect(&format!("granted by operator:{me}"), t);
    let approved = w.wait_audit("request.approve", |e| {
        e["event"] == "request.approve" && e["request"] == id.as_str()
    });
    assert_eq!(approved["actor"], format!("operator:{me}"));
}
