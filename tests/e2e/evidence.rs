//! Recordings made through the real broker: exported as asciicast v2 that asciinema accepts,
//! verified intact, and every kind of damage found at the exact record.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{self, World, run};

/// Byte offsets of each record in a record file (walks the framing: len, body, hash, len).
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut off = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut out = Vec::new();
    while off + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let end = off + 4 + len + 32 + 4;
        if end > bytes.len() {
            break;
        }
        out.push((off, end));
        off = end;
    }
    out
}

struct Tamper<'a> {
    w: &'a World,
    id: String,
    path: PathBuf,
    original: Vec<u8>,
}

impl Tamper<'_> {
    /// Writes `damaged` over the recording, runs `postern verify ID`, restores the original.
    fn verify_with(&self, damaged: Vec<u8>) -> (bool, String) {
        std::fs::write(&self.path, damaged).unwrap();
        let o = self.w.postern(&["verify", &self.id]);
        std::fs::write(&self.path, &self.original).unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    fn expect_failure(&self, what: &str, damaged: Vec<u8>, needle: &str) {
        let (ok, out) = self.verify_with(damaged);
        assert!(!ok, "{what}: verify must fail:\n{out}");
        assert!(
            out.contains(needle),
            "{what}: expected '{needle}' in:\n{out}"
        );
    }
}

fn recording_of(w: &World, id: &str) -> PathBuf {
    let s = w.sessions().into_iter().find(|s| s["id"] == id).unwrap();
    w.data
        .join("recordings")
        .join(s["recording"].as_str().unwrap())
}

#[test]
fn recordings_export_verify_and_reveal_tampering() {
    let w = World::new(9, "5m");
    let v = w.vendor("vera", &[]);
    w.grant("vera", "site-a", "maint");
    let o = w.ssh(
        &v,
        "vera:site-a/dev",
        &["for i in 1 2 3 4 5 6; do echo line $i; sleep 0.05; done"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = w.sessions()[0]["id"].as_str().unwrap().to_owned();

    // asciicast v2, as the asciinema tools read it.
    let cast = w.dir.path().join("s.cast");
    std::fs::write(&cast, w.ok(&["export", &id])).unwrap();
    assert!(harness::asciinema_cat(&cast).contains("line 6"));

    // Replay plays the output in order (at high speed here).
    let replayed = w.ok(&["replay", &id, "--speed", "50"]);
    let (l1, l6) = (
        replayed.find("line 1").unwrap(),
        replayed.find("line 6").unwrap(),
    );
    assert!(l1 < l6, "{replayed}");

    let ok = w.postern(&["verify", &id]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let json: serde_json::Value = serde_json::from_str(&w.ok(&["verify", &id, "--json"])).unwrap();
    assert_eq!(json["ok"], true);

    let path = recording_of(&w, &id);
    let original = std::fs::read(&path).unwrap();
    let recs = record_offsets(&original);
    assert!(
        recs.len() >= 9,
        "expected several records, got {}",
        recs.len()
    );
    let t = Tamper {
        w: &w,
        id: id.clone(),
        path,
        original: original.clone(),
    };

    // A flipped byte in record 4's payload.
    let mut flipped = original.clone();
    flipped[recs[4].0 + 4 + 21] ^= 0x20;
    // (Recordings are compressed: the flip shows as an undecodable chunk or a hash mismatch,
    // either way at record 4.)
    t.expect_failure("flipped byte", flipped, "record 4: ");

    // Record 3 dropped.
    let mut dropped = original[..recs[3].0].to_vec();
    dropped.extend_from_slice(&original[recs[3].1..]);
    t.expect_failure("dropped record", dropped, "record 3: ");

    // Truncated inside the last record, and exactly at a record boundary.
    let last = recs.len() - 1;
    t.expect_failure(
        "torn truncation",
        original[..recs[last].0 + 7].to_vec(),
        &format!("record {last}: incomplete"),
    );
    t.expect_failure(
        "boundary truncation",
        original[..recs[last].0].to_vec(),
        &format!("record {last}: missing"),
    );

    // A forgery that recomputes the whole chain after an edit is caught by the signed seal.
    let forged_path = w.dir.path().join("forged.rec");
    {
        let mut forged = recorder::Writer::create(&forged_path, &id).unwrap();
        for r in recorder::Reader::open(&t.path).unwrap().map(Result::unwrap) {
            let payload = String::from_utf8_lossy(&r.payload)
                .replace("line 3", "line X")
                .into_bytes();
            forged
                .append_at(r.time_us, r.kind, r.channel, &payload)
                .unwrap();
        }
        forged.finish().unwrap();
    }
    let forged_bytes = std::fs::read(&forged_path).unwrap();
    t.expect_failure(
        "re-chained forgery",
        forged_bytes.clone(),
        "seal's final hash does not match",
    );

    // A third party with only the exported public key, and no data directory.
    let key = w.dir.path().join("seal.pub");
    std::fs::write(&key, w.ok(&["seal-key", "--current"])).unwrap();
    let nowhere = w.dir.path().join("no-data-here");
    let third = |file: &Path| {
        run(Command::new(harness::postern_bin())
            .args(["verify", "--file"])
            .arg(file)
            .arg("--public-key")
            .arg(&key)
            .arg("--data")
            .arg(&nowhere))
    };
    let o = third(&t.path);
    assert!(
        o.status.success(),
        "third-party verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sealed over"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = third(&forged_path);
    assert!(
        !o.status.success(),
        "an altered copy must be rejected by the third party"
    );
    assert!(!nowhere.exists(), "standalone verification creates nothing");

    // A deleted recording, and one swapped for another session's file.
    let other = w.ssh(&v, "vera:site-a/dev", &["echo another"]);
    assert!(other.status.success());
    let other_id = w
        .sessions()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .find(|s| *s != id)
        .unwrap();
    let other_path = recording_of(&w, &other_id);
    std::fs::remove_file(&t.path).unwrap();
    let o = w.postern(&["verify", &id]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stdout).contains("is missing"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    t.expect_failure(
        "swapped recording",
        std::fs::read(&other_path).unwrap(),
        "recording swapped",
    );
    std::fs::write(&t.path, &t.original).unwrap();
    let all = w.postern(&["verify"]);
    let out = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(all.status.success(), "{out}");
    assert_eq!(
        out.matches("seal anchored in the audit log").count(),
        2,
        "{out}"
    );

    // The recording was restored after each check.
    assert!(w.postern(&["verify", &id]).status.success());

    // The audit log is chained too.
    let audit = w.data.join("audit.log");
    let log = std::fs::read(&audit).unwrap();
    let arecs = record_offsets(&log);
    let mut bad = log.clone();
    bad[arecs[2].0 + 4 + 25] ^= 0x01;
    std::fs::write(&audit, bad).unwrap();
    let o = w.postern(&["verify"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        !o.status.success() && out.contains("FAILED audit log: record 2: hash does not match"),
        "{out}"
    );
}

/// The database may lag the audit log (a broker that cannot reach its database still writes
/// `session.end` and `session.seal`): a row that still says "live" does not excuse a recording
/// cut short. The recording is held to the record count and final hash the audit log gives.
#[test]
fn a_live_row_does_not_excuse_a_truncated_recording() {
    let w = World::new(9, "5m");
    let v = w.vendor("lena", &[]);
    w.grant("lena", "site-a", "maint");
    let o = w.ssh(
        &v,
        "lena:site-a/dev",
        &["for i in 1 2 3 4 5 6; do echo line $i; sleep 0.05; done"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = w.sessions()[0]["id"].as_str().unwrap().to_owned();
    w.wait_audit("seal", |e| {
        e["event"] == "session.seal" && e["session"] == id.as_str()
    });
    let end = w.wait_audit("end", |e| {
        e["event"] == "session.end" && e["session"] == id.as_str()
    });
    let ended_with = end["records"].as_u64().unwrap();
    // The evidence comes first; wait for the database to have the end too before undoing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !w
        .sessions()
        .iter()
        .any(|s| s["id"] == id.as_str() && !s["records"].is_null())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the end never reached the database"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The row says live, as when the end could not be written to the database.
    let db = w.data.join("postern.db");
    let o = run(Command::new("sqlite3").args(["-cmd", ".timeout 5000"]).arg(&db).arg(format!(
        "UPDATE sessions SET ended = NULL, end_reason = NULL, records = NULL, final_hash = NULL \
         WHERE id = '{id}'"
    )));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let row = w
        .sessions()
        .into_iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap();
    assert!(row["ended"].is_null() && row["records"].is_null(), "{row}");

    // Intact: it passes, held to its seal and the audit log.
    let ok = w.postern(&["verify", &id]);
    let out = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{out}");
    assert!(
        out.contains("sealed by a trusted key; seal anchored in the audit log"),
        "{out}"
    );

    let path = recording_of(&w, &id);
    let original = std::fs::read(&path).unwrap();
    let recs = record_offsets(&original);
    assert_eq!(
        recs.len() as u64,
        ended_with,
        "the audit log counts every record"
    );
    let t = Tamper {
        w: &w,
        id: id.clone(),
        path: path.clone(),
        original: original.clone(),
    };
    // Its last records cut off, seal included: at a boundary and inside a record.
    let cut = recs.len() - 3;
    t.expect_failure(
        "last 3 records cut off",
        original[..recs[cut].0].to_vec(),
        &format!(
            "record {cut}: missing (recording truncated; the audit log says it ended with {ended_with} records)"
        ),
    );
    t.expect_failure(
        "cut inside a record",
        original[..recs[cut].0 + 9].to_vec(),
        &format!("record {cut}: incomplete"),
    );
    t.expect_failure(
        "cut inside a record",
        original[..recs[cut].0 + 9].to_vec(),
        "recording truncated",
    );
    // The whole verification fails too, and says so.
    std::fs::write(&path, &original[..recs[cut].0]).unwrap();
    let all = w.postern(&["verify"]);
    let out = String::from_utf8_lossy(&all.stdout).into_owned();
    assert!(!all.status.success(), "{out}");
    assert!(
        out.contains("FAILED session") && out.contains("truncated"),
        "{out}"
    );
    std::fs::write(&path, &original).unwrap();
    assert!(w.postern(&["verify"]).status.success());
}
