//! The seal keyring: which seal keys an auditor trusts, and when.
//!
//! A seal proves only that whoever held the key signed it; on its own it says nothing about
//! whether that key belonged to the broker. Trust therefore comes from an operator **root key**
//! that never lives on the broker: it certifies each node's seal public key for a validity window
//! (not-before, not-after) and can revoke one from a time on. The broker keeps these signed
//! entries in a keyring file, one JSON object per line, but the file proves nothing by itself:
//! every entry is checked against a root public key the checker holds, so someone who can write
//! the data directory cannot add a key, widen a window or lift a revocation.
//!
//! Rotations add a transition entry signed by the outgoing and the incoming seal key, linking the
//! two; each key still needs its own certificate from the root.
//!
//! Signatures cover a domain-separated, length-prefixed encoding of the entry's fields (never its
//! JSON text), under tags distinct from the seal's.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// A key's id belongs to the key (seal.rs); re-exported here, where certificates name it.
pub use crate::seal::KeyId;
use crate::seal::{SealKey, SealPublicKey};

/// Prefix of an exported root public key line.
pub const ROOT_PREFIX: &str = "postern-root-ed25519";
/// Prefix of the root private key line.
pub const ROOT_SECRET_PREFIX: &str = "postern-root-ed25519-secret";

const CERTIFY_TAG: &[u8] = b"postern keyring certify v1\0";
const REVOKE_TAG: &[u8] = b"postern keyring revoke v1\0";
const TRANSITION_TAG: &[u8] = b"postern keyring transition v1\0";

/// Why a key or keyring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("not a Postern root public key (expected a line '{ROOT_PREFIX} BASE64')")]
    BadRootPublic,
    #[error("not a Postern root private key (expected a line '{ROOT_SECRET_PREFIX} HEX')")]
    BadRootSecret,
    #[error("keyring line {line}: unreadable: {reason}")]
    Malformed { line: usize, reason: String },
    #[error(
        "keyring line {line}: {what} for key {key_id} is not signed by the pinned root key {expected} (it names root {claimed})"
    )]
    NotRootSigned {
        line: usize,
        what: &'static str,
        key_id: String,
        expected: String,
        claimed: String,
    },
    #[error(
        "keyring line {line}: certificate names key id {claimed}, but its key's id is {actual}"
    )]
    WrongKeyId {
        line: usize,
        claimed: String,
        actual: String,
    },
    #[error("keyring line {line}: certificate for {key_id} has an empty validity window")]
    EmptyWindow { line: usize, key_id: String },
    #[error("keyring line {line}: transition from {from} to {to} is not signed by {which}")]
    BadTransition {
        line: usize,
        from: String,
        to: String,
        which: &'static str,
    },
    #[error("keyring line {line}: transition names key {key_id}, which the root never certified")]
    TransitionUncertified { line: usize, key_id: String },
    #[error("keyring {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The operator's root signing key. Kept off the broker.
pub struct RootKey {
    signing: SigningKey,
}

/// The root public key: what an auditor pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootPublicKey(VerifyingKey);

impl RootKey {
    /// From 32 bytes of OS randomness (the caller draws them; this crate has no RNG).
    pub fn from_seed(seed: &[u8; 32]) -> RootKey {
        RootKey {
            signing: SigningKey::from_bytes(seed),
        }
    }

    pub fn public(&self) -> RootPublicKey {
        RootPublicKey(self.signing.verifying_key())
    }

    /// The private key file's text.
    pub fn export_secret(&self) -> String {
        format!(
            "# Postern operator root key: certifies seal keys. Keep it off the broker.\n{ROOT_SECRET_PREFIX} {}\n",
            hex::encode(self.signing.to_bytes())
        )
    }

    pub fn parse_secret(text: &str) -> Result<RootKey, KeyringError> {
        let seed: [u8; 32] = first_line(text)
            .and_then(|l| l.strip_prefix(ROOT_SECRET_PREFIX))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(KeyringError::BadRootSecret)?;
        Ok(RootKey::from_seed(&seed))
    }

    /// Certifies `key` (of `node`) for `[not_before, not_after)`.
    pub fn certify(
        &self,
        key: &SealPublicKey,
        node: &str,
        not_before: i64,
        not_after: i64,
        issued: i64,
    ) -> Certificate {
        let mut c = Certificate {
            key_id: KeyId::of(key),
            node: node.to_owned(),
            key: key.export(),
            not_before,
            not_after,
            issued,
            root: self.public().fingerprint(),
            signature: String::new(),
        };
        let m = c.message(key);
        c.signature = B64.encode(self.signing.sign(&m).to_bytes());
        c
    }

    /// Revokes `key_id` from `not_after` on: seals at or after it are not trusted.
    pub fn revoke(&self, key_id: &KeyId, not_after: i64, issued: i64, reason: &str) -> Revocation {
        let mut r = Revocation {
            key_id: key_id.clone(),
            not_after,
            issued,
            reason: reason.to_owned(),
            root: self.public().fingerprint(),
            signature: String::new(),
        };
        r.signature = B64.encode(self.signing.sign(&r.message()).to_bytes());
        r
    }
}

impl RootPublicKey {
    /// One line: `postern-root-ed25519 BASE64`.
    pub fn export(&self) -> String {
        format!("{ROOT_PREFIX} {}", B64.encode(self.0.to_bytes()))
    }

    pub fn parse(text: &str) -> Result<RootPublicKey, KeyringError> {
        let bytes: [u8; 32] = first_line(text)
            .and_then(|l| l.strip_prefix(ROOT_PREFIX))
            // The secret's prefix extends the public one: never read a private key as public.
            .filter(|rest| rest.starts_with(' ') || rest.starts_with('\t'))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|b| B64.decode(b).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(KeyringError::BadRootPublic)?;
        VerifyingKey::from_bytes(&bytes)
            .map(RootPublicKey)
            .map_err(|_| KeyringError::BadRootPublic)
    }

    /// `SHA256:` and the unpadded base64 of the key's SHA-256, as OpenSSH shows fingerprints.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            B64_NO_PAD.encode(Sha256::digest(self.0.to_bytes()))
        )
    }

    fn verifies(&self, message: &[u8], signature: &str) -> bool {
        verify_sig(self.0, message, signature)
    }
}

/// The root's statement that a seal key belongs to a node for a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub key_id: KeyId,
    pub node: String,
    /// The seal public key, as exported (`postern-seal-ed25519 BASE64`).
    pub key: String,
    /// Unix seconds; trusted from this second on.
    pub not_before: i64,
    /// Unix seconds; trusted until before this second.
    pub not_after: i64,
    pub issued: i64,
    /// The fingerprint of the root that signed (informative; the check uses the pinned root).
    pub root: String,
    /// Ed25519 signature by the root, base64.
    pub signature: String,
}

impl Certificate {
    fn message(&self, key: &SealPublicKey) -> Vec<u8> {
        let mut m = CERTIFY_TAG.to_vec();
        field(&mut m, self.key_id.0.as_bytes());
        field(&mut m, self.node.as_bytes());
        field(&mut m, &key.to_bytes());
        m.extend_from_slice(&self.not_before.to_be_bytes());
        m.extend_from_slice(&self.not_after.to_be_bytes());
        m.extend_from_slice(&self.issued.to_be_bytes());
        field(&mut m, self.root.as_bytes());
        m
    }
}

/// The root's statement that a key is not trusted from `not_after` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub key_id: KeyId,
    pub not_after: i64,
    pub issued: i64,
    pub reason: String,
    pub root: String,
    pub signature: String,
}

impl Revocation {
    fn message(&self) -> Vec<u8> {
        let mut m = REVOKE_TAG.to_vec();
        field(&mut m, self.key_id.0.as_bytes());
        m.extend_from_slice(&self.not_after.to_be_bytes());
        m.extend_from_slice(&self.issued.to_be_bytes());
        field(&mut m, self.reason.as_bytes());
        field(&mut m, self.root.as_bytes());
        m
    }
}

/// A node's move from one seal key to the next, signed by both: the holder of the old key
/// handed over to the new one at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub node: String,
    pub from: KeyId,
    pub from_key: String,
    pub to: KeyId,
    pub to_key: String,
    pub at: i64,
    pub signature_from: String,
    pub signature_to: String,
}

impl Transition {
    /// Signs a transition with both seal keys' seeds (the broker holds them as seeds).
    pub fn sign(node: &str, from_seed: &[u8; 32], to_seed: &[u8; 32], at: i64) -> Transition {
        let from = SealKey::from_seed(from_seed).public();
        let to = SealKey::from_seed(to_seed).public();
        let mut t = Transition {
            node: node.to_owned(),
            from: KeyId::of(&from),
            from_key: from.export(),
            to: KeyId::of(&to),
            to_key: to.export(),
            at,
            signature_from: String::new(),
            signature_to: String::new(),
        };
        let m = t.message(&from, &to);
        t.signature_from = B64.encode(SigningKey::from_bytes(from_seed).sign(&m).to_bytes());
        t.signature_to = B64.encode(SigningKey::from_bytes(to_seed).sign(&m).to_bytes());
        t
    }

    fn message(&self, from: &SealPublicKey, to: &SealPublicKey) -> Vec<u8> {
        let mut m = TRANSITION_TAG.to_vec();
        field(&mut m, self.node.as_bytes());
        field(&mut m, self.from.0.as_bytes());
        field(&mut m, &from.to_bytes());
        field(&mut m, self.to.0.as_bytes());
        field(&mut m, &to.to_bytes());
        m.extend_from_slice(&self.at.to_be_bytes());
        m
    }
}

/// One line of the keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Certify(Certificate),
    Revoke(Revocation),
    Transition(Transition),
}

impl Entry {
    /// The entry as one keyring line (no newline).
    pub fn line(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What the keyring says of one key at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    Trusted(KeyId),
    /// No certificate from the pinned root names this key.
    NotCertified(KeyId),
    /// Certified, but no window has begun.
    NotYetValid {
        key_id: KeyId,
        from: i64,
    },
    /// Every window has ended.
    Expired {
        key_id: KeyId,
        at: i64,
    },
    /// Revoked from `at` on.
    Revoked {
        key_id: KeyId,
        at: i64,
    },
}

impl std::fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |at: &i64| chrono_free_time(*at);
        match self {
            KeyStatus::Trusted(id) => write!(f, "key {id} is certified by the root"),
            KeyStatus::NotCertified(id) => write!(f, "key {id} was never certified by the root"),
            KeyStatus::NotYetValid { key_id, from } => {
                write!(f, "key {key_id} is certified only from {}", t(from))
            }
            KeyStatus::Expired { key_id, at } => {
                write!(f, "key {key_id}'s certificate ended at {}", t(at))
            }
            KeyStatus::Revoked { key_id, at } => {
                write!(f, "key {key_id} was revoked from {}", t(at))
            }
        }
    }
}

/// Unix seconds as `@SECONDS` (this crate has no calendar; the CLI prints dates).
fn chrono_free_time(at: i64) -> String {
    format!("@{at}")
}

/// One key's history, as the keyring tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyHistory {
    pub key_id: KeyId,
    pub node: String,
    pub key: String,
    /// Certified windows `[not_before, not_after)`, in keyring order.
    pub windows: Vec<(i64, i64)>,
    /// The earliest revocation's not-after, if any.
    pub revoked: Option<i64>,
    /// The key this one replaced, and when.
    pub replaces: Option<(KeyId, i64)>,
    /// The key that replaced this one, and when.
    pub replaced_by: Option<(KeyId, i64)>,
}

/// The parsed keyring. Parsing checks only the form; [`Keyring::check`] checks the signatures,
/// and every question about trust checks them first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    /// Entries with their 1-based line numbers.
    entries: Vec<(usize, Entry)>,
}

impl Keyring {
    /// One JSON entry per line; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry: Entry = serde_json::from_str(line).map_err(|e| KeyringError::Malformed {
                line: i + 1,
                reason: e.to_string(),
            })?;
            entries.push((i + 1, entry));
        }
        Ok(Keyring { entries })
    }

    /// Reads a keyring file; a missing file is an empty keyring (nothing is trusted).
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Keyring::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Keyring::default()),
            Err(source) => Err(KeyringError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Appends entries to a keyring file in one write, flushed to disk before returning.
    pub fn append(path: &Path, entries: &[Entry]) -> Result<(), KeyringError> {
        let io = |source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::new();
        for e in entries {
            text.push_str(&e.line());
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().map(|(_, e)| e)
    }

    /// Checks every entry: certificates and revocations signed by `root`, each certificate's key
    /// id matching its key and its window non-empty, transitions signed by both keys, each of
    /// which the root certified. The first bad entry is the error.
    pub fn check(&self, root: &RootPublicKey) -> Result<(), KeyringError> {
        let expected = root.fingerprint();
        let not_root = |line, what, key_id: &KeyId, claimed: &str| KeyringError::NotRootSigned {
            line,
            what,
            key_id: key_id.0.clone(),
            expected: expected.clone(),
            claimed: claimed.to_owned(),
        };
        let malformed = |line, reason: &str| KeyringError::Malformed {
            line,
            reason: reason.to_owned(),
        };
        for (line, entry) in &self.entries {
            let line = *line;
            match entry {
                Entry::Certify(c) => {
                    let key = SealPublicKey::parse(&c.key)
                        .map_err(|e| malformed(line, &e.to_string()))?;
                    if !root.verifies(&c.message(&key), &c.signature) {
                        return Err(not_root(line, "certificate", &c.key_id, &c.root));
                    }
                    let actual = KeyId::of(&key);
                    if actual != c.key_id {
                        return Err(KeyringError::WrongKeyId {
                            line,
                            claimed: c.key_id.0.clone(),
                            actual: actual.0,
                        });
                    }
                    if c.not_after <= c.not_before {
                        return Err(KeyringError::EmptyWindow {
                            line,
                            key_id: c.key_id.0.clone(),
                        });
                    }
                }
                Entry::Revoke(r) => {
                    if !root.verifies(&r.message(), &r.signature) {
                        return Err(not_root(line, "revocation", &r.key_id, &r.root));
                    }
                }
                Entry::Transition(_) => {}
            }
        }
        // Transitions last: they may only link keys the (now checked) certificates name.
        for (line, entry) in &self.entries {
            let Entry::Transition(t) = entry else {
                continue;
            };
            let line = *line;
            let from =
                SealPublicKey::parse(&t.from_key).map_err(|e| malformed(line, &e.to_string()))?;
            let to =
                SealPublicKey::parse(&t.to_key).map_err(|e| malformed(line, &e.to_string()))?;
            for (id, key) in [(&t.from, &from), (&t.to, &to)] {
                if !self.certifies(key) || KeyId::of(key) != *id {
                    return Err(KeyringError::TransitionUncertified {
                        line,
                        key_id: id.0.clone(),
                    });
                }
            }
            let m = t.message(&from, &to);
            let bad = |which| KeyringError::BadTransition {
                line,
                from: t.from.0.clone(),
                to: t.to.0.clone(),
                which,
            };
            if !verify_sig(from.verifying_key(), &m, &t.signature_from) {
                return Err(bad("the outgoing key"));
            }
            if !verify_sig(to.verifying_key(), &m, &t.signature_to) {
                return Err(bad("the incoming key"));
            }
        }
        Ok(())
    }

    fn certifies(&self, key: &SealPublicKey) -> bool {
        let export = key.export();
        self.certificates().any(|c| c.key == export)
    }

    fn certificates(&self) -> impl Iterator<Item = &Certificate> {
        self.entries().filter_map(|e| match e {
            Entry::Certify(c) => Some(c),
            _ => None,
        })
    }

    /// The earliest revocation of `key_id`: a later entry cannot lift or postpone it.
    fn revoked(&self, key_id: &KeyId) -> Option<i64> {
        self.entries()
            .filter_map(|e| match e {
                Entry::Revoke(r) if r.key_id == *key_id => Some(r.not_after),
                _ => None,
            })
            .min()
    }

    /// The seal keys to trust for evidence made at `at` (unix seconds): certified by `root` for
    /// a window holding `at`, and not revoked at or before `at`. Fails, trusting nothing, if any
    /// entry of the keyring does not check against `root`.
    pub fn trusted(
        &self,
        root: &RootPublicKey,
        at: i64,
    ) -> Result<Vec<(SealPublicKey, KeyId)>, KeyringError> {
        self.check(root)?;
        let mut out: Vec<(SealPublicKey, KeyId)> = Vec::new();
        for c in self.certificates() {
            if !(c.not_before <= at && at < c.not_after) {
                continue;
            }
            if self.revoked(&c.key_id).is_some_and(|r| r <= at) {
                continue;
            }
            if out.iter().any(|(_, id)| *id == c.key_id) {
                continue;
            }
            // `check` parsed every certificate's key already.
            if let Ok(key) = SealPublicKey::parse(&c.key) {
                out.push((key, c.key_id.clone()));
            }
        }
        Ok(out)
    }

    /// What the keyring says of `key` at `at`, after checking it against `root`.
    pub fn status(
        &self,
        root: &RootPublicKey,
        key: &SealPublicKey,
        at: i64,
    ) -> Result<KeyStatus, KeyringError> {
        let key_id = KeyId::of(key);
        if self.trusted(root, at)?.iter().any(|(_, id)| *id == key_id) {
            return Ok(KeyStatus::Trusted(key_id));
        }
        let export = key.export();
        let windows: Vec<(i64, i64)> = self
            .certificates()
            .filter(|c| c.key == export)
            .map(|c| (c.not_before, c.not_after))
            .collect();
        if windows.is_empty() {
            return Ok(KeyStatus::NotCertified(key_id));
        }
        if let Some(r) = self.revoked(&key_id).filter(|r| *r <= at) {
            return Ok(KeyStatus::Revoked { key_id, at: r });
        }
        match windows.iter().filter(|(nb, _)| *nb > at).map(|w| w.0).min() {
            Some(from) => Ok(KeyStatus::NotYetValid { key_id, from }),
            None => Ok(KeyStatus::Expired {
                at: windows.iter().map(|w| w.1).max().unwrap_or(at),
                key_id,
            }),
        }
    }

    /// Every certified key with its windows, revocation and transitions, in the order first
    /// certified, after checking the keyring against `root`.
    pub fn history(&self, root: &RootPublicKey) -> Result<Vec<KeyHistory>, KeyringError> {
        self.check(root)?;
        let mut out: Vec<KeyHistory> = Vec::new();
        for c in self.certificates() {
            match out.iter_mut().find(|h| h.key_id == c.key_id) {
                Some(h) => h.windows.push((c.not_before, c.not_after)),
                None => out.push(KeyHistory {
                    key_id: c.key_id.clone(),
                    node: c.node.clone(),
                    key: c.key.clone(),
                    windows: vec![(c.not_before, c.not_after)],
                    revoked: self.revoked(&c.key_id),
                    replaces: None,
                    replaced_by: None,
                }),
            }
        }
        for e in self.entries() {
            let Entry::Transition(t) = e else { continue };
            for h in out.iter_mut() {
                if h.key_id == t.to {
                    h.replaces = Some((t.from.clone(), t.at));
                }
                if h.key_id == t.from {
                    h.replaced_by = Some((t.to.clone(), t.at));
                }
            }
        }
        Ok(out)
    }
}

fn first_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Appends a length-prefixed field, so that no two field lists encode alike.
fn field(m: &mut Vec<u8>, bytes: &[u8]) {
    m.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    m.extend_from_slice(bytes);
}

fn verify_sig(key: impl Into<Option<VerifyingKey>>, message: &[u8], signature: &str) -> bool {
    let Some(key) = key.into() else {
        return false;
    };
    let Some(sig) = B64
        .decode(signature)
        .ok()
        .and_then(|v| <[u8; 64]>::try_from(v).ok())
    else {
        return false;
    };
    key.verify_strict(message, &Signature::from_bytes(&sig))
        .is_ok()
}

#[cfg(test)]
mod tests;
