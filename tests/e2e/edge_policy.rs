//! The signed policy bundle: an edge holds the central's current policy for its sites (vendors,
//! grants, functions, devices), sealed to its own key and signed by the central; it follows
//! grants and revocations at once, and a bundle the edge cannot check is refused and audited.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::edges::{Proc, central, edge_row, join_edge, wait_online};
use crate::harness::{World, postern_bin};

/// Waits until the edge holds policy version `above` or later; gives the version.
fn wait_policy_above(w: &World, edge: &str, above: i64) -> i64 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let row = edge_row(w, edge);
        let (made, held) = (row["policy_version"].as_i64(), row["policy_acked"].as_i64());
        if let (Some(made), Some(held)) = (made, held)
            && held == made
            && held > above
        {
            return held;
        }
        assert!(
            Instant::now() < end,
            "edge {edge} holds no policy above v{above}: {row}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bundle the edge keeps on disk, as signed by the central.
fn held_bundle(dir: &Path) -> (Value, String) {
    let text = std::fs::read_to_string(dir.join("edge/policy.json")).unwrap();
    let signed: Value = serde_json::from_str(&text).unwrap();
    let body: Value = serde_json::from_str(signed["body"].as_str().unwrap()).unwrap();
    (body, text)
}

#[test]
fn an_edge_holds_the_current_signed_policy_for_its_sites_sealed_to_it() {
    let (w, central_port) = central("");
    w.ok(&["site", "add", "site-p"]);
    w.add_device("site-p/dev");
    let added: Value =
        serde_json::from_str(&w.ok(&["edge", "add", "e-pol", "--sites", "site-p", "--json"]))
            .unwrap();
    let dir = w.dir.path().join("edge-p");
    join_edge(&dir, &format!("127.0.0.1:{central_port}"), &added);
    let start = || {
        Proc(
            Command::new(postern_bin())
                .args(["edge", "run", "--data"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let edge = start();
    wait_online(&w, "e-pol", true, Duration::from_secs(15));
    let first = wait_policy_above(&w, "e-pol", 0);
    let (body, _) = held_bundle(&dir);
    assert_eq!(body["edge"], "e-pol");
    assert_eq!(body["version"], first);
    assert_eq!(body["devices"][0]["name"], "dev");
    assert!(body["grants"].as_array().unwrap().is_empty(), "{body}");

    // A grant at the edge's site reaches it at once, its secrets sealed to the edge.
    let ann = w.vendor("ann", &[]);
    let grant = w.grant("ann", "site-p", "maint");
    let second = wait_policy_above(&w, "e-pol", first);
    let (body, text) = held_bundle(&dir);
    assert_eq!(body["version"], second);
    assert_eq!(body["grants"][0]["vendor"], "ann");
    assert_eq!(body["vendors"][0]["name"], "ann");
    assert!(
        !text.contains(&ann.secret),
        "the TOTP secret is in the clear"
    );
    let device_key = std::fs::read_to_string(w.dir.path().join("broker_device_key")).unwrap();
    let key_body = device_key.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "the device key is in the clear");
    let row = edge_row(&w, "e-pol");
    assert!(
        w.ok(&["edge", "list"]).contains(&format!("v{second} (")),
        "{row}"
    );
    let delivered = w.wait_audit("edge.policy", |e| {
        e["event"] == "edge.policy" && e["edge"] == "e-pol" && e["version"] == second
    });
    assert_eq!(delivered["grants"], 1);

    // A revocation follows as fast; nothing changed, nothing is sent (the version stays).
    w.ok(&["grant", "revoke", grant.trim()]);
    let third = wait_policy_above(&w, "e-pol", second);
    assert!(held_bundle(&dir).0["grants"].as_array().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(edge_row(&w, "e-pol")["policy_version"], third);
    // Both changes' propagation to the edge was measured (the operator's report shows it).
    let r: serde_json::Value = serde_json::from_str(&w.ok(&["report", "--json"])).unwrap();
    assert_eq!(r["edge_propagation"]["count"], 2, "{r}");
    assert!(
        r["edge_propagation"]["p95_ms"].as_i64().unwrap() < 5000,
        "{r}"
    );

    // An edge that pinned another signing key refuses the central's bundles, at both ends.
    drop(edge);
    wait_online(&w, "e-pol", false, Duration::from_secs(15));
    let other = "postern-policy-ed25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    std::fs::write(dir.join("edge/policy_signer"), other).unwrap();
    w.grant("ann", "site-p", "full");
    let _edge = start();
    w.wait_audit("edge.policy_refused", |e| {
        e["event"] == "edge.policy_refused" && e["edge"] == "e-pol"
    });
    assert_eq!(
        held_bundle(&dir).0["version"],
        third,
        "the old bundle stays"
    );
}
