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
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
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
    fn new() -> Netns {
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

    fn exec(&self, program: &std::path::Path) -> Command {
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
struct Relay {
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(listen: &str, to: String) -> Relay {
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

    fn sever(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn edge_row(w: &World, name: &str) -> Value {
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["edge", "list", "--json"])).unwrap();
    rows.into_iter()
        .find(|r| r["name"] == name)
        .expect("the edge is listed")
}

fn wait_online(w: &World, name: &str, online: bool, within: Duration) {
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
    let central_port = free_port();
    let w = World::with_config(
        9,
        "5m",
        &format!("edge_listen = \"127.0.0.1:{central_port}\"\n"),
    );
    let ns = Netns::new();
    // The device: sshd on the namespace's own loopback; the central cannot connect to it.
    let dev_port = free_port();
    let cfg = w.dir.path().join("edge_sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1:{dev_port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
             UsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin yes\nLogLevel ERROR\n",
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

    let _edge = Proc(
        ns.exec(&postern_bin())
            .args(["edge", "run", "--data"])
            .arg(&edge_data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_online(&w, "e1", true, Duration::from_secs(15));

    let v = w.vendor("eve", &[]);
    w.grant("eve", "site-e", "maint");
    let o = w.ssh(&v, "eve:site-e/dev", &["echo", "through-the-edge"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("through-the-edge"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sessions = w.ok(&["sessions", "--json"]);
    assert!(sessions.contains("site-e"), "{sessions}");

    // Cut the link: offline within ~10 s, and the vendor is told so at once.
    relay.sever();
    let t = Instant::now();
    wait_online(&w, "e1", false, Duration::from_secs(15));
    eprintln!("offline noticed after {:?}", t.elapsed());
    let o = w.ssh(&v, "eve:site-e/dev", &["echo", "no"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("site site-e is offline since"), "{err}");
    let sites = w.ok(&["edge", "list"]);
    assert!(sites.contains("offline since"), "{sites}");

    // The link comes back by itself.
    relay.restore();
    wait_online(&w, "e1", true, Duration::from_secs(40));
    let o = w.ssh(&v, "eve:site-e/dev", &["echo", "back-again"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("back-again"));

    // Revoked: cut off, and refused when it tries again.
    w.ok(&["edge", "revoke", "e1"]);
    wait_online(&w, "e1", false, Duration::from_secs(10));
    w.wait_audit("edge.refused", |e| {
        e["event"] == "edge.refused" && e["reason"].as_str().is_some_and(|r| r.contains("revoked"))
    });
}
