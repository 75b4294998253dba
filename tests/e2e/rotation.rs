//! Device credential rotation against a real sshd device whose login keeps its keys in
//! `~/.ssh/authorized_keys`: after `device rotate` the old key is refused by sshd and vendors'
//! sessions keep working; a device stopped between install and verify keeps a working credential.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{World, run};

/// A second sshd on loopback (same host key as the world's device) whose login's home is a
/// directory of the test: rotation rewrites `$HOME/.ssh/authorized_keys` there, and the scan
/// tests plant foreign keys in it. `mv` on its PATH
/// stops the daemon after moving a file when `stop-after-mv` exists (a device going away between
/// installing the new key and the fresh login that proves it).
pub(crate) struct RotDevice {
    sshd: Option<Child>,
    pub(crate) port: u16,
    home: PathBuf,
    config: PathBuf,
    trap: PathBuf,
}

impl RotDevice {
    pub(crate) fn start(w: &World) -> RotDevice {
        let root = w.dir.path().join("rot");
        let (home, bin) = (root.join("home"), root.join("bin"));
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let key_pub = w.dir.path().join("broker_device_key.pub");
        std::fs::copy(&key_pub, home.join(".ssh/authorized_keys")).unwrap();
        let trap = root.join("stop-after-mv");
        let mv = bin.join("mv");
        std::fs::write(
            &mv,
            format!(
                "#!/bin/sh\n/bin/mv \"$@\" || exit 1\nt='{}'\nif [ -f \"$t\" ]; then p=$(cat \"$t\"); rm -f \"$t\"; kill \"$p\"; for i in $(seq 40); do grep -qs '^State:.*[RS]' /proc/$p/status || break; sleep 0.05; done; fi\n",
                trap.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mv, std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = crate::harness::free_port();
        let config = root.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}/.ssh/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin yes\nLogLevel ERROR\n\
                 SetEnv HOME={} PATH={}:/usr/bin:/bin\n",
                w.dir.path().join("sshd_host_ed25519").display(),
                home.display(),
                home.display(),
                bin.display()
            ),
        )
        .unwrap();
        let mut d = RotDevice {
            sshd: None,
            port,
            home,
            config,
            trap,
        };
        d.restart();
        d
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        let sshd = Command::new(crate::harness::need("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sshd");
        self.sshd = Some(sshd);
        crate::harness::wait_for_port(self.port, "the rotation device's sshd");
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Arms the trap: the next `mv` on the device stops its sshd.
    fn stop_after_next_mv(&self) {
        let pid = self.sshd.as_ref().map(Child::id).unwrap();
        std::fs::write(&self.trap, pid.to_string()).unwrap();
    }

    /// The login's `~/.ssh/authorized_keys`.
    pub(crate) fn keys_file(&self) -> PathBuf {
        self.home.join(".ssh/authorized_keys")
    }

    pub(crate) fn authorized_keys(&self) -> String {
        std::fs::read_to_string(self.keys_file()).unwrap()
    }

    /// Logs in directly (not through Postern) with `key`.
    pub(crate) fn login_with(&self, w: &World, key: &Path) -> Output {
        run(Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=5", "-i"])
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", w.device_login))
            .arg("echo direct-ok"))
    }
}

impl Drop for RotDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn key_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect()
}

pub(crate) fn device_row(w: &World, target: &str) -> Value {
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["device", "list", "--json"])).unwrap();
    rows.into_iter()
        .find(|r| {
            format!(
                "{}/{}",
                r["site"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            ) == target
        })
        .expect("the device is listed")
}

pub(crate) fn vendor_session_works(w: &World, v: &crate::harness::Vendor, marker: &str) {
    session_works_at(w, v, "rita:site-a/rot", marker);
}

/// A vendor session to `login` (VENDOR:SITE/DEVICE) runs `echo marker`.
pub(crate) fn session_works_at(w: &World, v: &crate::harness::Vendor, login: &str, marker: &str) {
    let o = w.ssh(v, login, &["echo", marker]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(marker),
        "vendor session: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn rotation_replaces_the_key_and_the_old_one_is_refused() {
    let w = World::new(9, "5m");
    let dev = RotDevice::start(&w);
    w.add_device_at("site-a/rot", &format!("127.0.0.1:{}", dev.port));
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "maint");
    let old_key = w.dir.path().join("broker_device_key");
    assert!(
        dev.login_with(&w, &old_key).status.success(),
        "the old key works before"
    );
    vendor_session_works(&w, &rita, "before-rotation");

    let dry = w.ok(&["device", "rotate", "site-a/rot", "--dry-run"]);
    assert!(dry.contains("ready to rotate"), "{dry}");
    assert_eq!(
        key_lines(&dev.authorized_keys()).len(),
        1,
        "a dry run changes nothing"
    );

    let out = w.ok(&["device", "rotate", "site-a/rot"]);
    assert!(out.contains("site-a/rot: rotated"), "{out}");
    let keys = dev.authorized_keys();
    let lines = key_lines(&keys);
    assert_eq!(lines.len(), 1, "only the new key is left: {keys}");
    assert!(lines[0].contains("postern:site-a/rot"), "{keys}");
    let refused = dev.login_with(&w, &old_key);
    assert!(
        !refused.status.success(),
        "sshd refuses the old key after rotation"
    );
    vendor_session_works(&w, &rita, "after-rotation");

    let rec = w.wait_audit("device.rotate", |e| {
        e["event"] == "device.rotate" && e["device"] == "rot"
    });
    assert_eq!(rec["credential"], "key");
    assert_ne!(rec["old_key"], rec["new_key"]);
    let row = device_row(&w, "site-a/rot");
    assert_eq!(row["last_rotation"], "ok", "{row}");
    assert!(row["credential_age"].as_i64().unwrap() < 60, "{row}");
    let table = w.ok(&["device", "list"]);
    assert!(
        table.contains("LAST ROTATION") && table.contains("ok"),
        "{table}"
    );
}

#[test]
fn a_device_stopped_between_install_and_verify_keeps_a_working_credential() {
    let w = World::new(9, "5m");
    let mut dev = RotDevice::start(&w);
    w.add_device_at("site-a/rot", &format!("127.0.0.1:{}", dev.port));
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "maint");

    dev.stop_after_next_mv();
    let o = w.postern(&["device", "rotate", "site-a/rot"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "the rotation fails: {stdout} {stderr}");
    assert!(
        stdout.contains("rotation failed at verify") && stdout.contains("old credential stays"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 1 device rotations failed"),
        "{stderr}"
    );
    let rec = w.wait_audit("device.rotate_failed", |e| {
        e["event"] == "device.rotate_failed" && e["device"] == "rot"
    });
    assert_eq!(rec["step"], "verify");
    assert_eq!(
        device_row(&w, "site-a/rot")["last_rotation"],
        "failed at verify"
    );

    // The device comes back: the stored (old) credential still logs in, vendors get through.
    dev.restart();
    let old_key = w.dir.path().join("broker_device_key");
    assert!(
        dev.login_with(&w, &old_key).status.success(),
        "the old key still works"
    );
    vendor_session_works(&w, &rita, "after-interrupted");
    assert_eq!(
        key_lines(&dev.authorized_keys()).len(),
        1,
        "the unproven key was taken out again: {}",
        dev.authorized_keys()
    );

    // And a rotation of the site now goes through for this device; site-a/dev's key is honoured
    // from outside its login's ~/.ssh/authorized_keys, so it is refused and keeps its key.
    let o = w.postern(&["device", "rotate", "--site", "site-a"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("site-a/rot: rotated"), "{out}");
    assert!(
        out.contains("site-a/dev: rotation failed at read") && !o.status.success(),
        "{out}"
    );
    vendor_session_works(&w, &rita, "after-second-rotation");
}
