//! Faults name themselves, and evidence and session records survive them: a device that
//! disconnects, stops answering or cannot be reached; a control plane (PostgreSQL) that becomes
//! unreachable or hangs; a shutdown while the database is frozen. Links are cut with a relay the
//! test controls; PostgreSQL is made unreachable for one database only.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{PgDb, Relay, World, run};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn session_end(w: &World, session: &str) -> serde_json::Value {
    w.wait_audit("session.end", |e| {
        e["event"] == "session.end" && e["session"] == session
    })
}

fn session_id(screen: &str) -> String {
    let at = screen.find("session s-").expect("banner names the session") + "session ".len();
    screen[at..].split_whitespace().next().unwrap().to_owned()
}

#[test]
fn device_faults_name_themselves_to_the_vendor_and_in_the_audit_log() {
    let w = World::with_config(9, "5m", "device_keepalive = \"1s\"\n");
    let relay = Relay::new(format!("127.0.0.1:{}", w.sshd_port).parse().unwrap());
    w.add_device_at("site-a/relayed", &format!("127.0.0.1:{}", relay.port));
    w.add_device_at("site-a/gone", "127.0.0.1:9");
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");

    // The device's connection dies (its sshd stopped, the link closed).
    let mut sh = w.shell(&alice, "alice:site-a/relayed");
    let id = session_id(&sh.expect("access until", Duration::from_secs(15)));
    sh.send("echo up-$((1+1))\r");
    sh.expect("up-2", Duration::from_secs(10));
    relay.sever();
    sh.expect("device disconnected", Duration::from_secs(10));
    sh.wait_exit(Duration::from_secs(10));
    assert_eq!(session_end(&w, &id)["reason"], "device disconnected");
    relay.restore();

    // The device goes silent (powered off, cable pulled): keepalives find it.
    let mut sh = w.shell(&alice, "alice:site-a/relayed");
    let id = session_id(&sh.expect("access until", Duration::from_secs(15)));
    sh.send("echo up-$((2+1))\r");
    sh.expect("up-3", Duration::from_secs(10));
    relay.freeze();
    sh.expect("device stopped answering", Duration::from_secs(20));
    sh.wait_exit(Duration::from_secs(10));
    assert_eq!(session_end(&w, &id)["reason"], "device stopped answering");
    relay.restore();

    // The device refuses connections.
    let o = w.ssh(&alice, "alice:site-a/gone", &["true"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
    let end = w.wait_audit("unreachable end", |e| {
        e["event"] == "session.end" && e["device"] == "gone"
    });
    assert_eq!(end["reason"], "device unreachable");

    // And a vendor who leaves is the vendor disconnecting.
    let o = w.ssh(&alice, "alice:site-a/dev", &["true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let end = w.wait_audit("vendor end", |e| {
        e["event"] == "session.end" && e["device"] == "dev"
    });
    assert_eq!(end["reason"], "vendor disconnected");
}

#[test]
fn session_ends_during_an_outage_reach_the_database_when_it_is_back() {
    let db = PgDb::new("journal");
    let w = World::with_config(
        9,
        "5m",
        &format!(
            "database_url = \"postgres://postgres@127.0.0.1:5432/{}\"\n",
            db.0
        ),
    );
    let alice = w.vendor("alice", &[]);
    w.grant("alice", "site-a", "maint");
    let mut sh = w.shell(&alice, "alice:site-a/dev");
    let id = session_id(&sh.expect("access until", Duration::from_secs(15)));
    sh.send("echo in-$((3+4))\r");
    sh.expect("in-7", Duration::from_secs(10));

    // The control plane goes away; the vendor leaves at once (within the grace period).
    db.cut();
    sh.send("exit\r");
    sh.wait_exit(Duration::from_secs(10));
    // The evidence does not wait for the database.
    let end = session_end(&w, &id);
    assert_eq!(end["reason"], "vendor disconnected");
    w.wait_audit("seal", |e| {
        e["event"] == "session.seal" && e["session"] == id.as_str()
    });
    let ended = end["ended"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(2));

    // Back: within seconds, without a restart, the database has the end with its true time.
    db.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    let row = loop {
        let o = w.postern(&["sessions", "--json"]);
        if o.status.success() {
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
            if let Some(r) = rows
                .iter()
                .find(|r| r["id"] == id.as_str() && !r["ended"].is_null())
            {
                break r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the session end never reached the database"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(row["end_reason"], "vendor disconnected");
    let ended_unix = chrono_like(&ended);
    assert_eq!(
        row["ended"].as_i64().unwrap(),
        ended_unix,
        "the true end time, not the recovery time"
    );
    assert!(
        row["records"].as_i64().unwrap() > 0,
        "the seal came along: {row}"
    );
    assert_eq!(w.postern(&["verify", &id]).status.code(), Some(0));

    // A copy of that recording cut short fails verification.
    let rec = w.data.join("recordings").join(format!("{id}.rec"));
    let full = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &full[..full.len() * 2 / 3]).unwrap();
    let o = w.postern(&["verify", &id]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::fs::write(&rec, &full).unwrap();
}

/// `2026-11-27T01:02:03Z` as Unix seconds.
fn chrono_like(t: &str) -> i64 {
    let o = run(Command::new("date").args(["-u", "-d", t, "+%s"]));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn a_hung_database_closes_sessions_within_the_bound_and_shutdown_keeps_every_end() {
    let db = PgDb::new("hung");
    let relay = Relay::new("127.0.0.1:5432".parse().unwrap());
    let mut w = World::with_config(9, "5m", &db.config(relay.port));
    let alice = w.vendor("alice", &[]);
    let bob = w.vendor("bob", &[]);
    w.grant("alice", "site-a", "maint");
    w.grant("bob", "site-a", "maint");

    // A database that accepts and never answers: live sessions close within the bound (five
    // seconds without an answer, each check giving up after one), saying why.
    let mut sh = w.shell(&alice, "alice:site-a/dev");
    let id = session_id(&sh.expect("access until", Duration::from_secs(15)));
    sh.send("echo in-$((4+4))\r");
    sh.expect("in-8", Duration::from_secs(10));
    relay.freeze();
    let frozen = Instant::now();
    sh.expect("control plane unreachable", Duration::from_secs(15));
    let took = frozen.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "closed {took:?} after the database hung"
    );
    assert!(took >= Duration::from_secs(4), "closed too early: {took:?}");
    sh.wait_exit(Duration::from_secs(10));
    assert_eq!(session_end(&w, &id)["reason"], "control plane unreachable");
    let screen = sh.screen();
    assert!(
        !screen.contains("5432") && !screen.contains(&db.0),
        "no internals: {screen}"
    );
    // A login while the database hangs gets the outage line within seconds, not a hang.
    let asked = Instant::now();
    let o = w.ssh(&bob, "bob:site-a/dev", &["true"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach its control plane"),
        "{}",
        stderr(&o)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "login took {:?}",
        asked.elapsed()
    );

    // Back, then a shutdown while the database hangs again: every session's end is kept.
    relay.restore();
    std::thread::sleep(Duration::from_secs(2));
    let mut shells = Vec::new();
    let mut ids = Vec::new();
    for v in [&alice, &bob] {
        let mut sh = w.shell(v, &format!("{}:site-a/dev", v.name));
        ids.push(session_id(
            &sh.expect("access until", Duration::from_secs(15)),
        ));
        shells.push(sh);
    }
    relay.freeze();
    let status = w.terminate_broker();
    assert!(status.success(), "a clean stop: {status:?}");
    for id in &ids {
        assert_eq!(session_end(&w, id)["reason"], "broker shutting down");
        w.wait_audit("seal", |e| {
            e["event"] == "session.seal" && e["session"] == id.as_str()
        });
    }
    w.wait_audit("serve.stop", |e| e["event"] == "serve.stop");
    for mut sh in shells {
        sh.wait_exit(Duration::from_secs(10));
    }
    // The next start applies the journal: the ends as they happened, not "stopped unexpectedly".
    relay.restore();
    w.start_broker();
    let rows = w.sessions();
    for id in &ids {
        let r = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
        assert_eq!(r["end_reason"], "broker shutting down", "{r}");
        assert!(r["records"].as_i64().unwrap() > 0, "{r}");
    }
}
