//! Every operator action, from the web form and the CLI alike, fails closed: with the audit log
//! unwritable, approve, deny, revoke, terminate, review and disable are refused and change nothing
//! (no notification either); with it back, they work. The web session page verifies a recording
//! exactly as `postern verify` does. One-shot commands end quietly on a closed pipe, and the
//! database files are owner-only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{self, World, csrf_of, postern_bin, run};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

/// Moves the audit log aside and puts a directory in its place: every append fails, even for
/// root (whom file modes do not stop). Dropping it puts the log back.
struct BrokenAuditLog<'a>(&'a Path);

impl<'a> BrokenAuditLog<'a> {
    fn new(data: &'a Path) -> BrokenAuditLog<'a> {
        std::fs::rename(data.join("audit.log"), data.join("audit.log.kept")).unwrap();
        std::fs::create_dir(data.join("audit.log")).unwrap();
        BrokenAuditLog(data)
    }
}

impl Drop for BrokenAuditLog<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("audit.log"));
        let _ = std::fs::rename(self.0.join("audit.log.kept"), self.0.join("audit.log"));
    }
}

fn json_list(w: &World, args: &[&str]) -> Vec<Value> {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&w.ok(&a)).unwrap()
}

fn find<'a>(rows: &'a [Value], key: &str, id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r[key] == id)
        .unwrap_or_else(|| panic!("no {key} {id} in {rows:?}"))
}

fn notification_events(w: &World) -> Vec<String> {
    let mut v: Vec<String> = json_list(w, &["notifications"])
        .iter()
        .map(|n| n["event"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_action_is_refused_when_the_audit_log_cannot_be_written() {
    // Notifications go to a receiver that is never there: they stay queued, so they can be counted.
    let w = World::with_config(9, "5m", "webhook_url = \"http://127.0.0.1:9/hook\"\n");
    w.emergency_function();
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);

    // Something for each action: two pending requests, a grant, a live break-glass session.
    let rae = w.vendor("rae", &[]);
    let _rae_sh = w.file_request(&rae, "rae:site-a/dev:maint", "camera offline", "30m");
    let r1 = w.pending_request("rae");
    let dee = w.vendor("dee", &[]);
    let _dee_sh = w.file_request(&dee, "dee:site-a/dev:maint", "firmware", "");
    let r2 = w.pending_request("dee");
    w.vendor("gil", &[]);
    let g = w.grant("gil", "site-a", "maint");
    let ivy = w.vendor("ivy", &[]);
    let mut sh = w.shell(&ivy, "ivy:site-a/dev:emergency");
    sh.expect("Reason for the emergency (empty to cancel): ", T);
    sh.send("pump controller offline\r");
    sh.expect("For how long?", T);
    sh.send("\r");
    sh.expect("access until", T);
    let opened = w.wait_audit("breakglass.open", |e| e["event"] == "breakglass.open");
    let bg = opened["breakglass"].as_str().unwrap().to_owned();
    let sid = w
        .sessions()
        .iter()
        .find(|s| s["vendor"] == "ivy" && s["ended"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let notified = notification_events(&w);
    let csrf = csrf_of(&web.get("/requests").body);

    {
        let _broken = BrokenAuditLog::new(&w.data);
        let refused = |r: harness::WebResponse, what: &str| {
            assert_eq!(r.status, 503, "{what}: {}", r.body);
            assert!(
                r.body.contains("audit log cannot be written"),
                "{what}: {}",
                r.body
            );
        };
        refused(
            web.post(
                &format!("/requests/{r1}/approve"),
                &[("csrf", &csrf), ("from", "now"), ("duration", "20m")],
            ),
            "web approve",
        );
        refused(
            web.post(
                &format!("/requests/{r2}/deny"),
                &[("csrf", &csrf), ("reason", "not today")],
            ),
            "web deny",
        );
        refused(
            web.post(&format!("/grants/{g}/revoke"), &[("csrf", &csrf)]),
            "web revoke",
        );
        refused(
            web.post(&format!("/sessions/{sid}/terminate"), &[("csrf", &csrf)]),
            "web terminate",
        );
        refused(
            web.post(
                &format!("/review/{bg}"),
                &[("csrf", &csrf), ("note", "checked")],
            ),
            "web review",
        );
        for args in [
            vec!["request", "approve", &r1],
            vec!["request", "deny", &r2, "--reason", "not today"],
            vec!["grant", "revoke", &g],
            vec!["sessions", "kill", &sid],
            vec!["vendor", "disable", "gil"],
            vec![
                "grant",
                "add",
                "--vendor",
                "gil",
                "--site",
                "site-a",
                "--function",
                "maint",
                "--from",
                "now",
                "--until",
                "+1h",
            ],
        ] {
            let o = w.postern(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{args:?} went ahead");
            assert!(
                err.contains("audit log cannot be written, so nothing was changed"),
                "{args:?}: {err}"
            );
        }

        // Nothing changed: requests pending, grant active, session live, vendor enabled,
        // break-glass unreviewed, no notification beyond those from before.
        let requests = json_list(&w, &["request", "list"]);
        assert_eq!(find(&requests, "id", &r1)["status"], "pending");
        assert_eq!(find(&requests, "id", &r2)["status"], "pending");
        let grants = json_list(&w, &["grant", "list"]);
        assert!(find(&grants, "id", &g)["revoked_at"].is_null());
        assert_eq!(
            grants.iter().filter(|x| x["vendor"] == "gil").count(),
            1,
            "no grant added"
        );
        let session = w.sessions();
        let s = find(&session, "id", &sid);
        assert!(s["ended"].is_null() && s["kill_requested"] == 0, "{s}");
        let vendors = json_list(&w, &["vendor", "list"]);
        assert_eq!(find(&vendors, "name", "gil")["disabled"], 0);
        let bgs = json_list(&w, &["breakglass"]);
        assert!(find(&bgs, "id", &bg)["reviewed_at"].is_null());
        assert_eq!(notification_events(&w), notified);
        sh.send("echo still-$((40+2))\r");
        sh.expect("still-42", T);
    }

    // The audit log is back: the same actions go through, each with its record and notification.
    let r = web.post(
        &format!("/requests/{r2}/deny"),
        &[("csrf", &csrf), ("reason", "not today")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = web.post(&format!("/sessions/{sid}/terminate"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 303, "{}", r.body);
    sh.wait_exit(T);
    w.ok(&["grant", "revoke", &g]);
    let denied = w.wait_audit("request.deny", |e| e["event"] == "request.deny");
    assert_eq!(denied["actor"], "web:olga");
    assert_eq!(denied["request"], r2.as_str());
    let killed = w.wait_audit("kill", |e| e["event"] == "session.kill_requested");
    assert_eq!(killed["session"], sid.as_str());
    let revoked = w.wait_audit("grant.revoke", |e| e["event"] == "grant.revoke");
    assert!(revoked["actor"].as_str().unwrap().starts_with("operator:"));
    let mut expected = notified.clone();
    expected.extend(["request.denied".to_owned(), "session.terminated".to_owned()]);
    expected.sort();
    assert_eq!(notification_events(&w), expected);
    assert_eq!(
        find(&json_list(&w, &["request", "list"]), "id", &r1)["status"],
        "pending"
    );
    // Actions on what is gone are answered as such. The session's end reaches the database after
    // its seal, which can be after the client has exited (slow under a loaded parallel run).
    w.wait_audit("seal", |e| {
        e["event"] == "session.seal" && e["session"] == sid.as_str()
    });
    w.wait_all_recorded();
    let r = web.post(&format!("/sessions/{sid}/terminate"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = web.post(
        &format!("/requests/{r2}/deny"),
        &[("csrf", &csrf), ("reason", "again")],
    );
    assert_eq!(r.status, 409, "{}", r.body);
}

/// What `postern verify ID` prints for one session (its one line).
fn verify_line(w: &World, sid: &str) -> (bool, String) {
    let o = w.postern(&["verify", sid]);
    let out = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(out.lines().count(), 1, "{out}");
    (o.status.success(), out)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[test]
fn the_session_page_verifies_like_postern_verify() {
    let w = World::new(9, "5m");
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);

    // The database and its -wal/-shm (open while the broker serves) are owner-only.
    for f in ["postern.db", "postern.db-wal", "postern.db-shm"] {
        let mode = std::fs::metadata(w.data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    let v = w.vendor("fred", &[]);
    w.grant("fred", "site-a", "maint");
    for i in 0..2 {
        let o = w.ssh(&v, "fred:site-a/dev", &[&format!("echo run-{i}")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    w.wait_sealed(2);
    let sessions = w.sessions();
    let ids: Vec<String> = sessions
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();

    // Intact: the page says what verify says, sealed and anchored.
    let (ok, line) = verify_line(&w, &ids[0]);
    assert!(ok, "{line}");
    assert!(
        line.contains("sealed by a trusted key; seal anchored in the audit log"),
        "{line}"
    );
    let page = web.get(&format!("/sessions/{}", ids[0]));
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&html_escape(&line)), "{}", page.body);

    // Tampered: one recording cut short, the other's last record (its seal) dropped cleanly.
    let rec = |s: &Value| {
        w.data
            .join("recordings")
            .join(s["recording"].as_str().unwrap())
    };
    let cut = rec(&sessions[0]);
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    // A record is len:u32be, body, hash (32), len:u32be: the trailing length finds the last one.
    let unsealed = rec(&sessions[1]);
    let bytes = std::fs::read(&unsealed).unwrap();
    let n = bytes.len();
    let len = u32::from_be_bytes(bytes[n - 4..].try_into().unwrap()) as usize;
    std::fs::write(&unsealed, &bytes[..n - (len + 40)]).unwrap();
    for id in &ids {
        let (ok, line) = verify_line(&w, id);
        assert!(!ok, "tampering went unnoticed: {line}");
        assert!(line.starts_with("FAILED"), "{line}");
        let page = web.get(&format!("/sessions/{id}"));
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains(&html_escape(&line)),
            "the page does not say `{line}`: {}",
            page.body
        );
        assert!(page.body.contains(r#"class="error""#));
    }
}

#[test]
fn one_shot_commands_end_quietly_on_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = run(Command::new(postern_bin())
        .arg("init")
        .arg("--data")
        .arg(&data));
    assert!(o.status.success());
    // The database made by `init` is owner-only.
    let mode = std::fs::metadata(data.join("postern.db"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A reader that is already gone: every write to stdout fails with EPIPE.
    let gone = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(postern_bin())
            .args(args)
            .arg("--data")
            .arg(&data)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert!(
            o.status.success() || o.status.signal() == Some(libc_sigpipe()),
            "{args:?}: {:?}",
            o.status
        );
    };
    gone(&["vendor", "add", "bob", "--org", "acme"]);
    gone(&["vendor", "list"]);
    gone(&["commands"]);
    gone(&["audit"]);

    // And as people type it.
    for cmd in [
        "vendor add carol --org acme | head -1",
        "audit | head -1",
        "commands | head -1",
    ] {
        let o = run(Command::new("sh").arg("-c").arg(format!(
            "{} --data {} {cmd}",
            postern_bin().display(),
            data.display()
        )));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
    // The vendors were added all the same (the output was lost, not the change).
    let o = run(Command::new(postern_bin())
        .args(["vendor", "list", "--json", "--data"])
        .arg(&data));
    let vendors: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vendors.len(), 2);
}

fn libc_sigpipe() -> i32 {
    13
}

/// How many certificates the registry holds for a public key (what the front door checks).
fn registered_certificates(data: &Path, pubkey: &Path) -> usize {
    let key =
        russh::keys::PublicKey::from_openssh(&std::fs::read_to_string(pubkey).unwrap()).unwrap();
    let fp = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
    let url = format!("sqlite://{}", data.join("postern.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = approvals::Store::open(&url).await.unwrap();
            let n = store.certificates_for_key(&fp).await.unwrap().len();
            store.close().await;
            n
        })
}

fn names(w: &World, args: &[&str], key: &str) -> Vec<String> {
    json_list(w, args)
        .iter()
        .map(|r| r[key].as_str().unwrap().to_owned())
        .collect()
}

fn device_names(w: &World) -> Vec<String> {
    json_list(w, &["device", "list"])
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["site"].as_str().unwrap(),
                d["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn directory_changes_are_refused_when_the_audit_log_cannot_be_written() {
    let w = World::new(9, "5m");
    let root = w.dir.path();
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);
    // A vendor whose certificate file is gone: issuing it again is one of the changes.
    let gil = w.vendor("gil", &[]);
    std::fs::remove_file(gil.cert()).unwrap();
    let gil_pub = gil.key.with_extension("pub");
    assert_eq!(registered_certificates(&w.data, &gil_pub), 1);

    let addr = format!("127.0.0.1:{}", w.sshd_port);
    let hk = w.sshd_host_pub.display().to_string();
    let host_key = std::fs::read_to_string(&w.sshd_host_pub).unwrap();
    let list = root.join("devices.csv");
    std::fs::write(
        &list,
        format!(
            "site,device,addr,host_key\nsite-c,dev,{addr},{hk}\nsite-a,dev-2,{addr},{hk}\n",
            hk = host_key.trim()
        ),
    )
    .unwrap();
    let device_key = root.join("broker_device_key").display().to_string();
    let password = "s3cret-device-password";
    let pw_file = root.join("device.pw");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let pw_file = pw_file.display().to_string();
    let gil_pub_s = gil_pub.display().to_string();
    let list_s = list.display().to_string();
    let login = w.device_login.clone();
    let commands: Vec<Vec<&str>> = vec![
        vec!["vendor", "add", "newv", "--org", "acme"],
        vec!["vendor", "cert", "gil", "--pubkey", &gil_pub_s],
        vec!["approver", "add", "pat", "--sites", "site-a"],
        vec!["approver", "reset", "olga"],
        vec!["approver", "disable", "olga"],
        vec!["site", "add", "site-z", "--region", "north"],
        vec![
            "device",
            "add",
            "site-a/dev-3",
            "--addr",
            &addr,
            "--login",
            &login,
            "--password-file",
            &pw_file,
            "--host-key",
            &hk,
        ],
        vec![
            "device",
            "import",
            &list_s,
            "--login",
            "maint",
            "--key",
            &device_key,
            "--region",
            "south",
        ],
        vec![
            "function",
            "add",
            "diag",
            "--allow",
            "shell",
            "--max-window",
            "1h",
        ],
    ];
    let vendors = names(&w, &["vendor", "list"], "name");
    let approvers = json_list(&w, &["approver", "list"]);
    let sites = names(&w, &["site", "list"], "name");
    let devices = device_names(&w);
    let functions = names(&w, &["function", "list"], "name");

    {
        let _broken = BrokenAuditLog::new(&w.data);
        for args in &commands {
            let o = w.postern(args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{args:?} went ahead");
            assert!(
                err.contains("audit log cannot be written, so nothing was changed"),
                "{args:?}: {err}"
            );
            // No password or enrolment secret is handed out for a change that did not happen.
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                !out.contains("otpauth") && !out.contains("password"),
                "{args:?}: {out}"
            );
        }

        // Nothing changed: no vendor, no certificate (neither the file nor its registry row), no
        // approver, olga neither reset nor disabled nor signed out, no site, device or function.
        assert_eq!(names(&w, &["vendor", "list"], "name"), vendors);
        assert!(!gil.cert().exists(), "a refused certificate was written");
        assert_eq!(registered_certificates(&w.data, &gil_pub), 1);
        assert_eq!(json_list(&w, &["approver", "list"]), approvers);
        assert_eq!(web.get("/requests").status, 200, "olga was signed out");
        assert_eq!(names(&w, &["site", "list"], "name"), sites);
        assert_eq!(device_names(&w), devices);
        assert_eq!(names(&w, &["function", "list"], "name"), functions);
    }

    // The audit log is back. olga's password was not reset: she signs in with it.
    assert_eq!(w.web().login(&olga).status, 303);
    for args in &commands {
        w.ok(args);
    }
    assert!(names(&w, &["vendor", "list"], "name").contains(&"newv".to_owned()));
    assert!(gil.cert().exists());
    assert_eq!(registered_certificates(&w.data, &gil_pub), 2);
    let approvers = json_list(&w, &["approver", "list"]);
    assert_eq!(find(&approvers, "name", "olga")["disabled"], 1);
    assert!(approvers.iter().any(|a| a["name"] == "pat"));
    assert_eq!(web.get("/requests").location.as_deref(), Some("/login"));
    let sites = names(&w, &["site", "list"], "name");
    assert!(sites.contains(&"site-z".to_owned()) && sites.contains(&"site-c".to_owned()));
    let devices = device_names(&w);
    for d in ["site-a/dev-3", "site-a/dev-2", "site-c/dev"] {
        assert!(devices.contains(&d.to_owned()), "{d} missing: {devices:?}");
    }
    assert!(names(&w, &["function", "list"], "name").contains(&"diag".to_owned()));
    // The certificate issued once the log was back works.
    w.grant("gil", "site-a", "maint");
    let o = w.ssh(&gil, "gil:site-a/dev", &["echo", "cert-ok"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "cert-ok",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Each change has its record, by the operator, and no secret is in the log.
    let events = w.audit();
    let by_operator = |event: &str, key: &str, value: &str| {
        let e = events
            .iter()
            .find(|e| e["event"] == event && e[key] == value)
            .unwrap_or_else(|| panic!("no {event} with {key}={value}"));
        assert!(e["actor"].as_str().unwrap().starts_with("operator:"), "{e}");
        e.clone()
    };
    by_operator("vendor.add", "vendor", "newv");
    by_operator("approver.add", "approver", "pat");
    by_operator("approver.reset", "approver", "olga");
    by_operator("approver.disable", "approver", "olga");
    by_operator("site.add", "site", "site-z");
    by_operator("function.add", "function", "diag");
    let certs: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "vendor.cert" && e["vendor"] == "gil")
        .collect();
    assert_eq!(certs.len(), 2, "{certs:?}");
    let dev = by_operator("device.add", "device", "dev-3");
    assert_eq!(dev["credential"], "password");
    let import = by_operator("device.import", "login", "maint");
    assert_eq!(
        (import["devices"].as_u64(), import["new_sites"].as_u64()),
        (Some(2), Some(1))
    );
    let log = std::fs::read(w.data.join("audit.log")).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.contains(password),
        "a device password is in the audit log"
    );
    for secret in [&olga.secret, &gil.secret] {
        assert!(
            !log.contains(secret.as_str()),
            "a TOTP secret is in the audit log"
        );
    }
}
