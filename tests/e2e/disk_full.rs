//! A full disk: new sessions are refused with a clear line to the vendor and an audit event for the
//! operator; a live session whose recording cannot be written is closed; nothing already written
//! is damaged. Uses a 1 MiB tmpfs mounted over the recordings directory (needs root, as CI has).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{World, run};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        let o = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at));
        assert!(
            o.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Mount(at.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir`; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

#[test]
fn a_full_disk_fails_closed_and_damages_nothing() {
    let mut w = World::new(9, "5m");
    let recordings = w.data.join("recordings");
    w.kill_broker();
    let _mount = Mount::tmpfs(&recordings, "1m");
    w.start_broker();

    let v = w.vendor("fred", &[]);
    w.grant("fred", "site-a", "maint");

    // A session recorded while there is space.
    let o = w.ssh(&v, "fred:site-a/dev", &["echo before"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.wait_audit("first seal", |e| e["event"] == "session.seal");

    // Disk full: the next session is refused, with a reason for the vendor and the operator.
    let filler = fill(&recordings);
    let o = w.ssh(&v, "fred:site-a/dev", &["echo during"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("cannot record sessions right now"), "{err}");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("during"),
        "nothing ran unrecorded"
    );
    w.wait_audit("refusal for the operator", |e| {
        e["event"] == "session.denied" && e.to_string().contains("No space left")
    });

    // Space again: sessions work, and what was written before is intact.
    std::fs::remove_file(&filler).unwrap();
    let o = w.ssh(&v, "fred:site-a/dev", &["echo after"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A live session whose disk fills up is closed, not left running unrecorded (another person,
    // so no TOTP step is waited for).
    let gil = w.vendor("gil", &[]);
    w.grant("gil", "site-a", "maint");
    let mut sh = w.shell(&gil, "gil:site-a/dev");
    sh.expect("access until", Duration::from_secs(15));
    let filler = fill(&recordings);
    sh.send("for i in $(seq 1 200000); do echo filling the recording $i; done\r");
    sh.wait_exit(Duration::from_secs(30));
    assert!(
        sh.screen().contains("the recording cannot be written"),
        "{}",
        sh.screen()
    );
    w.wait_audit("recording failure", |e| {
        e["event"] == "recording.failed" || e.to_string().contains("cannot be written")
    });
    std::fs::remove_file(&filler).unwrap();

    let v = w.postern(&["verify"]);
    let out = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(v.status.success(), "{out}");
    assert_eq!(out.matches("sealed by a trusted key").count(), 2, "{out}");
}
