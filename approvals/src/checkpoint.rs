//! Signed checkpoints of the audit log's head, shipped off the host.
//!
//! The audit log is hash-chained, but whoever runs the host can cut its tail or rewrite it and
//! recompute the whole chain: the file then checks out on its own. A checkpoint pins the log from
//! outside: the broker signs (installation, node, head sequence, head hash, time, a Merkle root of
//! the session seals since the previous checkpoint, the previous checkpoint's hash) with its seal
//! key, appends it to the audit log as `audit.checkpoint` and ships it to sinks the host cannot
//! rewrite (the shared database, the webhook outbox, an append-only file on a remote volume).
//! [`verify_log`] later checks that the local log still holds every shipped head: a cut tail, a
//! rewritten log or a deleted session is then found back to the last checkpoint shipped before it.
//!
//! Which signing keys to trust is the verifier's business (the keyring); a checkpoint carries its
//! public key, and its signature is checked against that key here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::notify::{Event, Message, Notifier};
use crate::store::{Invalid, Store, StoreError};
use crate::verify::Finding;

/// Version of the checkpoint encoding (bound into the signature).
pub const VERSION: u32 = 1;

/// Domain tags of the Merkle tree over session seals (RFC 6962 style: a leaf can never be taken
/// for an inner node) and of a checkpoint's link hash.
const LEAF_TAG: &[u8] = b"postern checkpoint seal leaf v1\0";
const NODE_TAG: &[u8] = b"postern checkpoint seal node v1\0";
const EMPTY_TAG: &[u8] = b"postern checkpoint no seals v1\0";
const LINK_TAG: &[u8] = b"postern checkpoint link v1\0";

/// The audit event a checkpoint is recorded under in the log itself.
pub const AUDIT_EVENT: crate::audit::AuditEvent = crate::audit::AuditEvent::AuditCheckpoint;

/// One signed checkpoint of a node's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub version: u32,
    /// The installation's random id (from the audit log's header, `audit:ID`).
    pub installation: String,
    pub node: String,
    /// Sequence number of the audit log's last record when the checkpoint was made.
    pub seq: u64,
    /// That record's hash, hex.
    pub head: String,
    /// When the checkpoint was made, Unix seconds.
    pub time: i64,
    /// Session seals (`session.seal` events) after the previous checkpoint's head, up to this head.
    pub seals: u64,
    /// Merkle root over those seals, hex.
    pub seals_root: String,
    /// The previous checkpoint's [`Checkpoint::hash`] (none for a node's first).
    pub prev: Option<String>,
    /// The signing seal public key, as exported (`postern-seal-ed25519 BASE64`).
    pub key: String,
    /// Ed25519 signature over [`Checkpoint::body`] under recorder's checkpoint domain, hex.
    pub signature: String,
}

/// Why a checkpoint or the checkpointer cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("audit log {path}: {reason}")]
    Log { path: String, reason: String },
    #[error("checkpoint of seq {seq}: {reason}")]
    Invalid { seq: u64, reason: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn put_str(m: &mut Vec<u8>, s: &str) {
    m.extend_from_slice(&(s.len() as u32).to_be_bytes());
    m.extend_from_slice(s.as_bytes());
}

impl Checkpoint {
    /// The canonical encoding that is signed: every field but the signature, length-prefixed,
    /// never the JSON text.
    pub fn body(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(&self.version.to_be_bytes());
        put_str(&mut m, &self.installation);
        put_str(&mut m, &self.node);
        m.extend_from_slice(&self.seq.to_be_bytes());
        put_str(&mut m, &self.head);
        m.extend_from_slice(&self.time.to_be_bytes());
        m.extend_from_slice(&self.seals.to_be_bytes());
        put_str(&mut m, &self.seals_root);
        match &self.prev {
            Some(p) => {
                m.push(1);
                put_str(&mut m, p);
            }
            None => m.push(0),
        }
        put_str(&mut m, &self.key);
        m
    }

    /// The hash the next checkpoint links to.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(LINK_TAG);
        h.update(self.body());
        h.update(self.signature.as_bytes());
        hex::encode(h.finalize())
    }

    /// Builds and signs a checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &recorder::SealKey,
        installation: &str,
        node: &str,
        seq: u64,
        head: &[u8; recorder::HASH_LEN],
        time: i64,
        seals: &[[u8; 32]],
        prev: Option<&Checkpoint>,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            version: VERSION,
            installation: installation.to_owned(),
            node: node.to_owned(),
            seq,
            head: hex::encode(head),
            time,
            seals: seals.len() as u64,
            seals_root: hex::encode(merkle_root(seals)),
            prev: prev.map(Checkpoint::hash),
            key: key.public().export(),
            signature: String::new(),
        };
        cp.signature = hex::encode(key.sign_checkpoint(&cp.body()));
        cp
    }

    /// Checks the signature against the key the checkpoint names.
    pub fn check_signature(&self) -> Result<recorder::SealPublicKey, CheckpointError> {
        let bad = |reason: &str| CheckpointError::Invalid {
            seq: self.seq,
            reason: reason.to_owned(),
        };
        if self.version != VERSION {
            return Err(bad("unknown checkpoint version"));
        }
        let key = recorder::SealPublicKey::parse(&self.key).map_err(|e| bad(&e.to_string()))?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("signature is unreadable"))?;
        if !key.verify_checkpoint(&self.body(), &sig) {
            return Err(bad("signature does not hold"));
        }
        Ok(key)
    }

    /// The notification that carries this checkpoint to the webhook (the whole signed checkpoint).
    pub fn message(&self) -> Message {
        Message::new(
            Event::Checkpoint,
            format!(
                "audit checkpoint of node {} at record {} ({} session seal(s) since the last)",
                self.node, self.seq, self.seals
            ),
            serde_json::json!({"node": self.node, "seq": self.seq, "checkpoint": self}),
        )
    }
}

/// The Merkle leaf of one session seal: the session, the number of records sealed and the
/// recording's final hash (what `session.seal` says and the recording's seal signs).
pub fn seal_leaf(session: &str, records: u64, final_hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LEAF_TAG);
    h.update((session.len() as u32).to_be_bytes());
    h.update(session.as_bytes());
    h.update(records.to_be_bytes());
    h.update((final_hash.len() as u32).to_be_bytes());
    h.update(final_hash.as_bytes());
    h.finalize().into()
}

/// The leaf of a `session.seal` audit event, `None` for any other record.
pub fn leaf_of_event(v: &serde_json::Value) -> Option<[u8; 32]> {
    if v["event"] != "session.seal" {
        return None;
    }
    Some(seal_leaf(
        v["session"].as_str()?,
        v["sealed_records"].as_u64()?,
        v["sealed_hash"].as_str()?,
    ))
}

/// Merkle root over `leaves` in order: split at the largest power of two below the count (as
/// RFC 6962), inner nodes tagged apart from leaves; a fixed tagged hash for none.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest(EMPTY_TAG).into(),
        1 => leaves[0],
        n => {
            let k = if n.is_power_of_two() {
                n / 2
            } else {
                1 << (usize::BITS - 1 - n.leading_zeros())
            };
            let mut h = Sha256::new();
            h.update(NODE_TAG);
            h.update(merkle_root(&leaves[..k]));
            h.update(merkle_root(&leaves[k..]));
            h.finalize().into()
        }
    }
}

/// The installation id a log's header names (`audit:ID`); the bare stream id for a log made
/// before installations had ids.
pub fn installation_of_stream(stream: &str) -> String {
    stream.strip_prefix("audit:").unwrap_or(stream).to_owned()
}

/// The installation id of the audit log at `path`.
pub fn installation_of_log(path: &Path) -> Result<String, CheckpointError> {
    recorder::Reader::open(path)
        .map(|r| installation_of_stream(r.stream_id()))
        .map_err(|e| CheckpointError::Log {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Follows one node's audit log and makes its checkpoints. It reads every record (checking the
/// chain as it goes), so the head it signs is one it has verified back to the previous
/// checkpoint, and it collects the session seals in between.
pub struct Tracker {
    path: std::path::PathBuf,
    installation: String,
    node: String,
    at: Option<recorder::ResumePoint>,
    head: Option<(u64, [u8; recorder::HASH_LEN])>,
    leaves: Vec<[u8; 32]>,
    /// Records after the last checkpoint, not counting checkpoints themselves.
    events: u64,
    last: Option<Checkpoint>,
}

impl Tracker {
    /// Reads the whole log once, from its start. `last` is the node's latest shipped checkpoint:
    /// seals after its head go into the next checkpoint, and its head is compared with the log;
    /// the second value names a mismatch (the log changed under a shipped checkpoint).
    pub fn open(
        path: &Path,
        node: &str,
        last: Option<Checkpoint>,
    ) -> Result<(Tracker, Option<String>), CheckpointError> {
        let mut t = Tracker {
            path: path.to_owned(),
            installation: installation_of_log(path)?,
            node: node.to_owned(),
            at: None,
            head: None,
            leaves: Vec::new(),
            events: 0,
            last,
        };
        // The hash the log now has at the last checkpoint's head.
        let mut pinned: Option<[u8; 32]> = None;
        let last_seq = t.last.as_ref().map(|c| c.seq);
        t.read_new_with(|r| {
            if Some(r.seq) == last_seq {
                pinned = Some(r.hash);
            }
        })?;
        let mismatch = match &t.last {
            None => None,
            Some(last) => match (pinned, t.head) {
                (Some(h), _) if hex::encode(h) == last.head => None,
                (Some(_), _) => Some(format!(
                    "record {} no longer has the hash shipped in the checkpoint of {}",
                    last.seq,
                    crate::time::fmt_time(last.time)
                )),
                (None, Some((seq, _))) => Some(format!(
                    "the audit log ends at record {seq}, before record {} shipped in the checkpoint of {}",
                    last.seq,
                    crate::time::fmt_time(last.time)
                )),
                (None, None) => Some(format!(
                    "the audit log is empty, but record {} was shipped in the checkpoint of {}",
                    last.seq,
                    crate::time::fmt_time(last.time)
                )),
            },
        };
        Ok((t, mismatch))
    }

    pub fn installation(&self) -> &str {
        &self.installation
    }

    /// Reads the records appended since the last call.
    pub fn read_new(&mut self) -> Result<(), CheckpointError> {
        self.read_new_with(|_| {})
    }

    fn read_new_with(
        &mut self,
        mut each: impl FnMut(&recorder::Record),
    ) -> Result<(), CheckpointError> {
        let log_err = |e: recorder::ReadError| CheckpointError::Log {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let mut reader = match &self.at {
            Some(at) => recorder::Reader::resume(&self.path, at),
            None => recorder::Reader::open(&self.path),
        }
        .map_err(log_err)?;
        let after = self.last.as_ref().map(|c| c.seq);
        loop {
            match reader.next_record() {
                None => break,
                Some(Ok(r)) => {
                    each(&r);
                    self.head = Some((r.seq, r.hash));
                    if after.is_none_or(|a| r.seq > a) {
                        let v = r.json().unwrap_or_default();
                        if let Some(leaf) = leaf_of_event(&v) {
                            self.leaves.push(leaf);
                        }
                        if v["event"] != AUDIT_EVENT.name() {
                            self.events += 1;
                        }
                    }
                    self.at = Some(reader.position());
                }
                // A record being written right now: read it next time.
                Some(Err(recorder::ReadError::Torn { .. })) => break,
                Some(Err(e)) => {
                    return Err(CheckpointError::Log {
                        path: self.path.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Audit events since the last checkpoint (its own `audit.checkpoint` records not counted).
    pub fn pending_events(&self) -> u64 {
        self.events
    }

    /// Signs a checkpoint of the head read so far; `None` when nothing moved since the last.
    /// It takes effect only through [`Tracker::committed`], once it is in the audit log.
    pub fn make(&self, key: &recorder::SealKey, now: i64) -> Option<Checkpoint> {
        let (seq, head) = self.head?;
        if self.events == 0 || self.last.as_ref().is_some_and(|l| l.seq >= seq) {
            return None;
        }
        Some(Checkpoint::sign(
            key,
            &self.installation,
            &self.node,
            seq,
            &head,
            now,
            &self.leaves,
            self.last.as_ref(),
        ))
    }

    /// `cp` (from [`Tracker::make`]) is in the audit log: the next one follows it.
    pub fn committed(&mut self, cp: Checkpoint) {
        self.leaves.clear();
        self.events = 0;
        self.last = Some(cp);
    }
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    body: String,
}

impl Store {
    /// Ships a checkpoint to the database and, when a webhook is configured, to the outbox, in
    /// one transaction: both or neither. Shipping the same checkpoint again changes nothing.
    pub async fn ship_checkpoint(
        &self,
        cp: &Checkpoint,
        notifier: &Notifier,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(cp).map_err(Invalid::Checkpoint)?;
        let mut tx = self.begin().await?;
        let added = sqlx::query(
            "INSERT INTO checkpoints (installation, node, seq, hash, time, body) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&cp.installation)
        .bind(&cp.node)
        .bind(cp.seq as i64)
        .bind(cp.hash())
        .bind(cp.time)
        .bind(&body)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added == 1 {
            notifier.file_in(&mut tx, &cp.message()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The checkpoints the database holds (of one node, or all), by node and sequence.
    pub async fn checkpoints(&self, node: Option<&str>) -> Result<Vec<Checkpoint>, StoreError> {
        let rows =
            match node {
                Some(n) => sqlx::query_as::<_, CheckpointRow>(
                    "SELECT body FROM checkpoints WHERE node = $1 ORDER BY installation, node, seq",
                )
                .bind(n)
                .fetch_all(self.pool())
                .await?,
                None => {
                    sqlx::query_as::<_, CheckpointRow>(
                        "SELECT body FROM checkpoints ORDER BY installation, node, seq",
                    )
                    .fetch_all(self.pool())
                    .await?
                }
            };
        rows.iter()
            .map(|r| serde_json::from_str(&r.body).map_err(|e| Invalid::StoredCheckpoint(e).into()))
            .collect()
    }

    /// A node's latest checkpoint in the database: the next one chains onto it.
    pub async fn latest_checkpoint(
        &self,
        installation: &str,
        node: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query_as::<_, CheckpointRow>(
            "SELECT body FROM checkpoints WHERE installation = $1 AND node = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(installation)
        .bind(node)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| serde_json::from_str(&r.body).map_err(|e| Invalid::StoredCheckpoint(e).into()))
            .transpose()
    }
}

/// Reads checkpoints from JSON lines: bare checkpoints (`checkpoints export`, the file sink) or
/// webhook bodies carrying one (`"checkpoint": {...}`); other webhook events are skipped. A line
/// that is neither is an error naming it.
pub fn parse_lines(text: &str) -> Result<Vec<Checkpoint>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |e: &dyn std::fmt::Display| format!("line {}: not a checkpoint: {e}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let cp = match v.get("checkpoint") {
            Some(inner) => inner.clone(),
            None if v.get("event").is_some() => continue,
            None => v,
        };
        out.push(serde_json::from_value(cp).map_err(|e| bad(&e))?);
    }
    Ok(out)
}

/// "3 minutes ago".
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    let (n, unit) = match s {
        0..=119 => (s, "second"),
        120..=7199 => (s / 60, "minute"),
        7200..=172_799 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Checks this node's audit log at `path` against shipped checkpoints (`source` says where they
/// came from, for the findings): each checkpoint's signature, the chain of checkpoints, and that
/// the log still has each shipped head (the record at that sequence, with that hash) and the
/// session seals each checkpoint's Merkle root covers. With `required` (a source the auditor
/// chose), checkpoints of other nodes are reported as theirs to check, and having none of this
/// node's is a failure (the auditor gave a source that should have them). Changes nothing.
pub fn verify_log(
    path: &Path,
    node: &str,
    checkpoints: &[Checkpoint],
    source: &str,
    required: bool,
    now: i64,
) -> Vec<Finding> {
    let item = format!("checkpoints ({source})");
    let mut findings = Vec::new();
    let installation = match installation_of_log(path) {
        Ok(i) => i,
        Err(e) => return vec![Finding::bad(&item, 0, e.to_string())],
    };
    let (mut mine, others) = sort_out(checkpoints, &installation, node);
    // Named only for a source the auditor chose; the database holds every node's as a matter of
    // course.
    for (other, n) in others.iter().filter(|_| required) {
        findings.push(Finding {
            item: format!("checkpoints of node {other}"),
            ok: true,
            records: 0,
            detail: format!("{n} checkpoint(s) of another node's audit log; verify them there"),
            elsewhere: Some(other.clone()),
        });
    }
    if mine.is_empty() {
        if required {
            findings.push(Finding::bad(
                &item,
                0,
                format!("no checkpoint of node {node} of installation {installation}"),
            ));
        }
        return findings;
    }
    mine.sort_by_key(|c| c.seq);
    mine.dedup_by(|a, b| a == b);
    let mut problems = chain_problems(&mine);
    let scan = LogScan::read(path, &mine);
    problems.extend(scan.heads_problem(&mine));
    let newest = mine[mine.len() - 1];
    let last_line = format!(
        "last shipped checkpoint: seq {}, {}",
        newest.seq,
        age(now - newest.time)
    );
    let records = scan.records;
    findings.push(if problems.is_empty() {
        let uncovered = records.saturating_sub(newest.seq + 1);
        Finding::ok(
            &item,
            records,
            format!(
                "{last_line}; {} checkpoint(s) signed and chained, every shipped head is in the audit log; {uncovered} record(s) after it not yet covered",
                mine.len()
            ),
        )
    } else {
        Finding::bad(
            &item,
            records,
            format!("{}; {last_line}", problems.join("; ")),
        )
    });
    findings
}

/// This node's checkpoints, and how many each other node (or installation) has: theirs to check.
fn sort_out<'a>(
    checkpoints: &'a [Checkpoint],
    installation: &str,
    node: &str,
) -> (Vec<&'a Checkpoint>, BTreeMap<String, usize>) {
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut mine: Vec<&Checkpoint> = Vec::new();
    for cp in checkpoints {
        if cp.installation == installation && cp.node == node {
            mine.push(cp);
        } else if cp.installation == installation {
            *others.entry(cp.node.clone()).or_default() += 1;
        } else {
            *others
                .entry(format!("{} of installation {}", cp.node, cp.installation))
                .or_default() += 1;
        }
    }
    (mine, others)
}

/// The checkpoints' own faults, in sequence order: bad signatures, forks, gaps in the chain.
fn chain_problems(mine: &[&Checkpoint]) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    for cp in mine {
        if let Err(e) = cp.check_signature() {
            problems.push(e.to_string());
        }
    }
    for pair in mine.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.seq == b.seq {
            problems.push(format!(
                "two different checkpoints of record {} (the log was forked)",
                a.seq
            ));
        } else if b.prev.as_deref() != Some(a.hash().as_str()) {
            problems.push(format!(
                "checkpoint of record {} does not follow the one of record {} (a checkpoint is missing or forged)",
                b.seq, a.seq
            ));
        }
    }
    problems
}

/// What the audit log holds at the shipped heads, read once.
struct LogScan {
    /// The hash of each record that is a shipped head.
    found: HashMap<u64, [u8; 32]>,
    /// Per checkpoint, the leaves (session seals) between its predecessor's head and its own.
    leaves: Vec<Vec<[u8; 32]>>,
    /// Records read.
    records: u64,
    /// Why reading stopped before the end, if it did.
    stopped: Option<String>,
}

impl LogScan {
    /// `mine` sorted by sequence.
    fn read(path: &Path, mine: &[&Checkpoint]) -> LogScan {
        let heads: HashSet<u64> = mine.iter().map(|c| c.seq).collect();
        let mut scan = LogScan {
            found: HashMap::new(),
            leaves: vec![Vec::new(); mine.len()],
            records: 0,
            stopped: None,
        };
        let reader = match recorder::Reader::open(path) {
            Ok(reader) => reader,
            Err(e) => {
                scan.stopped = Some(e.to_string());
                return scan;
            }
        };
        let mut bucket = 0usize;
        for rec in reader {
            let r = match rec {
                Ok(r) => r,
                Err(e) => {
                    scan.stopped = Some(e.to_string());
                    break;
                }
            };
            scan.records = r.seq + 1;
            while bucket < mine.len() && mine[bucket].seq < r.seq {
                bucket += 1;
            }
            if bucket < mine.len()
                && let Some(leaf) = r.json().as_ref().and_then(leaf_of_event)
            {
                scan.leaves[bucket].push(leaf);
            }
            if heads.contains(&r.seq) {
                scan.found.insert(r.seq, r.hash);
            }
        }
        scan
    }

    /// What is wrong with the `i`th checkpoint's head (and the seals before it) in the log.
    fn head_problem(&self, i: usize, cp: &Checkpoint) -> Option<String> {
        let shipped = format!(
            "record {}, the head shipped in the checkpoint of {}",
            cp.seq,
            crate::time::fmt_time(cp.time)
        );
        match self.found.get(&cp.seq) {
            None => Some(match &self.stopped {
                Some(why) => format!("{shipped}, is not readable: the log stops at {why}"),
                None => format!(
                    "{shipped}, is missing: the audit log ends at record {} (its tail was cut)",
                    self.records as i64 - 1
                ),
            }),
            Some(h) if hex::encode(h) != cp.head => Some(format!(
                "{shipped}, has another hash now: the log was rewritten at or before record {}",
                cp.seq
            )),
            Some(_) => {
                // The first checkpoint's seals start where its predecessor's did, which only
                // the predecessor knows.
                let known_start = i > 0 || cp.prev.is_none();
                (known_start && hex::encode(merkle_root(&self.leaves[i])) != cp.seals_root).then(
                    || {
                        format!(
                            "the session seals before record {} are not those checkpointed ({} now, {} shipped)",
                            cp.seq,
                            self.leaves[i].len(),
                            cp.seals
                        )
                    },
                )
            }
        }
    }

    /// The first shipped head the log does not hold, how many do not, and up to where it holds.
    fn heads_problem(&self, mine: &[&Checkpoint]) -> Option<String> {
        let mut failed_heads = 0usize;
        let mut first_bad: Option<String> = None;
        let mut last_good: Option<&Checkpoint> = None;
        for (i, cp) in mine.iter().enumerate() {
            match self.head_problem(i, cp) {
                Some(p) => {
                    failed_heads += 1;
                    first_bad.get_or_insert(p);
                }
                None if failed_heads == 0 => last_good = Some(cp),
                None => {}
            }
        }
        let p = first_bad?;
        Some(format!(
            "{p}; {failed_heads} of {} shipped heads do not hold{}",
            mine.len(),
            match last_good {
                Some(g) => format!(
                    "; the log holds up to the checkpoint of record {} ({})",
                    g.seq,
                    crate::time::fmt_time(g.time)
                ),
                None => String::new(),
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;
    use crate::audit::AuditLog;
    use serde_json::json;

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
    fn log_with_checkpoints(dir: &Path) -> (std::path::PathBuf, Vec<Checkpoint>) {
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

    #[test]
    fn verify_finds_a_cut_tail_a_rechained_log_and_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (path, shipped) = log_with_checkpoints(dir.path());
        let original = std::fs::read(&path).unwrap();
        let records: Vec<recorder::Record> = recorder::Reader::open(&path)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let stream = recorder::Reader::open(&path)
            .unwrap()
            .stream_id()
            .to_owned();
        let rewrite = |keep: &dyn Fn(&recorder::Record) -> Option<Vec<u8>>| {
            std::fs::remove_file(&path).unwrap();
            let mut w = recorder::Writer::create(&path, &stream).unwrap();
            for r in &records {
                if let Some(p) = keep(r) {
                    w.append_at(r.time_us, r.kind, r.channel, &p).unwrap();
                }
            }
            w.finish().unwrap();
            assert!(recorder::verify_file(&path).unwrap().problem.is_none());
        };

        // Cut after the second checkpoint's head: the third head is missing.
        rewrite(&|r| (r.seq <= shipped[1].seq).then(|| r.payload.clone()));
        let f = verify_log(&path, "node-a", &shipped, "file", true, 2_000);
        let bad = failed(&f);
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

        // One session's seal deleted and the chain recomputed: every later head differs.
        rewrite(&|r| (r.json().unwrap()["session"] != "s-1").then(|| r.payload.clone()));
        let bad = failed(&verify_log(&path, "node-a", &shipped, "file", true, 2_000));
        assert!(bad.len() == 1 && bad[0].contains("rewritten"), "{bad:?}");

        // An event rewritten in place, same length, chain recomputed.
        rewrite(&|r| {
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
        let bad = failed(&verify_log(&path, "node-a", &shipped, "file", true, 2_000));
        assert!(
            bad.len() == 1 && bad[0].contains("record 4, the head shipped"),
            "{bad:?}"
        );

        // Intact log, but a checkpoint left out of the file, or one forged.
        std::fs::write(&path, &original).unwrap();
        let gap = [shipped[0].clone(), shipped[2].clone()];
        let bad = failed(&verify_log(&path, "node-a", &gap, "file", true, 2_000));
        assert!(bad[0].contains("does not follow"), "{bad:?}");
        let mut forged = shipped.clone();
        forged[1].time += 60;
        let bad = failed(&verify_log(&path, "node-a", &forged, "file", true, 2_000));
        assert!(bad[0].contains("signature does not hold"), "{bad:?}");

        // Only other nodes' checkpoints: theirs to check, and none of ours is a failure when
        // they were required.
        let f = verify_log(&path, "node-b", &shipped, "file", true, 2_000);
        assert!(
            f.iter().any(|f| f.elsewhere.as_deref() == Some("node-a")),
            "{f:?}"
        );
        assert!(
            failed(&f)[0].contains("no checkpoint of node node-b"),
            "{f:?}"
        );
        assert!(failed(&verify_log(&path, "node-b", &shipped, "db", false, 2_000)).is_empty());

        // A restart on a log changed under the last shipped checkpoint says so.
        rewrite(&|r| (r.seq < 3).then(|| r.payload.clone()));
        let (_, mismatch) = Tracker::open(&path, "node-a", shipped.last().cloned()).unwrap();
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
                .starts_with("line 1:")
        );
        assert_eq!(age(5), "5 seconds ago");
        assert_eq!(age(180), "3 minutes ago");
        assert_eq!(age(3 * 86_400), "3 days ago");
    }
}
