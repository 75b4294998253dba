//! A vendor's day through the broker with stock OpenSSH: interactive shell, exec, scp and sftp,
//! port forwarding, each recorded and verifiable.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::{World, run};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A loopback TCP service on the "device" that answers each line with "echo: LINE".
fn echo_service() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(16).flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    let reply = [b"echo: ".as_slice(), &buf[..n]].concat();
                    if n == 0 || s.write_all(&reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn vendor_sessions_end_to_end() {
    let echo_port = echo_service();
    let w = World::new(echo_port, "5m");
    // Each TOTP step is usable once and three are valid at a time: spread the logins over
    // three people of the same vendor company so the test never waits for the clock.
    let alice = w.vendor("alice", &[]);
    let bob = w.vendor("bob", &[]);
    let carol = w.vendor("carol", &[]);
    for v in ["alice", "bob", "carol"] {
        w.grant(v, "site-a", "full");
    }
    let login = "alice:site-a/dev";

    // 1. Interactive shell through a pty: TOTP typed at the prompt, banner with the window end.
    let mut sh = w.shell(&alice, login);
    let screen = sh.expect("access until", Duration::from_secs(15));
    assert!(
        screen.contains("function full"),
        "banner names the function:\n{screen}"
    );
    sh.send("echo the answer is $((6*7))\r");
    sh.expect("the answer is 42", Duration::from_secs(10));
    sh.send("exit 0\r");
    sh.wait_exit(Duration::from_secs(10));

    // 2. Exec: stdout, stderr and the exit code come through unchanged.
    let out = w.ssh(&alice, login, &["echo out; echo err >&2; exit 7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));

    // 3. scp both ways (SFTP protocol, OpenSSH's default) and the legacy scp protocol, and sftp.
    let payload: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = w.dir.path().join("firmware.bin");
    std::fs::write(&local, &payload).unwrap();
    let remote = w.dir.path().join("on-device.bin");
    let back = w.dir.path().join("back.bin");
    // scp and sftp split `user@host:path` at the first colon, so the login goes in -o User=.
    let user = format!("User={login}");
    let target = format!("127.0.0.1:{}", remote.display());
    let up = run(w
        .client("scp", &alice, &alice.next_code())
        .args(["-o", &user])
        .arg(&local)
        .arg(&target));
    assert!(
        up.status.success(),
        "scp upload: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let down = run(w
        .client("scp", &carol, &carol.next_code())
        .args(["-O", "-o", "User=carol:site-a/dev"])
        .arg(&target)
        .arg(&back));
    assert!(
        down.status.success(),
        "legacy scp download: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(
        Sha256::digest(std::fs::read(&back).unwrap()),
        Sha256::digest(&payload)
    );
    let batch = w.dir.path().join("sftp.batch");
    std::fs::write(&batch, format!("ls -l {}\n", remote.display())).unwrap();
    let user = "User=bob:site-a/dev";
    let sftp = run(w
        .client("sftp", &bob, &bob.next_code())
        .args(["-o", "BatchMode=no", "-o", user, "-b"])
        .arg(&batch)
        .arg("127.0.0.1"));
    assert!(
        sftp.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&sftp.stderr)
    );
    assert!(String::from_utf8_lossy(&sftp.stdout).contains("1048576"));

    // 4. ssh -L to the allowed port reaches the device's service; another port is refused.
    let lport = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut fwd = w.client("ssh", &bob, &bob.next_code());
    fwd.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{lport}:localhost:{echo_port}"),
    ])
    .arg("bob:site-a/dev@127.0.0.1");
    let mut fwd = fwd.spawn().unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", lport)) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut conn = conn.expect("forwarded port never opened");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"echo: ping\n");
    drop(conn);
    let _ = fwd.kill();
    let _ = fwd.wait();
    let other = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lport2 = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bad = w.client("ssh", &carol, &carol.next_code());
    bad.args(["-N", "-L", &format!("{lport2}:localhost:{other}")])
        .arg("carol:site-a/dev@127.0.0.1");
    let mut bad = bad.spawn().unwrap();
    w.wait_audit("channel.allow for the forward", |e| {
        e["event"] == "channel.allow" && e["channel"] == format!("forward:{echo_port}")
    });
    let mut refused = false;
    for _ in 0..100 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", lport2)) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"x");
            refused = matches!(c.read(&mut buf), Ok(0) | Err(_));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = bad.kill();
    let _ = bad.wait();
    assert!(
        refused,
        "a forward to a port the function does not list must not connect"
    );
    w.wait_audit("channel.deny for the other port", |e| {
        e["event"] == "channel.deny" && e["channel"] == format!("forward:{other}")
    });

    // The transfers are in the command log with direction, path, size and SHA-256, and so is the forward.
    w.wait_sealed(6);
    let log: Vec<Value> = serde_json::from_str(&w.ok(&["commands", "--json"])).unwrap();
    let digest = hex::encode(Sha256::digest(&payload));
    let remote_s = remote.display().to_string();
    let of_kind = |k: &str| {
        log.iter()
            .filter(|r| r["kind"] == k)
            .map(|r| r["command"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let expected = format!("{remote_s} (1048576 bytes, sha256 {digest})");
    assert_eq!(of_kind("upload"), vec![expected.clone()], "{log:#?}");
    assert_eq!(of_kind("download"), vec![expected], "{log:#?}");
    assert!(
        of_kind("forward").iter().any(|c| c.starts_with(&format!(
            "localhost:{echo_port} (5 bytes to the device, 11 to the vendor"
        ))),
        "{log:#?}"
    );
    assert!(
        w.audit()
            .iter()
            .any(|e| e["event"] == "file.transfer" && e["sha256"] == digest.as_str())
    );

    // 5. Every session is listed, exports as asciicast v2 and verifies.
    let sessions = w.sessions();
    assert!(sessions.len() >= 6, "sessions: {sessions:?}");
    // The interactive session (several started within the same second: find it by its content).
    let cast = sessions
        .iter()
        .map(|s| w.ok(&["export", s["id"].as_str().unwrap()]))
        .find(|c| c.contains("the answer is 42"))
        .expect("the shell session exports its output");
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    let events: Vec<Value> = lines
        .map(|l| serde_json::from_str(l).expect("event line is JSON"))
        .collect();
    assert!(events.iter().all(|e| {
        e.as_array()
            .is_some_and(|a| a.len() == 3 && a[0].is_f64() && a[1].is_string() && a[2].is_string())
    }));
    let text: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(text.contains("the answer is 42"), "exported output: {text}");
    let verify = w.postern(&["verify"]);
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // The exec line is in the recording (read through the command log, since recordings are
    // compressed on disk).
    assert!(
        of_kind("exec")
            .iter()
            .any(|c| c == "echo out; echo err >&2; exit 7"),
        "{log:#?}"
    );
}

/// A device without an sftp server refuses the subsystem; sftp says so at once (its first packet,
/// sent right behind the request, must not hold the channel).
#[test]
fn sftp_to_a_device_without_an_sftp_server_fails_at_once() {
    let w = World::new(9, "5m");
    let dev = crate::rotation::RotDevice::start(&w);
    w.add_device_at("site-a/rot", &format!("127.0.0.1:{}", dev.port));
    let rita = w.vendor("rita", &[]);
    w.grant("rita", "site-a", "full");
    let batch = w.dir.path().join("nosftp.batch");
    std::fs::write(&batch, "ls\n").unwrap();
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new("timeout");
    let sftp = w.client("sftp", &rita, &rita.next_code());
    cmd.arg("20").arg(sftp.get_program()).args(sftp.get_args());
    for (k, v) in sftp.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = run(cmd
        .args([
            "-o",
            "BatchMode=no",
            "-o",
            "User=rita:site-a/rot:full",
            "-b",
        ])
        .arg(&batch)
        .arg("127.0.0.1")
        .stdin(std::process::Stdio::null()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sftp cannot work: {err}");
    assert_ne!(out.status.code(), Some(124), "sftp hung: {err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{err}"
    );
    assert!(err.contains("subsystem request failed"), "{err}");
}
