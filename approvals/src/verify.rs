//! The one verifier of the evidence, used by `postern verify` and the web form's session page
//! alike, so both say the same thing about a recording.
//!
//! It believes the evidence, never a database flag: each recording is judged by what the
//! recording itself (its chain and its seal) and this node's chained audit log (`session.end`,
//! `session.seal`, `session.crash_recovered`) say, whatever the database's "live" flag says, since
//! the database may lag the audit log. Pure chain and seal checking lives in `recorder`; this
//! module adds what the store and the audit log know. It repairs nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::Session;
use crate::store::{Store, StoreError};

/// One verification finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub item: String,
    pub ok: bool,
    pub records: u64,
    pub detail: String,
    /// The node that holds this session's evidence, when it is another node: not checked here,
    /// and not a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elsewhere: Option<String>,
}

impl Finding {
    pub fn ok(item: &str, records: u64, detail: impl Into<String>) -> Finding {
        Finding {
            item: item.to_owned(),
            ok: true,
            records,
            detail: detail.into(),
            elsewhere: None,
        }
    }

    pub fn bad(item: &str, records: u64, detail: impl Into<String>) -> Finding {
        Finding {
            item: item.to_owned(),
            ok: false,
            records,
            detail: detail.into(),
            elsewhere: None,
        }
    }

    /// A session whose recording and audit log are on `node`, not here.
    pub fn elsewhere(item: &str, node: &str) -> Finding {
        Finding {
            item: item.to_owned(),
            ok: true,
            records: 0,
            detail: format!("recorded on node {node}; verify it there"),
            elsewhere: Some(node.to_owned()),
        }
    }

    /// The line `postern verify` prints for this finding.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {} ({} records)",
            match (self.ok, &self.elsewhere) {
                (false, _) => "FAILED",
                (true, Some(_)) => "REMOTE",
                (true, None) => "OK    ",
            },
            self.item,
            self.detail,
            self.records
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no session with id {0}")]
    NoSession(String),
    #[error("verification stopped: {0}")]
    Stopped(String),
}

/// Where a node keeps its evidence.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// This node's name (`node` in the config): its sessions are expected here, in `recordings`
    /// and in `audit_log`; other nodes' sessions are expected on those nodes.
    pub node: String,
    pub audit_log: PathBuf,
    pub recordings: PathBuf,
    /// This node's own seal public key file, trusted besides the keys registered in the store
    /// when no root is pinned (older installations).
    pub local_seal_key: Option<PathBuf>,
    /// The seal keyring (`DATA/keys/keyring`) and the root public key the auditor trusts: when a
    /// root is given, seals count only if the keyring (checked against that root) certified
    /// their key for the time they were made; the database and the data directory's key files
    /// are then ignored.
    pub keyring: Option<PathBuf>,
    pub root: Option<recorder::keyring::RootPublicKey>,
}

/// Whose word makes a seal key trusted.
enum Trust {
    /// The operator's root, through the keyring.
    Root {
        ring: recorder::keyring::Keyring,
        root: recorder::keyring::RootPublicKey,
    },
    /// No root pinned: the keys the database and the data directory name (labelled as such).
    Unpinned(Vec<recorder::SealPublicKey>),
    /// The keyring does not check against the root: nothing is trusted.
    Broken(String),
}

impl Trust {
    /// The seal keys to trust: the keyring certified by the pinned root, or without a pinned
    /// root, the keys the database and the data directory list.
    fn of(evidence: &Evidence, keys: &[String]) -> Trust {
        match (&evidence.root, &evidence.keyring) {
            (Some(root), Some(path)) => match recorder::keyring::Keyring::load(path)
                .and_then(|ring| ring.check(root).map(|()| ring))
            {
                Ok(ring) => Trust::Root { ring, root: *root },
                Err(e) => Trust::Broken(format!(
                    "the seal keyring does not check against the root: {e}"
                )),
            },
            (Some(_), None) => Trust::Broken("no seal keyring to check seals with".into()),
            (None, _) => Trust::Unpinned(trusted_keys(keys)),
        }
    }

    /// What a full verification reports about the seal keys themselves.
    fn finding(&self) -> Finding {
        match self {
            Trust::Root { root, .. } => Finding::ok(
                "seal keys",
                0,
                format!(
                    "trusted through the keyring certified by root {}",
                    root.fingerprint()
                ),
            ),
            Trust::Unpinned(_) => Finding::ok(
                "seal keys",
                0,
                "no root pinned: seal keys taken from the database and the data directory (an insider could add one; pin the operator's root with `postern keys pin` and verify with --root)",
            ),
            Trust::Broken(e) => Finding::bad("seal keys", 0, e.clone()),
        }
    }
    /// The keys trusted for a seal made at `at` (unix seconds).
    fn keys_at(&self, at: i64) -> Vec<recorder::SealPublicKey> {
        match self {
            Trust::Root { ring, root } => ring
                .trusted(root, at)
                .map(|v| v.into_iter().map(|(k, _)| k).collect())
                .unwrap_or_default(),
            Trust::Unpinned(keys) => keys.clone(),
            Trust::Broken(_) => Vec::new(),
        }
    }

    /// Why `key` is not trusted at `at`, in words.
    fn why_not(&self, key: &recorder::SealPublicKey, at: i64) -> Option<String> {
        match self {
            Trust::Root { ring, root } => ring.status(root, key, at).ok().map(|s| s.to_string()),
            Trust::Unpinned(_) => None,
            Trust::Broken(e) => Some(e.clone()),
        }
    }
}

/// What the audit log says a session's seal was.
#[derive(Debug, Clone)]
struct AuditSeal {
    records: u64,
    hash: String,
}

/// What this node's audit log says about one session.
#[derive(Debug, Clone, Default)]
struct AuditFacts {
    /// `session.end`: the recording's record count and final hash; `None` inside when the
    /// recording could not be sealed (a recording write error, `records` = -1).
    end: Option<Option<(u64, String)>>,
    seal: Option<AuditSeal>,
    /// Named by `session.crash_recovered`: the broker stopped without closing it.
    crash_recovered: bool,
}

/// Verifies one session (`id`) or every session plus the audit log itself and the sessions the
/// audit log sealed that the database no longer knows. Reads files off the async runtime.
pub async fn verify(
    store: &Store,
    evidence: &Evidence,
    id: Option<&str>,
) -> Result<Vec<Finding>, VerifyError> {
    let mut keys = store.seal_keys().await?;
    if let Some(local) = &evidence.local_seal_key
        && let Ok(k) = std::fs::read_to_string(local)
    {
        keys.push(k);
    }
    let sessions = match id {
        Some(id) => vec![
            store
                .session(id)
                .await?
                .ok_or_else(|| VerifyError::NoSession(id.to_owned()))?,
        ],
        None => store.sessions(false).await?,
    };
    let mut commands = HashMap::new();
    for s in sessions.iter().filter(|s| s.ended.is_some()) {
        commands.insert(s.id.clone(), store.commands_of_session(&s.id).await?);
    }
    let evidence = evidence.clone();
    let all = id.is_none();
    tokio::task::spawn_blocking(move || check(&evidence, &keys, &sessions, &commands, all))
        .await
        .map_err(|e| VerifyError::Stopped(e.to_string()))
}

fn check(
    evidence: &Evidence,
    keys: &[String],
    sessions: &[Session],
    commands: &HashMap<String, Vec<crate::CommandRow>>,
    all: bool,
) -> Vec<Finding> {
    let trust = Trust::of(evidence, keys);
    let (audit_finding, facts) = verify_audit_log(&evidence.audit_log);
    let none = AuditFacts::default();
    let mut findings: Vec<Finding> = sessions
        .iter()
        .map(|s| {
            // The audit log is per node: it speaks only for this node's sessions.
            let local = s.node == evidence.node;
            let facts = if local {
                facts.get(&s.id).unwrap_or(&none)
            } else {
                &none
            };
            verify_recording(
                evidence,
                s,
                local,
                &trust,
                facts,
                commands.get(&s.id).map(Vec::as_slice),
            )
        })
        .collect();
    if all {
        findings.extend(unaccounted(evidence, sessions, &facts));
        findings.push(audit_finding);
        findings.push(trust.finding());
    }
    findings
}

/// Evidence of sessions the database does not know: seals in the audit log, and recording
/// files (a session whose row was deleted, or a file planted to pass for one).
fn unaccounted(
    evidence: &Evidence,
    sessions: &[Session],
    facts: &HashMap<String, AuditFacts>,
) -> Vec<Finding> {
    let known: HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
    let mut orphans: Vec<&String> = facts
        .iter()
        .filter(|(k, f)| f.seal.is_some() && !known.contains(k.as_str()))
        .map(|(k, _)| k)
        .collect();
    orphans.sort();
    let files: HashSet<&str> = sessions.iter().map(|s| s.recording.as_str()).collect();
    let mut strays: Vec<String> = std::fs::read_dir(&evidence.recordings)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rec") && !files.contains(n.as_str()))
        .collect();
    strays.sort();
    let orphans = orphans.into_iter().map(|o| {
        Finding::bad(
            &format!("session {o}"),
            0,
            "sealed in the audit log but missing from the database",
        )
    });
    let strays = strays.into_iter().map(|f| {
        Finding::bad(
            &format!("recording {f}"),
            0,
            "no session in the database has this recording",
        )
    });
    orphans.chain(strays).collect()
}

/// A record count and final hash the recording must end with, and who says so.
struct Expected {
    records: u64,
    /// Hash of the recording's last record (the seal), when the source gives it.
    hash: Option<String>,
    /// Completes "recording truncated; ...".
    says: String,
    /// Completes "recording does not match ...".
    source: &'static str,
}

/// Checks one recording against what the evidence says it must be: its chain; its seal, if it
/// has one (signed by a trusted key, covering every record); the record count and final hash in
/// this node's audit log (`session.end`, `session.seal`) and in the database. Only a session with
/// no end in the audit log and no seal anywhere (live, or cut by a crash) may have an unsealed or
/// torn tail. So a changed byte, a dropped or reordered record, a truncation, a recomputed chain,
/// a swapped file and a deleted file are each reported, at the record where they show.
fn verify_recording(
    evidence: &Evidence,
    s: &Session,
    local: bool,
    trust: &Trust,
    facts: &AuditFacts,
    stored_commands: Option<&[crate::CommandRow]>,
) -> Finding {
    let item = format!("session {}", s.id);
    let path = evidence.recordings.join(&s.recording);
    if !path.exists() {
        if !local {
            return Finding::elsewhere(&item, &s.node);
        }
        return Finding::bad(&item, 0, format!("recording {} is missing", path.display()));
    }
    // The file is read and hashed once; both halves below work from this report.
    let r = match recorder::verify_file(&path) {
        Ok(r) => r,
        Err(e) => return Finding::bad(&item, 0, format!("{}: {e}", path.display())),
    };
    let finding = verify_chain_and_seal(s, local, trust, facts, &r);
    if !finding.ok {
        return finding;
    }
    let seal = r.seal(&trust.keys_at(sealed_at(&r))).ok();
    // A recording sealed here must have left its end or seal in this node's audit log.
    if local && seal.is_some() && facts.seal.is_none() && facts.end.is_none() {
        return Finding::bad(
            &item,
            finding.records,
            "sealed, but this node's audit log has neither its end nor its seal (the audit log was cut or rewritten)",
        );
    }
    if let Some(differs) = row_disagrees(&path, s, seal.as_ref()) {
        return Finding::bad(&item, finding.records, differs);
    }
    // The command log is indexed from the recording when the session ends; an unsealed
    // recording (a crash, a write error) may have kept data its index never saw.
    if let Some(stored) = stored_commands.filter(|_| s.ended.is_some() && seal.is_some()) {
        match command_rows(&path, s) {
            Ok(from_recording) => {
                let key = |c: &crate::CommandRow| {
                    (c.channel, c.offset_ms, c.kind.clone(), c.command.clone())
                };
                let differs = from_recording
                    .iter()
                    .map(key)
                    .zip(stored.iter().map(key))
                    .position(|(a, b)| a != b)
                    .or_else(|| {
                        (from_recording.len() != stored.len())
                            .then(|| from_recording.len().min(stored.len()))
                    });
                if let Some(at) = differs {
                    return Finding::bad(
                        &item,
                        finding.records,
                        format!(
                            "the command log in the database differs from the recording at command {at} ({} stored, {} recorded)",
                            stored.len(),
                            from_recording.len()
                        ),
                    );
                }
            }
            Err(e) => return Finding::bad(&item, finding.records, e),
        }
    }
    let version = match seal.as_ref().map(recorder::Seal::version) {
        Some(1) => "; seal v1 (binds the recording only)",
        Some(_) => "; seal v2 (binds the session's metadata)",
        None => "",
    };
    Finding {
        detail: format!("{}{version}", finding.detail),
        ..finding
    }
}

/// The chain and seal half of [`verify_recording`], from the recording's verification report.
fn verify_chain_and_seal(
    s: &Session,
    local: bool,
    trust: &Trust,
    facts: &AuditFacts,
    r: &recorder::VerifyReport,
) -> Finding {
    let item = format!("session {}", s.id);
    if r.stream_id != s.id {
        return Finding::bad(
            &item,
            r.records,
            format!(
                "file belongs to stream {}, not {} (recording swapped)",
                r.stream_id, s.id
            ),
        );
    }
    if let Some(p) = &r.problem {
        return Finding::bad(&item, r.records, p.to_string());
    }
    let expected = expectations(s, facts);
    let sealed_file = r
        .last
        .as_ref()
        .is_some_and(|l| l.kind == recorder::Kind::Seal);
    // Keys are trusted for the time the seal was made.
    let trusted = trust.keys_at(sealed_at(r));
    let trusted = trusted.as_slice();
    if let recorder::Tail::Torn { offset, .. } = r.tail {
        return torn_tail(&item, r, &expected, sealed_file, offset);
    }
    if !sealed_file {
        return unsealed(&item, s, local, facts, r, &expected, trusted);
    }
    sealed(&item, r, trust, facts, &expected, trusted)
}

/// What the audit log and the database say the recording must end with, strongest first.
fn expectations(s: &Session, facts: &AuditFacts) -> Vec<Expected> {
    let mut expected = Vec::new();
    if let Some(Some((n, h))) = &facts.end {
        expected.push(Expected {
            records: *n,
            hash: Some(h.clone()),
            says: format!("the audit log says it ended with {n} records"),
            source: "the end in the audit log",
        });
    }
    if let Some(a) = &facts.seal {
        // The seal record follows the records it covers.
        let n = a.records + 1;
        expected.push(Expected {
            records: n,
            hash: None,
            says: format!("the audit log says it was sealed with {n} records"),
            source: "the seal in the audit log",
        });
    }
    // The database's copy of the seal is one more anchor when it has one; its absence (a live
    // flag, a lagging write) never excuses anything.
    if let (Some(n), Some(h)) = (s.records, s.final_hash.as_deref())
        && let Ok(n) = u64::try_from(n)
    {
        expected.push(Expected {
            records: n,
            hash: Some(h.to_owned()),
            says: format!("sealed with {n} records"),
            source: "the seal in the database",
        });
    }
    expected
}

/// A recording whose last record is incomplete at byte `offset`.
fn torn_tail(
    item: &str,
    r: &recorder::VerifyReport,
    expected: &[Expected],
    sealed_file: bool,
    offset: u64,
) -> Finding {
    match expected.first() {
        Some(e) if r.records < e.records => Finding::bad(
            item,
            r.records,
            format!(
                "record {}: incomplete at byte {offset} (recording truncated; {})",
                r.records, e.says
            ),
        ),
        Some(_) => Finding::bad(
            item,
            r.records,
            format!(
                "record {}: incomplete at byte {offset} (file altered after its end)",
                r.records
            ),
        ),
        None if sealed_file => Finding::bad(
            item,
            r.records,
            format!(
                "record {}: incomplete at byte {offset} (file altered after its seal)",
                r.records
            ),
        ),
        None => Finding::ok(
            item,
            r.records,
            format!("chain intact; unsealed tail at byte {offset} (session not closed cleanly)"),
        ),
    }
}

/// A whole recording that does not end with a seal: fine only if no evidence says it ended.
fn unsealed(
    item: &str,
    s: &Session,
    local: bool,
    facts: &AuditFacts,
    r: &recorder::VerifyReport,
    expected: &[Expected],
    trusted: &[recorder::SealPublicKey],
) -> Finding {
    if let Some(e) = expected.first() {
        if r.records < e.records {
            return Finding::bad(
                item,
                r.records,
                format!(
                    "record {}: missing (recording truncated; {})",
                    r.records, e.says
                ),
            );
        }
        // As long as the evidence says, yet unsealed: the seal was removed or replaced.
        return match r.seal(trusted) {
            Err(err) => Finding::bad(item, r.records, err.to_string()),
            Ok(_) => Finding::bad(item, r.records, "recording is not sealed"),
        };
    }
    // An end the database claims must be backed by the evidence: this node's audit log has
    // the end, or names the session as cut by a crash. Otherwise the row was downgraded.
    if local && s.ended.is_some() && facts.end.is_none() && !facts.crash_recovered {
        return Finding::bad(
            item,
            r.records,
            "ended without a seal, but this node's audit log has neither its end nor a crash recovery naming it",
        );
    }
    let why = if matches!(facts.end, Some(None)) {
        "never sealed (recording write error)"
    } else if facts.crash_recovered || s.ended.is_some() {
        "never sealed (broker crash or recording write error)"
    } else {
        "live, not sealed yet"
    };
    Finding::ok(item, r.records, format!("chain intact; {why}"))
}

/// A recording that ends with a seal: signed by a trusted key and matching every expectation.
fn sealed(
    item: &str,
    r: &recorder::VerifyReport,
    trust: &Trust,
    facts: &AuditFacts,
    expected: &[Expected],
    trusted: &[recorder::SealPublicKey],
) -> Finding {
    let seal = match r.seal(trusted) {
        Ok(seal) => seal,
        Err(e) => {
            let why = match &e {
                recorder::SealError::UnknownKey { key, .. } => recorder::SealPublicKey::parse(key)
                    .ok()
                    .and_then(|k| trust.why_not(&k, sealed_at(r))),
                _ => None,
            };
            let detail = match why {
                Some(why) => format!("{e}: {why}"),
                None => e.to_string(),
            };
            return Finding::bad(item, r.records, detail);
        }
    };
    let last = r.last_hash.map(hex::encode).unwrap_or_default();
    for e in expected {
        if r.records < e.records {
            return Finding::bad(
                item,
                r.records,
                format!(
                    "record {}: missing (recording truncated; {})",
                    r.records, e.says
                ),
            );
        }
        if r.records > e.records || e.hash.as_ref().is_some_and(|h| *h != last) {
            return Finding::bad(
                item,
                r.records,
                format!(
                    "record {}: recording does not match {}",
                    e.records.saturating_sub(1),
                    e.source
                ),
            );
        }
    }
    if let Some(a) = &facts.seal
        && (a.records != seal.records || a.hash != seal.final_hash)
    {
        return Finding::bad(
            item,
            r.records,
            format!(
                "record {}: recording does not match the seal in the audit log",
                seal.records
            ),
        );
    }
    let anchored = if facts.seal.is_some() || matches!(facts.end, Some(Some(_))) {
        "; seal anchored in the audit log"
    } else {
        ""
    };
    Finding::ok(
        item,
        r.records,
        format!("chain intact; sealed by a trusted key{anchored}"),
    )
}

/// Checks the audit log's chain and collects what it says about sessions' ends and seals.
fn verify_audit_log(path: &Path) -> (Finding, HashMap<String, AuditFacts>) {
    let mut facts: HashMap<String, AuditFacts> = HashMap::new();
    let item = "audit log";
    let reader = match recorder::Reader::open(path) {
        Ok(r) => r,
        Err(e) => return (Finding::bad(item, 0, e.to_string()), facts),
    };
    let mut n = 0u64;
    let mut repairs: Vec<String> = Vec::new();
    for rec in reader {
        match rec {
            Ok(r) => {
                n += 1;
                if let Some(v) = r.json() {
                    if v["event"] == "audit.tail_repaired" {
                        repairs.push(format!(
                            "{} bytes cut at byte {} before record {}",
                            v["bytes_cut"], v["cut_at_byte"], v["before_seq"]
                        ));
                    }
                    note(&mut facts, &v);
                }
            }
            // An incomplete last record: an interrupted write, or a log cut short. Either way it
            // is reported, never repaired here; the checkpoints shipped off the host tell which.
            Err(recorder::ReadError::Torn { offset, .. }) => {
                return (
                    Finding::bad(
                        item,
                        n,
                        format!(
                            "record {n}: incomplete at byte {offset} (an interrupted write, or the log was cut; compare with the shipped checkpoints)"
                        ),
                    ),
                    facts,
                );
            }
            Err(e) => return (Finding::bad(item, n, e.to_string()), facts),
        }
    }
    let detail = if repairs.is_empty() {
        "chain intact".to_owned()
    } else {
        format!(
            "chain intact; the broker cut {} incomplete record(s) left by interrupted writes ({}); compare with the shipped checkpoints",
            repairs.len(),
            repairs.join("; ")
        )
    };
    (Finding::ok(item, n, detail), facts)
}

/// When a recording's last record (its seal, if it has one) was written, in unix seconds.
fn sealed_at(r: &recorder::VerifyReport) -> i64 {
    r.last
        .as_ref()
        .map(|l| l.time_us.div_euclid(1_000_000))
        .unwrap_or_default()
}

/// Whether the audit log has an incomplete tail or a broken chain (appending to it would cut or
/// hide what is there).
pub fn audit_log_damaged(path: &Path) -> bool {
    match recorder::verify_file(path) {
        Ok(r) => r.problem.is_some() || matches!(r.tail, recorder::Tail::Torn { .. }),
        Err(_) => path.exists(),
    }
}

/// Takes what one audit entry says about a session's end.
fn note(facts: &mut HashMap<String, AuditFacts>, v: &serde_json::Value) {
    match v["event"].as_str() {
        Some("session.end") => {
            if let Some(id) = v["session"].as_str() {
                let end = match (v["records"].as_i64(), v["final_hash"].as_str()) {
                    (Some(n), Some(h)) if n >= 0 => Some((n as u64, h.to_owned())),
                    _ => None,
                };
                facts.entry(id.to_owned()).or_default().end = Some(end);
            }
        }
        Some("session.seal") => {
            if let (Some(id), Some(records), Some(hash)) = (
                v["session"].as_str(),
                v["sealed_records"].as_u64(),
                v["sealed_hash"].as_str(),
            ) {
                facts.entry(id.to_owned()).or_default().seal = Some(AuditSeal {
                    records,
                    hash: hash.to_owned(),
                });
            }
        }
        Some("session.crash_recovered") => {
            for id in v["sessions"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str() {
                    facts.entry(id.to_owned()).or_default().crash_recovered = true;
                }
            }
        }
        _ => {}
    }
}

/// A recording's command log as database rows: what `index_commands` stores at a session's end,
/// and what `verify` holds the stored rows to.
pub fn command_rows(path: &Path, session: &Session) -> Result<Vec<crate::CommandRow>, String> {
    let reader = recorder::Reader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // A damaged or torn tail still yields every command before it.
    let (entries, _problem) = recorder::extract_commands(reader);
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| crate::CommandRow {
            session: session.id.clone(),
            seq: i as i64,
            vendor: session.vendor.clone(),
            site: session.site.clone(),
            device: session.device.clone(),
            time_us: e.time_us,
            offset_ms: (e.offset * 1000.0).round() as i64,
            channel: i64::from(e.channel),
            kind: e.kind.to_owned(),
            command: e.command,
        })
        .collect())
}

/// Holds the database's row for a session to the recording: its first record (who, where, which
/// grant, from where, on which node) and, for a version 2 seal, the metadata the seal signed.
/// `None` when they agree; otherwise what differs.
fn row_disagrees(path: &Path, s: &Session, seal: Option<&recorder::Seal>) -> Option<String> {
    let first = recorder::Reader::open(path)
        .ok()
        .and_then(|mut r| r.next_record())
        .and_then(Result::ok);
    let Some(first) = first.filter(|r| r.kind == recorder::Kind::SessionStart) else {
        return Some("record 0: not the start of a session".into());
    };
    let start = first.json().unwrap_or_default();
    let text = |k: &str| start[k].as_str().unwrap_or_default().to_owned();
    let mut differs: Vec<String> = Vec::new();
    for (what, row, recorded) in [
        ("vendor", s.vendor.as_str(), text("vendor")),
        ("site", s.site.as_str(), text("site")),
        ("device", s.device.as_str(), text("device")),
        ("function", s.function.as_str(), text("function")),
        ("grant", s.grant_id.as_str(), text("grant")),
        ("node", s.node.as_str(), text("node")),
        ("source", s.source.as_str(), text("source")),
    ] {
        if row != recorded {
            differs.push(format!("{what} {row} (the recording says {recorded})"));
        }
    }
    // The row's start is the second the first record was written in (or the one before).
    let recorded_start = first.time_us.div_euclid(1_000_000);
    if !(recorded_start - 1..=recorded_start + 1).contains(&s.started) {
        differs.push(format!(
            "start {} (the recording says {recorded_start})",
            s.started
        ));
    }
    if let Some(meta) = seal.and_then(|seal| seal.meta.as_ref()) {
        for (what, row, sealed) in [
            ("vendor", s.vendor.as_str(), meta.vendor.as_str()),
            ("site", s.site.as_str(), meta.site.as_str()),
            ("device", s.device.as_str(), meta.device.as_str()),
            ("function", s.function.as_str(), meta.function.as_str()),
            ("grant", s.grant_id.as_str(), meta.grant.as_str()),
            ("node", s.node.as_str(), meta.node.as_str()),
        ] {
            if row != sealed {
                differs.push(format!("{what} {row} (the seal says {sealed})"));
            }
        }
        if meta.started != s.started {
            differs.push(format!(
                "start {} (the seal says {})",
                s.started, meta.started
            ));
        }
        if let Some(ended) = s.ended.filter(|e| *e != meta.ended) {
            differs.push(format!("end {ended} (the seal says {})", meta.ended));
        }
    }
    if differs.is_empty() {
        None
    } else {
        differs.dedup();
        Some(format!("the database row differs: {}", differs.join(", ")))
    }
}

fn trusted_keys(lines: &[String]) -> Vec<recorder::SealPublicKey> {
    lines
        .iter()
        .filter_map(|l| recorder::SealPublicKey::parse(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
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
}
