//! One recording judged against the evidence: its chain, its seal, and what the audit log and
//! the database say it must end with.

use super::audit_log::AuditFacts;
use super::rows::{commands_disagree, row_disagrees};
use super::trust::Trust;
use super::{Evidence, Finding};
use crate::model::{CommandRow, Session};

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
pub(super) fn verify_recording(
    evidence: &Evidence,
    s: &Session,
    local: bool,
    trust: &Trust,
    facts: &AuditFacts,
    stored_commands: Option<&[CommandRow]>,
) -> Finding {
    let item = format!("session {}", s.id);
    let path = evidence.recording_file(&s.recording);
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
    if let Some(stored) = stored_commands.filter(|_| s.ended.is_some() && seal.is_some())
        && let Some(differs) = commands_disagree(&path, s, stored)
    {
        return Finding::bad(&item, finding.records, differs);
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

/// When a recording's last record (its seal, if it has one) was written, in unix seconds.
fn sealed_at(r: &recorder::VerifyReport) -> i64 {
    r.last
        .as_ref()
        .map(|l| l.time_us.div_euclid(1_000_000))
        .unwrap_or_default()
}
