//! Grants cover named devices: a grant (operator's, or from a request approved on the CLI or the
//! web form) for `site-a/dev` opens `site-a/dev` and refuses its sibling `site-a/dev-b` with one
//! clear line, with the real OpenSSH client. And a vendor has one open request per device and
//! function at a time.

use std::time::Duration;

use crate::harness::{World, csrf_of};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn grants(w: &World) -> Vec<Value> {
    serde_json::from_str(&w.ok(&["grant", "list", "--json"])).unwrap()
}

fn grant_of<'a>(grants: &'a [Value], vendor: &str) -> &'a Value {
    grants.iter().find(|g| g["vendor"] == vendor).unwrap()
}

#[test]
fn a_grant_for_one_device_refuses_its_sibling() {
    let w = World::new(9, "5m");
    w.add_device("site-a/dev-b");

    // Operator grant for site-a/dev only; every named device must exist at the site.
    let vic = w.vendor("vic", &[]);
    let add = |extra: &[&str]| {
        let mut args = vec![
            "grant",
            "add",
            "--vendor",
            "vic",
            "--site",
            "site-a",
            "--function",
            "maint",
            "--until",
            "+1h",
        ];
        args.extend_from_slice(extra);
        w.postern(&args)
    };
    let bad = add(&["--device", "dev,nope"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no device nope at site-a"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let out = add(&["--device", "dev"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        grant_of(&grants(&w), "vic")["devices"],
        serde_json::json!(["dev"])
    );

    let o = w.ssh(&vic, "vic:site-a/dev:maint", &["echo", "on-dev-$((40+2))"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("on-dev-42"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line = format!("access denied: grant {gid} covers site-a/dev only, not site-a/dev-b");
    for login in ["vic:site-a/dev-b:maint", "vic:site-a/dev-b"] {
        let o = w.ssh(&vic, login, &["echo", "reached-$((40+2))"]);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(
            !o.status.success() && !out.contains("reached-42"),
            "{login}: {out}"
        );
        assert!(err.contains(&line), "{login}: {err}");
    }
    w.wait_audit("session.denied", |e| {
        e["event"] == "session.denied"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("covers site-a/dev only"))
    });

    // Without --device, the whole site, shown as such; repeatable and comma-separated agree.
    w.vendor("wes", &[]);
    w.grant("wes", "site-a", "maint");
    w.vendor("xan", &[]);
    w.ok(&[
        "grant",
        "add",
        "--vendor",
        "xan",
        "--site",
        "site-a",
        "--function",
        "maint",
        "--until",
        "+1h",
        "--device",
        "dev-b",
        "--device",
        "dev",
    ]);
    let all = grants(&w);
    assert_eq!(grant_of(&all, "wes")["devices"], serde_json::json!([]));
    assert_eq!(
        grant_of(&all, "xan")["devices"],
        serde_json::json!(["dev", "dev-b"])
    );
    let table = w.ok(&["grant", "list"]);
    assert!(table.lines().next().unwrap().contains("DEVICES"), "{table}");
    let row = |v: &str| table.lines().find(|l| l.contains(v)).unwrap().to_owned();
    assert!(row(&gid).contains(" dev "), "{table}");
    assert!(row("wes").contains("all devices"), "{table}");
    assert!(row("xan").contains("dev,dev-b"), "{table}");
    let added = w.wait_audit("grant.add", |e| {
        e["event"] == "grant.add" && e["vendor"] == "xan"
    });
    assert_eq!(added["devices"], serde_json::json!(["dev", "dev-b"]));
}

#[test]
fn requests_grant_their_device_only_and_one_at_a_time() {
    let w = World::new(9, "5m");
    w.add_device("site-a/dev-b");

    // A request for site-a/dev, approved on the CLI: the waiting session reaches dev...
    let rae = w.vendor("rae", &[]);
    let mut sh = w.file_request(&rae, "rae:site-a/dev:maint", "camera offline", "30m");
    let id = w.pending_request("rae");
    let out = w.ok(&["request", "approve", &id]);
    assert!(out.contains("approved"), "{out}");
    sh.expect("granted by operator", T);
    sh.send("echo via-request-$((40+2))\r");
    sh.expect("via-request-42", T);
    sh.send("exit\r");
    sh.wait_exit(T);
    let g = grant_of(&grants(&w), "rae").clone();
    assert_eq!(g["devices"], serde_json::json!(["dev"]));
    // ... and not its sibling.
    let o = w.ssh(
        &rae,
        "rae:site-a/dev-b:maint",
        &["echo", "reached-$((40+2))"],
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("reached-42"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "grant {} covers site-a/dev only, not site-a/dev-b",
            g["id"].as_str().unwrap()
        )),
        "{err}"
    );

    // One open request per device and function: a second connection is refused, naming the first.
    let dee = w.vendor("dee", &[]);
    let mut first = w.file_request(&dee, "dee:site-a/dev-b:maint", "firmware update", "");
    let pending = w.pending_request("dee");
    let mut second = w.shell(&dee, "dee:site-a/dev-b:maint");
    let screen = second.expect("is already waiting for an approver", T);
    assert!(
        screen.contains(&format!(
            "request {pending} for maint at site-a/dev-b is already waiting for an approver"
        )),
        "{screen}"
    );
    assert!(!screen.contains("Reason (empty to cancel)"), "{screen}");
    second.wait_exit(T);
    let rows: Vec<Value> =
        serde_json::from_str(&w.ok(&["request", "list", "--status", "pending", "--json"])).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");

    // The approver's web form says what approving grants, and the grant it makes covers that
    // device only, shown on the grants page.
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);
    let page = web.get("/requests");
    assert!(
        page.body.contains("grants dev-b at site-a only"),
        "{}",
        page.body
    );
    let r = web.post(
        &format!("/requests/{pending}/approve"),
        &[
            ("csrf", &csrf_of(&page.body)),
            ("from", "now"),
            ("duration", "20m"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    first.expect("granted by olga", T);
    first.send("echo via-web-$((40+2))\r");
    first.expect("via-web-42", T);
    first.send("exit\r");
    first.wait_exit(T);
    let g = grant_of(&grants(&w), "dee").clone();
    assert_eq!(g["devices"], serde_json::json!(["dev-b"]));
    let page = web.get("/grants");
    assert!(page.body.contains("site-a/dev-b"), "{}", page.body);
    assert!(
        !page.body.contains("all devices at site-a"),
        "{}",
        page.body
    );
    let page = web.get("/requests");
    assert!(
        page.body.contains(&format!(
            "(grant {} for site-a/dev-b)",
            g["id"].as_str().unwrap()
        )),
        "{}",
        page.body
    );
}
