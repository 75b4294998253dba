//! The edge's own front door: vendors connect to the edge at the site with the same login string,
//! certificate and TOTP, decided from the central's signed policy, recorded and sealed there. It
//! keeps serving while the link to the central is cut, and a revocation at the central closes a
//! live session at the edge at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::edges::{Proc, Relay, central, edge_row, join_edge, wait_online};
use crate::harness::{Vendor, World, certify_seal_key, free_port, postern_bin, run, wait_for_port};

/// `ssh VENDOR:SITE/DEVICE@edge COMMAND` to the edge's front door on `port`.
fn at_edge(w: &World, v: &Vendor, port: u16, login: &str, command: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(&v.key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
        ])
        .args(["-p", &port.to_string()])
        .arg(format!("{login}@127.0.0.1"))
        .args(command);
    w.with_askpass(&mut cmd, &v.next_code());
    cmd
}

fn site_sessions(dir: &Path) -> Vec<Value> {
    let o = run(Command::new(postern_bin())
        .args(["sessions", "--json", "--data"])
        .arg(dir.join("site")));
    assert!(o.status.success(), "{o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Whether a recording of the edge's site node holds `what`.
fn flushed(dir: &Path, what: &[u8]) -> bool {
    let Ok(files) = std::fs::read_dir(dir.join("site/recordings")) else {
        return false;
    };
    // Read as records: the recording is compressed, so the bytes may not stand in the file as
    // they were written (zstd codes literals too once a block holds enough of them).
    let holds = |r: recorder::Record| r.payload.windows(what.len()).any(|w| w == what);
    files.filter_map(Result::ok).any(|f| {
        recorder::Reader::open(&f.path())
            .is_ok_and(|records| records.map_while(Result::ok).any(holds))
    })
}

/// Waits until the edge holds a policy naming `what`.
fn wait_bundle_has(dir: &Path, what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("edge/policy.json"))
        .unwrap_or_default()
        .contains(what)
    {
        assert!(Instant::now() < end, "the edge's policy never named {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A central, and an edge with its own front door joined through a relay the test can sever.
struct EdgeSite {
    w: World,
    dir: std::path::PathBuf,
    /// The edge's front door.
    port: u16,
    relay: Relay,
    edge: Option<Proc>,
    /// More `edge run` arguments.
    run_args: Vec<String>,
}

impl EdgeSite {
    /// Site `site-s` with device `dev`, served by edge `e-site`, which runs at once.
    fn start() -> EdgeSite {
        EdgeSite::with_config("")
    }

    /// [`EdgeSite::start`] with `extra` in the central's configuration.
    fn with_config(extra: &str) -> EdgeSite {
        let (w, central_port) = central(extra);
        w.ok(&["site", "add", "site-s"]);
        w.add_device("site-s/dev");
        let added: Value =
            serde_json::from_str(&w.ok(&["edge", "add", "e-site", "--sites", "site-s", "--json"]))
                .unwrap();
        let relay_port = free_port();
        let relay = Relay::start(
            &format!("127.0.0.1:{relay_port}"),
            format!("127.0.0.1:{central_port}"),
        );
        let dir = w.dir.path().join("edge-s");
        join_edge(&dir, &format!("127.0.0.1:{relay_port}"), &added);
        // The operator certifies the site node's seal key with the root, as for any node.
        certify_seal_key(&dir.join("site"), &w.dir.path().join("root.key"));
        let mut site = EdgeSite {
            w,
            dir,
            port: free_port(),
            relay,
            edge: None,
            run_args: Vec::new(),
        };
        site.run();
        site
    }

    /// `postern edge run --ssh-listen` (again), until its front door listens.
    fn run(&mut self) {
        self.edge = Some(Proc(
            Command::new(postern_bin())
                .args(["edge", "run", "--ssh-listen"])
                .arg(format!("127.0.0.1:{}", self.port))
                .args(&self.run_args)
                .arg("--data")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        wait_for_port(self.port, "the edge's front door");
    }

    fn sever(&self) {
        self.relay.sever();
        wait_online(&self.w, "e-site", false, Duration::from_secs(15));
    }

    fn restore(&self) {
        self.relay.restore();
        // The edge retries after a jittered delay that grows while the link is down (30 s at
        // most, times up to 1.5).
        wait_online(&self.w, "e-site", true, Duration::from_secs(60));
    }

    /// Sessions of the edge that reached the central.
    fn shipped(&self, n: usize) -> Vec<Value> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let here: Vec<Value> = (self.w.sessions().into_iter())
                .filter(|s| s["node"] == "edge-e-site")
                .collect();
            if here.len() >= n {
                return here;
            }
            assert!(Instant::now() < end, "not all evidence arrived: {here:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn vendors_work_at_the_edge_while_its_link_is_cut_and_revocations_close_sessions_there() {
    let site = EdgeSite::start();
    let ann = site.w.vendor("ann", &[]);
    let grant = site.w.grant("ann", "site-s", "maint");
    // Another vendor for file transfer (and their own TOTP steps).
    let fay = site.w.vendor("fay", &[]);
    let fay_grant = site.w.grant("fay", "site-s", "full");
    let (w, dir, port) = (&site.w, site.dir.clone(), site.port);
    wait_online(w, "e-site", true, Duration::from_secs(15));
    wait_bundle_has(&dir, &grant);
    wait_bundle_has(&dir, &fay_grant);

    // Online: a session at the edge, recorded and sealed there.
    let o = run(&mut at_edge(
        w,
        &ann,
        port,
        "ann:site-s/dev",
        &["echo", "at-the-edge"],
    ));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("at-the-edge"),
        "{o:?}"
    );

    // The link is cut: the edge keeps serving from the policy it holds.
    site.sever();
    let o = run(&mut at_edge(
        w,
        &ann,
        port,
        "ann:site-s/dev",
        &["echo", "while-cut"],
    ));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("while-cut"),
        "{o:?}"
    );
    let batch = dir.join("sftp.batch");
    std::fs::write(&batch, "ls /\n").unwrap();
    let mut sftp = Command::new("sftp");
    sftp.args(["-F", "/dev/null", "-i"])
        .arg(&fay.key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "BatchMode=no", "-o", "User=fay:site-s/dev:full"])
        .args(["-P", &port.to_string(), "-b"])
        .arg(&batch)
        .arg("127.0.0.1");
    w.with_askpass(&mut sftp, &fay.next_code());
    let o = run(&mut sftp);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("usr"),
        "sftp at the edge: {o:?}"
    );
    let sessions = site_sessions(&dir);
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    let verified = run(Command::new(postern_bin())
        .args(["verify", "--data"])
        .arg(dir.join("site")));
    assert!(verified.status.success(), "{verified:?}");

    // A revocation made while the link is cut closes the live session at the edge once it is back.
    site.restore();
    let mut live = at_edge(w, &ann, port, "ann:site-s/dev", &["sleep", "60"])
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while site_sessions(&dir)
        .iter()
        .filter(|s| s["ended"].is_null())
        .count()
        == 0
    {
        assert!(Instant::now() < end, "no live session at the edge");
        std::thread::sleep(Duration::from_millis(100));
    }
    site.sever();
    w.ok(&["grant", "revoke", &grant]);
    let version = edge_row(w, "e-site")["policy_version"].as_i64().unwrap();
    site.restore();
    let healed = Instant::now();
    let end = healed + Duration::from_secs(10);
    while live.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < end,
            "the revoked session is still open at the edge"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "revoked session closed {:?} after the link was back",
        healed.elapsed()
    );
    assert!(edge_row(w, "e-site")["policy_acked"].as_i64().unwrap() > version);
    let closed = site_sessions(&dir);
    assert!(
        closed.iter().any(|s| s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("grant {grant} was revoked")))),
        "{closed:?}"
    );
    let o = run(&mut at_edge(
        w,
        &ann,
        port,
        "ann:site-s/dev",
        &["echo", "after"],
    ));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("after"));

    // The evidence recorded at the edge, the session made while the link was cut included,
    // arrives at the central: listed with its origin, searchable, exported and verified there.
    let shipped = site.shipped(4);
    for s in &shipped {
        let id = s["id"].as_str().unwrap();
        let v = w.postern(&["verify", id]);
        let out = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.status.success() && out.contains("sealed by a trusted key"),
            "{out}"
        );
    }
    let found = w.ok(&["commands", "--vendor", "ann", "--json"]);
    assert!(found.contains("while-cut"), "{found}");
    assert!(
        shipped.iter().any(|s| w
            .ok(&["export", s["id"].as_str().unwrap()])
            .contains("while-cut")),
        "the session made while cut is not replayable here"
    );
    w.wait_audit("edge.evidence", |e| {
        e["event"] == "edge.evidence" && e["edge"] == "e-site"
    });
    // So does the site node's audit log, its chain checked there.
    let copy = w.data.join("edge-evidence/audit/edge-e-site.log");
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read(&copy).is_ok_and(|b| b.windows(12).any(|w| w == b"session.seal")) {
        assert!(Instant::now() < end, "the edge's audit log did not arrive");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The TOTP steps ann used at the edge, while it was cut off too, are spent at the central.
    w.wait_audit("edge.totp_used", |e| {
        e["event"] == "edge.totp_used" && e["edge"] == "e-site" && e["vendor"] == "ann"
    });
    let end = Instant::now() + Duration::from_secs(10);
    while edge_row(w, "e-site")["buffered_sessions"] != 0 {
        assert!(Instant::now() < end, "{}", edge_row(w, "e-site"));
        std::thread::sleep(Duration::from_millis(200));
    }

    // A recording altered on the edge's disk before it is shipped is refused at the central,
    // reported at both ends, and kept aside there.
    // Another vendor: each vendor's TOTP codes are single-use steps, and ann's are spent.
    let bob = w.vendor("bob", &[]);
    let again = w.grant("bob", "site-s", "maint");
    wait_bundle_has(&dir, &again);
    site.sever();
    let o = run(&mut at_edge(
        w,
        &bob,
        port,
        "bob:site-s/dev",
        &["echo", "tamper-me"],
    ));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("tamper-me"),
        "{o:?}"
    );
    let mut at_site = site_sessions(&dir);
    at_site.sort_by_key(|s| s["started"].as_i64());
    let last = at_site.last().unwrap();
    let id = last["id"].as_str().unwrap().to_owned();
    let file = dir
        .join("site/recordings")
        .join(last["recording"].as_str().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"tamper-me")
        .expect("the output is in the recording");
    bytes[at] = b'T';
    std::fs::write(&file, bytes).unwrap();
    site.relay.restore();
    let refused = w.wait_audit("edge.evidence_refused", |e| {
        e["event"] == "edge.evidence_refused" && e["session"] == id.as_str()
    });
    assert!(
        std::path::Path::new(refused["kept"].as_str().unwrap()).exists(),
        "{refused}"
    );
    assert!(!w.sessions().iter().any(|s| s["id"] == id.as_str()));
}

#[test]
fn an_edge_killed_while_cut_off_delivers_its_evidence_after_a_restart() {
    let mut site = EdgeSite::start();
    let cy = site.w.vendor("cy", &[]);
    let grant = site.w.grant("cy", "site-s", "maint");
    wait_online(&site.w, "e-site", true, Duration::from_secs(15));
    wait_bundle_has(&site.dir, &grant);
    site.sever();
    // A finished session and a live one, both only on the edge's disk.
    let o = run(&mut at_edge(
        &site.w,
        &cy,
        site.port,
        "cy:site-s/dev",
        &["echo", "before-the-kill"],
    ));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("before-the-kill"),
        "{o:?}"
    );
    let mut live = at_edge(
        &site.w,
        &cy,
        site.port,
        "cy:site-s/dev",
        &["sh", "-c", "'echo live-output; sleep 60'"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut first = [0u8; 11];
    std::io::Read::read_exact(live.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"live-output");
    // Killed once the recorder has flushed the output to the edge's disk (within a second).
    let end = Instant::now() + Duration::from_secs(10);
    while !flushed(&site.dir, b"live-output") {
        assert!(
            Instant::now() < end,
            "the live session's output never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(site.edge.take()); // SIGKILL
    let _ = live.kill();
    let _ = live.wait();
    site.run();
    site.restore();
    let shipped = site.shipped(2);
    for s in &shipped {
        let id = s["id"].as_str().unwrap();
        let v = site.w.postern(&["verify", id]);
        let out = String::from_utf8_lossy(&v.stdout);
        assert!(v.status.success() && out.contains("chain intact"), "{out}");
    }
    let cut = shipped
        .iter()
        .find(|s| {
            site.w
                .ok(&["export", s["id"].as_str().unwrap()])
                .contains("live-output")
        })
        .expect("the killed session's output reached the central");
    assert!(cut["end_reason"].as_str().is_some(), "{cut}");
}

#[test]
fn past_the_offline_grace_only_offline_ok_break_glass_opens_and_it_is_reviewed_centrally() {
    let site = EdgeSite::with_config("edge_offline_grace = \"3s\"\n");
    let w = &site.w;
    w.ok(&[
        "function",
        "add",
        "fix",
        "--allow",
        "shell,exec",
        "--max-window",
        "2h",
        "--emergency",
        "--orgs",
        "acme",
        "--offline-ok",
    ]);
    let dan = w.vendor("dan", &[]);
    // Made after the function: the bundle naming it names `fix` as offline-ok.
    let grant = w.grant("dan", "site-s", "maint");
    wait_online(w, "e-site", true, Duration::from_secs(15));
    wait_bundle_has(&site.dir, &grant);
    site.sever();
    // Past the grace (the edge last heard from the central at most 5 s before the cut).
    std::thread::sleep(Duration::from_secs(9));
    let o = run(&mut at_edge(
        w,
        &dan,
        site.port,
        "dan:site-s/dev",
        &["echo", "normal"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("past its offline grace"), "{o:?}");

    let mut sh = w.shell_to(
        &dan,
        "dan:site-s/dev:fix",
        site.port,
        &[
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ],
    );
    let t = Duration::from_secs(15);
    sh.expect("Reason for the emergency (empty to cancel): ", t);
    sh.send("pump down, WAN down\r");
    sh.expect("For how long?", t);
    sh.send("\r");
    sh.expect("access until", t);
    sh.send("echo offline-fix-$((40+2))\r");
    sh.expect("offline-fix-42", t);
    sh.send("exit\r");
    let _ = sh.child.wait();

    // Back online: the session and its opening reach the central's review queue.
    site.restore();
    let shipped = site.shipped(1);
    let fixed = shipped
        .iter()
        .find(|s| s["function"] == "fix")
        .expect("the break-glass session arrived");
    assert!(fixed["breakglass"].is_string(), "{fixed}");
    let queue: Vec<Value> = serde_json::from_str(&w.ok(&["breakglass", "--json"])).unwrap();
    let opening = queue
        .iter()
        .find(|b| b["id"] == fixed["breakglass"])
        .expect("the opening is in the central's review queue");
    assert!(opening["reviewed_at"].is_null(), "{opening}");
    assert!(
        opening["reason"].as_str().unwrap().contains("WAN down"),
        "{opening}"
    );
}

#[test]
fn a_full_evidence_buffer_refuses_new_sessions_until_it_drains() {
    let mut site = EdgeSite::start();
    let eve = site.w.vendor("eve", &[]);
    let grant = site.w.grant("eve", "site-s", "maint");
    wait_online(&site.w, "e-site", true, Duration::from_secs(15));
    wait_bundle_has(&site.dir, &grant);
    // Again with a buffer that one session fills.
    drop(site.edge.take());
    site.run_args = vec!["--buffer-max".into(), "1KiB".into()];
    let restarted = crate::harness::unix_now() as i64;
    site.run();
    // Settled first: the new process linked (and given the central's bundle again) before the
    // link is cut.
    let end = Instant::now() + Duration::from_secs(60);
    while crate::edges::edge_row(&site.w, "e-site")["connected_since"]
        .as_i64()
        .is_none_or(|t| t < restarted)
    {
        assert!(Instant::now() < end, "the restarted edge never linked");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_bundle_has(&site.dir, &grant);
    site.sever();
    let o = run(&mut at_edge(
        &site.w,
        &eve,
        site.port,
        "eve:site-s/dev",
        &["seq", "1", "2000"],
    ));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2000"),
        "{o:?}\nthe site node's audit log ends:\n{}",
        site_audit_tail(&site.dir)
    );
    let end = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let o = run(&mut at_edge(
            &site.w,
            &eve,
            site.port,
            "eve:site-s/dev",
            &["echo", "more"],
        ));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if err.contains("evidence buffer is full") {
            break err;
        }
        assert!(Instant::now() < end, "the full buffer never refused: {o:?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!refused.contains("more"));
    // The link is back: the buffer drains to the central, and sessions open again.
    site.restore();
    site.shipped(1);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let o = run(&mut at_edge(
            &site.w,
            &eve,
            site.port,
            "eve:site-s/dev",
            &["echo", "drained"],
        ));
        if String::from_utf8_lossy(&o.stdout).contains("drained") {
            break;
        }
        assert!(Instant::now() < end, "sessions stayed refused: {o:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last events of the site node's audit log (what a failure needs to be understood).
fn site_audit_tail(dir: &std::path::Path) -> String {
    let Ok(reader) = recorder::Reader::open(&dir.join("site/audit.log")) else {
        return "(no audit log)".into();
    };
    let events: Vec<String> = reader
        .filter_map(|r| r.ok())
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    events[events.len().saturating_sub(12)..].join("\n")
}
