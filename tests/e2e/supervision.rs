//! Live sessions end within a second when an operator kills them, revokes their grant or disables
//! the vendor, and at the window's end after a warning; the vendor is told why.

use std::time::{Duration, Instant};

use crate::harness::World;

/// Runs `action` while the vendor's interactive session is open; returns how long after the
/// operator command started the vendor's ssh client exited, and the vendor's terminal.
fn close_live_session(
    w: &World,
    vendor: &str,
    function: &str,
    action: &dyn Fn(&World, &str),
) -> (Duration, String) {
    let v = w.vendor(vendor, &[]);
    let grant = w.grant(vendor, "site-a", function);
    let mut sh = w.shell(&v, &format!("{vendor}:site-a/dev"));
    sh.expect("access until", Duration::from_secs(15));
    sh.send("echo ready-$((40+2))\r");
    sh.expect("ready-42", Duration::from_secs(10));
    let start = Instant::now();
    action(w, &grant);
    sh.wait_exit(Duration::from_secs(10));
    (start.elapsed(), sh.screen())
}

fn live_id(w: &World, vendor: &str) -> String {
    let s = w.sessions();
    let live = s
        .iter()
        .find(|s| s["vendor"] == vendor && s["ended"].is_null())
        .expect("a live session");
    live["id"].as_str().unwrap().to_owned()
}

#[test]
fn live_sessions_close_within_a_second() {
    let w = World::new(9, "3s");
    let mut report = Vec::new();

    let (t, screen) = close_live_session(&w, "kim", "maint", &|w, _| {
        let id = live_id(w, "kim");
        w.ok(&["sessions", "kill", &id]);
    });
    assert!(screen.contains("terminated by an operator"), "{screen}");
    report.push(("sessions kill", t));

    let (t, screen) = close_live_session(&w, "rob", "maint", &|w, grant| {
        w.ok(&["grant", "revoke", grant]);
    });
    assert!(screen.contains("was revoked"), "{screen}");
    report.push(("grant revoke", t));

    let (t, screen) = close_live_session(&w, "dan", "maint", &|w, _| {
        w.ok(&["vendor", "disable", "dan"]);
    });
    assert!(screen.contains("disabled"), "{screen}");
    report.push(("vendor disable", t));

    for (what, t) in &report {
        eprintln!(
            "{what}: vendor disconnected {:.0} ms after the command started",
            t.as_secs_f64() * 1000.0
        );
        assert!(*t < Duration::from_secs(1), "{what} took {t:?}");
    }

    // Window end: a warning first (warn_before = 3s in this world), then the close.
    let v = w.vendor("wes", &[]);
    w.grant_window("wes", "site-a", "maint", "now", "+7s");
    let mut sh = w.shell(&v, "wes:site-a/dev");
    sh.expect("access until", Duration::from_secs(15));
    sh.expect("this session closes at", Duration::from_secs(10));
    let warned = Instant::now();
    sh.wait_exit(Duration::from_secs(10));
    let screen = sh.screen();
    assert!(screen.contains("the access window ended at"), "{screen}");
    assert!(
        warned.elapsed() > Duration::from_secs(1),
        "the warning comes before the end"
    );

    w.wait_audit("session.end for the window", |e| {
        e["event"] == "session.end"
            && e["vendor"] == "wes"
            && e.to_string().contains("window ended")
    });
    // The database takes the end after the audit log and the journal: wait for it.
    w.wait_all_recorded();
    let sessions = w.sessions();
    let reasons: Vec<String> = sessions
        .iter()
        .map(|s| s["end_reason"].as_str().unwrap_or("live").to_owned())
        .collect();
    assert_eq!(sessions.len(), 4, "{reasons:?}");
    assert!(
        sessions.iter().all(|s| !s["ended"].is_null()),
        "every session has ended: {reasons:?}"
    );

    let v = w.postern(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
