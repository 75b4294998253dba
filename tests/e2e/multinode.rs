//! Two broker nodes sharing one PostgreSQL database work as one: a certificate issued on either
//! node works on both without copying keys (each node registers its vendor CA in the database),
//! and `verify` on each node checks its own sessions and says the other's are recorded there,
//! while a recording deleted on its own node still fails.

use std::process::Output;

use crate::harness::{TwoNodes, World};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The id of the one session of `vendor`.
fn session_of(w: &World, vendor: &str) -> (String, String) {
    let s = w
        .sessions()
        .into_iter()
        .find(|s| s["vendor"] == vendor)
        .unwrap_or_else(|| panic!("no session of {vendor}"));
    (
        s["id"].as_str().unwrap().to_owned(),
        s["node"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn two_nodes_share_keys_and_verify_each_others_sessions() {
    // Each node has its own data directory; only the master key of the shared secrets is copied.
    let nodes = TwoNodes::new("multinode", "5m");
    let (a, b) = (&nodes.a, &nodes.b);
    assert_ne!(
        std::fs::read(a.data.join("keys/vendor_ca.pub")).unwrap(),
        std::fs::read(b.data.join("keys/vendor_ca.pub")).unwrap(),
        "each node has its own vendor CA"
    );

    // A certificate issued on node A works on node B, and one issued on B works on A (A started
    // before B registered its CA: it learns the new key from the database).
    let alice = a.vendor("alice", &[]);
    a.grant("alice", "site-a", "maint");
    let o = b.ssh(&alice, "alice:site-a/dev", &["echo", "alice-on-b"]);
    assert!(text(&o).contains("alice-on-b"), "{}", text(&o));
    let bob = b.vendor("bob", &[]);
    b.grant("bob", "site-a", "maint");
    let o = a.ssh(&bob, "bob:site-a/dev", &["echo", "bob-on-a"]);
    assert!(text(&o).contains("bob-on-a"), "{}", text(&o));

    let (on_b, node) = session_of(a, "alice");
    assert_eq!(node, "node-b");
    let (on_a, node) = session_of(b, "bob");
    assert_eq!(node, "node-a");
    b.wait_audit("alice's seal", |e| {
        e["event"] == "session.seal" && e["session"] == on_b.as_str()
    });
    a.wait_audit("bob's seal", |e| {
        e["event"] == "session.seal" && e["session"] == on_a.as_str()
    });

    // Each node verifies its own session and names the other's node.
    for (w, mine, theirs, other) in [(&a, &on_a, &on_b, "node-b"), (&b, &on_b, &on_a, "node-a")] {
        let o = w.postern(&["verify"]);
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(
            out.contains(&format!(
                "OK     session {mine}: chain intact; sealed by a trusted key; seal anchored in the audit log"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "REMOTE session {theirs}: recorded on node {other}; verify it there"
            )),
            "{out}"
        );
        assert!(out.contains("1 recorded on other nodes"), "{out}");
        let one = w.postern(&["verify", theirs]);
        assert!(one.status.success(), "{}", text(&one));
    }

    // A recording deleted on its own node is a failure there, not "elsewhere".
    let s = a
        .sessions()
        .into_iter()
        .find(|s| s["id"] == on_a.as_str())
        .unwrap();
    std::fs::remove_file(
        a.data
            .join("recordings")
            .join(s["recording"].as_str().unwrap()),
    )
    .unwrap();
    let o = a.postern(&["verify"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!("FAILED session {on_a}: recording")) && out.contains("is missing"),
        "{out}"
    );
    // Node B still has nothing to fault: the missing file is node A's to keep.
    let o = b.postern(&["verify"]);
    assert!(o.status.success(), "{}", text(&o));
}
