//! The approvers' web form over real HTTP, with the real OpenSSH client on the vendor's side:
//! sign-in with password and TOTP, approve and deny a request a vendor is waiting on, terminate a
//! live session, scoping to the approver's sites, CSRF refusal, and break-glass with its review.

use std::time::{Duration, Instant};

use crate::harness::{self, Receiver, World, csrf_of};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn status_of(w: &World, id: &str) -> String {
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["request", "list", "--json"])).unwrap();
    rows.iter().find(|r| r["id"] == id).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn approvers_decide_in_the_web_form() {
    let w = World::new(9, "5m");
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let bob = w.approver("bob", &["--sites", "site-b"]);

    // Signing in: wrong code, then a good one, then the same code again (single use).
    let web = w.web();
    let r = web.login_with(&olga, &olga.password, "000000");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("Name, password or code is wrong"));
    let r = web.login_with(&olga, "not-the-password", &olga.next_code());
    assert_eq!(r.status, 401);
    let r = web.login(&olga);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some("/requests"));
    let cookie = r
        .set_cookies
        .iter()
        .find(|c| c.starts_with("postern_session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let replay = w.web().login_with(&olga, &olga.password, &olga.used_code());
    assert_eq!(replay.status, 401, "a used TOTP code signs nobody in");
    let page = web.get("/requests");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("No requests are waiting for you"));
    // A sign-in form posted without its own token (cross-site) is refused.
    let forged = w.web().post(
        "/login",
        &[
            ("csrf", "forged"),
            ("name", "olga"),
            ("password", &olga.password),
            ("code", "000000"),
        ],
    );
    assert_eq!(forged.status, 403);

    let bob_web = w.web();
    assert_eq!(bob_web.login(&bob).status, 303);
    // Without signing in, pages send you to the sign-in form.
    let anon = w.web().get("/requests");
    assert_eq!(anon.status, 303);
    assert_eq!(anon.location.as_deref(), Some("/login"));

    // A vendor asks from ssh; the approver approves in the web form with a shorter window.
    let rae = w.vendor("rae", &[]);
    let mut sh = w.file_request(&rae, "rae:site-a/dev:maint", "camera <b>offline</b>", "1h");
    let id = w.pending_request("rae");
    let page = web.get("/requests");
    assert!(page.body.contains(&id), "{}", page.body);
    assert!(
        page.body.contains("camera &lt;b&gt;offline&lt;/b&gt;"),
        "vendor text is escaped"
    );

    // The other site's approver neither sees nor can decide it.
    let theirs = bob_web.get("/requests");
    assert!(!theirs.body.contains(&id), "{}", theirs.body);
    let csrf_bob = csrf_of(&theirs.body);
    let r = bob_web.post(
        &format!("/requests/{id}/approve"),
        &[("csrf", &csrf_bob), ("from", "now"), ("duration", "1h")],
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(status_of(&w, &id), "pending");

    // Forms without the session's CSRF token are refused and change nothing.
    let r = web.post(
        &format!("/requests/{id}/approve"),
        &[("from", "now"), ("duration", "1h")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = web.post(
        &format!("/requests/{id}/approve"),
        &[("csrf", &csrf_bob), ("from", "now"), ("duration", "1h")],
    );
    assert_eq!(r.status, 403, "another login's token does not count");
    assert_eq!(status_of(&w, &id), "pending");
    w.wait_audit("web.csrf_refused", |e| e["event"] == "web.csrf_refused");

    let csrf = csrf_of(&page.body);
    let r = web.post(
        &format!("/requests/{id}/approve"),
        &[("csrf", &csrf), ("from", "now"), ("duration", "20m")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    sh.expect("granted by olga", T);
    sh.expect("access until", T);
    sh.send("echo via-web-$((40+2))\r");
    sh.expect("via-web-42", T);
    let approved = w.wait_audit("request.approve", |e| {
        e["event"] == "request.approve" && e["request"] == id.as_str()
    });
    assert_eq!(approved["actor"], "web:olga");
    assert!(approved["latency"].as_i64().is_some());
    let grants: Vec<Value> = serde_json::from_str(&w.ok(&["grant", "list", "--json"])).unwrap();
    let g = grants.iter().find(|g| g["vendor"] == "rae").unwrap();
    assert_eq!(
        g["valid_until"].as_i64().unwrap() - g["valid_from"].as_i64().unwrap(),
        1200
    );
    assert!(web.get("/grants").body.contains(g["id"].as_str().unwrap()));

    // Terminate the live session from the sessions page: the vendor's ssh ends within a second.
    let sessions = web.get("/sessions");
    let sid = w
        .sessions()
        .iter()
        .find(|s| s["vendor"] == "rae" && s["ended"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(sessions.body.contains(&sid));
    assert!(
        !bob_web.get("/sessions").body.contains(&sid),
        "other sites' sessions are not shown"
    );
    let start = Instant::now();
    let r = web.post(
        &format!("/sessions/{sid}/terminate"),
        &[("csrf", &csrf_of(&sessions.body))],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    sh.wait_exit(Duration::from_secs(10));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "terminate took {took:?} (from the button to the vendor's ssh exiting)"
    );
    assert!(sh.screen().contains("terminated"), "{}", sh.screen());
    eprintln!("web terminate: vendor ssh exited {took:?} after the POST started");

    // The session's page: the command log and a replay drawn from the recording.
    w.wait_audit("session.seal", |e| {
        e["event"] == "session.seal" && e["session"] == sid.as_str()
    });
    w.wait_all_recorded();
    let detail = web.get(&format!("/sessions/{sid}"));
    assert_eq!(detail.status, 200);
    assert!(
        detail.body.contains("echo via-web-$((40+2))"),
        "{}",
        detail.body
    );
    assert!(
        detail
            .body
            .contains("sealed by a trusted key; seal anchored in the audit log"),
        "{}",
        detail.body
    );
    assert!(detail.body.contains(r#"id="frames""#));
    assert!(detail.body.contains("via-web-42"));
    assert_eq!(bob_web.get(&format!("/sessions/{sid}")).status, 404);

    // Denied in the web form: the waiting vendor sees the reason.
    let dee = w.vendor("dee", &[]);
    let mut sh = w.file_request(&dee, "dee:site-a/dev:maint", "firmware update", "");
    let id = w.pending_request("dee");
    let page = web.get("/requests");
    let r = web.post(
        &format!("/requests/{id}/deny"),
        &[("csrf", &csrf_of(&page.body)), ("reason", "")],
    );
    assert_eq!(r.status, 400, "a denial needs a reason");
    let r = web.post(
        &format!("/requests/{id}/deny"),
        &[
            ("csrf", &csrf_of(&page.body)),
            ("reason", "use the Tuesday window"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    sh.expect("denied by olga: use the Tuesday window", T);
    sh.wait_exit(T);

    // Signing out ends the sign-in on the server, not just in the browser.
    let page = web.get("/requests");
    let r = web.post("/logout", &[("csrf", &csrf_of(&page.body))]);
    assert_eq!(r.status, 303);
    assert_eq!(web.get("/requests").location.as_deref(), Some("/login"));

    // An operator resets or disables an approver: their sign-ins end at once.
    let out: Value = serde_json::from_str(&w.ok(&["approver", "reset", "bob", "--json"])).unwrap();
    assert_ne!(out["password"], bob.password.as_str());
    assert_eq!(bob_web.get("/requests").location.as_deref(), Some("/login"));
    assert_eq!(
        w.web().login_with(&bob, &bob.password, "000000").status,
        401
    );
    w.wait_audit("bob's old password refused", |e| {
        e["event"] == "web.login_failed"
            && e["approver"] == "bob"
            && e["reason"] == "wrong password"
    });
    assert_eq!(web.login(&olga).status, 303);
    w.ok(&["approver", "disable", "olga"]);
    assert_eq!(web.get("/requests").location.as_deref(), Some("/login"));
    assert_eq!(
        w.web().login_with(&olga, &olga.password, "000000").status,
        401
    );
    w.wait_audit("olga refused as disabled", |e| {
        e["event"] == "web.login_failed"
            && e["approver"] == "olga"
            && e["reason"] == "approver disabled"
    });
}

#[test]
fn breakglass_opens_at_once_and_waits_for_review() {
    let w = World::new(9, "5m");
    w.emergency_function();
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let bob = w.approver("bob", &["--sites", "site-b"]);

    // A vendor of the pre-approved org opens it at once, with a reason.
    let ivy = w.vendor("ivy", &[]);
    let mut sh = w.shell(&ivy, "ivy:site-a/dev:emergency");
    sh.expect("emergency function your organisation may open at once", T);
    sh.expect("Reason for the emergency (empty to cancel): ", T);
    sh.send("store freezer alarm, controller down\r");
    sh.expect("For how long?", T);
    // The answer and the first command in one go: what is typed past the answer reaches the device.
    sh.send("30m\recho glass-$((40+2))\r");
    sh.expect("glass-42", T);
    sh.send("exit\r");
    sh.wait_exit(T);
    let opened = w.wait_audit("breakglass.open", |e| e["event"] == "breakglass.open");
    assert_eq!(opened["reason"], "store freezer alarm, controller down");
    assert_eq!(opened["approvers"], serde_json::json!(["olga"]));
    let bg = opened["breakglass"].as_str().unwrap().to_owned();
    let s = w.sessions();
    let session = s.iter().find(|s| s["vendor"] == "ivy").unwrap();
    assert_eq!(session["breakglass"], bg.as_str(), "the session is flagged");

    // Another org's vendor is offered an ordinary request instead.
    let gus = w.vendor("gus", &["--org", "globex"]);
    let mut sh = w.shell(&gus, "gus:site-a/dev:emergency");
    sh.expect("You can ask for access now", T);
    sh.send("\x03");
    sh.wait_exit(T);

    // The review queue: olga sees it and marks it reviewed; bob (site-b) never sees it.
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);
    let queue = web.get("/review");
    assert!(queue.body.contains(&bg), "{}", queue.body);
    assert!(queue.body.contains("store freezer alarm"));
    assert!(web.get("/sessions").body.contains("break-glass"));
    let bob_web = w.web();
    assert_eq!(bob_web.login(&bob).status, 303);
    let theirs = bob_web.get("/review");
    assert!(!theirs.body.contains(&bg));
    let r = bob_web.post(
        &format!("/review/{bg}"),
        &[("csrf", &csrf_of(&theirs.body)), ("note", "x")],
    );
    assert_eq!(r.status, 404);
    let r = web.post(
        &format!("/review/{bg}"),
        &[
            ("csrf", &csrf_of(&queue.body)),
            ("note", "called the store; alarm confirmed"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let after = web.get("/review");
    assert!(
        after.body.contains("Nothing is waiting for review"),
        "{}",
        after.body
    );
    assert!(
        after
            .body
            .contains("reviewed by olga (called the store; alarm confirmed)")
    );
    w.wait_audit("breakglass.review", |e| {
        e["event"] == "breakglass.review" && e["breakglass"] == bg.as_str()
    });
}

/// Opens break-glass from a terminal; returns the pty and how long the session took to open after
/// the vendor answered the last question.
fn break_glass(w: &World, v: &harness::Vendor, login: &str) -> (harness::Pty, Duration) {
    let mut sh = w.shell(v, login);
    sh.expect("Reason for the emergency (empty to cancel): ", T);
    sh.send("pump controller offline\r");
    sh.expect("For how long?", T);
    let start = Instant::now();
    sh.send("\r");
    sh.expect("access until", T);
    (sh, start.elapsed())
}

#[test]
fn webhooks_get_every_event_and_a_dead_receiver_delays_nothing() {
    let rx = Receiver::start(false);
    let w = World::with_config(9, "5m", &format!("webhook_url = \"{}\"\n", rx.url));
    w.emergency_function();
    w.approver("olga", &["--sites", "site-a"]);

    // Filed and granted.
    let rae = w.vendor("rae", &[]);
    let mut sh = w.file_request(&rae, "rae:site-a/dev:maint", "camera offline", "30m");
    let filed = rx.wait_for("request.filed");
    assert!(
        filed["text"]
            .as_str()
            .unwrap()
            .starts_with("postern: rae asks for maint at site-a/dev"),
        "{filed}"
    );
    assert_eq!(filed["approvers"], serde_json::json!(["olga"]));
    let id = w.pending_request("rae");
    w.ok(&["request", "approve", &id]);
    sh.expect("access until", T);
    sh.send("exit\r");
    sh.wait_exit(T);
    let granted = rx.wait_for("request.granted");
    assert_eq!(granted["request"], id.as_str());

    // Denied.
    let dee = w.vendor("dee", &[]);
    let mut sh = w.file_request(&dee, "dee:site-a/dev:maint", "update", "");
    let id = w.pending_request("dee");
    w.ok(&["request", "deny", &id, "--reason", "not today"]);
    sh.wait_exit(T);
    assert_eq!(rx.wait_for("request.denied")["reason"], "not today");

    // Break-glass opened, then the session terminated, then the vendor disabled.
    let ivy = w.vendor("ivy", &[]);
    let (mut sh, _) = break_glass(&w, &ivy, "ivy:site-a/dev:emergency");
    let bg = rx.wait_for("breakglass.opened");
    assert!(
        bg["text"]
            .as_str()
            .unwrap()
            .contains("BREAK-GLASS: ivy (acme)"),
        "{bg}"
    );
    assert_eq!(bg["approvers"], serde_json::json!(["olga"]));
    let sid = w
        .sessions()
        .iter()
        .find(|s| s["vendor"] == "ivy" && s["ended"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.ok(&["sessions", "kill", &sid]);
    sh.wait_exit(T);
    assert_eq!(rx.wait_for("session.terminated")["session"], sid.as_str());
    w.ok(&["vendor", "disable", "dee"]);
    assert_eq!(rx.wait_for("vendor.disabled")["vendor"], "dee");
    let listed: Vec<Value> = serde_json::from_str(&w.ok(&["notifications", "--json"])).unwrap();
    // Audit-log checkpoints (one a minute by default) are not part of this count.
    let listed: Vec<Value> = listed
        .into_iter()
        .filter(|n| n["event"] != "checkpoint")
        .collect();
    assert_eq!(
        listed.len(),
        7,
        "two filed, one each of the rest: {listed:?}"
    );
    assert!(
        listed.iter().all(|n| n["delivered_at"].is_i64()),
        "{listed:?}"
    );

    // A receiver that accepts and never answers: sessions open at once; the notification waits.
    let dead = Receiver::start(true);
    let w = World::with_config(9, "5m", &format!("webhook_url = \"{}\"\n", dead.url));
    w.emergency_function();
    let ivy = w.vendor("ivy", &[]);
    let (mut sh, took) = break_glass(&w, &ivy, "ivy:site-a/dev:emergency");
    sh.send("echo still-$((40+2))\r");
    sh.expect("still-42", T);
    let t = Instant::now();
    w.ok(&["vendor", "disable", "ivy"]);
    sh.wait_exit(T);
    let closed = t.elapsed();
    eprintln!(
        "dead receiver: break-glass opened {took:?} after the answer; disable closed the session in {closed:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "opening waited on the receiver: {took:?}"
    );
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    // Delivery was attempted, timed out, and is queued for a retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: Vec<Value> = serde_json::from_str(&w.ok(&["notifications", "--json"])).unwrap();
        let bg = listed
            .iter()
            .find(|n| n["event"] == "breakglass.opened")
            .unwrap();
        if bg["last_error"].is_string() {
            assert!(bg["delivered_at"].is_null() && bg["attempts"].as_i64() >= Some(1));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed attempt recorded: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_web_form_is_served_over_https_when_configured() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("web.pem"), dir.path().join("web.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let w = World::with_config(
        9,
        "5m",
        &format!(
            "web_tls_cert = \"{}\"\nweb_tls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    assert!(w.web_url.starts_with("https://127.0.0.1:"), "{}", w.web_url);
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = client.get(format!("{}/login", w.web_url)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert!(r.text().unwrap().contains("Sign in"));
    // Plain HTTP to the HTTPS port gets no page.
    let plain = w.web_url.replace("https://", "http://");
    let r = reqwest::blocking::get(format!("{plain}/login"));
    assert!(r.is_err() || !r.unwrap().status().is_success());

    // A certificate that cannot be loaded stops `serve` at once, with one clear line.
    let data = dir.path().join("bad");
    assert!(
        harness::run(
            std::process::Command::new(harness::postern_bin())
                .arg("init")
                .arg("--data")
                .arg(&data)
        )
        .status
        .success()
    );
    harness::certify_seal_key(&data, &dir.path().join("root.key"));
    let cfg = data.join("postern.toml");
    let text = std::fs::read_to_string(&cfg).unwrap()
        + &format!(
            "web_tls_cert = \"{}\"\nweb_tls_key = \"{}/missing.key\"\n",
            cert.display(),
            dir.path().display()
        );
    std::fs::write(&cfg, text).unwrap();
    let out = harness::run(
        std::process::Command::new(harness::postern_bin())
            .args([
                "serve",
                "--ssh",
                "127.0.0.1:0",
                "--web",
                "127.0.0.1:0",
                "--edge",
                "off",
                "--data",
            ])
            .arg(&data),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("web UI: loading certificate"), "{err}");
}
