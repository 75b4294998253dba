//! Bad operator input: one clear line on stderr, a non-zero exit, and nothing half-written.

use std::process::Command;

use crate::harness::{keygen, postern_bin, run};

fn postern(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    run(Command::new(postern_bin())
        .args(args)
        .arg("--data")
        .arg(data))
}

/// Asserts a refusal: non-zero exit and exactly one line on stderr, containing `needle`.
fn refused(out: std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure ({needle}); stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected, got:\n{err}"
    );
    assert!(
        err.starts_with("postern: ") && err.contains(needle),
        "expected '{needle}' in: {err}"
    );
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    refused(
        postern(&data, &["sessions"]),
        "not a Postern data directory",
    );
    assert!(postern(&data, &["init"]).status.success());
    refused(postern(&data, &["init"]), "already initialised");
    let notempty = dir.path().join("notempty");
    std::fs::create_dir_all(&notempty).unwrap();
    std::fs::write(notempty.join("x"), "x").unwrap();
    refused(postern(&notempty, &["init"]), "not empty");
    assert!(
        !notempty.join("postern.toml").exists(),
        "nothing half-written"
    );

    let ok = |args: &[&str]| assert!(postern(&data, args).status.success(), "{args:?}");
    ok(&["site", "add", "s1"]);
    ok(&[
        "function",
        "add",
        "maint",
        "--allow",
        "shell,exec",
        "--max-window",
        "8h",
    ]);
    ok(&["vendor", "add", "alice", "--org", "acme"]);

    refused(
        postern(&data, &["site", "add", "s1"]),
        "site s1 already exists",
    );
    refused(
        postern(&data, &["site", "add", "bad name"]),
        "is not a valid site name",
    );
    refused(
        postern(&data, &["function", "add", "f2", "--allow", "telnet"]),
        "'telnet' is not a channel kind",
    );
    refused(
        postern(
            &data,
            &[
                "function",
                "add",
                "f3",
                "--allow",
                "shell",
                "--max-window",
                "soon",
            ],
        ),
        "--max-window",
    );
    // `grant add` for VENDOR at s1 of maint until UNTIL.
    let grant_add = |vendor: &str, until: &str| {
        postern(
            &data,
            &[
                "grant",
                "add",
                "--vendor",
                vendor,
                "--site",
                "s1",
                "--function",
                "maint",
                "--until",
                until,
            ],
        )
    };
    refused(grant_add("nobody", "+1h"), "no vendor named nobody");
    refused(
        grant_add("alice", "+9h"),
        "longer than function maint allows",
    );
    refused(
        grant_add("alice", "tomorrow"),
        "--until: 'tomorrow' is not a time",
    );
    refused(
        postern(&data, &["grant", "revoke", "g-000000000000"]),
        "no grant with id",
    );
    refused(
        postern(&data, &["sessions", "kill", "s-000000000000"]),
        "no session with id",
    );
    refused(
        postern(&data, &["export", "s-000000000000"]),
        "no session with id",
    );
    refused(
        postern(&data, &["vendor", "disable", "nobody"]),
        "no vendor named nobody",
    );

    // Certificates: a file that is not a public key, and a disabled vendor.
    let junk = dir.path().join("junk.pub");
    std::fs::write(&junk, "not a key\n").unwrap();
    refused(
        postern(
            &data,
            &[
                "vendor",
                "cert",
                "alice",
                "--pubkey",
                junk.to_str().unwrap(),
            ],
        ),
        "is not an OpenSSH public key",
    );
    let key = dir.path().join("k");
    keygen(&key, "k");
    refused(
        postern(
            &data,
            &[
                "vendor",
                "cert",
                "alice",
                "--pubkey",
                key.with_extension("pub").to_str().unwrap(),
                "--validity",
                "0d",
            ],
        ),
        "--validity",
    );

    // Devices: exactly one credential; an unreadable address.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let hk = key.with_extension("pub");
    refused(
        postern(
            &data,
            &[
                "device",
                "add",
                "s1/d",
                "--addr",
                "10.0.0.1:22",
                "--login",
                "r",
                "--host-key",
                hk.to_str().unwrap(),
            ],
        ),
        "exactly one of --key FILE or --password-file FILE",
    );
    refused(
        postern(
            &data,
            &[
                "device",
                "add",
                "s1/d",
                "--addr",
                "nowhere",
                "--login",
                "r",
                "--password-file",
                pw.to_str().unwrap(),
                "--host-key",
                hk.to_str().unwrap(),
            ],
        ),
        "is not HOST:PORT",
    );
    refused(
        postern(
            &data,
            &[
                "device",
                "add",
                "s9/d",
                "--addr",
                "10.0.0.1:22",
                "--login",
                "r",
                "--password-file",
                pw.to_str().unwrap(),
                "--host-key",
                hk.to_str().unwrap(),
            ],
        ),
        "no site named s9",
    );

    // A database URL of an unknown kind.
    std::fs::write(data.join("other.toml"), "database_url = \"mysql://x\"\n").unwrap();
    let out = run(Command::new(postern_bin())
        .args(["sessions", "--config"])
        .arg(data.join("other.toml"))
        .arg("--data")
        .arg(&data));
    refused(out, "database_url must start with sqlite:// or postgres://");

    // The audit log streams as JSON lines for a SIEM, and --follow picks up new events.
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&postern(&data, &["audit", "--json"]).stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
    assert!(
        lines
            .iter()
            .any(|e| e["event"] == "site.add" && e["site"] == "s1")
    );
    assert!(
        lines
            .windows(2)
            .all(|p| p[1]["seq"].as_u64() == p[0]["seq"].as_u64().map(|s| s + 1))
    );
    let mut follow = Command::new(postern_bin())
        .args(["audit", "--follow", "--json", "--data"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        postern(&data, &["site", "add", "late-site"])
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = false;
    while std::time::Instant::now() < deadline && !seen {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = line.contains("late-site");
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen, "audit --follow did not show the new event");

    // After all of it, the audit log still verifies and the directory holds only what succeeded.
    let v = postern(&data, &["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let sites = postern(&data, &["site", "list", "--json"]);
    let sites: serde_json::Value = serde_json::from_slice(&sites.stdout).unwrap();
    assert_eq!(sites.as_array().map(Vec::len), Some(2));
}
