//! Making checkpoints: the tracker that follows a node's audit log.

use std::path::Path;

use super::{AUDIT_EVENT, Checkpoint, CheckpointError, installation_of_log, leaf_of_event};
use crate::audit::AuditEvent;

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
                        if AuditEvent::of_entry(&v) != Some(AUDIT_EVENT) {
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
