//! The broker attacked on purpose: floods of idle and half-open connections on both listeners,
//! descriptor exhaustion, commands dressed up as file transfers, certificates that withhold
//! permissions or were never issued, absurd times, huge and hostile user names, and strangers
//! trying to lock vendors and approvers out. Each test is one class of attack, with the real
//! binary, real OpenSSH and a real sshd device; attackers use loopback addresses other than
//! 127.0.0.1 (which the harness exempts, as every test vendor comes from it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, WebClient, World, run, unix_now};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A TCP connection from `from` (a loopback address) to `port`.
fn connect_from(from: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((from, 0)).into())?;
    sock.connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(),
        Duration::from_secs(5),
    )?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Whether the server closed `s` (EOF or reset) within `within`; what it sent first is ignored.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Whether the server has already closed `s` (reads what is waiting without blocking).
fn closed_now(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn attacker(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i)
}

#[test]
fn floods_of_idle_and_half_open_connections_leave_the_broker_serving() {
    let mut w = World::with_config(
        9,
        "5m",
        "login_grace = \"3s\"\nmax_startups = \"50:30:100\"\nper_source_max_startups = 5\n\
         web_max_connections = 60\nweb_per_source_connections = 5\nweb_idle_timeout = \"3s\"\n\
         web_header_timeout = \"2s\"\naudit_summary_interval = \"1s\"\n",
    );
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    let mut live = w.shell(&alice, "alice:site-a/dev");
    live.expect("access until", Duration::from_secs(15));
    live.send("echo before-$((40+2))\r");
    live.expect("before-42", Duration::from_secs(10));
    let approver = w.approver("nina", &["--regions", "north"]);
    let web_port: u16 = w.web_url.rsplit(':').next().unwrap().parse().unwrap();

    // Eight attacking sources, ten connections each to each listener: idle ones, ones that stop
    // half-way through the SSH version line or the HTTP headers.
    let mut ssh_flood = Vec::new();
    let mut web_flood = Vec::new();
    for i in 0..8u8 {
        for j in 0..10 {
            if let Ok(mut s) = connect_from(attacker(i), w.broker_port) {
                if j % 2 == 0 {
                    let _ = s.write_all(b"SSH-2.0-flood");
                }
                ssh_flood.push(s);
            }
            if let Ok(mut s) = connect_from(attacker(i), web_port) {
                if j % 2 == 0 {
                    let _ = s.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                }
                web_flood.push(s);
            }
        }
    }
    assert_eq!(ssh_flood.len(), 80, "the kernel accepts every connection");
    // Past the per-source cap, the broker closes connections at once.
    std::thread::sleep(Duration::from_millis(500));
    let refused_now = ssh_flood.iter_mut().map(closed_now).filter(|c| *c).count();
    assert!(
        refused_now >= 35,
        "{refused_now} of 80 SSH flood connections closed at the door (5 per source are admitted)"
    );

    // The live session keeps working, and a new vendor logs in during the flood.
    live.send("echo during-$((40+3))\r");
    live.expect("during-43", Duration::from_secs(10));
    let bob = w.vendor("bob", &[]);
    w.grant("bob", "site-a", "maint");
    let o = w.ssh(&bob, "bob:site-a/dev", &["echo", "bob-in"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("bob-in"),
        "new login during the flood: {}",
        stderr(&o)
    );
    // An approver signs in to the web UI during its flood.
    let web = w.web();
    let r = web.login(&approver);
    assert_eq!(
        r.status, 303,
        "approver sign-in during the web flood: {}",
        r.body
    );

    // The login grace time (3 s) cuts the admitted SSH connections, the header timeout (2 s) and
    // the idle timeout (3 s) the web ones.
    for s in ssh_flood.iter_mut() {
        assert!(
            closed_within(s, Duration::from_secs(6)),
            "an idle unauthenticated SSH connection outlived the login grace time"
        );
    }
    for s in web_flood.iter_mut() {
        assert!(
            closed_within(s, Duration::from_secs(6)),
            "an idle or half-sent web request outlived its timeouts"
        );
    }
    // Sources whose connections idled past the grace time are penalised: refused at once.
    let mut again = connect_from(attacker(0), w.broker_port).unwrap();
    assert!(
        closed_within(&mut again, Duration::from_millis(500)),
        "a penalised source was let in again"
    );

    live.send("echo after-$((40+4))\r");
    live.expect("after-44", Duration::from_secs(10));

    // The audit log has the summaries, not one event per connection.
    w.wait_audit("frontdoor.refused", |e| e["event"] == "frontdoor.refused");
    std::thread::sleep(Duration::from_millis(1500));
    let refused: u64 = w
        .audit()
        .iter()
        .filter(|e| e["event"] == "frontdoor.refused")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert!(refused >= 35, "{refused} refusals summarised");
    w.wait_audit("web.refused", |e| e["event"] == "web.refused");
    w.wait_audit("grace summary", |e| {
        e["event"] == "auth.throttled" && e.to_string().contains("login grace time exceeded")
    });
    let per_connection = w
        .audit()
        .iter()
        .filter(|e| {
            e["event"] == "auth.failed"
                && !e["source"].as_str().unwrap_or("").starts_with("127.0.0.1:")
        })
        .count();
    assert_eq!(
        per_connection, 0,
        "silent connections are summarised, not logged one by one"
    );
    drop(live);
    w.kill_broker();
}

#[test]
fn running_out_of_descriptors_does_not_stop_the_broker() {
    let mut w = World::with_config(
        9,
        "5m",
        "login_grace = \"3s\"\nper_source_max_startups = 200\naudit_summary_interval = \"1s\"\n",
    );
    // The broker runs with few descriptors (soft and hard), so a flood exhausts them.
    w.kill_broker();
    w.start_broker_under(&["prlimit", "--nofile=80:80"]);
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    let mut live = w.shell(&alice, "alice:site-a/dev");
    live.expect("access until", Duration::from_secs(15));
    live.send("echo up-$((1+1))\r");
    live.expect("up-2", Duration::from_secs(10));
    let pid = w.broker_pid().unwrap();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(open < 70, "{open} descriptors open before the flood");
    let mut flood = Vec::new();
    for i in 0..120u32 {
        if let Ok(s) = connect_from(attacker((i % 4) as u8), w.broker_port) {
            flood.push(s);
        }
    }
    // accept() fails with EMFILE now; the broker backs off and keeps its live session.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !w
        .broker_log
        .lock()
        .unwrap()
        .contains("accepting a vendor connection failed")
    {
        assert!(
            Instant::now() < deadline,
            "the flood never exhausted the descriptors ({} open)",
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    live.send("echo still-$((2+1))\r");
    live.expect("still-3", Duration::from_secs(10));
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the broker exited when descriptors ran out"
    );
    // The flood goes away: the broker drains it and new vendors get in.
    drop(flood);
    let bob = w.vendor("bob", &[]);
    w.grant("bob", "site-a", "maint");
    w.ssh_until_in(&bob, "bob:site-a/dev", "bob-in", Duration::from_secs(20));
    live.send("echo end-$((3+1))\r");
    live.expect("end-4", Duration::from_secs(10));
    w.wait_audit("accept failures summarised", |e| {
        e["event"] == "auth.throttled" && e.to_string().contains("accept failed")
    });
}

#[test]
fn commands_dressed_as_transfers_and_unissued_or_restricted_certificates_are_refused() {
    let w = World::new(9, "5m");
    w.ok(&[
        "function",
        "add",
        "files",
        "--allow",
        "sftp",
        "--max-window",
        "8h",
    ]);
    let eve = w.vendor("eve", &[]);
    w.grant("eve", "site-a", "files");
    // The scp-prefix trick: a shell behind a line that starts with "scp ".
    for evil in [
        "scp 2>/dev/null; exec bash -i",
        "scp -t /tmp; id",
        "scp -f $(id)",
    ] {
        let o = w.ssh(&eve, "eve:site-a/dev", &[evil]);
        assert!(!o.status.success(), "{evil}: must be refused");
        assert!(
            stderr(&o).contains("exec is not allowed by function files"),
            "{evil}: {}",
            stderr(&o)
        );
    }
    w.wait_audit("refused exec", |e| {
        e["event"] == "channel.deny" && e["channel"] == "exec"
    });
    // A real legacy scp upload still works under an sftp-only function.
    let file = w.dir.path().join("upload.txt");
    std::fs::write(&file, "payload-7").unwrap();
    let dest = w.dir.path().join("received.txt");
    let mut scp = w.client("scp", &eve, &eve.next_code());
    let o = run(scp
        .args(["-O", "-o", "User=eve:site-a/dev"])
        .arg(&file)
        .arg(format!("127.0.0.1:{}", dest.display())));
    assert!(o.status.success(), "legacy scp: {}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "payload-7");

    // A certificate without permit-pty gets no terminal; without permit-port-forwarding, no -L.
    let rita = w.vendor_with_cert("rita", &[], &["--no-pty", "--no-port-forwarding"]);
    w.grant("rita", "site-a", "full");
    // OpenSSH closes a channel whose forced terminal (-tt) was refused; without -t the command
    // runs with no terminal.
    let mut cmd = w.client("ssh", &rita, &rita.next_code());
    let o = run(cmd.args(["-tt", "rita:site-a/dev@127.0.0.1", "tty"]));
    assert!(
        stderr(&o).contains("PTY allocation request failed"),
        "a terminal was allocated: {} / {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let o = w.ssh(&rita, "rita:site-a/dev", &["echo", "exec-ok"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("exec-ok"),
        "{}",
        stderr(&o)
    );
    w.wait_audit("pty refused", |e| {
        e["event"] == "channel.deny" && e["channel"] == "pty"
    });
    let mut cmd = w.client("ssh", &rita, &rita.next_code());
    let o = run(cmd.args(["-W", "localhost:9", "rita:site-a/dev@127.0.0.1"]));
    assert!(!o.status.success(), "a forward was opened");
    w.wait_audit("forward refused", |e| {
        e["event"] == "channel.deny" && e.to_string().contains("permit-port-forwarding")
    });

    // A certificate signed with the real CA key but never issued (no registry entry) is refused.
    let mallory = w.vendor("mallory", &[]);
    w.grant("mallory", "site-a", "maint");
    let signed = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(w.data.join("keys/vendor_ca"))
        .args([
            "-I",
            "postern:mallory:1",
            "-z",
            "1",
            "-n",
            "mallory",
            "-V",
            "-5m:+1h",
        ])
        .arg(mallory.key.with_extension("pub")));
    assert!(signed.status.success(), "{}", stderr(&signed));
    let o = w.ssh(&mallory, "mallory:site-a/dev", &["true"]);
    assert!(!o.status.success());
    w.wait_audit("unissued certificate", |e| {
        e["event"] == "auth.certificate" && e.to_string().contains("was not issued by this broker")
    });
}

#[test]
fn absurd_times_are_refused() {
    let w = World::new(9, "5m");
    w.vendor("alice", &[]);
    for (args, want) in [
        (
            vec![
                "grant",
                "add",
                "--vendor",
                "alice",
                "--site",
                "site-a",
                "--function",
                "maint",
                "--from",
                "-9223372036854775807s",
                "--until",
                "+1h",
            ],
            "too long",
        ),
        (
            vec![
                "grant",
                "add",
                "--vendor",
                "alice",
                "--site",
                "site-a",
                "--function",
                "maint",
                "--from",
                "now",
                "--until",
                "+99999999999999999999s",
            ],
            "not a duration",
        ),
        (
            vec![
                "function",
                "add",
                "forever",
                "--allow",
                "shell",
                "--max-window",
                "999999999d",
            ],
            "too long",
        ),
        (
            vec![
                "function",
                "add",
                "year",
                "--allow",
                "shell",
                "--max-window",
                "400d",
            ],
            "at most 366 days",
        ),
    ] {
        let o = w.postern(&args);
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(
        w.ok(&["grant", "list"]).lines().count() <= 1,
        "no grant was written"
    );
}

#[test]
fn huge_and_hostile_user_names_cannot_flood_or_attack_the_audit_log() {
    let w = World::new(9, "5m");
    let alice = w.vendor("alice", &[]);
    let before = std::fs::metadata(w.data.join("audit.log")).unwrap().len();
    let huge = format!("{}:site-a/dev", "a".repeat(100 * 1024));
    for _ in 0..3 {
        let mut cmd = w.client("ssh", &alice, &alice.next_code());
        let o = run(cmd.args(["-l", &huge, "127.0.0.1", "true"]));
        assert!(!o.status.success());
    }
    let grown = std::fs::metadata(w.data.join("audit.log")).unwrap().len() - before;
    assert!(
        grown < 8 * 1024,
        "three 100 KiB user names grew the audit log by {grown} bytes"
    );
    w.wait_audit("long name refused", |e| {
        e.to_string().contains("bytes is too long")
    });

    // Escape sequences in a name (OpenSSH's client refuses to send them; a browser form does not)
    // are shown escaped, never sent to the operator's terminal.
    let hostile = "nina\u{1b}[2J\u{1b}[1;1Hforged";
    let a = harness::Approver {
        name: hostile.into(),
        password: "x".into(),
        secret: "JBSWY3DPEHPK3PXP".into(),
        next_step: Default::default(),
    };
    let r = w.web().login_with(&a, "x", "000000");
    assert_eq!(r.status, 401);
    w.wait_audit("hostile name", |e| e.to_string().contains("forged"));
    let out = w.postern(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !text.contains('\u{1b}'),
        "a raw escape reached the terminal"
    );
    assert!(text.contains("\\u{1b}[2J"), "the escape is shown escaped");
}

#[test]
fn strangers_cannot_lock_out_a_vendor_or_an_approver() {
    // The web UI sits behind a TLS-terminating proxy on 127.0.0.1: client addresses come from
    // X-Forwarded-For.
    let w = World::with_config(
        9,
        "5m",
        "trusted_proxies = [\"127.0.0.1\"]\naudit_summary_interval = \"1s\"\n",
    );
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");

    // A stranger with a certificate from their own CA, naming alice, from another address.
    let rogue_ca = w.dir.path().join("rogue_ca");
    harness::keygen(&rogue_ca, "rogue");
    let stranger_key = w.dir.path().join("stranger");
    harness::keygen(&stranger_key, "stranger");
    let signed = run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&rogue_ca)
        .args(["-I", "rogue", "-n", "alice", "-V", "-5m:+1h"])
        .arg(stranger_key.with_extension("pub")));
    assert!(signed.status.success(), "{}", stderr(&signed));
    for _ in 0..12 {
        let o = run(Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&stranger_key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
            .args(["-b", "127.0.0.20", "-p", &w.broker_port.to_string()])
            .args(["alice:site-a/dev@127.0.0.1", "true"]));
        assert!(!o.status.success());
    }
    let o = w.ssh(&alice, "alice:site-a/dev", &["echo", "alice-in"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("alice-in"),
        "alice was locked out by a stranger: {}",
        stderr(&o)
    );

    // Wrong passwords for nina from a stranger's address (behind the proxy) do not lock her out
    // at her own address.
    let nina = w.approver("nina", &["--regions", "north"]);
    let stranger = WebClient::forwarded_for(&w.web_url, Some("203.0.113.9"));
    for _ in 0..8 {
        let r = stranger.login_with(&nina, "not-her-password", "000000");
        assert!(r.status == 401 || r.status == 429, "{}", r.status);
    }
    let r = stranger.login_with(&nina, "not-her-password", "000000");
    assert_eq!(r.status, 429, "the stranger's address is throttled");
    let own = WebClient::forwarded_for(&w.web_url, Some("198.51.100.4"));
    let r = own.login(&nina);
    assert_eq!(
        r.status, 303,
        "nina was locked out by a stranger: {}",
        r.body
    );
    w.wait_audit("throttled sign-ins summarised", |e| {
        e["event"] == "web.throttled" && e.to_string().contains("203.0.113.9")
    });
}

#[test]
fn wrong_codes_back_off_in_the_database_and_survive_a_restart() {
    let mut w = World::new(9, "5m");
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    // The certificate is alice's own (a stolen key and certificate): only codes are wrong.
    for _ in 0..5 {
        let mut cmd = w.client("ssh", &alice, "000000");
        let o = run(cmd.args(["alice:site-a/dev@127.0.0.1", "true"]));
        assert!(!o.status.success());
    }
    w.wait_audit("locked", |e| {
        e["event"] == "auth.totp" && e["locked_until"].is_string()
    });
    // Locked: even the right code is not looked at, on this node or after a restart.
    w.kill_broker();
    w.start_broker();
    let o = w.ssh(&alice, "alice:site-a/dev", &["true"]);
    assert!(!o.status.success(), "a locked vendor got in");
    w.wait_audit("refused while locked", |e| {
        e["event"] == "auth.totp" && e.to_string().contains("too many wrong TOTP codes")
    });
}

#[test]
fn an_outage_at_login_is_reported_as_an_outage() {
    let db = harness::PgDb::new("outage");
    let mut w = World::with_config(9, "5m", &db.config(5432));
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    let o = w.ssh(&alice, "alice:site-a/dev", &["echo", "in-before"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("in-before"),
        "{}",
        stderr(&o)
    );

    // The control plane goes away for this database only.
    db.cut();
    let o = w.ssh(&alice, "alice:site-a/dev", &["echo", "in-during"]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("cannot reach its control plane"),
        "the vendor is told it is an outage: {err}"
    );
    assert!(
        !err.contains("no grant"),
        "an outage is not a denial: {err}"
    );
    w.wait_audit("outage audited", |e| {
        e["outcome"] == "error" && e.to_string().contains("control plane unavailable")
    });

    // Back: the same vendor gets in, nothing was counted against her.
    db.restore();
    w.ssh_until_in(
        &alice,
        "alice:site-a/dev",
        "in-after",
        Duration::from_secs(20),
    );
    w.kill_broker();
}

/// One unauthenticated sign-in POST (double-submit CSRF: the attacker picks cookie and token).
fn post_login(from: Ipv4Addr, port: u16, name: &str, xff: Option<&str>) -> u16 {
    let body = format!("csrf=x&name={name}&password=guess&code=000000");
    let xff = xff
        .map(|ip| format!("X-Forwarded-For: {ip}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nCookie: postern_login=x\r\n{xff}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = connect_from(from, port).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn web_port(w: &World) -> u16 {
    w.web_url.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Wrong TOTP codes from parallel connections that sit at the prompt and answer together: each
/// attempt is counted before its code is looked at, so no more are evaluated than one at a time
/// would be (FREE_FAILURES + 1 = 5) before the lock holds.
#[test]
fn totp_backoff_holds_against_parallel_guesses() {
    let w = World::new(9, "5m");
    let v = w.vendor("thief", &[]);
    let dir = w.dir.path().join("race");
    std::fs::create_dir_all(&dir).unwrap();
    // A code that is wrong for every step the broker accepts now.
    let t = unix_now();
    let valid: Vec<String> = (0..4)
        .map(|k| approvals::totp::code_at(&v.secret, (t / 30 + k).saturating_sub(1) * 30).unwrap())
        .collect();
    let wrong = (0..10)
        .map(|i| format!("00000{i}"))
        .find(|c| !valid.contains(c))
        .unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(dir.join("go"))
            .status()
            .unwrap()
            .success()
    );
    let askpass = dir.join("askpass.sh");
    std::fs::write(
        &askpass,
        format!(
            "#!/bin/sh\ntouch {d}/ready.$$\n: < {d}/go\necho {wrong}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&askpass)
        .status()
        .unwrap();
    const N: usize = 12;
    let mut kids = Vec::new();
    for _ in 0..N {
        let mut cmd = w.client("ssh", &v, "unused");
        cmd.env("SSH_ASKPASS", &askpass)
            .arg("thief:site-a/dev:maint@127.0.0.1")
            .arg("true")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kids.push(cmd.spawn().unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("ready.")
            })
            .count();
        if ready >= N || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every askpass blocks opening the FIFO for reading; opening it for writing releases all.
    {
        let _release = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("go"))
            .unwrap();
    }
    for mut k in kids {
        let _ = k.wait();
    }
    let evaluated = w
        .audit()
        .iter()
        .filter(|e| e["event"] == "auth.totp" && e["reason"] == "wrong TOTP code")
        .count();
    let locked = w
        .audit()
        .iter()
        .filter(|e| {
            e["event"] == "auth.totp"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("locked until"))
        })
        .count();
    eprintln!("wrong codes evaluated: {evaluated}, refused as locked: {locked}");
    assert!(
        evaluated <= 5,
        "{evaluated} wrong codes were evaluated in parallel (sequentially the lock stops at 5)"
    );
}

/// A burst of unauthenticated sign-ins from one address: password hashes (argon2, 19 MiB each)
/// run a few at a time, and each attempt is counted before its hash, so the per-source limit (20
/// in 5 minutes) holds and memory stays bounded.
#[test]
fn unauthenticated_sign_ins_are_bounded_in_memory_and_by_the_limiter() {
    let w = World::new(9, "5m");
    let port = web_port(&w);
    let attacker = Ipv4Addr::new(127, 0, 0, 9);
    // Warm up (the dummy hash is computed once).
    post_login(Ipv4Addr::new(127, 0, 0, 10), port, "nobody", None);
    std::thread::sleep(Duration::from_millis(500));
    let before = w.broker_rss();
    const N: usize = 40;
    let threads: Vec<_> = (0..N)
        .map(|i| {
            std::thread::spawn(move || post_login(attacker, port, &format!("nobody{i}"), None))
        })
        .collect();
    let mut peak = before;
    let t0 = Instant::now();
    while threads.iter().any(|t| !t.is_finished()) && t0.elapsed() < Duration::from_secs(120) {
        peak = peak.max(w.broker_rss());
        std::thread::sleep(Duration::from_millis(5));
    }
    let codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let evaluated = codes.iter().filter(|c| **c == 401).count();
    let throttled = codes.iter().filter(|c| **c == 429).count();
    let grown = (peak.saturating_sub(before)) / (1024 * 1024);
    eprintln!(
        "RSS {} MiB -> peak {} MiB (+{grown} MiB); 401: {evaluated}, 429: {throttled}",
        before >> 20,
        peak >> 20
    );
    assert!(
        evaluated <= 20,
        "{evaluated} sign-ins from one address were evaluated (limit 20 per 5 minutes)"
    );
    assert!(
        grown < 200,
        "one address made the broker grow by {grown} MiB before signing in"
    );
}

/// Behind a trusted proxy, an IPv6 client rotating through its own /64 is throttled like one
/// address (the web sign-in limits group IPv6 by /64, as the SSH admission does).
#[test]
fn web_sign_in_limit_groups_ipv6_by_64() {
    let w = World::with_config(9, "5m", "trusted_proxies = [\"127.0.0.1\"]");
    let port = web_port(&w);
    let mut throttled = 0;
    for i in 1..=30 {
        let code = post_login(
            Ipv4Addr::LOCALHOST,
            port,
            "approver",
            Some(&format!("2001:db8:1:2::{i:x}")),
        );
        if code == 429 {
            throttled += 1;
        }
    }
    assert!(
        throttled > 0,
        "30 failed sign-ins from one /64 and none throttled"
    );
}
