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
//!
//! Rooms: this file holds the checkpoint itself (encoding, signature, the Merkle tree of seals);
//! `make` follows the log and makes them, `ship` stores and sends them, `check` holds a log to
//! the shipped ones.

mod check;
mod make;
mod ship;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AuditEvent;
use crate::notify::{Event, Message};
use crate::store::StoreError;

pub use check::{age, parse_lines, verify_log};
pub use make::Tracker;

/// Version of the checkpoint encoding (bound into the signature).
pub const VERSION: u32 = 1;

/// Domain tags of the Merkle tree over session seals (RFC 6962 style: a leaf can never be taken
/// for an inner node) and of a checkpoint's link hash.
const LEAF_TAG: &[u8] = b"postern checkpoint seal leaf v1\0";
const NODE_TAG: &[u8] = b"postern checkpoint seal node v1\0";
const EMPTY_TAG: &[u8] = b"postern checkpoint no seals v1\0";
const LINK_TAG: &[u8] = b"postern checkpoint link v1\0";

/// The audit event a checkpoint is recorded under in the log itself.
pub const AUDIT_EVENT: AuditEvent = AuditEvent::AuditCheckpoint;

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
    /// A line of shipped checkpoints ([`parse_lines`]) that is none.
    #[error("line {line}: not a checkpoint: {source}")]
    NotACheckpoint {
        line: usize,
        source: serde_json::Error,
    },
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
    if AuditEvent::of_entry(v) != Some(AuditEvent::SessionSeal) {
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
