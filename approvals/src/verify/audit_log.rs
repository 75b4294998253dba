//! What this node's audit log says: its own chain, and each session's end, seal and crash
//! recovery, read by event type.

use std::collections::HashMap;
use std::path::Path;

use super::Finding;
use crate::audit::AuditEvent;

/// What the audit log says a session's seal was.
#[derive(Debug, Clone)]
pub(super) struct AuditSeal {
    pub(super) records: u64,
    pub(super) hash: String,
}

/// What this node's audit log says about one session.
#[derive(Debug, Clone, Default)]
pub(super) struct AuditFacts {
    /// `session.end`: the recording's record count and final hash; `None` inside when the
    /// recording could not be sealed (a recording write error, `records` = -1).
    pub(super) end: Option<Option<(u64, String)>>,
    pub(super) seal: Option<AuditSeal>,
    /// Named by `session.crash_recovered`: the broker stopped without closing it.
    pub(super) crash_recovered: bool,
}

/// Checks the audit log's chain and collects what it says about sessions' ends and seals.
pub(super) fn verify_audit_log(path: &Path) -> (Finding, HashMap<String, AuditFacts>) {
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
                    if AuditEvent::of_entry(&v) == Some(AuditEvent::AuditTailRepaired) {
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
    match AuditEvent::of_entry(v) {
        Some(AuditEvent::SessionEnd) => {
            if let Some(id) = v["session"].as_str() {
                let end = match (v["records"].as_i64(), v["final_hash"].as_str()) {
                    (Some(n), Some(h)) if n >= 0 => Some((n as u64, h.to_owned())),
                    _ => None,
                };
                facts.entry(id.to_owned()).or_default().end = Some(end);
            }
        }
        Some(AuditEvent::SessionSeal) => {
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
        Some(AuditEvent::SessionCrashRecovered) => {
            for id in v["sessions"].as_array().into_iter().flatten() {
                if let Some(id) = id.as_str() {
                    facts.entry(id.to_owned()).or_default().crash_recovered = true;
                }
            }
        }
        _ => {}
    }
}
