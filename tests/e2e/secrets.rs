//! Secrets at rest: the database (the SQLite file and its log, a PostgreSQL dump) holds no device
//! private key, no device password and no TOTP secret; rows an older version wrote in the clear
//! are sealed at the next start (audited once); `keys rotate-master` re-wraps while the broker
//! keeps serving, and the old master key no longer opens the database.

use std::process::Command;
use std::time::Duration;

use crate::harness::{Approver, PgDb, Vendor, World, keygen, run};

const T: Duration = Duration::from_secs(15);
const DEVICE_PASSWORD: &str = "pw-Zq8rT3mN4vXk";
const PEM: &str = "BEGIN OPENSSH PRIVATE KEY";

/// Stores one secret of each kind (a device password, a vendor's and an approver's TOTP
/// secret), and shows they still work: a vendor session, an approver's web sign-in.
fn every_kind_of_secret(w: &World) -> (Vendor, Approver) {
    add_password_device(w, "site-a/pw");
    let alice = w.vendor("alice", &[]);
    let olga = w.approver("olga", &["--sites", "site-a"]);
    w.grant("alice", "site-a", "maint");
    w.ssh_until_in(&alice, "alice:site-a/dev:maint", "in-1", T);
    assert_eq!(w.web().login(&olga).status, 303, "approver web sign-in");
    (alice, olga)
}

/// A device with a password credential (only stored here: the test sshd takes keys only).
fn add_password_device(w: &World, site_device: &str) {
    let file = w.dir.path().join("device.password");
    std::fs::write(&file, DEVICE_PASSWORD).unwrap();
    let addr = format!("127.0.0.1:{}", w.sshd_port);
    let hk = w.sshd_host_pub.display().to_string();
    w.ok(&[
        "device",
        "add",
        site_device,
        "--addr",
        &addr,
        "--login",
        "root",
        "--password-file",
        &file.display().to_string(),
        "--host-key",
        &hk,
    ]);
}

/// Fails if any of `secrets` appears in `bytes` (what `strings` would show).
fn assert_none_in(what: &str, bytes: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(bytes);
    for s in secrets {
        assert!(!text.contains(s), "{what} holds {s:?} in the clear");
    }
}

/// The SQLite database file and its write-ahead log, as a reader of the disk sees them.
fn sqlite_bytes(w: &World) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["postern.db", "postern.db-wal"] {
        if let Ok(b) = std::fs::read(w.data.join(f)) {
            all.extend(b);
        }
    }
    all
}

fn sqlite3(w: &World, sql: &str) {
    let o = run(Command::new("sqlite3")
        .arg(w.data.join("postern.db"))
        .arg(sql));
    assert!(
        o.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sqlite_holds_no_secret_in_the_clear_and_logins_still_work() {
    let mut w = World::new(9, "5m");
    let (alice, olga) = every_kind_of_secret(&w);
    assert_none_in(
        "postern.db",
        &sqlite_bytes(&w),
        &[PEM, DEVICE_PASSWORD, &alice.secret, &olga.secret],
    );

    // An older version's rows, written in the clear the old way, then the broker starts again.
    w.kill_broker();
    let pem = std::fs::read_to_string(w.dir.path().join("broker_device_key")).unwrap();
    let bob_secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    sqlite3(
        &w,
        &format!(
            "UPDATE devices SET credential = '{pem}' WHERE site = 'site-b' AND name = 'dev'; \
             INSERT INTO vendors (name, org, contract_end, disabled, totp_secret, totp_last_step, created) \
             VALUES ('bob', 'acme', NULL, 0, '{bob_secret}', -1, 0);"
        ),
    );
    assert!(String::from_utf8_lossy(&sqlite_bytes(&w)).contains(PEM));
    w.start_broker();
    let sealed: Vec<_> = w
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "secrets.sealed")
        .collect();
    assert_eq!(sealed.len(), 1, "sealed once: {sealed:?}");
    assert_eq!(sealed[0]["devices"], 1);
    assert_eq!(sealed[0]["vendors"], 1);
    // Idempotent: another start seals nothing and audits nothing.
    w.ok(&["device", "list"]);
    let n = w
        .audit()
        .iter()
        .filter(|e| e["event"] == "secrets.sealed")
        .count();
    assert_eq!(n, 1);
    assert_none_in(
        "postern.db after the upgrade",
        &sqlite_bytes(&w),
        &[PEM, bob_secret],
    );

    // Bob (TOTP secret from the old row) reaches site-b/dev (credential from the old row).
    let key = w.dir.path().join("bob_ed25519");
    keygen(&key, "bob");
    let pubkey = format!("{}.pub", key.display());
    w.ok(&["vendor", "cert", "bob", "--pubkey", &pubkey]);
    let bob = Vendor::enrolled("bob", key, bob_secret.to_owned());
    w.grant("bob", "site-b", "maint");
    w.ssh_until_in(&bob, "bob:site-b/dev:maint", "in-2", T);

    // Rotation while the broker runs: it keeps serving; after a restart too.
    let old_key = w.dir.path().join("old-master.key");
    std::fs::copy(w.data.join("keys/master.key"), &old_key).unwrap();
    let out = w.ok(&["keys", "rotate-master"]);
    assert!(out.contains("master key rotated"), "{out}");
    assert!(!w.data.join("keys/master.key.new").exists());
    assert_ne!(
        std::fs::read(&old_key).unwrap(),
        std::fs::read(w.data.join("keys/master.key")).unwrap()
    );
    w.ssh_until_in(&alice, "alice:site-a/dev:maint", "in-3", T);
    w.kill_broker();
    w.start_broker();
    w.ssh_until_in(&alice, "alice:site-a/dev:maint", "in-4", T);
    w.ssh_until_in(&bob, "bob:site-b/dev:maint", "in-5", T);
    assert_eq!(w.web().login(&olga).status, 303, "approver web sign-in");
    let rotated = w.audit();
    assert!(rotated.iter().any(|e| e["event"] == "keys.rotate_master"));

    // The old master key no longer opens the database.
    let cfg = w.dir.path().join("old.toml");
    let text = std::fs::read_to_string(w.data.join("postern.toml")).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}\nmaster_key_file = \"{}\"\n", old_key.display()),
    )
    .unwrap();
    let o = w.postern(&["device", "list", "--config", &cfg.display().to_string()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not open the data key"), "{err}");
}

#[test]
fn postgres_dump_holds_no_secret_in_the_clear() {
    let pg = PgDb::new("secrets_at_rest");
    let w = World::with_config(9, "5m", &pg.config(5432));
    let (alice, olga) = every_kind_of_secret(&w);
    let dump = run(Command::new("pg_dump").args(["-h", "127.0.0.1", "-U", "postgres", &pg.0]));
    assert!(
        dump.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(String::from_utf8_lossy(&dump.stdout).contains("enc:v1:"));
    assert_none_in(
        "pg_dump",
        &dump.stdout,
        &[PEM, DEVICE_PASSWORD, &alice.secret, &olga.secret],
    );
}
