//! `postern demo`, the README's first command: it sets up a site, a simulated device, a vendor,
//! a grant and an approver, and serves. The vendor reaches the device with the printed ssh command
//! and the code from `postern demo code`; the approver signs in to the web UI.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::harness::{self, WebClient, postern_bin, run};

#[test]
fn the_demo_serves_a_vendor_and_an_approver() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut demo = Command::new(postern_bin())
        .args([
            "demo",
            "--ssh",
            &format!("127.0.0.1:{port}"),
            "--web",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let (mut ssh_line, mut web_url) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.trim_start().starts_with("ssh -i ") {
            ssh_line = line.trim().to_owned();
        }
        if let Some(u) = line.strip_prefix("postern: web UI for approvers on ") {
            web_url = u.trim().to_owned();
        }
        if line.starts_with("postern: listening for vendors on ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(
        !ssh_line.is_empty() && !web_url.is_empty(),
        "demo printed no ssh command or web UI"
    );

    // The printed ssh command, with the code from `postern demo code` typed by an askpass helper.
    let code = run(Command::new(postern_bin())
        .args(["demo", "code", "--data"])
        .arg(&data));
    let code = String::from_utf8_lossy(&code.stdout).trim().to_owned();
    assert_eq!(code.len(), 6, "{code}");
    let askpass = dir.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho {code}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args: Vec<String> = ssh_line
        .split_whitespace()
        .skip(1)
        .map(|a| a.trim_matches('\'').to_owned())
        .collect();
    let out = run(Command::new("ssh")
        .args(&args)
        .args(["-o", "BatchMode=no", "echo", "demo-$((40+2))"])
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("demo-42"),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The approver signs in with the printed password file and `postern demo code --approver`.
    let password = std::fs::read_to_string(data.join("demo/ops.password")).unwrap();
    let code = run(Command::new(postern_bin())
        .args(["demo", "code", "--approver", "--data"])
        .arg(&data));
    let code = String::from_utf8_lossy(&code.stdout).trim().to_owned();
    let web = WebClient::new(&web_url);
    let form = web.get("/login");
    let r = web.post(
        "/login",
        &[
            ("csrf", &harness::csrf_of(&form.body)),
            ("name", "ops"),
            ("password", password.trim()),
            ("code", &code),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let sessions = web.get("/sessions");
    assert!(sessions.body.contains("alice"), "{}", sessions.body);
    let _ = demo.kill();
    let _ = demo.wait();
}
