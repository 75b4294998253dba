//! Self-service with stock OpenSSH only: enrol a key from an invite (`ssh enroll:CODE@broker`),
//! log in with the result, a second use of the code fails, renew (`VENDOR:renew`) with
//! `ssh-keygen -L` as the independent reader of the new certificate's window; and the
//! `VENDOR+SITE+DEVICE` spelling and the `VENDOR:config` block with real `scp`, `sftp` and
//! `rsync -e ssh`.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{Vendor, World, keygen, run, unix_now};

/// `ssh -i KEY enroll:CODE@broker`, stdout and stderr kept apart (the certificate, the person's
/// lines).
fn enrol(w: &World, key: &Path, code: &str) -> std::process::Output {
    run(Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", w.known_hosts().display()))
        .args(["-o", "BatchMode=yes", "-p", &w.broker_port.to_string()])
        .arg(format!("enroll:{code}@127.0.0.1"))
        .stdin(Stdio::null()))
}

fn invite(w: &World, vendor: &str) -> String {
    let out: Value = serde_json::from_str(&w.ok(&["vendor", "invite", vendor, "--json"])).unwrap();
    out["code"].as_str().unwrap().to_owned()
}

fn secret_of(stderr: &str) -> String {
    stderr
        .split(['?', '&', '\r', '\n'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("otpauth URI on stderr")
        .to_owned()
}

/// `Valid: from A to B` of `ssh-keygen -L`, as Unix seconds (read in UTC).
fn valid_before(cert: &Path) -> i64 {
    let out = run(Command::new("ssh-keygen")
        .args(["-L", "-f"])
        .arg(cert)
        .env("TZ", "UTC"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let to = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Valid: from "))
        .and_then(|l| l.split(" to ").nth(1))
        .unwrap_or_else(|| panic!("no validity in ssh-keygen -L: {text}"));
    chrono::NaiveDateTime::parse_from_str(to.trim(), "%Y-%m-%dT%H:%M:%S")
        .unwrap()
        .and_utc()
        .timestamp()
}

#[test]
fn enrol_from_an_invite_log_in_and_renew() {
    let w = World::new(9, "5m");
    let contract_end = unix_now() as i64 + 3 * 86_400;
    let end_arg = chrono::DateTime::from_timestamp(contract_end, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    // The operator's only steps: the vendor, a grant, an invite.
    let added = w.ok(&[
        "vendor",
        "add",
        "erin",
        "--org",
        "acme",
        "--contract-end",
        &end_arg,
    ]);
    assert!(added.contains("erin"), "{added}");
    w.grant("erin", "site-a", "maint");
    let code = invite(&w, "erin");

    // The vendor: a fresh key and `ssh` only.
    let key = w.dir.path().join("erin_ed25519");
    keygen(&key, "erin");
    let out = enrol(&w, &key, &code);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "enrolment failed: {stderr}");
    let cert = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
    assert!(stderr.contains("otpauth://totp/"), "{stderr}");
    std::fs::write(w.dir.path().join("erin_ed25519-cert.pub"), &cert).unwrap();
    let erin = Vendor::enrolled("erin", key.clone(), secret_of(&stderr));
    let enrolled = w.wait_audit("vendor.enrol", |e| e["event"] == "vendor.enrol");
    assert_eq!(enrolled["actor"], "vendor:erin");
    assert!(valid_before(&erin.cert()) <= contract_end);

    // Log in with the result.
    let out = w.ssh(&erin, "erin:site-a/dev", &["echo", "enrolled-ok"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enrolled-ok"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second use of the code (another key) is refused with one line, and audited.
    let other = w.dir.path().join("mallory_ed25519");
    keygen(&other, "mallory");
    let out = enrol(&w, &other, &code);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no certificate on a refusal");
    assert!(stderr.contains("enrolment refused"), "{stderr}");
    w.wait_audit("vendor.enrol_refused", |e| {
        e["event"] == "vendor.enrol_refused"
            && e["reason"].as_str().unwrap_or("").contains("already used")
    });
    let out = enrol(&w, &other, "no-such-code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrolment refused"));

    // Renew with the current certificate and a TOTP code: a fresh certificate, same key.
    let code = erin.next_code();
    let mut cmd = w.client("ssh", &erin, &code);
    cmd.arg("-o")
        .arg(format!("CertificateFile={}", erin.cert().display()))
        .arg("erin:renew@127.0.0.1");
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "renewal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let renewed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(renewed.trim(), cert.trim());
    let new_cert = w.dir.path().join("erin-new-cert.pub");
    std::fs::write(&new_cert, &renewed).unwrap();
    assert!(
        valid_before(&new_cert) <= contract_end,
        "capped at the contract end"
    );
    let listed = run(Command::new("ssh-keygen").args(["-L", "-f"]).arg(&new_cert));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("erin"));
    // The renewed certificate logs in.
    std::fs::write(erin.cert(), &renewed).unwrap();
    let out = w.ssh(&erin, "erin:site-a/dev", &["echo", "renewed-ok"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("renewed-ok"));

    // One self-service answer per connection: a connection kept open (a multiplexing master)
    // cannot ask again, so a certificate revoked meanwhile cannot keep renewing through it.
    let cm = w.dir.path().join("erin-cm");
    let path = format!("ControlPath={}", cm.display());
    let mut master = w.client("ssh", &erin, &erin.next_code());
    master
        .args(["-o", "ControlMaster=yes", "-o", &path, "-f", "-N"])
        .arg("erin:renew@127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    assert!(master.status().unwrap().success(), "the master logged in");
    // Clients of the master do not authenticate: no code is asked.
    let through_master = || {
        let mut cmd = w.client("ssh", &erin, "unused");
        cmd.args(["-o", "ControlMaster=no", "-o", &path])
            .arg("erin:renew@127.0.0.1");
        run(&mut cmd)
    };
    let first = through_master();
    let again = through_master();
    let mut stop = w.client("ssh", &erin, "unused");
    stop.args(["-o", &path, "-O", "exit"])
        .arg("erin:renew@127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _ = stop.status();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(!again.status.success());
    assert!(again.stdout.is_empty(), "no second certificate");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("one self-service request per connection"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Another vendor's certificate cannot renew erin's.
    let bob = w.vendor("bob", &[]);
    let code = bob.next_code();
    let mut cmd = w.client("ssh", &bob, &code);
    cmd.arg("erin:renew@127.0.0.1");
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

/// A world with alice granted `full` at site-a, and a file to copy.
fn copying_world() -> (World, Vendor, std::path::PathBuf) {
    let w = World::new(9, "5m");
    let v = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "full");
    let src = w.dir.path().join("fw.bin");
    std::fs::write(&src, FIRMWARE).unwrap();
    (w, v, src)
}

const FIRMWARE: &[u8] = b"firmware 1.2.3\n";

fn copied(out: &std::process::Output, what: &str, dst: &Path) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dst).unwrap(), FIRMWARE, "{what}");
}

#[test]
fn scp_sftp_and_rsync_with_the_plus_spelling() {
    let (w, v, src) = copying_world();
    let dst = |name: &str| w.dir.path().join(name);

    let mut cmd = w.client("scp", &v, &v.next_code());
    cmd.arg(&src).arg(format!(
        "alice+site-a+dev@127.0.0.1:{}",
        dst("scp.bin").display()
    ));
    copied(&run(&mut cmd), "scp", &dst("scp.bin"));

    // Commands on stdin: `sftp -b` would forbid the TOTP prompt.
    let batch = w.dir.path().join("sftp.batch");
    let put = format!("put {} {}\n", src.display(), dst("sftp.bin").display());
    std::fs::write(&batch, put).unwrap();
    let mut cmd = w.client("sftp", &v, &v.next_code());
    cmd.arg("alice+site-a+dev@127.0.0.1")
        .stdin(std::fs::File::open(&batch).unwrap());
    copied(&run(&mut cmd), "sftp", &dst("sftp.bin"));

    let ssh = format!("ssh {} -p {}", w.ssh_args(&v).join(" "), w.broker_port);
    let mut cmd = Command::new("rsync");
    cmd.arg("-e").arg(ssh).arg(&src).arg(format!(
        "alice+site-a+dev@127.0.0.1:{}",
        dst("rsync.bin").display()
    ));
    copied(
        &run(w.with_askpass(&mut cmd, &v.next_code())),
        "rsync",
        &dst("rsync.bin"),
    );
}

#[test]
fn the_config_block_makes_host_aliases_work() {
    let (w, v, src) = copying_world();
    let dst = |name: &str| w.dir.path().join(name);
    let out = w.ssh(&v, "alice:config", &[&v.key.display().to_string()]);
    let block = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(block.contains("Host site-a-dev\n"), "{block}");
    assert!(block.contains("User alice+site-a+dev\n"), "{block}");
    assert!(
        block.contains(&format!("Port {}\n", w.broker_port)),
        "{block}"
    );
    assert!(!block.contains("site-b"), "only granted devices: {block}");
    let config = w.dir.path().join("ssh_config");
    let pin = format!(
        "\nHost *\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    NumberOfPasswordPrompts 1\n",
        w.known_hosts().display()
    );
    std::fs::write(&config, format!("{block}{pin}")).unwrap();

    // `scp fw.bin site-a-dev:/path` and rsync through the alias alone.
    let mut cmd = Command::new("scp");
    cmd.arg("-F")
        .arg(&config)
        .arg(&src)
        .arg(format!("site-a-dev:{}", dst("alias.bin").display()));
    copied(
        &run(w.with_askpass(&mut cmd, &v.next_code())),
        "scp alias",
        &dst("alias.bin"),
    );

    let mut cmd = Command::new("rsync");
    cmd.arg("-e")
        .arg(format!("ssh -F {}", config.display()))
        .arg(&src)
        .arg(format!("site-a-dev:{}", dst("rsync.bin").display()));
    copied(
        &run(w.with_askpass(&mut cmd, &v.next_code())),
        "rsync alias",
        &dst("rsync.bin"),
    );
}
