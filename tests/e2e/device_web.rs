//! Device web UIs, first part: functions allow `web:PORT`, and a device's web UI is enrolled with
//! its certificate pinned, from a file or fetched from a real HTTPS server and printed for the
//! operator to confirm (as SSH host keys are). A malformed or unreachable UI adds nothing.

use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::harness::{World, free_port, run, wait_for_port};

/// A device web UI: Python's HTTPS server on loopback with a self-signed certificate.
pub(crate) struct WebDevice {
    child: Child,
    pub(crate) port: u16,
    pub(crate) cert: std::path::PathBuf,
    /// Where its pages are served from.
    pub(crate) dir: std::path::PathBuf,
}

/// The device web UI's server: static pages, `/ws` an echoing websocket (text comes back as
/// `echo: TEXT`), and with a fifth argument `USER:PASSWORD` every request needs that basic auth.
const DEVICE_SERVER: &str = r#"
import base64, hashlib, http.server, ssl, struct, sys
port, cert, key, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
basic = sys.argv[5] if len(sys.argv) > 5 else ""
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

class Device(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)

    def log_message(self, *a):
        pass

    def authorized(self):
        want = "Basic " + base64.b64encode(basic.encode()).decode()
        if not basic or self.headers.get("Authorization") == want:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="device"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def do_GET(self):
        if not self.authorized():
            return
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        super().do_GET()

    def frame(self, op, data):
        n = len(data)
        size = bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n)
        self.wfile.write(bytes([0x80 | op]) + size + data)
        self.wfile.flush()

    def websocket(self):
        digest = hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(digest).decode())
        self.end_headers()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 15, head[1] & 127
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 128 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 8:
                self.frame(8, data)
                return
            if op == 1:
                self.frame(1, b"echo: " + data)
            elif op == 2:
                self.frame(2, data)
            elif op == 9:
                self.frame(10, data)

s = http.server.ThreadingHTTPServer(("127.0.0.1", port), Device)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(cert, key)
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

impl WebDevice {
    pub(crate) fn start(w: &World, name: &str) -> WebDevice {
        WebDevice::start_with(w, name, None)
    }

    /// A device whose UI needs HTTP basic auth `USER:PASSWORD`, if given.
    pub(crate) fn start_with(w: &World, name: &str, basic: Option<&str>) -> WebDevice {
        WebDevice::launch(w, name, basic, None)
    }

    /// A device on the loopback of the network namespace `ns`, where only its edge reaches it.
    pub(crate) fn start_in(w: &World, name: &str, ns: &crate::edges::Netns) -> WebDevice {
        WebDevice::launch(w, name, None, Some(ns))
    }

    fn launch(
        w: &World,
        name: &str,
        basic: Option<&str>,
        ns: Option<&crate::edges::Netns>,
    ) -> WebDevice {
        let dir = w.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let o = run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(dir.join("index.html"), format!("<h1>{name}</h1>")).unwrap();
        let port = free_port();
        let python = crate::harness::need("python3");
        let mut launcher = match ns {
            Some(ns) => ns.exec(&python),
            None => Command::new(&python),
        };
        let child = launcher
            .args(["-c", DEVICE_SERVER, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .arg(&dir)
            .args(basic)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        match ns {
            // Not reachable from here: the test's first request through the edge waits for it.
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
            None => wait_for_port(port, "device web UI"),
        }
        WebDevice {
            child,
            port,
            cert,
            dir,
        }
    }

    /// The certificate's fingerprint as `openssl x509 -fingerprint -sha256` prints it.
    fn fingerprint(&self) -> String {
        let o = run(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&self.cert));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let hex = text.trim().rsplit('=').next().unwrap().to_owned();
        format!("SHA256 {hex}")
    }
}

impl Drop for WebDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `device add SITE/DEVICE` on the world's sshd, with `extra` arguments.
pub(crate) fn device_add(w: &World, target: &str, extra: &[&str]) -> std::process::Output {
    let key = w.dir.path().join("broker_device_key").display().to_string();
    let addr = format!("127.0.0.1:{}", w.sshd_port);
    let hk = w.sshd_host_pub.display().to_string();
    let mut args = vec![
        "device",
        "add",
        target,
        "--addr",
        &addr,
        "--login",
        &w.device_login,
        "--key",
        &key,
        "--host-key",
        &hk,
    ];
    args.extend_from_slice(extra);
    w.postern(&args)
}

/// A world whose device web front door listens on a port of its own, for `devices.test`.
pub(crate) fn web_world() -> (World, u16) {
    web_world_with("")
}

/// [`web_world`] with more configuration.
fn web_world_with(extra: &str) -> (World, u16) {
    let port = free_port();
    let w = World::with_config(
        9,
        "5m",
        &format!(
            "web_devices_listen = \"127.0.0.1:{port}\"\nweb_devices_domain = \"devices.test\"\n{extra}"
        ),
    );
    (w, port)
}

/// Enrols `site-a/cam` with its web UI at `cam`, pinned to the certificate file `pin`, and adds
/// the function `webui` that allows the UI's port.
pub(crate) fn enrol_cam(w: &World, cam: &WebDevice, pin: &std::path::Path) {
    enrol_cam_with(w, cam, pin, &[]);
}

/// [`enrol_cam`] with more `device add` arguments.
pub(crate) fn enrol_cam_with(w: &World, cam: &WebDevice, pin: &std::path::Path, extra: &[&str]) {
    let url = format!("https://127.0.0.1:{}", cam.port);
    let pin = pin.display().to_string();
    let mut args = vec!["--web", url.as_str(), "--web-cert", pin.as_str()];
    args.extend_from_slice(extra);
    let o = device_add(w, "site-a/cam", &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.ok(&[
        "function",
        "add",
        "webui",
        "--allow",
        &format!("web:{}", cam.port),
    ]);
}

/// The one-time sign-in link `ssh VENDOR:web` prints for `v`.
pub(crate) fn sign_in_link(w: &World, v: &crate::harness::Vendor) -> String {
    let o = w.ssh(v, &format!("{}:web", v.name), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn devices(w: &World) -> Vec<Value> {
    serde_json::from_str(&w.ok(&["device", "list", "--json"])).unwrap()
}

#[test]
fn device_web_uis_are_enrolled_with_their_certificates_pinned() {
    let w = World::new(9, "5m");
    w.ok(&["function", "add", "webui", "--allow", "web:443,web:80"]);
    assert!(w.ok(&["function", "list"]).contains("web:443,web:80"));

    // Fetched on first use and printed: the operator compares it with the device's.
    let cam = WebDevice::start(&w, "cam-01");
    let url = format!("https://127.0.0.1:{}", cam.port);
    let o = device_add(&w, "site-a/cam", &["--web", &url]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = cam.fingerprint();
    assert!(
        out.contains(&format!(
            "web UI {url}: certificate {shown} pinned (fetched on first use)"
        )),
        "{out}"
    );

    // From a file: the same certificate, no connection needed.
    let cert = cam.cert.display().to_string();
    let o = device_add(&w, "site-b/cam", &["--web", &url, "--web-cert", &cert]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("pinned (from file)"));

    let listed = devices(&w);
    let row = listed
        .iter()
        .find(|d| d["site"] == "site-a" && d["name"] == "cam")
        .unwrap();
    assert_eq!(row["web"], url.as_str());
    let hex = shown
        .trim_start_matches("SHA256 ")
        .replace(':', "")
        .to_lowercase();
    assert_eq!(row["web_cert_sha256"], hex.as_str());
    // One action, one record: the device and its web UI together.
    let e = w.wait_audit("device.add", |e| {
        e["event"] == "device.add" && e["site"] == "site-a" && e["device"] == "cam"
    });
    assert_eq!(e["web"], url.as_str());
    assert_eq!(
        (e["web_cert"].as_str(), e["web_pinned"].as_str()),
        (Some(hex.as_str()), Some("fetched on first use"))
    );
    assert!(w.ok(&["device", "list"]).contains(&url));

    // An enrolled device gets its web UI afterwards.
    let out = w.ok(&[
        "device",
        "web",
        "site-b/dev",
        "--url",
        &url,
        "--cert",
        &cert,
    ]);
    assert!(out.contains("pinned (from file)"), "{out}");
    let e = w.wait_audit("device.web", |e| e["event"] == "device.web");
    assert_eq!(
        (e["site"].as_str(), e["cert"].as_str()),
        (Some("site-b"), Some(hex.as_str()))
    );
    let o = w.postern(&[
        "device",
        "web",
        "site-b/nosuch",
        "--url",
        &url,
        "--cert",
        &cert,
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no device nosuch at site-b"));

    // Refused with one clear line, and nothing added.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let not_pem = w.dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let not_pem = not_pem.display().to_string();
    for (target, extra, said) in [
        (
            "site-a/bad1",
            vec!["--web", "ftp://127.0.0.1"],
            "is not a device web address",
        ),
        (
            "site-a/bad2",
            vec!["--web", "https://127.0.0.1/admin"],
            "is not a device web address",
        ),
        (
            "site-a/bad3",
            vec!["--web", closed.as_str()],
            "could not fetch the certificate",
        ),
        (
            "site-a/bad4",
            vec!["--web", url.as_str(), "--web-cert", not_pem.as_str()],
            "not a PEM certificate",
        ),
        (
            "site-a/bad5",
            vec!["--web", "http://127.0.0.1:80", "--web-cert", cert.as_str()],
            "--web-cert is for an https://",
        ),
    ] {
        let o = device_add(&w, target, &extra);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && err.contains(said), "{target}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !devices(&w)
                .iter()
                .any(|d| d["name"] == target.split('/').nth(1).unwrap())
        );
    }

    // A plain-HTTP UI has nothing to pin.
    let o = device_add(&w, "site-a/sensor", &["--web", "http://127.0.0.1:8080"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(plain HTTP: no certificate)"));
}

/// A browser-like client that trusts Postern's device web CA and finds every name under
/// `devices.test` on loopback.
fn browser(w: &World, port: u16, hosts: &[&str]) -> reqwest::blocking::Client {
    let ca = std::fs::read(w.data.join("keys/web_ca.crt")).unwrap();
    let mut b = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .redirect(reqwest::redirect::Policy::none());
    for h in hosts {
        b = b.resolve(h, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    b.build().unwrap()
}

#[test]
fn a_vendor_signs_in_from_ssh_and_sees_the_device_uis_of_their_grants() {
    let (w, port) = web_world();
    let cam = WebDevice::start(&w, "cam-01");
    enrol_cam(&w, &cam, &cam.cert);
    let vic = w.vendor("vic", &[]);
    w.grant("vic", "site-a", "webui");

    // The link, printed over ssh after the certificate and the TOTP code.
    let link = sign_in_link(&w, &vic);
    let prefix = format!("https://devices.test:{port}/enter/");
    assert!(link.starts_with(&prefix), "{link}");
    w.wait_audit("web.entry", |e| {
        e["event"] == "web.entry" && e["vendor"] == "vic"
    });

    // Postern's own web CA vouches for the device domain only.
    let o = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(w.data.join("keys/web_ca.crt")));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Permitted:") && text.contains("DNS:devices.test"),
        "{text}"
    );
    let b = browser(
        &w,
        port,
        &[
            "devices.test",
            "cam--site-a.devices.test",
            "cam2--site-a.devices.test",
        ],
    );
    let home = format!("https://devices.test:{port}/");
    assert_eq!(
        b.get(&home).send().unwrap().status(),
        401,
        "not signed in yet"
    );
    let r = b.get(&link).send().unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for flag in [
        "__Host-postern_web=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "host-only: {cookie}");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let entered = w.wait_audit("web.enter", |e| {
        e["event"] == "web.enter" && e["vendor"] == "vic"
    });
    let source = entered["source"].as_str().unwrap_or_default();
    assert!(source.starts_with("127.0.0.1:"), "{entered}");
    let session = cookie.split(';').next().unwrap().to_owned();

    // The vendor's device UIs, each opened at an origin of its own.
    let page = get_with(&b, &home, &session);
    assert_eq!(page.status(), 200);
    let body = page.text().unwrap();
    assert!(
        body.contains("site-a/cam") && body.contains(r#"href="/open/site-a/cam""#),
        "{body}"
    );

    // Without the device's own session, its origin opens nothing (the sign-in cookie is not
    // sent there, and would not count).
    let origin = format!("https://cam--site-a.devices.test:{port}");
    let r = get_with(&b, &format!("{origin}/"), &session);
    assert_eq!(r.status(), 401);

    // A link works once; another vendor's cookie jar is empty; a made-up cookie is nobody's.
    let again = b.get(&link).send().unwrap();
    assert_eq!(again.status(), 403);
    assert!(
        again
            .text()
            .unwrap()
            .contains("used already or has expired")
    );
    let made_up = format!("__Host-postern_web={}", "0".repeat(64));
    let forged = get_with(&b, &home, &made_up);
    assert_eq!(forged.status(), 401);
    // A second session cookie beside the real one (planted by a sibling host) voids both.
    let both = format!("{session}; {made_up}");
    let r = get_with(&b, &home, &both);
    assert_eq!(r.status(), 401);

    // A vendor without web access gets no link.
    let bob = w.vendor("bob", &[]);
    w.grant("bob", "site-a", "maint");
    let o = w.ssh(&bob, "bob:web", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no grant with web access now"));

    // A link past its minute is refused.
    let late = sign_in_link(&w, &vic);
    let sql = "UPDATE web_entries SET expires = 0 WHERE used IS NULL";
    let o = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(w.data.join("postern.db"))
        .arg(sql));
    assert!(o.status.success());
    assert_eq!(b.get(&late).send().unwrap().status(), 403);

    // The device itself, through its own origin.
    let dev = open_device(&b, port, &session, "site-a", "cam");
    device_opens_and_revocation_closes_it(&w, &b, &origin, &dev);
}

/// A new vendor granted `webui` at `site`, signed in from ssh and handed to the site's `cam`:
/// the browser, the device session's cookie and the device's origin.
fn at_the_cam(
    w: &World,
    port: u16,
    vendor: &str,
    site: &str,
) -> (reqwest::blocking::Client, String, String) {
    let v = w.vendor(vendor, &[]);
    w.grant(vendor, site, "webui");
    let link = sign_in_link(w, &v);
    let host = format!("cam--{site}.devices.test");
    let b = browser(w, port, &["devices.test", &host]);
    let session = signed_in(&b, &link);
    let dev = open_device(&b, port, &session, site, "cam");
    (b, dev, format!("https://{host}:{port}"))
}

/// The device web events (`web.*`) of a session's recording, in order.
pub(crate) fn web_events(w: &World, recording: &str) -> Vec<Value> {
    recorder::Reader::open(&w.data.join("recordings").join(recording))
        .unwrap()
        .filter_map(|r| r.ok())
        .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
        .filter(|e| e["event"].as_str().is_some_and(|e| e.starts_with("web.")))
        .collect()
}

/// `GET url` with `cookie`.
fn get_with(b: &reqwest::blocking::Client, url: &str, cookie: &str) -> reqwest::blocking::Response {
    b.get(url).header("cookie", cookie).send().unwrap()
}

/// Opens the sign-in link; returns the browser session's cookie.
fn signed_in(b: &reqwest::blocking::Client, link: &str) -> String {
    let r = b.get(link).send().unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// Opens a device from the list: the one-time handoff to its origin; returns its session cookie.
fn open_device(
    b: &reqwest::blocking::Client,
    port: u16,
    session: &str,
    site: &str,
    device: &str,
) -> String {
    let open = format!("https://devices.test:{port}/open/{site}/{device}");
    let r = get_with(b, &open, session);
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    let prefix = format!("https://{device}--{site}.devices.test:{port}/.postern/enter/");
    assert!(to.starts_with(&prefix), "{to}");
    let r = b.get(&to).send().unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with("__Host-postern_dev=") && cookie.contains("Secure"),
        "{cookie}"
    );
    // The handoff works once.
    assert_eq!(b.get(&to).send().unwrap().status(), 403);
    cookie.split(';').next().unwrap().to_owned()
}

/// The device's page through Postern, recorded; its cookie opens no other origin; revoking the
/// grant closes the session within a second; the sealed recording verifies.
fn device_opens_and_revocation_closes_it(
    w: &World,
    b: &reqwest::blocking::Client,
    origin: &str,
    dev: &str,
) {
    let page = get_with(b, &format!("{origin}/"), dev);
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("<h1>cam-01</h1>"));
    let r = get_with(b, &format!("{origin}/index.html?x=1"), dev);
    assert_eq!(r.status(), 200);
    let other = origin.replace("cam--site-a", "cam2--site-a");
    let r = get_with(b, &format!("{other}/"), dev);
    assert_eq!(
        r.status(),
        401,
        "one device's session opens no other device"
    );
    let live: Vec<Value> = serde_json::from_str(&w.ok(&["sessions", "--live", "--json"])).unwrap();
    let s = live
        .iter()
        .find(|s| s["vendor"] == "vic" && s["device"] == "cam")
        .unwrap();
    let id = s["id"].as_str().unwrap().to_owned();

    let grant = w.ok(&["grant", "list", "--json"]);
    let grants: Vec<Value> = serde_json::from_str(&grant).unwrap();
    let g = grants.iter().find(|g| g["vendor"] == "vic").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.ok(&["grant", "revoke", &g]);
    let revoked = std::time::Instant::now();
    loop {
        let r = get_with(b, &format!("{origin}/"), dev);
        if r.status() == 403 {
            break;
        }
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(3),
            "still open: {}",
            r.status()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "device web session closed {:?} after the revocation",
        revoked.elapsed()
    );
    w.wait_sealed(1);
    let out = w.ok(&["verify", &id]);
    assert!(
        out.contains("ok") || out.contains("OK") || out.contains("verified"),
        "{out}"
    );
    // The request log is in the session's recording.
    let row: Vec<Value> = serde_json::from_str(&w.ok(&["sessions", "--json"])).unwrap();
    let rec = row.iter().find(|r| r["id"] == id.as_str()).unwrap()["recording"]
        .as_str()
        .unwrap()
        .to_owned();
    let requests: Vec<Value> = web_events(w, &rec)
        .into_iter()
        .filter(|e| e["event"] == "web.request")
        .collect();
    assert!(
        requests
            .iter()
            .any(|e| e["path"] == "/index.html" && e["query"] == "x=1" && e["status"] == 200),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|e| e["path"] == "/" && e["method"] == "GET"),
        "{requests:?}"
    );
    // And searchable as commands are.
    let found = w.ok(&["commands", "--grep", "index.html", "--json"]);
    assert!(found.contains("GET /index.html?x=1 -> 200"), "{found}");
}

#[test]
fn a_device_presenting_another_certificate_than_its_pin_is_refused_and_recorded() {
    let (w, port) = web_world();
    // The UI answering at the address is cam-01's; the pin is cam-02's certificate.
    let cam = WebDevice::start(&w, "cam-01");
    let other = WebDevice::start(&w, "cam-02");
    enrol_cam(&w, &cam, &other.cert);
    let (b, dev, origin) = at_the_cam(&w, port, "ann", "site-a");
    let r = get_with(&b, &format!("{origin}/"), &dev);
    assert_eq!(r.status(), 502);
    let body = r.text().unwrap();
    assert!(body.contains("is not the one pinned for it"), "{body}");
    assert!(!body.contains("cam-01</h1>"));
    let e = w.wait_audit("mismatch", |e| e["event"] == "device.hostkey_mismatch");
    assert_eq!(
        (e["site"].as_str(), e["device"].as_str()),
        (Some("site-a"), Some("cam"))
    );
}

/// A device UI on a network only the site's edge reaches: the front door's requests go through
/// the edge's link (websockets take the same connector), the certificate still pinned end to end.
#[test]
fn a_device_ui_only_the_edge_reaches_is_served_through_it() {
    use crate::edges::{Netns, Relay, central, wait_online};
    use crate::harness::postern_bin;
    let door = free_port();
    let (w, central_port) = central(&format!(
        "web_devices_listen = \"127.0.0.1:{door}\"\nweb_devices_domain = \"devices.test\"\n"
    ));
    let ns = Netns::new();
    let cam = WebDevice::start_in(&w, "cam-e", &ns);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", cam.port)).is_err(),
        "the UI must not be reachable from the central's network"
    );
    w.ok(&["site", "add", "site-e"]);
    let url = format!("https://127.0.0.1:{}", cam.port);
    let pin = cam.cert.display().to_string();
    let o = device_add(&w, "site-e/cam", &["--web", &url, "--web-cert", &pin]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let allow = format!("web:{}", cam.port);
    w.ok(&["function", "add", "webui", "--allow", &allow]);
    let added: Value =
        serde_json::from_str(&w.ok(&["edge", "add", "e1", "--sites", "site-e", "--json"])).unwrap();
    let relay_port = free_port();
    let to_central = format!("127.0.0.1:{central_port}");
    let _relay = Relay::start(&format!("{}:{relay_port}", ns.host_ip), to_central);
    let central_addr = format!("{}:{relay_port}", ns.host_ip);
    let edge_data = w.dir.path().join("edge-data");
    let token = added["token"].as_str().unwrap();
    let joined = run(ns
        .exec(&postern_bin())
        .args(["edge", "join", "--central", &central_addr, "--token", token])
        .arg("--data")
        .arg(&edge_data));
    assert!(joined.status.success(), "{joined:?}");
    let _edge = ns.run_edge(&edge_data);
    wait_online(&w, "e1", true, std::time::Duration::from_secs(15));

    let (b, dev, origin) = at_the_cam(&w, door, "eve", "site-e");
    let page = get_with(&b, &format!("{origin}/"), &dev);
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("<h1>cam-e</h1>"));
}

/// Bodies are kept only when the operator asks, and then only their first bytes, each written
/// before it is passed on.
#[test]
fn bodies_are_recorded_only_when_asked_and_only_their_start() {
    let (w, port) = web_world_with("web_devices_record_bodies = 16\n");
    let cam = WebDevice::start(&w, "cam-b");
    let page = "<h1>cam-b</h1><p>a long status page</p>";
    std::fs::write(cam.dir.join("index.html"), page).unwrap();
    enrol_cam(&w, &cam, &cam.cert);
    let (b, dev, origin) = at_the_cam(&w, port, "ann", "site-a");
    let got = get_with(&b, &format!("{origin}/"), &dev);
    assert!(
        got.text().unwrap().contains("a long status page"),
        "the whole page still arrives"
    );
    let posted = b
        .post(format!("{origin}/login"))
        .header("cookie", &dev)
        .body("user=vic&pin=1234")
        .send()
        .unwrap();
    assert!(posted.status().is_client_error() || posted.status().is_server_error());
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["sessions", "--live", "--json"])).unwrap();
    // Killed like a shell: the next request is refused (the session is over, and forgotten once
    // closed), and the recording is sealed.
    w.ok(&["sessions", "kill", rows[0]["id"].as_str().unwrap()]);
    let killed = std::time::Instant::now();
    loop {
        let r = get_with(&b, &format!("{origin}/"), &dev);
        if matches!(r.status().as_u16(), 401 | 403) {
            break;
        }
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(3),
            "still open after a kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "device web session closed {:?} after the kill",
        killed.elapsed()
    );
    w.wait_sealed(1);
    let bodies: Vec<Value> = web_events(&w, rows[0]["recording"].as_str().unwrap())
        .into_iter()
        .filter(|e| e["event"] == "web.body")
        .collect();
    let b64 = |t: &str| {
        let o = run(Command::new("sh").args(["-c", &format!("printf %s '{t}' | base64 -w0")]));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let answer = bodies
        .iter()
        .find(|e| e["from_device"] == true)
        .expect("the answer's body");
    assert_eq!(answer["data"], b64("<h1>cam-b</h1><p"), "{answer}");
    assert_eq!(answer["truncated"], true);
    assert_eq!(answer["bytes"], page.len());
    let request = bodies
        .iter()
        .find(|e| e["from_device"] == false)
        .expect("the request's body");
    assert_eq!(request["data"], b64("user=vic&pin=123"), "{request}");
    assert_eq!(request["bytes"], 17);
}

/// Two devices whose names differ only in case would be one host name, so one origin: neither is
/// opened.
#[test]
fn devices_named_alike_but_for_case_are_not_opened() {
    let (w, port) = web_world();
    let cam = WebDevice::start(&w, "cam-c");
    enrol_cam(&w, &cam, &cam.cert);
    let url = format!("https://127.0.0.1:{}", cam.port);
    let pin = cam.cert.display().to_string();
    let o = device_add(&w, "site-a/CAM", &["--web", &url, "--web-cert", &pin]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = w.vendor("val", &[]);
    w.grant("val", "site-a", "webui");
    let link = sign_in_link(&w, &v);
    let b = browser(&w, port, &["devices.test"]);
    let session = signed_in(&b, &link);
    let r = get_with(
        &b,
        &format!("https://devices.test:{port}/open/site-a/cam"),
        &session,
    );
    assert_eq!(r.status(), 409);
    assert!(r.text().unwrap().contains("only in case"));
}
