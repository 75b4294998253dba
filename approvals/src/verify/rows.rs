//! The database's rows held to the recording: the session row against the recording's first
//! record and its seal, the command log against the commands the recording holds.

use std::path::{Path, PathBuf};

use recorder::events::SessionStart;

use crate::model::{CommandRow, Session};

/// The recording a command log was to be read from cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct CommandLogError {
    pub path: PathBuf,
    pub source: recorder::ReadError,
}

/// A recording's command log as database rows: what `index_commands` stores at a session's end,
/// and what `verify` holds the stored rows to.
pub fn command_rows(path: &Path, session: &Session) -> Result<Vec<CommandRow>, CommandLogError> {
    let reader = recorder::Reader::open(path).map_err(|source| CommandLogError {
        path: path.to_owned(),
        source,
    })?;
    // A damaged or torn tail still yields every command before it.
    let (entries, _problem) = recorder::extract_commands(reader);
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| CommandRow {
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
pub(super) fn row_disagrees(
    path: &Path,
    s: &Session,
    seal: Option<&recorder::Seal>,
) -> Option<String> {
    let first = recorder::Reader::open(path)
        .ok()
        .and_then(|mut r| r.next_record())
        .and_then(Result::ok);
    let Some(first) = first.filter(|r| r.kind == recorder::Kind::SessionStart) else {
        return Some("record 0: not the start of a session".into());
    };
    // A payload that does not parse reads as empty: every field then differs from the row.
    let start: SessionStart = first.payload().unwrap_or_default();
    let mut differs: Vec<String> = Vec::new();
    for (what, row, recorded) in [
        ("vendor", s.vendor.as_str(), start.vendor.as_str()),
        ("site", s.site.as_str(), start.site.as_str()),
        ("device", s.device.as_str(), start.device.as_str()),
        ("function", s.function.as_str(), start.function.as_str()),
        ("grant", s.grant_id.as_str(), start.grant.as_str()),
        ("node", s.node.as_str(), start.node.as_str()),
        ("source", s.source.as_str(), start.source.as_str()),
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

/// Holds the command log the database stored at the session's end to the one the recording
/// holds: `None` when they agree; otherwise where they part.
pub(super) fn commands_disagree(path: &Path, s: &Session, stored: &[CommandRow]) -> Option<String> {
    let from_recording = match command_rows(path, s) {
        Ok(rows) => rows,
        Err(e) => return Some(e.to_string()),
    };
    let key = |c: &CommandRow| (c.channel, c.offset_ms, c.kind.clone(), c.command.clone());
    let at = from_recording
        .iter()
        .map(key)
        .zip(stored.iter().map(key))
        .position(|(a, b)| a != b)
        .or_else(|| {
            (from_recording.len() != stored.len()).then(|| from_recording.len().min(stored.len()))
        })?;
    Some(format!(
        "the command log in the database differs from the recording at command {at} ({} stored, {} recorded)",
        stored.len(),
        from_recording.len()
    ))
}
