//! Seals: the broker's Ed25519 signature over a finished recording's length and final hash,
//! written as the recording's last record. Anyone with the exported public key can check a
//! recording on its own; no database or broker is needed.
//!
//! Version 2 seals also bind the session's metadata ([`SealMeta`]: node, vendor, site, device,
//! function, grant, start and end, key id, seal time and the audit log's head at sealing) under
//! their own domain tag, so that a database row edited afterwards disagrees with a signature.
//! Version 1 seals (no metadata) still verify, and say so.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::format::{HASH_LEN, Kind, Record};

/// Prefix of an exported public key line.
pub const KEY_PREFIX: &str = "postern-seal-ed25519";

/// A broker's sealing key.
pub struct SealKey {
    signing: SigningKey,
}

/// Text that is not a seal public key line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a Postern seal key (expected a line '{KEY_PREFIX} BASE64')")]
pub struct NotASealKey;

/// A public key that checks seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealPublicKey(VerifyingKey);

const KEY_ID_TAG: &[u8] = b"postern seal key id v1\0";

/// A seal key's identifier: derived from the key itself, so one key has one id wherever it is
/// certified (the keyring's certificates and a version 2 seal's metadata name it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl KeyId {
    pub fn of(key: &SealPublicKey) -> KeyId {
        let mut h = Sha256::new();
        h.update(KEY_ID_TAG);
        h.update(key.to_bytes());
        KeyId(format!("sk-{}", &hex::encode(h.finalize())[..16]))
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a version 2 seal binds besides the recording's length and final hash: who, where, what,
/// when, with which key, and where the audit log stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealMeta {
    pub node: String,
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub grant: String,
    /// Unix seconds.
    pub started: i64,
    pub ended: i64,
    /// [`SealPublicKey::id`] of the signing key.
    pub key_id: String,
    /// Unix seconds.
    pub sealed_at: i64,
    /// The audit log's last record when the recording was sealed: its sequence number and hash
    /// (hex), if the log had any.
    pub audit_head_seq: Option<u64>,
    pub audit_head_hash: Option<String>,
}

/// The payload of a `Seal` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The stream (session) id from the file header.
    pub stream: String,
    /// Number of records sealed: every record before the seal.
    pub records: u64,
    /// Hash of the last sealed record, hex.
    pub final_hash: String,
    /// The signing key, as exported.
    pub key: String,
    /// Ed25519 signature over [`seal_message`] (version 1) or [`seal_message_v2`], base64.
    pub signature: String,
    /// 2 for a seal with metadata; absent (1) for the first format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<SealMeta>,
}

impl Seal {
    /// 1 or 2.
    pub fn version(&self) -> u32 {
        self.version.unwrap_or(1)
    }
}

/// What is signed: a domain tag, the stream id, the record count and the final hash.
pub fn seal_message(stream: &str, records: u64, final_hash: &[u8; HASH_LEN]) -> Vec<u8> {
    let mut m = b"postern seal v1\0".to_vec();
    m.extend_from_slice(stream.as_bytes());
    m.push(0);
    m.extend_from_slice(&records.to_be_bytes());
    m.extend_from_slice(final_hash);
    m
}

/// What a version 2 seal signs: its own domain tag, then the stream id, record count, final hash
/// and the metadata as canonical JSON (fields in [`SealMeta`]'s declared order).
pub fn seal_message_v2(
    stream: &str,
    records: u64,
    final_hash: &[u8; HASH_LEN],
    meta: &SealMeta,
) -> Vec<u8> {
    let mut m = b"postern seal v2\0".to_vec();
    m.extend_from_slice(stream.as_bytes());
    m.push(0);
    m.extend_from_slice(&records.to_be_bytes());
    m.extend_from_slice(final_hash);
    // Serialising a plain struct of strings and integers cannot fail; an empty body would only
    // make the signature fail to verify, never pass.
    m.extend_from_slice(&serde_json::to_vec(meta).unwrap_or_default());
    m
}

impl SealKey {
    pub fn from_seed(seed: &[u8; 32]) -> SealKey {
        SealKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    pub fn public(&self) -> SealPublicKey {
        SealPublicKey(self.signing.verifying_key())
    }

    pub fn seal(&self, stream: &str, records: u64, final_hash: &[u8; HASH_LEN]) -> Seal {
        let sig = self
            .signing
            .sign(&seal_message(stream, records, final_hash));
        Seal {
            stream: stream.to_owned(),
            records,
            final_hash: hex::encode(final_hash),
            key: self.public().export(),
            signature: B64.encode(sig.to_bytes()),
            version: None,
            meta: None,
        }
    }

    /// A version 2 seal, binding `meta` too.
    pub fn seal_v2(
        &self,
        stream: &str,
        records: u64,
        final_hash: &[u8; HASH_LEN],
        meta: SealMeta,
    ) -> Seal {
        let sig = self
            .signing
            .sign(&seal_message_v2(stream, records, final_hash, &meta));
        Seal {
            stream: stream.to_owned(),
            records,
            final_hash: hex::encode(final_hash),
            key: self.public().export(),
            signature: B64.encode(sig.to_bytes()),
            version: Some(2),
            meta: Some(meta),
        }
    }
}

impl SealPublicKey {
    /// The key's id, as the keyring names it (`sk-` and 16 hex digits).
    pub fn id(&self) -> String {
        KeyId::of(self).0
    }

    /// The raw 32 bytes, as key ids and keyring signatures encode the key.
    pub(crate) fn to_bytes(self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub(crate) fn verifying_key(self) -> VerifyingKey {
        self.0
    }

    /// One line: `postern-seal-ed25519 BASE64`.
    pub fn export(&self) -> String {
        format!("{KEY_PREFIX} {}", B64.encode(self.0.to_bytes()))
    }

    pub fn parse(text: &str) -> Result<SealPublicKey, NotASealKey> {
        let bad = || NotASealKey;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(bad)?;
        let b64 = line
            .strip_prefix(KEY_PREFIX)
            .map(str::trim)
            .ok_or_else(bad)?;
        let b64 = b64.split_whitespace().next().ok_or_else(bad)?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(bad)?;
        VerifyingKey::from_bytes(&bytes)
            .map(SealPublicKey)
            .map_err(|_| bad())
    }
}

/// Domain tag of audit-log checkpoints: a checkpoint signature can never be taken for a seal's
/// (or a keyring entry's), nor the other way round.
pub const CHECKPOINT_DOMAIN: &[u8] = b"postern checkpoint v1\0";

fn checkpoint_message(body: &[u8]) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(body);
    m
}

impl SealKey {
    /// Signs a checkpoint's encoded body (the caller's canonical encoding) under
    /// [`CHECKPOINT_DOMAIN`].
    pub fn sign_checkpoint(&self, body: &[u8]) -> [u8; 64] {
        self.signing.sign(&checkpoint_message(body)).to_bytes()
    }
}

impl SealPublicKey {
    /// Checks a signature made by [`SealKey::sign_checkpoint`] (strictly: no malleable forms).
    pub fn verify_checkpoint(&self, body: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(&checkpoint_message(body), &Signature::from_bytes(signature))
            .is_ok()
    }
}

/// Why a seal does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("recording is not sealed (its last record is not a seal)")]
    Missing,
    #[error("record {seq}: seal is unreadable")]
    Unreadable { seq: u64 },
    #[error("record {seq}: seal names stream {found}, the file is {expected}")]
    WrongStream {
        seq: u64,
        expected: String,
        found: String,
    },
    #[error("record {seq}: seal covers {claimed} records but stands after {actual}")]
    WrongLength { seq: u64, claimed: u64, actual: u64 },
    #[error("record {seq}: seal's final hash does not match record {prev}")]
    WrongHash { seq: u64, prev: u64 },
    #[error("record {seq}: seal was made with another key ({key})")]
    UnknownKey { seq: u64, key: String },
    #[error("record {seq}: seal signature is invalid")]
    BadSignature { seq: u64 },
}

/// Checks that `seal_record` (the last record) seals the records before it, whose last hash is
/// `prev_hash`, with one of `trusted` keys.
pub fn check_seal(
    stream: &str,
    seal_record: &Record,
    prev_hash: Option<[u8; HASH_LEN]>,
    trusted: &[SealPublicKey],
) -> Result<Seal, SealError> {
    let seq = seal_record.seq;
    if seal_record.kind != Kind::Seal {
        return Err(SealError::Missing);
    }
    let seal: Seal =
        serde_json::from_slice(&seal_record.payload).map_err(|_| SealError::Unreadable { seq })?;
    if seal.stream != stream {
        return Err(SealError::WrongStream {
            seq,
            expected: stream.to_owned(),
            found: seal.stream,
        });
    }
    if seal.records != seq {
        return Err(SealError::WrongLength {
            seq,
            claimed: seal.records,
            actual: seq,
        });
    }
    let prev = prev_hash.ok_or(SealError::WrongLength {
        seq,
        claimed: seal.records,
        actual: 0,
    })?;
    if seal.final_hash != hex::encode(prev) {
        return Err(SealError::WrongHash {
            seq,
            prev: seq.saturating_sub(1),
        });
    }
    let key = SealPublicKey::parse(&seal.key).map_err(|_| SealError::Unreadable { seq })?;
    if !trusted.contains(&key) {
        return Err(SealError::UnknownKey {
            seq,
            key: seal.key.clone(),
        });
    }
    let sig: [u8; 64] = B64
        .decode(&seal.signature)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(SealError::Unreadable { seq })?;
    let message = match (seal.version(), &seal.meta) {
        (1, None) => seal_message(stream, seal.records, &prev),
        (2, Some(meta)) => {
            if meta.key_id != key.id() {
                return Err(SealError::Unreadable { seq });
            }
            seal_message_v2(stream, seal.records, &prev, meta)
        }
        _ => return Err(SealError::Unreadable { seq }),
    };
    key.0
        .verify_strict(&message, &Signature::from_bytes(&sig))
        .map_err(|_| SealError::BadSignature { seq })?;
    Ok(seal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_those_of_the_exported_key() {
        // Ids are stored in keyrings and v2 seals: they must not change with the code that
        // computes them (formerly from the export line's bytes).
        let key = SealKey::from_seed(&[7; 32]).public();
        let export = key.export();
        let b64 = export.rsplit(' ').next().unwrap_or_default();
        let raw = B64.decode(b64).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"postern seal key id v1\0");
        h.update(&raw);
        let want = format!("sk-{}", &hex::encode(h.finalize())[..16]);
        assert_eq!(KeyId::of(&key).0, want);
        assert_eq!(key.id(), want);
    }
}
