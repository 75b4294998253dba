//! Contract and role changes reach live sessions: a vendor's contract end closes their live
//! session within a second of it (with a warning first), `vendor update` moving the contract end
//! earlier takes effect at once, `approver update` shows in a web page already open, and
//! `function update` takes a channel away from a live session (and the session, for a shell).

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{World, csrf_of};

const T: Duration = Duration::from_secs(15);

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The vendor's contract end as the directory holds it (Unix seconds).
fn contract_end(w: &World, vendor: &str) -> i64 {
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["vendor", "list", "--json"])).unwrap();
    let v = rows.iter().find(|v| v["name"] == vendor).unwrap();
    v["contract_end"].as_i64().expect("a contract end")
}

/// Opens a shell for `vendor` on site-a/dev and proves it works.
fn open_shell(w: &World, v: &crate::harness::Vendor, login: &str) -> crate::harness::Pty {
    let mut sh = w.shell(v, login);
    sh.expect("access until", T);
    sh.send("echo ready-$((40+2))\r");
    sh.expect("ready-42", T);
    sh
}

/// Waits for the vendor's client to exit; returns how many seconds after `end` (Unix seconds)
/// it did (negative: before).
fn exit_after(sh: &mut crate::harness::Pty, end: i64) -> f64 {
    sh.wait_exit(T);
    unix_now_f64() - end as f64
}

#[test]
fn contract_end_closes_a_live_session_within_a_second() {
    let w = World::new(9, "3s");

    // 1. The contract ends while the session runs: a warning 3 s ahead, then the close.
    let cora = w.vendor("cora", &["--contract-end", "+9s"]);
    w.grant("cora", "site-a", "maint");
    let end = contract_end(&w, "cora");
    let mut sh = open_shell(&w, &cora, "cora:site-a/dev");
    sh.expect("the contract of cora ends then", T);
    let late = exit_after(&mut sh, end);
    let screen = sh.screen();
    assert!(
        screen.contains("the contract of cora ended at"),
        "the vendor is told why: {screen}"
    );
    eprintln!("contract end: vendor disconnected {late:.3} s after the contract ended");
    assert!(
        (0.0..1.0).contains(&late),
        "closed {late:.3} s after the end"
    );
    let ended = w.wait_audit("session.contract_ended", |e| {
        e["event"] == "session.contract_ended" && e["vendor"] == "cora"
    });
    assert!(ended["session"].is_string(), "{ended}");
    w.wait_audit("session.end with the contract reason", |e| {
        e["event"] == "session.end"
            && e["vendor"] == "cora"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("the contract of cora ended at"))
    });
    // After the end, no new session.
    let o = w.ssh(&cora, "cora:site-a/dev", &["true"]);
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // 2. `vendor update` moves a live session's contract end earlier: a far end first, then
    // one 4 s away; the warning comes at once (within warn_before), the close at the new end.
    let dana = w.vendor("dana", &["--contract-end", "+1h"]);
    w.grant("dana", "site-a", "maint");
    let mut sh = open_shell(&w, &dana, "dana:site-a/dev");
    let moved = Instant::now();
    let out = w.ok(&[
        "vendor",
        "update",
        "dana",
        "--contract-end",
        "+4s",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["contract_end"].is_string(), "{out}");
    sh.expect("the contract of dana ends then", T);
    assert!(
        moved.elapsed() < Duration::from_secs(2),
        "the new end reached the live session at once"
    );
    let end = contract_end(&w, "dana");
    let late = exit_after(&mut sh, end);
    eprintln!("vendor update: vendor disconnected {late:.3} s after the moved contract end");
    assert!(
        (0.0..1.0).contains(&late),
        "closed {late:.3} s after the end"
    );
    assert!(sh.screen().contains("the contract of dana ended at"));
    let upd = w.wait_audit("vendor.update", |e| {
        e["event"] == "vendor.update" && e["vendor"] == "dana"
    });
    assert!(upd["contract_end_was"].is_string(), "{upd}");
    assert!(upd["actor"].as_str().unwrap().starts_with("operator:"));

    // 3. A contract end moved into the past closes the session within a second.
    let eli = w.vendor("eli", &["--contract-end", "+1h"]);
    w.grant("eli", "site-a", "maint");
    let mut sh = open_shell(&w, &eli, "eli:site-a/dev");
    let start = Instant::now();
    w.ok(&["vendor", "update", "eli", "--contract-end", "-1m"]);
    sh.wait_exit(T);
    let took = start.elapsed();
    eprintln!("vendor update into the past: vendor disconnected {took:?} after the command");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(sh.screen().contains("the contract of eli ended at"));

    // 4. Refusals: one line each, nothing changed.
    let o = w.postern(&["vendor", "update", "nobody", "--contract-end", "none"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no vendor named nobody"));
    let o = w.postern(&["vendor", "enable", "eli"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("vendor eli is not disabled"));
    // Disable, then enable: the vendor comes back with no certificate and no grant (the disable
    // revoked both); a new certificate gets them as far as the revoked grant.
    w.ok(&["vendor", "update", "eli", "--contract-end", "none"]);
    w.ok(&["vendor", "disable", "eli"]);
    w.ok(&["vendor", "enable", "eli"]);
    w.wait_audit("vendor.enable", |e| {
        e["event"] == "vendor.enable" && e["vendor"] == "eli"
    });
    let o = w.ssh(&eli, "eli:site-a/dev", &["true"]);
    assert!(
        !o.status.success(),
        "the disabled vendor's certificate stays revoked"
    );
    let pubkey = format!("{}.pub", eli.key.display());
    w.ok(&["vendor", "cert", "eli", "--pubkey", &pubkey]);
    let o = w.ssh(&eli, "eli:site-a/dev", &["true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("was revoked"), "{err}");
    w.wait_all_recorded();
    let v = w.postern(&["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn approver_update_reaches_an_open_web_page() {
    let w = World::new(9, "5m");
    let ana = w.approver("ana", &["--sites", "site-a"]);
    let web = w.web();
    assert_eq!(web.login(&ana).status, 303);

    // A request at site-b: not ana's, so her open page does not list it.
    let fay = w.vendor("fay", &[]);
    let _sh = w.file_request(&fay, "fay:site-b/dev:maint", "pump firmware", "1h");
    let id = w.pending_request("fay");
    let page = web.get("/requests");
    assert!(!page.body.contains(&id), "{}", page.body);

    // Widened: the same signed-in page lists it at the next request, no new sign-in.
    w.ok(&["approver", "update", "ana", "--sites", "site-a,site-b"]);
    let page = web.get("/requests");
    assert!(page.body.contains(&id), "{}", page.body);
    let csrf = csrf_of(&page.body);
    let upd = w.wait_audit("approver.update", |e| e["event"] == "approver.update");
    assert_eq!(upd["sites"], serde_json::json!(["site-a", "site-b"]));

    // Narrowed again: the form she still holds no longer decides it.
    w.ok(&["approver", "update", "ana", "--sites", "site-a"]);
    assert!(!web.get("/requests").body.contains(&id));
    let r = web.post(
        &format!("/requests/{id}/approve"),
        &[("csrf", &csrf), ("from", "now"), ("duration", "1h")],
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let rows: Vec<Value> = serde_json::from_str(&w.ok(&["request", "list", "--json"])).unwrap();
    let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["status"], "pending");

    // By region, and refusals.
    w.ok(&[
        "approver",
        "update",
        "ana",
        "--sites",
        "",
        "--regions",
        "north",
    ]);
    assert!(web.get("/requests").body.contains(&id));
    let o = w.postern(&["approver", "update", "ana", "--sites", "", "--regions", ""]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("an approver needs --sites or --regions"));
    let o = w.postern(&["approver", "update", "ana", "--sites", "site-x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no site named site-x"));
    assert!(
        web.get("/requests").body.contains(&id),
        "a refused update changed nothing"
    );
}

/// An sftp channel (`ssh -s ... sftp`) that stays open while nothing is sent on it; ssh exits
/// when the broker closes the channel (an `sftp` client would only notice at its next command).
fn sftp_channel(w: &World, v: &crate::harness::Vendor, login: &str) -> Child {
    let mut cmd = w.client("ssh", v, &v.next_code());
    cmd.args(["-s", &format!("{login}@127.0.0.1"), "sftp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("ssh -s sftp")
}

fn wait_child(child: &mut Child, within: Duration) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < within, "the client did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn function_update_takes_channels_from_live_sessions() {
    let w = World::new(9, "5m");
    w.ok(&[
        "function",
        "add",
        "ops",
        "--allow",
        "shell,exec,sftp",
        "--max-window",
        "8h",
    ]);
    let gus = w.vendor("gus", &[]);
    let grant = w.grant("gus", "site-a", "ops");
    let mut sh = open_shell(&w, &gus, "gus:site-a/dev:ops");
    let mut sftp = sftp_channel(&w, &gus, "gus:site-a/dev:ops");
    w.wait_audit("the sftp channel open", |e| {
        e["event"] == "channel.allow" && e["vendor"] == "gus" && e["channel"] == "sftp"
    });

    // sftp taken away: the sftp channel closes; the shell session goes on.
    let start = Instant::now();
    w.ok(&["function", "update", "ops", "--allow", "shell,exec"]);
    w.wait_audit("channel.revoked sftp", |e| {
        e["event"] == "channel.revoked" && e["channel"] == "sftp"
    });
    wait_child(&mut sftp, T);
    let took = start.elapsed();
    let mut err = String::new();
    let _ = sftp.stderr.take().unwrap().read_to_string(&mut err);
    assert!(err.contains("function ops no longer allows sftp"), "{err}");
    eprintln!("function update: sftp client gone {took:?} after the command");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let revoked = w.wait_audit("channel.revoked sftp", |e| {
        e["event"] == "channel.revoked" && e["channel"] == "sftp"
    });
    assert_eq!(revoked["reason"], "function ops no longer allows sftp");
    sh.send("echo still-$((40+2))\r");
    sh.expect("still-42", T);

    // A longer grant is cut to a new, shorter longest window, and audited.
    let out = w.ok(&["function", "update", "ops", "--max-window", "30m", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["grants_cut"][0]["grant"], grant.as_str(), "{out}");
    let upd = w.wait_audit("function.update with a cut", |e| {
        e["event"] == "function.update" && e["max_window"] == 1800
    });
    assert_eq!(upd["grants_cut"][0]["grant"], grant.as_str(), "{upd}");
    let grants: Vec<Value> = serde_json::from_str(&w.ok(&["grant", "list", "--json"])).unwrap();
    let g = grants.iter().find(|g| g["id"] == grant.as_str()).unwrap();
    assert_eq!(
        g["valid_until"].as_i64().unwrap() - g["valid_from"].as_i64().unwrap(),
        1800
    );

    // The shell taken away: the session ends, saying why.
    let start = Instant::now();
    w.ok(&["function", "update", "ops", "--allow", "exec"]);
    sh.wait_exit(T);
    let took = start.elapsed();
    eprintln!("function update: shell session closed {took:?} after the command");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let screen = sh.screen();
    assert!(
        screen.contains("function ops no longer allows shell"),
        "{screen}"
    );
    w.wait_audit("session.end for the function change", |e| {
        e["event"] == "session.end"
            && e["vendor"] == "gus"
            && e.to_string().contains("no longer allows shell")
    });
    let o = w.postern(&["function", "update", "ops", "--max-window", "400d"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-window is at most 366 days"));
    let o = w.postern(&["function", "update", "nope", "--allow", "shell"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no function named nope"));
}

/// Two nodes on one PostgreSQL: a contract end moved on node A (by its CLI) closes a live
/// session on node B at the new end, and node B's audit log says so.
#[test]
fn a_contract_change_reaches_sessions_on_every_node() {
    let shared = crate::harness::PgDb::new("lifecycle");
    let scratch = crate::harness::PgDb::new("lifecycle_scratch");
    let a = World::with_config(
        9,
        "2s",
        &format!("node = \"node-a\"\n{}\n", shared.config(5432).trim_end()),
    );
    // Node B is set up on a scratch database, then joined to the shared one.
    let mut b = World::with_config(
        9,
        "2s",
        &format!("node = \"node-b\"\n{}\n", scratch.config(5432).trim_end()),
    );
    b.kill_broker();
    let cfg_path = b.data.join("postern.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let cfg = cfg.replace(
        scratch.config(5432).trim_end(),
        shared.config(5432).trim_end(),
    );
    std::fs::write(&cfg_path, cfg).unwrap();
    // Nodes sharing a database share its secrets' master key.
    let master = b.data.join("keys/master.key");
    std::fs::copy(a.data.join("keys/master.key"), master).unwrap();
    b.start_broker();

    let hal = a.vendor("hal", &["--contract-end", "+1h"]);
    a.grant("hal", "site-a", "maint");
    let mut sh = b.shell(&hal, "hal:site-a/dev");
    sh.expect("access until", T);
    sh.send("echo on-b-$((40+2))\r");
    sh.expect("on-b-42", T);
    a.ok(&["vendor", "update", "hal", "--contract-end", "+3s"]);
    let end = contract_end(&a, "hal");
    sh.expect("the contract of hal ends then", T);
    let late = exit_after(&mut sh, end);
    eprintln!(
        "two nodes: the session on node-b closed {late:.3} s after the contract end set on node-a"
    );
    assert!(
        (0.0..1.0).contains(&late),
        "closed {late:.3} s after the end"
    );
    assert!(sh.screen().contains("the contract of hal ended at"));
    let e = b.wait_audit("session.contract_ended on node-b", |e| {
        e["event"] == "session.contract_ended" && e["vendor"] == "hal"
    });
    assert_eq!(e["node"], "node-b");
}
