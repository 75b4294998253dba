//! Scheduled rotation (`rotate_every`) against a real sshd device: the broker rotates a device
//! whose credential is older than `rotate_every` by itself, and of two nodes sharing one
//! PostgreSQL database exactly one rotates it each time.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{TwoNodes, World};
use crate::rotation::{RotDevice, device_row, key_lines, vendor_session_works};

fn rotations_of(w: &World, event: &str) -> Vec<Value> {
    w.audit()
        .into_iter()
        .filter(|e| e["event"] == event && e["device"] == "rot")
        .collect()
}

/// A vendor session on site-a/rot under `function`, which must print `marker`.
fn session_with(w: &World, v: &crate::harness::Vendor, function: &str, marker: &str) {
    let o = w.ssh(v, &format!("rita:site-a/rot:{function}"), &["echo", marker]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(marker),
        "{function} session: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_due_device_is_rotated_in_the_background() {
    let w = World::with_config(9, "5m", "rotate_every = \"2s\"\n");
    let dev = RotDevice::start(&w);
    w.add_device_at("site-a/rot", &format!("127.0.0.1:{}", dev.port));
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "maint");
    let rec = w.wait_audit("device.rotate by the schedule", |e| {
        e["event"] == "device.rotate" && e["device"] == "rot"
    });
    assert_eq!(
        rec["actor"].as_str().map(|a| a.contains("broker")),
        Some(true),
        "{rec}"
    );
    let old_key = w.dir.path().join("broker_device_key");
    assert!(
        !dev.login_with(&w, &old_key).status.success(),
        "sshd refuses the enrolment key after the scheduled rotation"
    );
    let keys = dev.authorized_keys();
    assert_eq!(key_lines(&keys).len(), 1, "{keys}");
    assert!(keys.contains("postern:site-a/rot"), "{keys}");
    vendor_session_works(&w, &rita, "after-scheduled-rotation");
    assert_eq!(device_row(&w, "site-a/rot")["last_rotation"], "ok");
}

#[test]
fn of_two_nodes_exactly_one_rotates_each_time() {
    let mut nodes = TwoNodes::new("rotsched", "5m");
    for w in [&mut nodes.a, &mut nodes.b] {
        w.kill_broker();
        let cfg = w.data.join("postern.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}\nrotate_every = \"2s\"\n")).unwrap();
    }
    let dev = RotDevice::start(&nodes.a);
    nodes
        .a
        .add_device_at("site-a/rot", &format!("127.0.0.1:{}", dev.port));
    nodes.a.start_broker();
    nodes.b.start_broker();
    let deadline = Instant::now() + Duration::from_secs(25);
    let rotated = loop {
        let mut all = rotations_of(&nodes.a, "device.rotate");
        all.extend(rotations_of(&nodes.b, "device.rotate"));
        if all.len() >= 4 || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(rotated.len() >= 4, "rotations: {rotated:?}");
    // Exactly once: no key was rotated away twice, and no node tripped over the other's work.
    let mut old: Vec<&str> = rotated
        .iter()
        .filter_map(|e| e["old_key"].as_str())
        .collect();
    old.sort_unstable();
    let n = old.len();
    old.dedup();
    assert_eq!(old.len(), n, "a key was rotated twice: {rotated:?}");
    for w in [&nodes.a, &nodes.b] {
        assert!(
            rotations_of(w, "device.rotate_failed").is_empty(),
            "{:?}",
            rotations_of(w, "device.rotate_failed")
        );
    }
    assert_eq!(key_lines(&dev.authorized_keys()).len(), 1);
}

#[test]
fn a_function_with_rotate_after_session_leaves_a_new_credential_after_each_session() {
    let w = World::new(9, "5m");
    let dev = RotDevice::start(&w);
    w.add_device_at("site-a/rot", &format!("127.0.0.1:{}", dev.port));
    let out = w.ok(&[
        "function",
        "add",
        "once",
        "--allow",
        "shell,exec",
        "--rotate-after-session",
    ]);
    assert!(out.contains("rotated after every session"), "{out}");
    w.wait_audit("function.rotation", |e| {
        e["event"] == "function.rotation"
            && e["function"] == "once"
            && e["rotate_after_session"] == true
    });
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "once");
    w.grant("rita", "site-a", "maint");
    let enrolment_key = w.dir.path().join("broker_device_key");

    // A session of an ordinary function rotates nothing.
    session_with(&w, &rita, "maint", "maint-session");
    std::thread::sleep(Duration::from_secs(1));
    assert!(rotations_of(&w, "device.rotate").is_empty());
    assert!(dev.login_with(&w, &enrolment_key).status.success());

    // A session of `once` does: the key sshd accepted during it is refused afterwards.
    let o = w.ssh(&rita, "rita:site-a/rot:once", &["echo", "break-glass"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("break-glass"),
        "{o:?}"
    );
    let first = w.wait_audit("device.rotate after the session", |e| {
        e["event"] == "device.rotate" && e["device"] == "rot"
    });
    assert!(
        first["actor"].as_str().unwrap_or("").starts_with("broker:"),
        "{first}"
    );
    assert!(
        !dev.login_with(&w, &enrolment_key).status.success(),
        "sshd refuses the credential of the session once it has ended"
    );
    assert_eq!(key_lines(&dev.authorized_keys()).len(), 1);

    // The next session works with the new credential, and ends with yet another one.
    let o = w.ssh(&rita, "rita:site-a/rot:once", &["echo", "second"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("second"),
        "{o:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while rotations_of(&w, "device.rotate").len() < 2 {
        assert!(Instant::now() < deadline, "no second rotation");
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = rotations_of(&w, "device.rotate");
    assert_eq!(all[1]["old_key"], all[0]["new_key"], "{all:?}");

    // Switched off, sessions leave the credential alone.
    w.ok(&[
        "function",
        "update",
        "once",
        "--rotate-after-session",
        "off",
    ]);
    session_with(&w, &rita, "maint", "maint-again");
    let o = w.ssh(&rita, "rita:site-a/rot:once", &["echo", "third"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("third"),
        "{o:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rotations_of(&w, "device.rotate").len(), 2);
}
