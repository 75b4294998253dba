//! Site edges: a device that only the edge can reach (it listens on the loopback of a network
//! namespace the test makes; the edge runs in that namespace), the central and the edge as real
//! `postern` processes, and a relay between them that the test severs to cut the link.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{World, free_port, need, postern_bin, run};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace joined to the host by a veth pair: host 10.211.N.1, namespace 10.211.N.2.
pub(crate) struct Netns {
    name: String,
    host_if: String,
    pub(crate) host_ip: String,
}

fn ip(args: &[&str]) {
    let o = run(Command::new(need("ip")).args(args));
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Netns {
    pub(crate) fn new() -> Netns {
        let n = (std::process::id() % 200) as u32 * 4 + NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("pstedge{}-{n}", std::process::id());
        let (host_if, ns_if) = (
            format!("pe{n}h{}", std::process::id() % 1000),
            format!("pe{n}n"),
        );
        let (host_ip, ns_ip) = (
            format!("10.211.{}.1", n % 250),
            format!("10.211.{}.2", n % 250),
        );
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        Netns {
            name,
            host_if,
            host_ip,
        }
    }

    /// `postern edge run` inside the namespace, until dropped.
    pub(crate) fn run_edge(&self, data: &std::path::Path) -> Proc {
        Proc(
            self.exec(&postern_bin())
                .args(["edge", "run", "--data"])
                .arg(data)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    pub(crate) fn exec(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new(need("ip"));
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["link", "del", &self.host_if]));
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A TCP relay the test can sever (every connection closed, new ones refused) and restore.
pub(crate) struct Relay {
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub(crate) fn start(listen: &str, to: String) -> Relay {
        let listener = TcpListener::bind(listen).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(a) = inbound else { continue };
                if !up2.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(b) = TcpStream::connect(&to) else {
                    continue;
                };
                conns2
                    .lock()
                    .unwrap()
                    .extend([a.try_clone().unwrap(), b.try_clone().unwrap()]);
                for (mut r, mut w) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = r.read(&mut buf) {
                            if n == 0 || w.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = w.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { up, conns }
    }

    pub(crate) fn sever(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub(crate) fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A central whose edge listener is on a port of its own; `extra` goes to its configuration.
pub(crate) fn central(extra: &str) -> (World, u16) {
    let port = free_port();
    let w = World::with_config(
        9,
        "5m",
        &format!("edge_listen = \"127.0.0.1:{port}\"\n{extra}"),
    );
    (w, port)
}

/// `postern edge join` into `dir` with the token `edge add --json` printed (`added`); it must work.
pub(crate) fn join_edge(dir: &std::path::Path, central: &str, added: &Value) {
    let joined = run(Command::new(postern_bin())
        .args(["edge", "join", "--central", central, "--token"])
        .arg(added["token"].as_str().unwrap())
        .arg("--data")
        .arg(dir));
    assert!(joined.status.success(), "{joined:?}");
}

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn edge_row(w: &World, name: &str) -> Value {
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["edge", "list", "--json"])).unwrap();
    rows.into_iter()
        .find(|r| r["name"] == name)
        .expect("the edge is listed")
}

pub(crate) fn wait_online(w: &World, name: &str, online: bool, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let row = edge_row(w, name);
        if row["online"] == online {
            return;
        }
        assert!(
            Instant::now() < end,
            "edge {name} not online={online} in time: {row}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_device_only_the_edge_reaches_is_served_through_it_and_a_cut_link_says_so() {
    let (w, central_port) = central("");
    let ns = Netns::new();
    // The device: sshd on the namespace's own loopback; the central cannot connect to it.
    let dev_port = free_port();
    let cfg = w.dir.path().join("edge_sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1:{dev_port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
             UsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin yes\nLogLevel ERROR\n\
             Subsystem sftp internal-sftp\n",
            w.dir.path().join("sshd_host_ed25519").display(),
            w.dir.path().join("broker_device_key.pub").display(),
        ),
    )
    .unwrap();
    let _sshd = Proc(
        ns.exec(&need("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        TcpStream::connect(("127.0.0.1", dev_port)).is_err(),
        "the device must not be reachable from the central's network"
    );
    w.ok(&["site", "add", "site-e"]);
    let hk = w.dir.path().join("sshd_host_ed25519.pub");
    let key = w.dir.path().join("broker_device_key");
    w.ok(&[
        "device",
        "add",
        "site-e/dev",
        "--addr",
        &format!("127.0.0.1:{dev_port}"),
    ]
    .into_iter()
    .chain(["--login", &w.device_login, "--key", key.to_str().unwrap()])
    .chain(["--host-key", hk.to_str().unwrap()])
    .collect::<Vec<_>>());
    let added: Value =
        serde_json::from_str(&w.ok(&["edge", "add", "e1", "--sites", "site-e", "--json"])).unwrap();
    let token = added["token"].as_str().unwrap().to_owned();

    let relay_port = free_port();
    let relay = Relay::start(
        &format!("{}:{relay_port}", ns.host_ip),
        format!("127.0.0.1:{central_port}"),
    );
    let central = format!("{}:{relay_port}", ns.host_ip);
    let edge_data = w.dir.path().join("edge-data");
    let join = |token: &str| {
        run(ns
            .exec(&postern_bin())
            .args([
                "edge",
                "join",
                "--central",
                &central,
                "--token",
                token,
                "--data",
            ])
            .arg(&edge_data))
    };
    let joined = join(&token);
    assert!(
        joined.status.success(),
        "join: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    // The token works once.
    let again = join(&token);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("used already"),
        "{again:?}"
    );
    w.wait_audit("edge.join_refused", |e| {
        e["event"] == "edge.join_refused" && e["edge"] == "e1"
    });

    let _edge = ns.run_edge(&edge_data);
    wait_online(&w, "e1", true, Duration::from_secs(15));

    let v = w.vendor("eve", &[]);
    w.grant("eve", "site-e", "full");
    // Each vendor's TOTP codes are single-use steps: a second vendor keeps the test from waiting.
    let fay = w.vendor("fay", &[]);
    w.grant("fay", "site-e", "maint");
    // 4 MiB up through the edge (the SSH client only writes: the stream's window must move).
    let payload = w.dir.path().join("payload.bin");
    let bytes: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&payload, &bytes).unwrap();
    let up = run(w
        .client("ssh", &v, &v.next_code())
        .arg("eve:site-e/dev@127.0.0.1")
        .arg("wc -c")
        .stdin(std::fs::File::open(&payload).unwrap()));
    assert_eq!(
        String::from_utf8_lossy(&up.stdout).trim(),
        "4194304",
        "{up:?}"
    );
    // sftp through the edge.
    let batch = w.dir.path().join("sftp.batch");
    std::fs::write(&batch, format!("ls -l {}\n", payload.display())).unwrap();
    let sftp = run(w
        .client("sftp", &v, &v.next_code())
        .args(["-o", "BatchMode=no", "-o", "User=eve:site-e/dev:full", "-b"])
        .arg(&batch)
        .arg("127.0.0.1"));
    assert!(
        String::from_utf8_lossy(&sftp.stdout).contains("4194304"),
        "{sftp:?}"
    );
    // Recorded and verified at the central.
    let sessions: Vec<Value> = serde_json::from_str(&w.ok(&["sessions", "--json"])).unwrap();
    let ours: Vec<&Value> = sessions.iter().filter(|s| s["site"] == "site-e").collect();
    assert!(ours.len() >= 2, "{sessions:?}");
    for s in ours {
        let id = s["id"].as_str().unwrap();
        let verified = w.postern(&["verify", id]);
        assert!(verified.status.success(), "verify {id}: {verified:?}");
    }

    // Administration connects from the central: it refuses a device behind an edge rather than
    // dial its LAN address on the central's own network.
    let rot = w.postern(&["device", "rotate", "site-e/dev"]);
    assert!(!rot.status.success());
    assert!(
        String::from_utf8_lossy(&rot.stdout).contains("behind site edge e1"),
        "{rot:?}"
    );
    let scan = w.postern(&["scan", "--site", "site-e"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&scan.stdout),
        String::from_utf8_lossy(&scan.stderr)
    );
    assert!(said.contains("behind site edge e1"), "{said}");

    // Cut the link: offline within ~10 s, and the vendor is told so at once.
    relay.sever();
    let t = Instant::now();
    wait_online(&w, "e1", false, Duration::from_secs(15));
    eprintln!("offline noticed after {:?}", t.elapsed());
    let o = w.ssh(&fay, "fay:site-e/dev", &["echo", "no"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("site site-e is offline since"), "{err}");
    let edges = w.ok(&["edge", "list"]);
    assert!(edges.contains("offline since"), "{edges}");
    let sites = w.ok(&["site", "list"]);
    assert!(
        sites.contains("offline since") && sites.contains("its edge lost contact"),
        "{sites}"
    );

    // The link comes back by itself.
    relay.restore();
    wait_online(&w, "e1", true, Duration::from_secs(40));
    let o = w.ssh(&fay, "fay:site-e/dev", &["echo", "back-again"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("back-again"));

    // Revoked: cut off, and refused when it tries again.
    w.ok(&["edge", "revoke", "e1"]);
    wait_online(&w, "e1", false, Duration::from_secs(10));
    w.wait_audit("edge.refused", |e| {
        e["event"] == "edge.refused" && e["reason"].as_str().is_some_and(|r| r.contains("revoked"))
    });
}

/// An edge data dir holding the given certificate and key (and the central's real CA).
fn fake_edge(dir: &std::path::Path, central: &str, cert: &str, key: &str, ca: &str) {
    let d = dir.join("edge");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("edge.crt"), cert).unwrap();
    std::fs::write(d.join("edge.key"), key).unwrap();
    std::fs::write(d.join("ca.crt"), ca).unwrap();
    let state = serde_json::json!({"edge": "e2", "central": central,
        "not_after": 4_000_000_000i64, "ttl": 86_400});
    std::fs::write(d.join("edge.json"), state.to_string()).unwrap();
}

fn client_params(days_from: i64, days_to: i64) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI("postern-edge:e2".try_into().unwrap())];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(days_from);
    p.not_after = now + time::Duration::days(days_to);
    p
}

/// Runs `edge run` on `dir` until the central has audited a refusal whose reason holds `why`.
fn refused(w: &World, dir: &std::path::Path, why: &str) {
    let _edge = Proc(
        Command::new(postern_bin())
            .args(["edge", "run", "--data"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    w.wait_audit("edge.refused", |e| {
        e["event"] == "edge.refused" && e["reason"].as_str().is_some_and(|r| r.contains(why))
    });
}

#[test]
fn certificates_of_another_ca_or_expired_are_refused_and_audited() {
    let (w, central_port) = central("");
    w.ok(&["site", "add", "site-f"]);
    w.ok(&["edge", "add", "e2", "--sites", "site-f"]);
    let central = format!("127.0.0.1:{central_port}");
    let keys = w.data.join("keys");
    let real_ca = std::fs::read_to_string(keys.join("edge_ca.crt")).unwrap();

    // A CA of its own, naming the registered edge: the handshake fails.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = rcgen::CertifiedIssuer::self_signed(ca_params, other_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = client_params(-1, 30).signed_by(&key, &other).unwrap();
    let dir = w.dir.path().join("other-ca");
    fake_edge(&dir, &central, &cert.pem(), &key.serialize_pem(), &real_ca);
    refused(&w, &dir, "TLS handshake");

    // The real CA, but expired.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(keys.join("edge_ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&real_ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = client_params(-30, -1).signed_by(&key, &issuer).unwrap();
    let dir = w.dir.path().join("expired");
    fake_edge(&dir, &central, &cert.pem(), &key.serialize_pem(), &real_ca);
    refused(&w, &dir, "certificate expired");

    // The real CA and valid, but not the certificate the central issued to e2 (never joined).
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = client_params(-1, 30).signed_by(&key, &issuer).unwrap();
    let dir = w.dir.path().join("not-current");
    fake_edge(&dir, &central, &cert.pem(), &key.serialize_pem(), &real_ca);
    refused(&w, &dir, "is not its current one");
}

#[test]
fn an_edge_renews_its_certificate_before_it_ends_and_only_the_new_one_is_accepted() {
    let (w, central_port) = central("");
    w.ok(&["site", "add", "site-r"]);
    let added: Value =
        serde_json::from_str(&w.ok(&["edge", "add", "e3", "--sites", "site-r", "--json"])).unwrap();
    let dir = w.dir.path().join("edge-r");
    let central = format!("127.0.0.1:{central_port}");
    join_edge(&dir, &central, &added);
    let old_cert = std::fs::read_to_string(dir.join("edge/edge.crt")).unwrap();
    let old_key = std::fs::read_to_string(dir.join("edge/edge.key")).unwrap();
    // Make the edge believe its certificate ends in ten seconds: it renews before connecting.
    let state_path = dir.join("edge/edge.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 10;
    state["not_after"] = soon.into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    let edge = Proc(
        Command::new(postern_bin())
            .args(["edge", "run", "--data"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let renewed = w.wait_audit("edge.renew", |e| {
        e["event"] == "edge.renew" && e["edge"] == "e3"
    });
    wait_online(&w, "e3", true, Duration::from_secs(15));
    let end = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(dir.join("edge/edge.crt")).unwrap() == old_cert {
        assert!(Instant::now() < end, "no new certificate was written");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(edge_row(&w, "e3")["cert_serial"], renewed["serial"]);
    drop(edge);

    // The replaced certificate (with its own key) is refused from now on.
    std::fs::write(dir.join("edge/edge.crt"), &old_cert).unwrap();
    std::fs::write(dir.join("edge/edge.key"), &old_key).unwrap();
    std::fs::write(&state_path, {
        let mut s = state.clone();
        s["not_after"] = (soon + 86_400).into();
        s.to_string()
    })
    .unwrap();
    refused(&w, &dir, "is not its current one");
}
