//! A vendor without a grant asks for access from their own ssh session; once approved, the same
//! session goes on to the device; when denied, the vendor sees the reason.

use std::time::Duration;

use crate::harness::World;
use serde_json::Value;

#[test]
fn request_from_ssh_then_approve_or_deny() {
    let w = World::new(9, "5m");
    let t = Duration::from_secs(15);

    // Approved: the waiting session continues to the device.
    let rae = w.vendor("rae", &[]);
    let mut sh = w.file_request(
        &rae,
        "rae:site-a/dev:maint",
        "camera offline since 02:00",
        "30m",
    );
    let id = w.pending_request("rae");
    let out = w.ok(&["request", "approve", &id]);
    assert!(out.contains("approved"), "{out}");
    sh.expect("granted by operator", t);
    sh.expect("access until", t);
    sh.send("echo via-request-$((40+2))\r");
    sh.expect("via-request-42", t);
    sh.send("exit\r");
    sh.wait_exit(t);
    let filed = w.wait_audit("request.filed", |e| {
        e["event"] == "request.filed" && e["request"] == id.as_str()
    });
    assert_eq!(filed["reason"], "camera offline since 02:00");
    assert_eq!(filed["duration"], 1800);
    let approved = w.wait_audit("request.approve", |e| {
        e["event"] == "request.approve" && e["request"] == id.as_str()
    });
    assert!(
        approved["latency"].as_i64().is_some(),
        "request-to-decision time is recorded: {approved}"
    );
    let grants: Vec<Value> = serde_json::from_str(&w.ok(&["grant", "list", "--json"])).unwrap();
    let g = grants.iter().find(|g| g["vendor"] == "rae").unwrap();
    assert_eq!(
        g["valid_until"].as_i64().unwrap() - g["valid_from"].as_i64().unwrap(),
        1800
    );

    // Denied: the vendor sees the approver's reason.
    let dee = w.vendor("dee", &[]);
    let mut sh = w.file_request(&dee, "dee:site-a/dev:maint", "firmware update", "");
    let id = w.pending_request("dee");
    w.ok(&["request", "deny", &id, "--reason", "use the Tuesday window"]);
    sh.expect("use the Tuesday window", t);
    sh.wait_exit(t);

    // The vendor sees their requests and the decisions later.
    let o = w.ssh(&rae, "rae:requests", &[]);
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success()
            && listing.contains("approved by operator")
            && listing.contains("camera offline since 02:00"),
        "{listing}"
    );
    let o = w.ssh(&dee, "dee:requests", &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("denied by operator:"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Longer than the function allows is refused at the prompt; an exec cannot file a request.
    let o = w.ssh(&dee, "dee:site-a/dev:maint", &["true"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("connect with a terminal and no command"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
