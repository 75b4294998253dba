use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::audit::AuditLog;
use crate::verify::Finding;

fn key(n: u8) -> recorder::SealKey {
    recorder::SealKey::from_seed(&[n; 32])
}

fn leaf(n: u8) -> [u8; 32] {
    seal_leaf(&format!("s-{n}"), n as u64, &hex::encode([n; 32]))
}

#[test]
fn signature_covers_every_field() {
    let k = key(1);
    let cp = Checkpoint::sign(&k, "inst", "node-a", 41, &[7; 32], 1_000, &[leaf(1)], None);
    assert_eq!(cp.check_signature().unwrap(), k.public());
    let json: Checkpoint = serde_json::from_str(&serde_json::to_string(&cp).unwrap()).unwrap();
    assert!(json.check_signature().is_ok());
    type Edit = Box<dyn Fn(&mut Checkpoint)>;
    let tampered: Vec<Edit> = vec![
        Box::new(|c| c.seq += 1),
        Box::new(|c| c.head = hex::encode([8; 32])),
        Box::new(|c| c.node = "node-b".into()),
        Box::new(|c| c.installation = "other".into()),
        Box::new(|c| c.time += 1),
        Box::new(|c| c.seals = 0),
        Box::new(|c| c.seals_root = hex::encode(merkle_root(&[]))),
        Box::new(|c| c.prev = Some(hex::encode([0; 32]))),
        // Another key named, the signature left: it does not hold under that key.
        Box::new(|c| c.key = key(2).public().export()),
    ];
    for t in tampered {
        let mut c = cp.clone();
        t(&mut c);
        assert!(c.check_signature().is_err(), "{c:?}");
    }
    // Re-signed by another key, it verifies under that key only: trust is the keyring's call.
    let other = Checkpoint::sign(&key(2), "inst", "node-a", 41, &[7; 32], 1_000, &[], None);
    assert_eq!(other.check_signature().unwrap(), key(2).public());
    assert_ne!(other.hash(), cp.hash());
}

#[test]
fn checkpoint_signatures_are_not_seal_signatures() {
    // A seal over the same bytes' hash never passes as a checkpoint signature.
    let k = key(3);
    let cp = Checkpoint::sign(&k, "inst", "n", 1, &[1; 32], 5, &[], None);
    let seal = k.seal("inst", 1, &[1; 32]);
    let mut forged = cp.clone();
    forged.signature =
        hex::encode(base64_decode(&seal.signature).expect("seal signature is base64"));
    assert!(forged.check_signature().is_err());
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    // Small decoder for the test only (approvals does not depend on base64).
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Some(out)
}

#[test]
fn merkle_root_is_ordered_and_domain_separated() {
    let node = |a: [u8; 32], b: [u8; 32]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(NODE_TAG);
        h.update(a);
        h.update(b);
        h.finalize().into()
    };
    assert_eq!(
        merkle_root(&[]),
        <[u8; 32]>::from(Sha256::digest(EMPTY_TAG))
    );
    assert_eq!(merkle_root(&[leaf(1)]), leaf(1));
    assert_eq!(merkle_root(&[leaf(1), leaf(2)]), node(leaf(1), leaf(2)));
    assert_ne!(
        merkle_root(&[leaf(1), leaf(2)]),
        merkle_root(&[leaf(2), leaf(1)])
    );
    // Three leaves split 2 + 1; five split 4 + 1.
    assert_eq!(
        merkle_root(&[leaf(1), leaf(2), leaf(3)]),
        node(node(leaf(1), leaf(2)), leaf(3))
    );
    let five = [leaf(1), leaf(2), leaf(3), leaf(4), leaf(5)];
    assert_eq!(
        merkle_root(&five),
        node(
            node(node(leaf(1), leaf(2)), node(leaf(3), leaf(4))),
            leaf(5)
        )
    );
    // Dropping a seal changes the root.
    assert_ne!(merkle_root(&five), merkle_root(&five[..4]));
    // A leaf is never an inner node of the same bytes.
    let l = seal_leaf("s", 2, "ab");
    assert_ne!(l, node(leaf(1), leaf(2)));
    assert_eq!(
        leaf_of_event(
            &json!({"event": "session.seal", "session": "s", "sealed_records": 2, "sealed_hash": "ab"})
        ),
        Some(l)
    );
    assert_eq!(
        leaf_of_event(&json!({"event": "session.end", "session": "s"})),
        None
    );
}

/// A log with sessions sealed, checkpointed as the broker does it.
fn log_with_checkpoints(dir: &Path) -> (PathBuf, Vec<Checkpoint>) {
    let path = dir.join("audit.log");
    let log = AuditLog::of_installation(&path, "node-a", Some("inst-1"));
    let k = key(9);
    let mut shipped = Vec::new();
    let mut tracker: Option<Tracker> = None;
    for round in 0..3u64 {
        for i in 0..4u64 {
            log.record(AuditEvent::AuthOk, json!({"vendor": "v", "i": i}))
                .unwrap();
        }
        let id = format!("s-{round}");
        log.record(
            AuditEvent::SessionSeal,
            json!({"session": id, "sealed_records": 10 + round, "sealed_hash": hex::encode([round as u8; 32])}),
        )
        .unwrap();
        match tracker.as_mut() {
            Some(t) => t.read_new().unwrap(),
            None => {
                let (t, mismatch) = Tracker::open(&path, "node-a", None).unwrap();
                assert!(mismatch.is_none());
                tracker = Some(t);
            }
        }
        let t = tracker.as_mut().unwrap();
        let cp = t.make(&k, 1_000 + round as i64).unwrap();
        assert_eq!(cp.seals, 1);
        log.record(AUDIT_EVENT, json!({"checkpoint": cp})).unwrap();
        t.committed(cp.clone());
        t.read_new().unwrap();
        // Its own record does not move the head for the next checkpoint.
        assert!(t.make(&k, 2_000).is_none());
        shipped.push(cp);
    }
    (path, shipped)
}

fn failed(f: &[Finding]) -> Vec<String> {
    f.iter()
        .filter(|f| !f.ok)
        .map(|f| f.detail.clone())
        .collect()
}

#[test]
fn tracker_chains_and_verify_holds_on_an_intact_log() {
    let dir = tempfile::tempdir().unwrap();
    let (path, shipped) = log_with_checkpoints(dir.path());
    assert_eq!(shipped[0].prev, None);
    assert_eq!(shipped[1].prev.as_deref(), Some(shipped[0].hash().as_str()));
    assert_eq!(shipped[2].prev.as_deref(), Some(shipped[1].hash().as_str()));
    assert_eq!(shipped[0].installation, "inst-1");
    let f = verify_log(&path, "node-a", &shipped, "file", true, 1_000 + 180);
    assert!(failed(&f).is_empty(), "{f:?}");
    assert!(
        f[0].detail
            .starts_with("last shipped checkpoint: seq 16, 2 minutes ago"),
        "{f:?}"
    );
    // Reopened (a restart), the tracker picks up after the last checkpoint.
    let (t, mismatch) = Tracker::open(&path, "node-a", shipped.last().cloned()).unwrap();
    assert!(mismatch.is_none());
    assert_eq!(t.pending_events(), 0);
}

/// A checkpointed log, kept as written, to be rewritten by the tests below.
struct Shipped {
    _dir: tempfile::TempDir,
    path: PathBuf,
    shipped: Vec<Checkpoint>,
    original: Vec<u8>,
    records: Vec<recorder::Record>,
    stream: String,
}

fn shipped() -> Shipped {
    let dir = tempfile::tempdir().unwrap();
    let (path, shipped) = log_with_checkpoints(dir.path());
    let original = std::fs::read(&path).unwrap();
    let records = recorder::Reader::open(&path)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let stream = recorder::Reader::open(&path)
        .unwrap()
        .stream_id()
        .to_owned();
    Shipped {
        _dir: dir,
        path,
        shipped,
        original,
        records,
        stream,
    }
}

impl Shipped {
    /// Writes the log again with a valid chain, each record's payload as `keep` says (`None`
    /// drops it): what whoever runs the host can do.
    fn rewrite(&self, keep: impl Fn(&recorder::Record) -> Option<Vec<u8>>) {
        std::fs::remove_file(&self.path).unwrap();
        let mut w = recorder::Writer::create(&self.path, &self.stream).unwrap();
        for r in &self.records {
            if let Some(p) = keep(r) {
                w.append_at(r.time_us, r.kind, r.channel, &p).unwrap();
            }
        }
        w.finish().unwrap();
        assert!(recorder::verify_file(&self.path).unwrap().problem.is_none());
    }

    /// The failures `verify` finds with `list` as this node's required checkpoints.
    fn failures(&self, list: &[Checkpoint]) -> Vec<String> {
        failed(&verify_log(&self.path, "node-a", list, "file", true, 2_000))
    }
}

#[test]
fn verify_finds_a_cut_tail() {
    let s = shipped();
    // Cut after the second checkpoint's head: the third head is missing.
    s.rewrite(|r| (r.seq <= s.shipped[1].seq).then(|| r.payload.clone()));
    let bad = s.failures(&s.shipped);
    assert!(
        bad.len() == 1 && bad[0].contains("record 16, the head shipped"),
        "{bad:?}"
    );
    assert!(
        bad[0].contains("is missing") && bad[0].contains("cut"),
        "{bad:?}"
    );
    assert!(
        bad[0].contains("the log holds up to the checkpoint of record 10"),
        "{bad:?}"
    );
}

#[test]
fn verify_finds_a_rechained_log() {
    let s = shipped();
    // One session's seal deleted and the chain recomputed: every later head differs.
    s.rewrite(|r| (r.json().unwrap()["session"] != "s-1").then(|| r.payload.clone()));
    let bad = s.failures(&s.shipped);
    assert!(bad.len() == 1 && bad[0].contains("rewritten"), "{bad:?}");

    // An event rewritten in place, same length, chain recomputed.
    s.rewrite(|r| {
        let p = String::from_utf8(r.payload.clone()).unwrap();
        Some(
            if r.seq == 2 {
                p.replace("\"v\"", "\"w\"")
            } else {
                p
            }
            .into_bytes(),
        )
    });
    let bad = s.failures(&s.shipped);
    assert!(
        bad.len() == 1 && bad[0].contains("record 4, the head shipped"),
        "{bad:?}"
    );
}

#[test]
fn verify_finds_a_broken_checkpoint_chain() {
    let s = shipped();
    assert_eq!(std::fs::read(&s.path).unwrap(), s.original);
    // Intact log, but a checkpoint left out of the file, or one forged.
    let gap = [s.shipped[0].clone(), s.shipped[2].clone()];
    let bad = s.failures(&gap);
    assert!(bad[0].contains("does not follow"), "{bad:?}");
    let mut forged = s.shipped.clone();
    forged[1].time += 60;
    let bad = s.failures(&forged);
    assert!(bad[0].contains("signature does not hold"), "{bad:?}");
}

#[test]
fn other_nodes_checkpoints_are_theirs_to_check() {
    let s = shipped();
    // Only other nodes' checkpoints: theirs to check, and none of ours is a failure when they
    // were required.
    let f = verify_log(&s.path, "node-b", &s.shipped, "file", true, 2_000);
    assert!(
        f.iter().any(|f| f.elsewhere.as_deref() == Some("node-a")),
        "{f:?}"
    );
    assert!(
        failed(&f)[0].contains("no checkpoint of node node-b"),
        "{f:?}"
    );
    assert!(
        failed(&verify_log(
            &s.path, "node-b", &s.shipped, "db", false, 2_000
        ))
        .is_empty()
    );
}

#[test]
fn a_restart_on_a_changed_log_says_so() {
    let s = shipped();
    // A restart on a log changed under the last shipped checkpoint says so.
    s.rewrite(|r| (r.seq < 3).then(|| r.payload.clone()));
    let (_, mismatch) = Tracker::open(&s.path, "node-a", s.shipped.last().cloned()).unwrap();
    assert!(mismatch.unwrap().contains("ends at record 2"));
}

#[test]
fn lines_parse_exports_and_webhook_bodies() {
    let cp = Checkpoint::sign(&key(1), "i", "n", 3, &[3; 32], 9, &[], None);
    let bare = serde_json::to_string(&cp).unwrap();
    let hook = json!({"text": "t", "event": "checkpoint", "checkpoint": cp}).to_string();
    let other = json!({"text": "t", "event": "request.filed"}).to_string();
    let parsed = parse_lines(&format!("{bare}\n\n{hook}\n{other}\n")).unwrap();
    assert_eq!(parsed, vec![cp.clone(), cp]);
    assert!(
        parse_lines("{\"seq\": 1}\n")
            .unwrap_err()
            .to_string()
            .starts_with("line 1: not a checkpoint: ")
    );
    assert_eq!(age(5), "5 seconds ago");
    assert_eq!(age(180), "3 minutes ago");
    assert_eq!(age(3 * 86_400), "3 days ago");
}
