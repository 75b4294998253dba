//! The unbrokered access scan against a real sshd device whose login keeps its keys in
//! `~/.ssh/authorized_keys` (a home directory of the test): a foreign key added there is found
//! (count 1), listed with its age, removed by `scan --remove`, the count is back to 0 and the
//! device still works through Postern. Further `scan_paths` files and `scan_ports` are reported.

use std::process::Command;

use serde_json::Value;

use crate::harness::{World, run};
use crate::rotation::RotDevice;

/// A fresh key pair made by ssh-keygen; returns its public line and fingerprint.
pub(crate) fn foreign_key(w: &World, name: &str) -> (String, String) {
    let path = w.dir.path().join(name);
    let o = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path));
    assert!(o.status.success(), "ssh-keygen");
    let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let o = run(Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(path.with_extension("pub")));
    let fp = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    (line.trim().to_owned(), fp)
}

fn scan_json(w: &World) -> Value {
    let o = w.postern(&["scan", "--site", "site-s", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn setup(extra_config: &str) -> (World, RotDevice) {
    let w = World::with_config(9, "5m", extra_config);
    let dev = RotDevice::start(&w);
    w.ok(&["site", "add", "site-s"]);
    w.add_device_at("site-s/scan", &format!("127.0.0.1:{}", dev.port));
    (w, dev)
}

#[test]
fn a_foreign_key_is_found_listed_removed_and_the_device_still_works() {
    let (w, dev) = setup("");
    let out = w.ok(&["scan", "--site", "site-s"]);
    assert!(out.contains("site-s/scan: 0 unbrokered path(s)"), "{out}");
    assert!(out.contains("open unbrokered paths: 0"), "{out}");

    let (line, fp) = foreign_key(&w, "intruder");
    let with = format!(
        "{}from=\"10.0.0.0/8\" {line}\n",
        std::fs::read_to_string(dev.keys_file()).unwrap()
    );
    std::fs::write(dev.keys_file(), with).unwrap();
    let scan = scan_json(&w);
    assert_eq!(scan["open_unbrokered_paths"], 1, "{scan}");
    let path = &scan["devices"][0]["paths"][0];
    assert_eq!(path["ident"], fp.as_str(), "{scan}");
    assert_eq!(path["comment"], "intruder");
    assert_eq!(path["options"], "from=\"10.0.0.0/8\"");
    let rec = w.wait_audit("scan.run", |e| e["event"] == "scan.run" && e["found"] == 1);
    assert_eq!(rec["scanned"], 1);

    let listed: Value = serde_json::from_str(&w.ok(&["scan", "--list", "--json"])).unwrap();
    assert_eq!(listed["open_unbrokered_paths"], 1, "{listed}");
    assert_eq!(listed["paths"][0]["device"], "scan");
    assert!(listed["paths"][0]["age"].as_i64().unwrap() < 60);
    let table = w.ok(&["scan", "--list"]);
    assert!(table.contains(&fp) && table.contains("AGE"), "{table}");

    let out = w.ok(&["scan", "--remove", &fp]);
    assert!(
        out.contains("site-s/scan: removed 1 foreign key(s)"),
        "{out}"
    );
    assert!(out.contains("open unbrokered paths: 0"), "{out}");
    let keys = std::fs::read_to_string(dev.keys_file()).unwrap();
    assert!(
        !keys.contains("intruder") && keys.contains("ssh-"),
        "{keys}"
    );
    let rec = w.wait_audit("scan.remove", |e| e["event"] == "scan.remove");
    assert_eq!(rec["keys"][0], fp.as_str());
    assert_eq!(scan_json(&w)["open_unbrokered_paths"], 0);

    // Postern's own key stayed: the device still works through Postern.
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-s", "maint");
    let o = w.ssh(&rita, "rita:site-s/scan", &["echo", "still-works"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("still-works"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn scan_paths_ports_and_unreachable_devices_are_reported() {
    let extra = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = format!(
        "scan_paths = [\"{}/*/authorized_keys\"]\nscan_ports = [{port}]\n",
        extra.path().display()
    );
    let (w, dev) = setup(&config);
    let (line, fp) = foreign_key(&w, "other-user");
    std::fs::create_dir_all(extra.path().join("bob")).unwrap();
    std::fs::write(
        extra.path().join("bob/authorized_keys"),
        format!("{line}\n"),
    )
    .unwrap();
    let scan = scan_json(&w);
    assert_eq!(scan["open_unbrokered_paths"], 2, "{scan}");
    let paths = scan["devices"][0]["paths"].as_array().unwrap();
    assert!(
        paths
            .iter()
            .any(|p| p["kind"] == "key" && p["ident"] == fp.as_str()),
        "{scan}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p["kind"] == "port" && p["ident"].as_str() == Some(port.to_string().as_str())),
        "{scan}"
    );

    // Closed when no longer seen.
    drop(listener);
    std::fs::remove_file(extra.path().join("bob/authorized_keys")).unwrap();
    assert_eq!(scan_json(&w)["open_unbrokered_paths"], 0);

    // A device that cannot be scanned is reported as such, not as clean.
    drop(dev);
    let o = w.postern(&["scan", "--site", "site-s"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && out.contains("could not be scanned"),
        "{out}"
    );
}
