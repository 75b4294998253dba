//! A live session's recording: the recorder's writer shared by the session's channel tasks.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use recorder::events::{Payload, SessionEnd};
use recorder::{Kind, Writer};

pub struct Recording {
    writer: Mutex<Writer>,
    /// Payload bytes written, added to the node's count (`postern_recording_bytes_total`).
    written: Arc<AtomicU64>,
}

impl Recording {
    pub fn create(
        path: &Path,
        session_id: &str,
        written: Arc<AtomicU64>,
    ) -> Result<Recording, recorder::WriteError> {
        Ok(Recording {
            writer: Mutex::new(Writer::create_compressed(path, session_id)?),
            written,
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T, recorder::WriteError>,
    ) -> Result<T, recorder::WriteError> {
        // A poisoned lock means a panic mid-append elsewhere; the chain itself is still consistent
        // because appends only advance after a complete write.
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w)
    }

    /// Appends raw bytes (terminal I/O), split so that no record exceeds the format's limit.
    pub fn bytes(&self, kind: Kind, channel: u32, data: &[u8]) -> Result<(), recorder::WriteError> {
        // Only the benchmark build that measures what recording costs skips the session's bytes;
        // Postern as built for use has no way to turn recording off.
        if cfg!(feature = "bench-unrecorded") {
            return Ok(());
        }
        self.with(|w| {
            for chunk in data.chunks(recorder::MAX_PAYLOAD) {
                w.append(kind, channel, chunk)?;
            }
            self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Appends a typed record (the evidence schema is `recorder::events`; the type says the
    /// record's kind).
    pub fn write<T: Payload>(&self, channel: u32, value: &T) -> Result<(), recorder::WriteError> {
        let payload = encode(value)?;
        self.with(|w| w.append(T::KIND, channel, payload.as_bytes()).map(|_| ()))?;
        (self.written).fetch_add(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes (the supervisor calls this every second). After five quiet seconds the recording
    /// rests: its compression context is freed until the session is active again.
    pub fn flush(&self) -> Result<(), recorder::WriteError> {
        self.with(|w| {
            w.flush()?;
            w.rest_if_idle(5).map(|_| ())
        })
    }

    /// Writes the end record and the seal, syncs, and returns the seal with the file's record
    /// count and last hash.
    pub fn finish(
        &self,
        end: &SessionEnd,
        key: &recorder::SealKey,
        meta: recorder::SealMeta,
    ) -> Result<(recorder::Seal, u64, [u8; 32]), recorder::WriteError> {
        let payload = encode(end)?;
        self.with(|w| {
            w.append(Kind::SessionEnd, 0, payload.as_bytes())?;
            let seal = w.seal_v2(key, meta)?;
            let (n, h) = w.finish()?;
            Ok((seal, n, h))
        })
    }
}

/// A payload's bytes; the schema's types always encode, but a failure is an I/O failure of the
/// recording, not a panic.
fn encode<T: Payload>(value: &T) -> Result<String, recorder::WriteError> {
    recorder::events::encode(value).map_err(|e| recorder::WriteError::Io(std::io::Error::other(e)))
}

/// Indexes a finished session's commands; `false` if the database did not take them (the
/// recording holds the evidence and can be indexed again). A recording that cannot be read is
/// logged and counts as done: there is nothing more to index.
pub async fn index_commands(store: &approvals::Store, recordings: &Path, session_id: &str) -> bool {
    let session = match approvals::store::deadline(store.session(session_id)).await {
        Ok(Some(s)) => s,
        Ok(None) => return true,
        Err(_) => return false,
    };
    let path = recordings.join(&session.recording);
    let rows =
        match tokio::task::spawn_blocking(move || approvals::verify::command_rows(&path, &session))
            .await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(session = session_id, error = %e, "command log not extracted");
                return true;
            }
            Err(_) => return true,
        };
    match approvals::store::deadline(store.set_commands(session_id, &rows)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(session = session_id, error = %e, "command log not stored");
            false
        }
    }
}
