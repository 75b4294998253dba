//! Device web UIs, first part: functions allow `web:PORT`, and a device's web UI is enrolled with
//! its certificate pinned, from a file or fetched from a real HTTPS server and printed for the
//! operator to confirm (as SSH host keys are). A malformed or unreachable UI adds nothing.

use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::harness::{World, free_port, run, wait_for_port};

/// A device web UI: Python's HTTPS server on loopback with a self-signed certificate.
struct WebDevice {
    child: Child,
    port: u16,
    cert: std::path::PathBuf,
}

impl WebDevice {
    fn start(w: &World, name: &str) -> WebDevice {
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
        let server = "import http.server, ssl, sys, functools\n\
            h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[4])\n\
            s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), h)\n\
            c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
            c.load_cert_chain(sys.argv[2], sys.argv[3])\n\
            s.socket = c.wrap_socket(s.socket, server_side=True)\n\
            s.serve_forever()\n";
        let child = Command::new("python3")
            .args(["-c", server, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_for_port(port, "device web UI");
        WebDevice { child, port, cert }
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
fn device_add(w: &World, target: &str, extra: &[&str]) -> std::process::Output {
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
    let e = w.wait_audit("device.web", |e| {
        e["event"] == "device.web" && e["site"] == "site-a"
    });
    assert_eq!(
        (e["cert"].as_str(), e["pinned"].as_str()),
        (Some(hex.as_str()), Some("fetched on first use"))
    );
    assert!(w.ok(&["device", "list"]).contains(&url));

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
