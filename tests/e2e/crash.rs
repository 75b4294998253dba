//! Killing the broker with SIGKILL in the middle of a busy session loses at most the last second:
//! the recording and the audit log stay readable and verifiable, and after a restart the session
//! is marked as ended by a crash.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::World;

#[test]
fn sigkill_mid_session_leaves_verifiable_evidence() {
    let mut w = World::new(9, "5m");
    let v = w.vendor("cora", &[]);
    w.grant("cora", "site-a", "maint");
    let mut sh = w.shell(&v, "cora:site-a/dev");
    sh.expect("access until", Duration::from_secs(15));
    // A busy session: output without pause.
    sh.send("i=0; while true; do echo tick $i; i=$((i+1)); done\r");
    sh.expect("tick 2000", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    w.kill_broker();
    sh.wait_exit(Duration::from_secs(10));

    // Before any restart: the recording verifies up to its last flushed record.
    let sessions = w.sessions();
    let s = &sessions[0];
    assert!(s["ended"].is_null(), "nobody has closed it yet");
    let rec = w
        .data
        .join("recordings")
        .join(s["recording"].as_str().unwrap());
    let report = recorder::verify_file(&rec).unwrap();
    assert_eq!(report.problem, None, "no damage before the end");
    let last = report.last_time_us.unwrap();
    let lost = Duration::from_micros((killed_at - last).max(0) as u64);
    eprintln!(
        "records kept: {}; last record {} ms before the kill",
        report.records,
        lost.as_millis()
    );
    assert!(
        lost < Duration::from_millis(1500),
        "more than a second of recording lost: {lost:?}"
    );

    // After a restart the session is ended by the crash, and everything verifies.
    w.start_broker();
    w.wait_audit("crash recovery", |e| {
        e["event"] == "session.crash_recovered"
    });
    let s = w.sessions().into_iter().next().unwrap();
    assert_eq!(s["end_reason"], "broker stopped unexpectedly");
    let o = w.postern(&["verify"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("never sealed") || out.contains("unsealed tail"),
        "{out}"
    );
}
