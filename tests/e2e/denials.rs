//! Every refusal: the vendor gets no access (and, where it is a policy matter, one plain line
//! saying what is missing), and the audit log says why.

use std::process::Command;
use std::time::Duration;

use crate::harness::{self, World, keygen, run};
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the login failed at authentication and an audit event explains it.
fn auth_refused(w: &World, o: &std::process::Output, user: &str, reason: &str) {
    assert!(!o.status.success(), "{user} must be refused ({reason})");
    assert!(
        stderr(o).contains("Permission denied"),
        "{user}: {}",
        stderr(o)
    );
    let e = w.wait_audit(reason, |e| {
        let text = e.to_string();
        e["user"] == user
            && text.contains(reason)
            && e["event"]
                .as_str()
                .is_some_and(|ev| ev.starts_with("auth."))
    });
    assert!(
        e["outcome"] == "denied" || e["event"] == "auth.failed",
        "{e}"
    );
}

/// Asserts the vendor authenticated but was refused with one plain line naming what is missing.
fn policy_refused(
    w: &World,
    o: &std::process::Output,
    login: &str,
    line: &str,
    event: &str,
) -> Value {
    // The request is refused, so OpenSSH exits non-zero (255 for a refused exec or shell).
    assert!(
        !o.status.success(),
        "{login} must be refused: {}",
        stderr(o)
    );
    let err = stderr(o);
    assert!(
        err.contains(&format!("postern: {line}")),
        "{login}: expected '{line}' in: {err}"
    );
    w.wait_audit(line, |e| {
        e["event"] == event && e.to_string().contains(line)
    })
}

#[test]
fn every_refusal_is_explained_and_audited() {
    let w = World::new(9, "5m");

    // Wrong CA: a certificate made with OpenSSH's own tools by a CA the broker does not trust.
    let mallory = w.vendor("mallory", &[]);
    w.grant("mallory", "site-a", "maint");
    let rogue_ca = w.dir.path().join("rogue_ca");
    keygen(&rogue_ca, "rogue");
    let signed = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&rogue_ca)
        .args(["-I", "rogue", "-n", "mallory", "-V", "-5m:+1h"])
        .arg(mallory.key.with_extension("pub")));
    assert!(signed.status.success(), "{}", stderr(&signed));
    let o = w.ssh(&mallory, "mallory:site-a/dev", &["true"]);
    auth_refused(
        &w,
        &o,
        "mallory:site-a/dev",
        "not signed by a trusted vendor CA",
    );

    // Expired certificate: russh refuses it before any callback; OpenSSH then offers the bare key,
    // and the broker's registry of issued certificates names the reason.
    let ed = w.vendor_with_cert("ed", &[], &["--from", "-2h", "--validity", "1h"]);
    w.grant("ed", "site-a", "maint");
    let o = w.ssh(&ed, "ed:site-a/dev", &["true"]);
    auth_refused(&w, &o, "ed:site-a/dev", "expired at");

    // Wrong principal: bob's certificate presented for alice.
    let alice = w.vendor("alice", &[]);
    let bob = w.vendor("bob", &[]);
    w.grant("alice", "site-a", "maint");
    let o = w.ssh(&bob, "alice:site-a/dev", &["true"]);
    auth_refused(&w, &o, "alice:site-a/dev", "do not include vendor alice");

    // Disabled vendor.
    let dora = w.vendor("dora", &[]);
    w.grant("dora", "site-a", "maint");
    w.ok(&["vendor", "disable", "dora"]);
    let o = w.ssh(&dora, "dora:site-a/dev", &["true"]);
    auth_refused(&w, &o, "dora:site-a/dev", "vendor dora is disabled");

    // Contract ended (after the certificate was issued: none is issued past the contract end).
    let carl = w.vendor("carl", &["--contract-end", "+1d"]);
    let ended = format!(
        "UPDATE vendors SET contract_end = {} WHERE name = 'carl'",
        harness::unix_now() - 3600
    );
    let o = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(w.data.join("postern.db"))
        .arg(ended));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = w.ssh(&carl, "carl:site-a/dev", &["true"]);
    auth_refused(
        &w,
        &o,
        "carl:site-a/dev",
        "contract of vendor carl has ended",
    );

    // Wrong TOTP: a code for an hour from now.
    let tom = w.vendor("tom", &[]);
    w.grant("tom", "site-a", "maint");
    let wrong = approvals::totp::code_at(&tom.secret, harness::unix_now() + 3600).unwrap();
    let o = run(w
        .client("ssh", &tom, &wrong)
        .arg("tom:site-a/dev@127.0.0.1")
        .arg("true"));
    auth_refused(&w, &o, "tom:site-a/dev", "wrong TOTP code");
    // One mistyped code must not lock the vendor out: the client's prompt limit ends the try.
    let tries = w
        .audit()
        .iter()
        .filter(|e| e["user"] == "tom:site-a/dev" && e["reason"] == "wrong TOTP code")
        .count();
    assert_eq!(
        tries, 1,
        "one connection with NumberOfPasswordPrompts=1 makes one TOTP attempt"
    );

    // Replayed TOTP: a code that already opened a session is refused the second time.
    // (Its own vendor: the newest code moves that vendor's next usable step into the future.)
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "maint");
    let first = rita.newest_code();
    let o = run(w
        .client("ssh", &rita, &first)
        .arg("rita:site-a/dev@127.0.0.1")
        .arg("echo first"));
    assert!(o.status.success(), "first use: {}", stderr(&o));
    let o = run(w
        .client("ssh", &rita, &rita.used_code())
        .arg("rita:site-a/dev@127.0.0.1")
        .arg("true"));
    auth_refused(&w, &o, "rita:site-a/dev", "already used (replay)");

    // No grant.
    let o = w.ssh(&bob, "bob:site-a/dev", &["true"]);
    policy_refused(
        &w,
        &o,
        "bob:site-a/dev",
        "access denied: no grant for site-a",
        "session.denied",
    );

    // Window not yet open.
    let fay = w.vendor("fay", &[]);
    w.grant_window("fay", "site-a", "maint", "+1h", "+2h");
    let o = w.ssh(&fay, "fay:site-a/dev", &["true"]);
    policy_refused(
        &w,
        &o,
        "fay:site-a/dev",
        "access denied: the maint window does not open until",
        "session.denied",
    );

    // Window over.
    let gus = w.vendor("gus", &[]);
    w.grant_window("gus", "site-a", "maint", "now", "+2s");
    std::thread::sleep(Duration::from_secs(3));
    let o = w.ssh(&gus, "gus:site-a/dev", &["true"]);
    policy_refused(
        &w,
        &o,
        "gus:site-a/dev",
        "access denied: the maint window ended at",
        "session.denied",
    );

    // Other site: the grant is for site-a.
    let o = w.ssh(&alice, "alice:site-b/dev", &["true"]);
    policy_refused(
        &w,
        &o,
        "alice:site-b/dev",
        "access denied: no grant for site-b",
        "session.denied",
    );

    // Channel type not allowed: shell-only function, exec requested.
    let hal = w.vendor("hal", &[]);
    w.grant("hal", "site-a", "shell-only");
    let o = w.ssh(&hal, "hal:site-a/dev", &["id"]);
    policy_refused(
        &w,
        &o,
        "hal:site-a/dev",
        "access denied: exec is not allowed by function shell-only",
        "channel.deny",
    );

    // scp is refused when the function does not allow file transfer, in both protocols.
    let file = w.dir.path().join("fw.bin");
    std::fs::write(&file, b"firmware").unwrap();
    for legacy in [false, true] {
        let mut scp = w.client("scp", &hal, &hal.next_code());
        if legacy {
            scp.arg("-O");
        }
        let o = run(scp
            .args(["-o", "User=hal:site-a/dev"])
            .arg(&file)
            .arg("127.0.0.1:/tmp/postern-should-not-exist"));
        assert!(
            !o.status.success(),
            "scp (legacy: {legacy}) must be refused"
        );
        assert!(
            stderr(&o).contains("sftp is not allowed by function shell-only"),
            "scp (legacy: {legacy}): {}",
            stderr(&o)
        );
    }
    assert!(!std::path::Path::new("/tmp/postern-should-not-exist").exists());

    // Pinned host key mismatch: a device enrolled with another key than the one it presents.
    let other_host = w.dir.path().join("impostor_host");
    keygen(&other_host, "impostor");
    let addr = format!("127.0.0.1:{}", w.sshd_port);
    let devkey = w.dir.path().join("broker_device_key").display().to_string();
    let login = w.device_login.clone();
    w.ok(&[
        "device",
        "add",
        "site-a/swapped",
        "--addr",
        &addr,
        "--login",
        &login,
        "--key",
        &devkey,
        "--host-key",
        &format!("{}.pub", other_host.display()),
    ]);
    let o = w.ssh(&alice, "alice:site-a/swapped", &["true"]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not match the pinned key"),
        "{}",
        stderr(&o)
    );
    w.wait_audit("host key mismatch", |e| {
        e["event"] == "device.hostkey_mismatch" && e["device"] == "swapped"
    });

    // Malformed login strings never reach the policy.
    let o = run(w
        .client("ssh", &alice, "000000")
        .arg("alice@127.0.0.1")
        .arg("true"));
    auth_refused(&w, &o, "alice", "is not VENDOR:SITE/DEVICE");

    // And the audit log itself is intact after all of this.
    let v = w.postern(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
