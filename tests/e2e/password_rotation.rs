//! Password rotation against a real sshd that checks passwords against `/etc/shadow`. The device
//! runs in a mount namespace of its own with a private copy of `/etc`, so its login (root) can
//! have its password changed by the rotate command `chpasswd` without touching this machine's.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use crate::harness::{Vendor, World, run};

const INITIAL: &str = "Initial0Password0For0Tests";
const DEVICE: &str = "site-a/pw";

/// The rotate command: `chpasswd`, and when the trap file exists, the login that ran it is cut
/// (its sshd process killed) right after the change, before the broker can prove it.
fn template(trap: &std::path::Path) -> String {
    format!(
        "echo '{{login}}:{{password}}' | chpasswd && if [ -f {t} ]; then rm -f {t}; kill -9 $PPID; fi",
        t = trap.display()
    )
}

struct PwDevice {
    sshd: Child,
    port: u16,
    trap: PathBuf,
    root: PathBuf,
}

impl PwDevice {
    fn start(w: &World) -> PwDevice {
        let root = w.dir.path().join("pwdev");
        std::fs::create_dir_all(&root).unwrap();
        let etc = root.join("etc");
        let copied = run(Command::new("cp").args(["-a", "/etc"]).arg(&etc));
        assert!(copied.status.success(), "copying /etc: {copied:?}");
        let port = crate::harness::free_port();
        let config = root.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nPidFile none\nUsePAM no\nStrictModes no\n\
                 PasswordAuthentication yes\nPubkeyAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin yes\nLogLevel ERROR\n",
                w.dir.path().join("sshd_host_ed25519").display(),
            ),
        )
        .unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let script = format!(
            "mount --bind {etc} /etc && echo 'root:{INITIAL}' | chpasswd && exec {sshd} -D -e -f {config}",
            etc = etc.display(),
            sshd = crate::harness::need("sshd").display(),
            config = config.display()
        );
        let sshd = Command::new(crate::harness::need("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting sshd in a mount namespace");
        crate::harness::wait_for_port(port, "the password device's sshd");
        PwDevice {
            sshd,
            port,
            trap: root.join("cut-after-change"),
            root,
        }
    }

    /// Logs in directly (not through Postern) with `password`.
    fn login_with(&self, password: &str) -> Output {
        let askpass = self.root.join("askpass");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
        run(Command::new("ssh")
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .args(["-F", "/dev/null", "-o", "PreferredAuthentications=password"])
            .args([
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
            ])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=5", "-p", &self.port.to_string()])
            .arg("root@127.0.0.1")
            .arg("echo direct-ok"))
    }
}

impl Drop for PwDevice {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

fn session_works(w: &World, v: &Vendor, marker: &str) {
    crate::rotation::session_works_at(w, v, &format!("rita:{DEVICE}"), marker);
}

#[test]
fn a_password_is_rotated_by_the_operators_command_and_an_interrupted_one_recovers() {
    let w = World::new(9, "5m");
    let dev = PwDevice::start(&w);
    let pw_file = w.dir.path().join("device-password");
    std::fs::write(&pw_file, format!("{INITIAL}\n")).unwrap();
    assert!(
        dev.login_with(INITIAL).status.success(),
        "the device takes its password"
    );
    let hk = w.dir.path().join("sshd_host_ed25519.pub");
    let (addr, cmd) = (format!("127.0.0.1:{}", dev.port), template(&dev.trap));
    w.ok(
        &["device", "add", DEVICE, "--addr", &addr, "--login", "root"]
            .into_iter()
            .chain(["--password-file", pw_file.to_str().unwrap()])
            .chain(["--host-key", hk.to_str().unwrap(), "--rotate-command", &cmd])
            .collect::<Vec<_>>(),
    );
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "maint");
    session_works(&w, &rita, "before-rotation");

    // A rotate command must say where the password goes.
    let bad = w.postern(&["device", "rotate-command", DEVICE, "--set", "chpasswd"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("{password}"),
        "{bad:?}"
    );

    let out = w.ok(&["device", "rotate", DEVICE]);
    assert!(
        out.contains("rotated, new password proven and stored"),
        "{out}"
    );
    assert!(
        !dev.login_with(INITIAL).status.success(),
        "sshd refuses the old password after rotation"
    );
    session_works(&w, &rita, "after-rotation");
    let rec = w.wait_audit("device.rotate", |e| {
        e["event"] == "device.rotate" && e["device"] == "pw"
    });
    assert_eq!(rec["credential"], "password");
    for f in ["postern.db", "postern.db-wal"] {
        let bytes = std::fs::read(w.data.join(f)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(INITIAL),
            "{f} holds the old password in the clear"
        );
    }

    // The login is cut right after the change: the broker cannot prove the new password nor put
    // the old one back. The new one was set aside and is adopted at the next refused login.
    std::fs::write(&dev.trap, "").unwrap();
    let o = w.postern(&["device", "rotate", DEVICE]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{stdout}");
    assert!(
        stdout.contains("rotation failed at apply") && stdout.contains("kept aside"),
        "{stdout}"
    );
    session_works(&w, &rita, "after-interrupted-rotation");
    w.wait_audit("device.rotate_recovered", |e| {
        e["event"] == "device.rotate_recovered" && e["device"] == "pw"
    });
    let out = w.ok(&["device", "rotate", DEVICE]);
    assert!(out.contains("rotated"), "{out}");
    session_works(&w, &rita, "after-third-rotation");
}
