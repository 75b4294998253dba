//! An insider with write access to the data directory and the database tries to make the evidence
//! say something else. Each attack works on a real broker's data (real sessions through OpenSSH);
//! each must make `postern verify` fail and say what it found. (Forgeries with keys the operator's
//! root never certified, and rewrites of the whole audit log, are caught by the keyring and the
//! shipped checkpoints: `tests/e2e/keyring.rs`, `tests/e2e/checkpoints.rs`.)

use std::process::Command;

use crate::harness::{World, run};

/// A world with two finished sessions of two vendors; returns their ids.
fn two_sessions() -> (World, String, String) {
    let w = World::new(9, "5m");
    let (ann, ben) = (w.vendor("ann", &[]), w.vendor("ben", &[]));
    w.grant("ann", "site-a", "maint");
    w.grant("ben", "site-a", "maint");
    for (v, login, what) in [
        (&ann, "ann:site-a/dev", "echo ann-was-here"),
        (&ben, "ben:site-a/dev", "echo ben-was-here"),
    ] {
        let o = w.ssh(v, login, &[what]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    w.wait_sealed(2);
    let rows = w.sessions();
    let id = |vendor: &str| {
        rows.iter().find(|r| r["vendor"] == vendor).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The database has both ends (the evidence comes first; the database follows).
    for v in ["ann", "ben"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !w
            .sessions()
            .iter()
            .any(|r| r["vendor"] == v && !r["records"].is_null())
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let (a, b) = (id("ann"), id("ben"));
    assert_eq!(w.postern(&["verify"]).status.code(), Some(0));
    (w, a, b)
}

fn sql(w: &World, statement: &str) {
    let o = run(Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(w.data.join("postern.db"))
        .arg(statement));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `postern verify [ID]` must fail, and its output must contain `what`.
fn verify_fails(w: &World, id: Option<&str>, what: &str) {
    let mut args = vec!["verify"];
    args.extend(id);
    let o = w.postern(&args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "verify passed:\n{out}");
    assert!(out.contains(what), "expected '{what}' in:\n{out}");
}

#[test]
fn a_downgraded_session_with_a_replaced_recording_is_caught() {
    let (mut w, ann, ben) = two_sessions();
    w.kill_broker();
    // The row says "crashed" (no seal), and ann's recording is replaced by ben's records,
    // re-chained under ann's id and left unsealed.
    sql(
        &w,
        &format!("UPDATE sessions SET records = NULL, final_hash = NULL WHERE id = '{ann}'"),
    );
    let recs = w.data.join("recordings");
    let ben_records: Vec<recorder::Record> =
        recorder::Reader::open(&recs.join(format!("{ben}.rec")))
            .unwrap()
            .map(Result::unwrap)
            .filter(|r| !matches!(r.kind, recorder::Kind::Seal | recorder::Kind::SessionEnd))
            .collect();
    let path = recs.join(format!("{ann}.rec"));
    std::fs::remove_file(&path).unwrap();
    let mut forged = recorder::Writer::create(&path, &ann).unwrap();
    for r in &ben_records {
        forged.append(r.kind, r.channel, &r.payload).unwrap();
    }
    forged.finish().unwrap();
    drop(forged);
    verify_fails(&w, Some(&ann), &format!("FAILED session {ann}"));
}

#[test]
fn edited_rows_and_command_logs_are_caught() {
    let (mut w, ann, ben) = two_sessions();
    w.kill_broker();
    // Pin ann's session on ben.
    sql(
        &w,
        &format!("UPDATE sessions SET vendor = 'ben' WHERE id = '{ann}'"),
    );
    verify_fails(
        &w,
        Some(&ann),
        "the database row differs: vendor ben (the recording says ann)",
    );
    sql(
        &w,
        &format!("UPDATE sessions SET vendor = 'ann', started = started - 3600 WHERE id = '{ann}'"),
    );
    verify_fails(&w, Some(&ann), "the database row differs: start");
    sql(
        &w,
        &format!("UPDATE sessions SET started = started + 3600 WHERE id = '{ann}'"),
    );
    assert_eq!(w.postern(&["verify", &ann]).status.code(), Some(0));
    // Rewrite what ben ran.
    sql(
        &w,
        &format!("UPDATE commands SET command = 'echo nothing to see' WHERE session = '{ben}'"),
    );
    verify_fails(
        &w,
        Some(&ben),
        "the command log in the database differs from the recording",
    );
}

#[test]
fn planted_files_cut_logs_and_borrowed_recordings_are_caught() {
    let (mut w, ann, ben) = two_sessions();
    w.kill_broker();
    let recs = w.data.join("recordings");

    // A recording no session owns.
    std::fs::copy(recs.join(format!("{ann}.rec")), recs.join("s-planted.rec")).unwrap();
    verify_fails(
        &w,
        None,
        "recording s-planted.rec: no session in the database has this recording",
    );
    std::fs::remove_file(recs.join("s-planted.rec")).unwrap();

    // A third party is handed ben's recording as if it were ann's.
    let key = w.dir.path().join("seal.pub");
    std::fs::write(&key, w.ok(&["seal-key", "--current"])).unwrap();
    let file = recs.join(format!("{ben}.rec"));
    let (f, k) = (file.display().to_string(), key.display().to_string());
    let o = w.postern(&[
        "verify",
        "--file",
        &f,
        "--public-key",
        &k,
        "--expect-session",
        &ann,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("a recording of another session"));
    let o = w.postern(&[
        "verify",
        "--file",
        &f,
        "--public-key",
        &k,
        "--expect-session",
        &ben,
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // The audit log cut in the middle of a record: reported, and verify does not repair it
    // (running it again finds the same).
    let log = w.data.join("audit.log");
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
    verify_fails(&w, None, "or the log was cut");
    verify_fails(&w, None, "or the log was cut");
    assert_eq!(
        std::fs::read(&log).unwrap().len(),
        bytes.len() - 10,
        "verify changed the log"
    );

    // The next append by the broker cuts the torn record, and says so in the log.
    w.ok(&["site", "add", "site-z"]);
    let out = w.ok(&["verify"]);
    assert!(out.contains("the broker cut 1 incomplete record"), "{out}");
}
