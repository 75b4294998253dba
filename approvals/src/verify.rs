//! The one verifier of the evidence, used by `postern verify` and the web form's session page
//! alike, so both say the same thing about a recording.
//!
//! For each session it checks the recording's hash chain and, once the session has ended, its
//! seal (signed by a registered seal key, covering every record) against the seal kept in the
//! database and the one anchored in the chained audit log (`session.seal`). Pure chain and seal
//! checking lives in `recorder`; this module adds what the store and the audit log know.

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
}

impl Finding {
    pub fn ok(item: &str, records: u64, detail: impl Into<String>) -> Finding {
        Finding {
            item: item.to_owned(),
            ok: true,
            records,
            detail: detail.into(),
        }
    }

    pub fn bad(item: &str, records: u64, detail: impl Into<String>) -> Finding {
        Finding {
            item: item.to_owned(),
            ok: false,
            records,
            detail: detail.into(),
        }
    }

    /// The line `postern verify` prints for this finding.
    pub fn line(&self) -> String {
        format!(
            "{} {}: {} ({} records)",
            if self.ok { "OK    " } else { "FAILED" },
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
    pub audit_log: PathBuf,
    pub recordings: PathBuf,
    /// This node's own seal public key file, trusted besides the keys registered in the store.
    pub local_seal_key: Option<PathBuf>,
}

/// What the audit log says a session's seal was.
#[derive(Debug, Clone)]
struct AuditSeal {
    records: u64,
    hash: String,
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
    let evidence = evidence.clone();
    let all = id.is_none();
    tokio::task::spawn_blocking(move || check(&evidence, &keys, &sessions, all))
        .await
        .map_err(|e| VerifyError::Stopped(e.to_string()))
}

fn check(evidence: &Evidence, keys: &[String], sessions: &[Session], all: bool) -> Vec<Finding> {
    let trusted = trusted_keys(keys);
    let (audit_finding, audit_seals) = verify_audit_log(&evidence.audit_log);
    let mut findings: Vec<Finding> = sessions
        .iter()
        .map(|s| {
            verify_recording(
                &evidence.recordings.join(&s.recording),
                s,
                &trusted,
                audit_seals.get(&s.id),
            )
        })
        .collect();
    if all {
        // Sessions the audit log sealed must still be known to the database.
        let known: HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        let mut orphans: Vec<&String> = audit_seals
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        orphans.sort();
        for o in orphans {
            findings.push(Finding::bad(
                &format!("session {o}"),
                0,
                "sealed in the audit log but missing from the database",
            ));
        }
        findings.push(audit_finding);
    }
    findings
}

/// Checks one recording: its chain; once the session has ended, its seal (signed by a trusted
/// key, covering every record) and the seal values kept in the database and the audit log. So a
/// changed byte, a dropped or reordered record, a truncation, a recomputed chain, a swapped file
/// and a deleted file are each reported, at the record where they show.
fn verify_recording(
    path: &Path,
    s: &Session,
    trusted: &[recorder::SealPublicKey],
    audit_seal: Option<&AuditSeal>,
) -> Finding {
    let item = format!("session {}", s.id);
    if !path.exists() {
        return Finding::bad(&item, 0, format!("recording {} is missing", path.display()));
    }
    let r = match recorder::verify_file(path) {
        Ok(r) => r,
        Err(e) => return Finding::bad(&item, 0, format!("{}: {e}", path.display())),
    };
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
    let crashed = s.ended.is_some() && s.records.is_none();
    match (&r.tail, s.ended, crashed) {
        (recorder::Tail::Torn { offset, .. }, Some(_), false) => {
            return Finding::bad(
                &item,
                r.records,
                format!(
                    "record {}: incomplete at byte {offset} (file truncated)",
                    r.records
                ),
            );
        }
        (recorder::Tail::Torn { offset, .. }, _, _) => {
            return Finding::ok(
                &item,
                r.records,
                format!(
                    "chain intact; unsealed tail at byte {offset} (session not closed cleanly)"
                ),
            );
        }
        _ => {}
    }
    if s.ended.is_none() || crashed {
        let why = if crashed {
            "never sealed (broker crash or recording write error)"
        } else {
            "live, not sealed yet"
        };
        return Finding::ok(&item, r.records, format!("chain intact; {why}"));
    }
    let (Some(n), Some(h)) = (s.records, s.final_hash.as_deref()) else {
        return Finding::bad(
            &item,
            r.records,
            "session ended but its seal is missing from the database",
        );
    };
    if (r.records as i64) < n {
        return Finding::bad(
            &item,
            r.records,
            format!(
                "record {}: missing (recording truncated; sealed with {n} records)",
                r.records
            ),
        );
    }
    let seal = match r.seal(trusted) {
        Ok(seal) => seal,
        Err(e) => return Finding::bad(&item, r.records, e.to_string()),
    };
    let last = r.last_hash.map(hex::encode).unwrap_or_default();
    if r.records as i64 > n || last != h {
        return Finding::bad(
            &item,
            r.records,
            format!(
                "record {}: recording does not match the seal in the database",
                n - 1
            ),
        );
    }
    if let Some(a) = audit_seal
        && (a.records != seal.records || a.hash != seal.final_hash)
    {
        return Finding::bad(
            &item,
            r.records,
            format!(
                "record {}: recording does not match the seal in the audit log",
                seal.records
            ),
        );
    }
    let anchored = if audit_seal.is_some() {
        "; seal anchored in the audit log"
    } else {
        ""
    };
    Finding::ok(
        &item,
        r.records,
        format!("chain intact; sealed by a trusted key{anchored}"),
    )
}

/// Checks the audit log's chain and collects the seals it holds.
fn verify_audit_log(path: &Path) -> (Finding, HashMap<String, AuditSeal>) {
    let mut seals = HashMap::new();
    let item = "audit log";
    let reader = match recorder::Reader::open(path) {
        Ok(r) => r,
        Err(e) => return (Finding::bad(item, 0, e.to_string()), seals),
    };
    let mut n = 0u64;
    for rec in reader {
        match rec {
            Ok(r) => {
                n += 1;
                if let Some(v) = r.json().filter(|v| v["event"] == "session.seal")
                    && let (Some(id), Some(records), Some(hash)) = (
                        v["session"].as_str(),
                        v["sealed_records"].as_u64(),
                        v["sealed_hash"].as_str(),
                    )
                {
                    seals.insert(
                        id.to_owned(),
                        AuditSeal {
                            records,
                            hash: hash.to_owned(),
                        },
                    );
                }
            }
            // A torn tail is a crash during an append; the next append repairs it.
            Err(recorder::ReadError::Torn { offset, .. }) => {
                return (
                    Finding::ok(
                        item,
                        n,
                        format!(
                            "chain intact; torn tail at byte {offset} from an interrupted write"
                        ),
                    ),
                    seals,
                );
            }
            Err(e) => return (Finding::bad(item, n, e.to_string()), seals),
        }
    }
    (Finding::ok(item, n, "chain intact"), seals)
}

fn trusted_keys(lines: &[String]) -> Vec<recorder::SealPublicKey> {
    lines
        .iter()
        .filter_map(|l| recorder::SealPublicKey::parse(l).ok())
        .collect()
}
