//! The one verifier of the evidence, used by `postern verify` and the web form's session page
//! alike, so both say the same thing about a recording.
//!
//! It believes the evidence, never a database flag: each recording is judged by what the
//! recording itself (its chain and its seal) and this node's chained audit log (`session.end`,
//! `session.seal`, `session.crash_recovered`) say, whatever the database's "live" flag says, since
//! the database may lag the audit log. Pure chain and seal checking lives in `recorder`; this
//! module adds what the store and the audit log know. It repairs nothing.
//!
//! Rooms: `trust` (which seal keys count), `audit_log` (what this node's audit log says about
//! sessions), `recording` (one recording against that evidence), `rows` (the database's rows
//! held to the recording).

mod audit_log;
mod recording;
mod rows;
#[cfg(test)]
mod tests;
mod trust;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::model::{CommandRow, Session};
use crate::store::{Store, StoreError};
use audit_log::{AuditFacts, verify_audit_log};
use recording::verify_recording;
use trust::Trust;

pub use audit_log::audit_log_damaged;
pub use rows::{CommandLogError, command_rows};

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
    /// Copies of other nodes' recordings read from the shared evidence store: a session recorded
    /// elsewhere whose copy is here is checked here (chain and seal; its audit anchor is on its
    /// own node).
    pub fetched: Option<PathBuf>,
}

impl Evidence {
    /// Where session recording `name` is to be read: this node's own file, or a fetched copy.
    /// The keyring node `node` shared through the evidence store, if one was fetched.
    pub fn fetched_keyring(&self, node: &str) -> Option<PathBuf> {
        let path = self.fetched.as_ref()?.join("keyrings").join(node);
        path.exists().then_some(path)
    }

    pub fn recording_file(&self, name: &str) -> PathBuf {
        let own = self.recordings.join(name);
        match &self.fetched {
            Some(dir) if !own.exists() && dir.join(name).exists() => dir.join(name),
            _ => own,
        }
    }
}

/// Checks a recording shipped here from another node (an edge's site node) before it is taken:
/// its chain, its seal against that node's `keyring` under the pinned `root`, and that it is the
/// recording `s` (the session row it came with) says. The same checks as `postern verify` makes
/// of a session recorded on another node.
pub fn verify_shipped(
    file: &std::path::Path,
    keyring: &std::path::Path,
    root: recorder::keyring::RootPublicKey,
    s: &Session,
) -> Finding {
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return Finding::bad(&format!("session {}", s.id), 0, "no file to check");
    };
    let evidence = Evidence {
        node: String::new(),
        audit_log: PathBuf::new(),
        recordings: dir.to_owned(),
        local_seal_key: None,
        keyring: Some(keyring.to_owned()),
        root: Some(root),
        fetched: None,
    };
    let trust = Trust::of(&evidence, &[]);
    if let Trust::Broken(e) = &trust {
        return Finding::bad(&format!("session {}", s.id), 0, e.clone());
    }
    let s = Session {
        recording: name.to_string_lossy().into_owned(),
        ..s.clone()
    };
    verify_recording(&evidence, &s, false, &trust, &AuditFacts::default(), None)
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
    commands: &HashMap<String, Vec<CommandRow>>,
    all: bool,
) -> Vec<Finding> {
    let trust = Trust::of(evidence, keys);
    // Another node's seals are checked against that node's keyring (from the evidence store),
    // under the same pinned root.
    let mut others: HashMap<&str, Trust> = HashMap::new();
    for s in sessions.iter().filter(|s| s.node != evidence.node) {
        if let Some(ring) = evidence.fetched_keyring(&s.node) {
            let theirs = Evidence {
                keyring: Some(ring),
                ..evidence.clone()
            };
            others.insert(&s.node, Trust::of(&theirs, keys));
        }
    }
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
                others.get(s.node.as_str()).unwrap_or(&trust),
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
