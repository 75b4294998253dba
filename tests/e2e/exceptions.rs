//! `postern exceptions`: access standing outside the just-in-time path, oldest first, with the
//! site's accountable approvers.

use serde_json::Value;

use crate::harness::{World, free_port};

#[test]
fn exceptions_are_listed_oldest_first_with_their_owners() {
    let metrics_port = free_port();
    let w = World::with_config(
        9,
        "5m",
        &format!(
            "rotate_every = \"1s\"\nedge_offline_grace = \"1s\"\nstanding_grant_threshold = \"24h\"\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n"
        ),
    );
    w.approver("olga", &["--sites", "site-a"]);
    w.vendor("vic", &[]);
    // A grant for two days is standing access; one for an hour is not.
    w.ok(&[
        "function",
        "add",
        "contract",
        "--allow",
        "shell",
        "--max-window",
        "30d",
    ]);
    let long = w.grant_window("vic", "site-a", "contract", "now", "+48h");
    w.grant("vic", "site-b", "maint");
    // An edge that never connected is out of contact since it was added.
    w.ok(&["site", "add", "site-x"]);
    w.ok(&["edge", "add", "e-x", "--sites", "site-x"]);
    // A request decided by an approver: its latency goes to the histogram.
    let rae = w.vendor("rae", &[]);
    let mut sh = w.file_request(&rae, "rae:site-b/dev:maint", "camera offline", "30m");
    let id = w.pending_request("rae");
    w.ok(&["request", "approve", &id]);
    sh.expect("access until", std::time::Duration::from_secs(15));
    drop(sh);
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let all: Vec<Value> = serde_json::from_str(&w.ok(&["exceptions", "--json"])).unwrap();
    let kinds = |rows: &[Value], kind: &str| -> Vec<Value> {
        rows.iter().filter(|e| e["kind"] == kind).cloned().collect()
    };
    let standing = kinds(&all, "standing_grant");
    assert_eq!(standing.len(), 1, "{all:?}");
    assert_eq!(standing[0]["subject"], long.as_str());
    assert_eq!(standing[0]["owners"], serde_json::json!(["olga"]));
    // Both enrolled devices still have their enrolment credentials, older than rotate_every.
    assert_eq!(kinds(&all, "stale_credential").len(), 2, "{all:?}");
    let offline = kinds(&all, "edge_offline");
    assert_eq!(offline.len(), 1, "{all:?}");
    assert_eq!(offline[0]["site"], "site-x");
    assert_eq!(offline[0]["owners"], serde_json::json!([]));
    let opened: Vec<i64> = all.iter().map(|e| e["opened"].as_i64().unwrap()).collect();
    assert!(
        opened.windows(2).all(|p| p[0] <= p[1]),
        "oldest first: {opened:?}"
    );

    let at_a: Vec<Value> =
        serde_json::from_str(&w.ok(&["exceptions", "--site", "site-a", "--json"])).unwrap();
    assert!(at_a.iter().all(|e| e["site"] == "site-a"), "{at_a:?}");
    assert_eq!(at_a.len(), 2, "{at_a:?}");
    let text = w.ok(&["exceptions"]);
    assert!(
        text.contains("standing_grant") && text.contains("olga"),
        "{text}"
    );

    // The same figures on the Prometheus endpoint (a background job refreshes them; the node
    // restarts so that it runs once now, with the exceptions in place).
    let mut w = w;
    w.kill_broker();
    w.start_broker();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = scrape(metrics_port);
        if text.contains("postern_exceptions_open{kind=\"standing_grant\"} 1") {
            break text;
        }
        assert!(std::time::Instant::now() < end, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for line in [
        "postern_exceptions_open{kind=\"stale_credential\"} 2",
        "postern_exceptions_open{kind=\"edge_offline\"} 1",
        "postern_exceptions_open{kind=\"breakglass_unreviewed\"} 0",
        "postern_unbrokered_access_paths 0",
        "postern_requests_pending 0",
        "postern_edges{state=\"offline\"} 1",
        // A restarted node starts at the newest decision: history is not replayed.
        "postern_request_decision_seconds_count 0",
        "postern_approval_slo_breaches_total 0",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(
        text.contains("# TYPE postern_exception_age_median_seconds gauge"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

/// `GET /metrics` over plain HTTP/1.1.
pub(crate) fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
