//! Vendor certificates end with the contract, can be revoked one by one (refused at the next
//! login on every node, live sessions on them closed within a second), and the vendor CA can be
//! rotated and retired: old certificates work until their CA is retired, new ones throughout;
//! nodes sharing PostgreSQL share the CA set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Vendor, World, keygen, run};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `postern vendor certs NAME --json`.
fn certs(w: &World, vendor: &str) -> Vec<Value> {
    serde_json::from_str(&w.ok(&["vendor", "certs", vendor, "--json"])).unwrap()
}

/// A second key for `v`, certified by `w` (its current CA); returns the key's path.
fn second_key(w: &World, v: &Vendor, tag: &str) -> PathBuf {
    let key = w.dir.path().join(format!("{}_{tag}_ed25519", v.name));
    keygen(&key, &v.name);
    let out = w.ok(&[
        "vendor",
        "cert",
        &v.name,
        "--pubkey",
        &format!("{}.pub", key.display()),
    ]);
    assert!(out.contains("valid from"), "{out}");
    key
}

/// Makes `v` log in with `key` (and its certificate) from now on; sessions already open keep the
/// key they authenticated with.
fn use_key(v: &Vendor, key: &Path) {
    let with = |p: &Path, suffix: &str| PathBuf::from(format!("{}{suffix}", p.display()));
    for suffix in ["", ".pub", "-cert.pub"] {
        std::fs::copy(with(key, suffix), with(&v.key, suffix)).unwrap();
    }
}

/// `ssh` as `v` with a certificate the broker should refuse at the first factor (no code is
/// used up); returns the client's output.
fn refused(w: &World, v: &Vendor, login: &str) -> Output {
    let mut cmd = w.client("ssh", v, "000000");
    cmd.arg(format!("{login}@127.0.0.1")).args(["echo", "in"]);
    let o = run(&mut cmd);
    assert!(!text(&o).contains("\nin"), "{}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    o
}

/// Opens an interactive session for `v`, runs `action`, and returns how long after the action
/// started the vendor's client exited, with its terminal.
fn close_on(w: &World, v: &Vendor, login: &str, action: impl FnOnce()) -> (Duration, String) {
    let mut sh = w.shell(v, login);
    sh.expect("access until", Duration::from_secs(15));
    sh.send("echo ready-$((40+2))\r");
    sh.expect("ready-42", Duration::from_secs(10));
    let start = Instant::now();
    action();
    sh.wait_exit(Duration::from_secs(10));
    (start.elapsed(), sh.screen())
}

/// The refusal of `user`'s certificate at the first factor, as audited, with one of `reasons`.
fn wait_refusal(w: &World, user: &str, reasons: &[&str]) {
    w.wait_audit("the certificate's refusal", |e| {
        e["event"] == "auth.certificate"
            && e["outcome"] == "denied"
            && e["user"] == user
            && e["reason"]
                .as_str()
                .is_some_and(|r| reasons.iter().any(|want| r.contains(want)))
    });
}

#[test]
fn revoked_certificate_is_refused_and_its_live_session_closed() {
    let w = World::new(9, "5m");
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    let first = certs(&w, "alice")[0]["serial"].as_str().unwrap().to_owned();
    let other = second_key(&w, &alice, "b");
    let listed = certs(&w, "alice");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let table = w.ok(&["vendor", "certs", "alice"]);
    assert!(
        table.contains("SERIAL") && table.contains(&first) && table.contains("SHA256:"),
        "{table}"
    );

    let (took, screen) = close_on(&w, &alice, "alice:site-a/dev", || {
        let out = w.ok(&["vendor", "revoke-cert", "alice", "--serial", &first]);
        assert!(
            out.contains("1 certificate(s) of vendor alice revoked"),
            "{out}"
        );
    });
    eprintln!(
        "revoke-cert: the live session closed {:.0} ms after the command started",
        took.as_secs_f64() * 1000.0
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let why = format!("certificate serial {first} has been revoked");
    assert!(screen.contains(&why), "{screen}");
    w.wait_audit("session.revoked for the certificate", |e| {
        e["event"] == "session.revoked" && e["serial"] == first.as_str()
    });
    let rec = w.wait_audit("vendor.revoke_cert", |e| e["event"] == "vendor.revoke_cert");
    assert_eq!(rec["serials"], serde_json::json!([first]));

    // The revoked certificate is refused (audited with the reason); the other one works.
    refused(&w, &alice, "alice:site-a/dev");
    wait_refusal(&w, "alice:site-a/dev", &[&why]);
    use_key(&alice, &other);
    let o = w.ssh(&alice, "alice:site-a/dev", &["echo", "other-cert-works"]);
    assert!(text(&o).contains("other-cert-works"), "{}", text(&o));
    let listed = certs(&w, "alice");
    for c in &listed {
        let want = i64::from(c["serial"] == first.as_str());
        assert_eq!(c["revoked"].as_i64(), Some(want), "{listed:?}");
    }

    // One clear line for what cannot be done.
    let again = w.postern(&["vendor", "revoke-cert", "alice", "--serial", &first]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already revoked"), "{}", text(&again));
    let neither = w.postern(&["vendor", "revoke-cert", "alice"]);
    assert!(!neither.status.success(), "{}", text(&neither));

    // Disabling the vendor revokes the rest.
    w.ok(&["vendor", "disable", "alice"]);
    assert!(certs(&w, "alice").iter().all(|c| c["revoked"] == 1));
    let rec = w.wait_audit("vendor.disable", |e| e["event"] == "vendor.disable");
    assert_eq!(rec["certificates_revoked"].as_array().unwrap().len(), 1);
}

#[test]
fn revocation_on_one_node_reaches_the_other() {
    let nodes = crate::harness::TwoNodes::new("certrevoke", "5m");
    let (a, b) = (&nodes.a, &nodes.b);
    let alice = a.vendor("alice", &[]);
    a.grant("alice", "site-a", "maint");
    let first = certs(a, "alice")[0]["serial"].as_str().unwrap().to_owned();
    // The other certificate comes from node B's CA.
    let other = second_key(b, &alice, "b");

    // Live on node B with the first certificate; revoked on node A.
    let (took, screen) = close_on(b, &alice, "alice:site-a/dev", || {
        a.ok(&["vendor", "revoke-cert", "alice", "--serial", &first]);
    });
    eprintln!(
        "revoke-cert on node A: the session on node B closed {:.0} ms after the command started",
        took.as_secs_f64() * 1000.0
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        screen.contains(&format!("certificate serial {first} has been revoked")),
        "{screen}"
    );

    refused(b, &alice, "alice:site-a/dev");
    wait_refusal(b, "alice:site-a/dev", &["has been revoked"]);
    use_key(&alice, &other);
    let o = a.ssh(&alice, "alice:site-a/dev", &["echo", "other-cert-on-a"]);
    assert!(text(&o).contains("other-cert-on-a"), "{}", text(&o));

    // The CA set is shared: node A retires node B's CA, which revokes what B signed; B cannot
    // issue with it any more, and after `ca rotate` on B its new certificates work on A.
    let on_b: Vec<Value> = serde_json::from_str(&b.ok(&["ca", "list", "--json"])).unwrap();
    assert_eq!(on_b.len(), 2, "{on_b:?}");
    let b_ca = on_b.iter().find(|c| c["signing"] == true).unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = a.ok(&["ca", "retire", &b_ca]);
    assert!(out.contains("1 certificate(s) revoked"), "{out}");
    refused(a, &alice, "alice:site-a/dev");
    let o = b.postern(&[
        "vendor",
        "cert",
        "alice",
        "--pubkey",
        &format!("{}.pub", other.display()),
    ]);
    assert!(text(&o).contains("was retired"), "{}", text(&o));
    b.ok(&["ca", "rotate"]);
    let third = second_key(b, &alice, "c");
    use_key(&alice, &third);
    // Node A asked the database about an unknown CA a moment ago (the refused login above), so it
    // learns B's new CA from its once-a-second reload: give it that second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let o = a.ssh(&alice, "alice:site-a/dev", &["echo", "rotated-b-on-a"]);
    assert!(text(&o).contains("rotated-b-on-a"), "{}", text(&o));
}

/// `ssh-keygen -L -f CERT` in UTC: (signing CA fingerprint, valid_before as unix seconds).
fn read_cert(cert: &Path) -> (String, i64) {
    let o = run(Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .args(["-L", "-f"])
        .arg(cert));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let ca = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Signing CA: "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let until = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Valid: from "))
        .and_then(|l| l.split(" to ").nth(1))
        .unwrap_or_else(|| panic!("{out}"));
    let until = chrono::NaiveDateTime::parse_from_str(until, "%Y-%m-%dT%H:%M:%S")
        .unwrap_or_else(|e| panic!("{until}: {e}"))
        .and_utc()
        .timestamp();
    (ca, until)
}

#[test]
fn certificates_end_at_the_contract_end() {
    let w = World::new(9, "5m");
    let end = chrono::Utc::now().timestamp() + 2 * 86_400;
    let end_s = chrono::DateTime::from_timestamp(end, 0)
        .unwrap()
        .to_rfc3339();
    let carol = w.vendor_with_cert("carol", &["--contract-end", &end_s], &["--validity", "90d"]);
    let (_, until) = read_cert(&carol.cert());
    assert!(
        until <= end,
        "valid_before {until} is after the contract end {end}"
    );
    assert!(
        until > end - 120,
        "capped at the contract end, not earlier: {until}"
    );
    let listed = certs(&w, "carol");
    assert_eq!(listed[0]["valid_before"], end);

    // What `vendor cert` says: the effective window, and that it was capped.
    let key = w.dir.path().join("carol_2_ed25519");
    keygen(&key, "carol");
    let out = w.ok(&[
        "vendor",
        "cert",
        "carol",
        "--pubkey",
        &format!("{}.pub", key.display()),
    ]);
    assert!(out.contains("capped at the contract end"), "{out}");

    // A contract that has ended leaves nothing to certify.
    w.ok(&[
        "vendor",
        "add",
        "dave",
        "--org",
        "acme",
        "--contract-end",
        "-1h",
    ]);
    let key = w.dir.path().join("dave_ed25519");
    keygen(&key, "dave");
    let o = w.postern(&[
        "vendor",
        "cert",
        "dave",
        "--pubkey",
        &format!("{}.pub", key.display()),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("the contract of vendor dave ended at"),
        "{}",
        text(&o)
    );
    assert!(!w.dir.path().join("dave_ed25519-cert.pub").exists());
}

#[test]
fn ca_rotation_keeps_old_certificates_until_retired() {
    let w = World::new(9, "5m");
    let cas: Vec<Value> = serde_json::from_str(&w.ok(&["ca", "list", "--json"])).unwrap();
    assert_eq!(cas.len(), 1, "{cas:?}");
    let old = cas[0]["fingerprint"].as_str().unwrap().to_owned();
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    assert_eq!(read_cert(&alice.cert()).0, old);

    let rotated: Value = serde_json::from_str(&w.ok(&["ca", "rotate", "--json"])).unwrap();
    let new = rotated["ca"].as_str().unwrap().to_owned();
    assert_eq!(rotated["previous"], old.as_str());
    assert_ne!(new, old);
    let bob = w.vendor("bob", &[]);
    w.grant("bob", "site-a", "maint");
    assert_eq!(
        read_cert(&bob.cert()).0,
        new,
        "the new CA signs from now on"
    );

    // Both work while the old CA is trusted.
    for (v, login) in [(&alice, "alice:site-a/dev"), (&bob, "bob:site-a/dev")] {
        let o = w.ssh(v, login, &["echo", "in-before-retire"]);
        assert!(text(&o).contains("in-before-retire"), "{}", text(&o));
    }
    let listed = w.ok(&["ca", "list"]);
    assert!(listed.contains(&old) && listed.contains(&new), "{listed}");

    // The CA this node signs with cannot be retired; the old one can.
    let o = w.postern(&["ca", "retire", &new]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("run `postern ca rotate` first"),
        "{}",
        text(&o)
    );
    let out = w.ok(&["ca", "retire", &old]);
    assert!(out.contains("1 certificate(s) revoked"), "{out}");
    let rec = w.wait_audit("ca.retire", |e| e["event"] == "ca.retire");
    assert_eq!(rec["ca"], old.as_str());
    assert_eq!(certs(&w, "alice")[0]["revoked"], 1);

    refused(&w, &alice, "alice:site-a/dev");
    wait_refusal(
        &w,
        "alice:site-a/dev",
        &["has been revoked", "not signed by a trusted vendor CA"],
    );
    let o = w.ssh(&bob, "bob:site-a/dev", &["echo", "new-after-retire"]);
    assert!(text(&o).contains("new-after-retire"), "{}", text(&o));
    let cas: Vec<Value> = serde_json::from_str(&w.ok(&["ca", "list", "--json"])).unwrap();
    let retired = cas
        .iter()
        .find(|c| c["fingerprint"] == old.as_str())
        .unwrap();
    assert!(!retired["retired"].is_null(), "{cas:?}");
    let again = w.postern(&["ca", "retire", &old]);
    assert!(text(&again).contains("already retired"), "{}", text(&again));
}
