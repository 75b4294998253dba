//! A fleet on one machine: `postern simulate` serves 500 scripted devices at 100 sites from one
//! process, each on its own port with its own host key; `postern device import` enrols them all;
//! vendors reach devices across the fleet through the broker with real OpenSSH; a site's devices
//! are rotated through the keys their logins' homes hold.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{World, postern_bin};

struct Fleet(std::process::Child);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn five_hundred_simulated_devices_behind_one_broker() {
    let w = World::new(9, "5m");
    let dir = w.dir.path();
    let key = dir.join("broker_device_key");
    let list = dir.join("fleet.csv");
    let _fleet = Fleet(
        Command::new(postern_bin())
            .args(["simulate", "--sites", "100", "--devices", "5", "--scripted"])
            .arg("--authorized-key")
            .arg(key.with_extension("pub"))
            .arg("--out")
            .arg(&list)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !list.exists() {
        assert!(
            Instant::now() < deadline,
            "the simulator wrote no enrolment list"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    let out = w.ok(&[
        "device",
        "import",
        list.to_str().unwrap(),
        "--login",
        "maint",
        "--key",
        key.to_str().unwrap(),
        "--region",
        "south",
    ]);
    assert!(
        out.contains("500 devices imported (100 new sites)"),
        "{out}"
    );
    eprintln!("imported 500 devices in {:?}", t.elapsed());

    // One vendor, grants at three sites across the fleet; each device answers with its own name.
    let v = w.vendor("fay", &[]);
    for site in ["site-0000", "site-0042", "site-0099"] {
        w.grant("fay", site, "maint");
    }
    for target in ["site-0000/dev-00", "site-0042/dev-03", "site-0099/dev-04"] {
        let o = w.ssh(&v, &format!("fay:{target}"), &["hostname"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            target,
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Grants still scope the fleet: none at site-0050.
    let gil = w.vendor("gil", &[]);
    w.grant("gil", "site-0042", "maint");
    let o = w.ssh(&gil, "gil:site-0050/dev-00", &["hostname"]);
    assert!(!o.status.success(), "no grant at site-0050");

    // An interactive session on a scripted device.
    let mut sh = w.shell(&gil, "gil:site-0042/dev-01");
    sh.expect("site-0042/dev-01$ ", Duration::from_secs(15));
    sh.send("echo fleet-ok\r");
    sh.expect("fleet-ok", Duration::from_secs(10));
    sh.send("exit\r");
    sh.wait_exit(Duration::from_secs(10));

    // Rotation changes what each simulated login's ~/.ssh/authorized_keys holds, as on a device.
    let out = w.ok(&["device", "rotate", "--site", "site-0042"]);
    assert_eq!(out.matches(": rotated, key").count(), 5, "{out}");
    let enrolled = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let enrolled = enrolled.split_whitespace().nth(1).unwrap();
    let homes = list.with_extension("homes");
    for d in 0..5 {
        let keys = homes.join(format!("site-0042/dev-{d:02}/.ssh/authorized_keys"));
        let keys = std::fs::read_to_string(keys).unwrap();
        assert_eq!(keys.lines().count(), 1, "{keys}");
        assert!(
            keys.contains("postern:site-0042/") && !keys.contains(enrolled),
            "{keys}"
        );
    }
    let o = w.ssh(&v, "fay:site-0042/dev-03", &["hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "site-0042/dev-03"
    );
    let untouched = homes.join("site-0000/dev-00/.ssh/authorized_keys");
    assert!(
        std::fs::read_to_string(untouched)
            .unwrap()
            .contains(enrolled)
    );
}
