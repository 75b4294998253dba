//! The session-end journal: session ends (with their seals) that the database has not recorded
//! yet, kept durably on the broker's own disk.
//!
//! A session's end is evidence first: the recording is sealed and `session.end`/`session.seal`
//! are in the audit log before the database is asked anything. Then the end goes into this
//! journal (one small file per session, written atomically and fsynced), and only then to the
//! database. When the database is unreachable or slow, the journal holds the end and a drain
//! task retries with backoff until the database has it, so `sessions` and the web UI catch up by
//! themselves, with the true end time, without a restart. Applying an end twice changes nothing
//! (the database keeps the first end), so a crash between the database write and the journal
//! clean-up is harmless. At start the broker applies the journal before it marks sessions it
//! finds still open as cut by a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

/// One session's end, as the database should record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub session: String,
    pub reason: String,
    /// Unix seconds.
    pub ended: i64,
    /// The seal (record count, final hash); `None` if the recording could not be sealed.
    pub records: Option<i64>,
    pub final_hash: Option<String>,
}

/// Why a journal entry cannot be read.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Parse(#[from] serde_json::Error),
}

fn read_entry(path: &Path) -> Result<SessionEnd, EntryError> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// The journal directory (`DATA/journal/`).
#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
    /// Wakes the drain task when an end was written that the database did not take at once.
    wake: Arc<Notify>,
}

/// Longest wait between retries of the database.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Journal {
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Journal {
            dir: dir.to_owned(),
            wake: Arc::new(Notify::new()),
        })
    }

    fn path(&self, session: &str) -> PathBuf {
        // Session ids are ours (`s-` and hex); keep any other character out of the file name.
        let safe: String = session
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.dir.join(format!("{safe}.end.json"))
    }

    /// Writes `end` durably: after this returns, a crash or a power cut does not lose it.
    pub fn write(&self, end: &SessionEnd) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.path(&end.session);
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec(end).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The database has the end: forget it.
    pub fn remove(&self, session: &str) {
        if let Err(e) = std::fs::remove_file(self.path(session))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(session, error = %e, "could not remove a journal entry");
        }
    }

    /// Ends not yet in the database, oldest first. Unreadable files are reported and skipped.
    pub fn pending(&self) -> Vec<SessionEnd> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ends: Vec<SessionEnd> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".end.json"))
            .filter_map(|p| match read_entry(&p) {
                Ok(end) => Some(end),
                Err(e) => {
                    warn!(file = %p.display(), error = %e, "unreadable journal entry");
                    None
                }
            })
            .collect();
        ends.sort_by_key(|e| e.ended);
        ends
    }

    /// Asks the drain task to try the database again now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Applies one end to the database (within the database deadline); `true` once the database
/// has it. The session's command log is indexed afterwards.
pub async fn apply(
    store: &approvals::Store,
    recordings: &Path,
    journal: &Journal,
    end: &SessionEnd,
) -> bool {
    // The command log first: once the database says the session ended, its command log is
    // there too (verify holds the two together).
    if !crate::recording::index_commands(store, recordings, &end.session).await {
        warn!(session = %end.session, "command log not yet in the database; the end stays in the journal");
        return false;
    }
    let seal = end.records.zip(end.final_hash.as_deref());
    let written =
        approvals::store::deadline(store.end_session(&end.session, &end.reason, seal, end.ended))
            .await;
    match written {
        Ok(()) => {
            journal.remove(&end.session);
            true
        }
        Err(e) => {
            warn!(session = %end.session, error = %e, "session end not yet in the database; kept in the journal");
            false
        }
    }
}

/// Applies whatever the journal holds until it is empty, retrying with backoff (1 s doubling to
/// 30 s) and waking at once when a new end is journaled. Runs for the broker's lifetime.
pub async fn drain(store: approvals::Store, recordings: PathBuf, journal: Journal) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let pending = journal.pending();
        let mut failed = false;
        for end in &pending {
            if apply(&store, &recordings, &journal, end).await {
                info!(session = %end.session, reason = %end.reason, "session end recorded from the journal");
            } else {
                failed = true;
                break;
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = journal.wake.notified() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = Duration::from_secs(1);
            journal.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_survive_in_the_journal_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("journal")).unwrap();
        let end = |id: &str, t| SessionEnd {
            session: id.into(),
            reason: "device disconnected".into(),
            ended: t,
            records: Some(12),
            final_hash: Some("ab".repeat(32)),
        };
        j.write(&end("s-2", 20)).unwrap();
        j.write(&end("s-1", 10)).unwrap();
        std::fs::write(dir.path().join("journal/junk.end.json"), b"not json").unwrap();
        let again = Journal::open(&dir.path().join("journal")).unwrap();
        assert_eq!(again.pending(), vec![end("s-1", 10), end("s-2", 20)]);
        again.remove("s-1");
        again.remove("s-1");
        assert_eq!(again.pending(), vec![end("s-2", 20)]);
        // A hostile id cannot escape the directory.
        assert!(
            j.path("../../etc/x")
                .starts_with(dir.path().join("journal"))
        );
    }
}
