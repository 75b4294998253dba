use super::*;
use crate::audit::AuditEvent;
use crate::audit::AuditLog;
use recorder::{Kind, SealKey, Writer};
use serde_json::json;

struct Node {
    _dir: tempfile::TempDir,
    evidence: Evidence,
    audit: AuditLog,
    key: SealKey,
}

fn node(name: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let evidence = Evidence {
        node: name.into(),
        audit_log: dir.path().join("audit.log"),
        recordings: dir.path().join("recordings"),
        local_seal_key: None,
        keyring: None,
        root: None,
        fetched: None,
    };
    std::fs::create_dir_all(&evidence.recordings).unwrap();
    let audit = AuditLog::new(&evidence.audit_log, name);
    audit.record(AuditEvent::ServeStart, json!({})).unwrap();
    Node {
        _dir: dir,
        evidence,
        audit,
        key: SealKey::from_seed(&[7; 32]),
    }
}

/// A session row as the database may hold it: still "live" (no end, no seal).
fn row(id: &str, node: &str) -> Session {
    Session {
        id: id.into(),
        vendor: "v".into(),
        site: "s".into(),
        device: "d".into(),
        function: "f".into(),
        grant_id: "g".into(),
        node: node.into(),
        source: "127.0.0.1".into(),
        recording: format!("{id}.rec"),
        started: crate::time::now(),
        ended: None,
        end_reason: None,
        kill_requested: false,
        records: None,
        final_hash: None,
        breakglass: None,
    }
}

impl Node {
    /// Records a session of 6 records; `sealed` ends it as the broker does (end record,
    /// seal, `session.end` and `session.seal` in the audit log).
    fn record(&self, id: &str, sealed: bool) -> Vec<u8> {
        self.record_as(id, &self.evidence.node.clone(), sealed)
    }

    /// [`Node::record`] for a session that `node` recorded (a copy kept here).
    fn record_as(&self, id: &str, node: &str, sealed: bool) -> Vec<u8> {
        let path = self.evidence.recordings.join(format!("{id}.rec"));
        let mut w = Writer::create(&path, id).unwrap();
        let start = json!({"session": id, "vendor": "v", "site": "s", "device": "d", "function": "f",
                           "grant": "g", "source": "127.0.0.1", "node": node});
        w.append(Kind::SessionStart, 0, start.to_string().as_bytes())
            .unwrap();
        for i in 0..3 {
            w.append(Kind::Output, 0, format!("line {i}\r\n").as_bytes())
                .unwrap();
        }
        if sealed {
            w.append(Kind::SessionEnd, 0, b"{}").unwrap();
            let seal = w.seal(&self.key).unwrap();
            let (n, h) = w.finish().unwrap();
            self.audit
                .record(
                    AuditEvent::SessionEnd,
                    json!({"session": id, "records": n, "final_hash": hex::encode(h)}),
                )
                .unwrap();
            self.audit
                .record(
                    AuditEvent::SessionSeal,
                    json!({"session": id, "sealed_records": seal.records, "sealed_hash": seal.final_hash}),
                )
                .unwrap();
        } else {
            w.finish().unwrap();
        }
        std::fs::read(&path).unwrap()
    }

    fn verify(&self, sessions: &[Session]) -> Vec<Finding> {
        check(
            &self.evidence,
            &[self.key.public().export()],
            sessions,
            &HashMap::new(),
            false,
        )
    }
}

#[test]
fn the_audit_log_not_the_live_flag_decides() {
    let n = node("node-a");
    let bytes = n.record("s-1", true);
    let live = row("s-1", "node-a");
    let f = &n.verify(std::slice::from_ref(&live))[0];
    assert!(f.ok, "{}", f.line());
    assert!(f.detail.contains("sealed by a trusted key"), "{}", f.line());

    // Cut at a record boundary, seal and end record gone: the chain alone is intact.
    let path = n.evidence.recordings.join("s-1.rec");
    let cut = recorder::verify(&bytes[..]).unwrap();
    assert_eq!(cut.records, 6);
    let mut short = bytes.clone();
    loop {
        short.pop();
        let r = recorder::verify(&short[..]).unwrap();
        if r.records == 4 && r.tail == recorder::Tail::Clean {
            break;
        }
    }
    std::fs::write(&path, &short).unwrap();
    let f = &n.verify(std::slice::from_ref(&live))[0];
    assert!(!f.ok, "{}", f.line());
    assert_eq!(
        f.detail,
        "record 4: missing (recording truncated; the audit log says it ended with 6 records)"
    );
}

#[test]
fn only_a_session_without_an_end_may_be_unsealed() {
    let n = node("node-a");
    n.record("s-live", false);
    let f = &n.verify(&[row("s-live", "node-a")])[0];
    assert!(
        f.ok && f.detail.contains("live, not sealed yet"),
        "{}",
        f.line()
    );

    n.audit
        .record(
            AuditEvent::SessionCrashRecovered,
            json!({"sessions": ["s-live"]}),
        )
        .unwrap();
    let f = &n.verify(&[row("s-live", "node-a")])[0];
    assert!(f.ok && f.detail.contains("never sealed"), "{}", f.line());

    // The audit log says it ended with 6 records; the unsealed file has 4.
    n.audit
        .record(
            AuditEvent::SessionEnd,
            json!({"session": "s-live", "records": 6, "final_hash": "00"}),
        )
        .unwrap();
    let f = &n.verify(&[row("s-live", "node-a")])[0];
    assert!(!f.ok && f.detail.contains("truncated"), "{}", f.line());
}

#[test]
fn another_nodes_session_is_not_a_missing_one() {
    let n = node("node-a");
    let theirs = &n.verify(&[row("s-b", "node-b")])[0];
    assert!(theirs.ok, "{}", theirs.line());
    assert_eq!(theirs.elsewhere.as_deref(), Some("node-b"));
    assert!(
        theirs
            .line()
            .starts_with("REMOTE session s-b: recorded on node node-b; verify it there"),
        "{}",
        theirs.line()
    );
    let mine = &n.verify(&[row("s-a", "node-a")])[0];
    assert!(
        !mine.ok && mine.detail.contains("is missing"),
        "{}",
        mine.line()
    );

    // A copy of another node's recording kept here is held to its seal and the database's
    // copy of it (this node's audit log does not speak for that node).
    let bytes = n.record_as("s-b2", "node-b", true);
    let full = recorder::verify(&bytes[..]).unwrap();
    let mut theirs = row("s-b2", "node-b");
    theirs.records = Some(full.records as i64);
    theirs.final_hash = full.last_hash.map(hex::encode);
    let f = &n.verify(std::slice::from_ref(&theirs))[0];
    assert!(
        f.ok && f.detail
            == "chain intact; sealed by a trusted key; seal v1 (binds the recording only)",
        "{}",
        f.line()
    );
    let path = n.evidence.recordings.join("s-b2.rec");
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
    let f = &n.verify(std::slice::from_ref(&theirs))[0];
    assert!(
        !f.ok && f.detail.contains("incomplete") && f.detail.contains("sealed with 6 records"),
        "{}",
        f.line()
    );
}

#[test]
fn the_row_is_held_to_the_recordings_start() {
    let n = node("node-a");
    n.record("s-1", true);
    let mut moved = row("s-1", "node-a");
    moved.vendor = "w".into();
    moved.source = "10.0.0.9".into();
    let f = &n.verify(std::slice::from_ref(&moved))[0];
    assert!(!f.ok, "{}", f.line());
    assert_eq!(
        f.detail,
        "the database row differs: vendor w (the recording says v), source 10.0.0.9 (the recording says 127.0.0.1)"
    );
}
