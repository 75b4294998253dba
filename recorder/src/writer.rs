//! Appending records: one buffered writer per recording, and a locked appender for shared logs.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::WriteError;
use crate::format::{
    BODY_FIXED, Compressor, HASH_LEN, Kind, MAGIC, MAGIC_Z, MAX_PAYLOAD, Record, chain_hash,
    encode_body, frame, genesis_hash, header_line, header_with, now_us,
};
use crate::reader::{Reader, Tail, verify_file};

/// Buffer size of a recording writer: batches small terminal chunks into few syscalls (larger
/// records go straight through), and is held by every live session, so it stays small.
const BUFFER: usize = 8 * 1024;

/// The single writer of one recording file.
///
/// Records go to an in-memory buffer; the owner calls [`Writer::flush`] at least once a second and
/// [`Writer::finish`] at the end, so a crash loses at most the last second and never corrupts what
/// was flushed before (appends only ever add bytes after the last complete record).
pub struct Writer {
    path: PathBuf,
    stream_id: String,
    /// The open file, or `None` while the recording rests: an idle session holds no descriptor
    /// (a node with thousands of idle sessions would otherwise run out of them).
    out: Option<BufWriter<File>>,
    /// Device and inode of the file as created, and the bytes this writer has put in it:
    /// reopening after a rest must reach that file, unchanged.
    identity: (u64, u64),
    len: u64,
    next_seq: u64,
    prev: [u8; HASH_LEN],
    compressor: Option<Compressor>,
    /// Records appended since the last flush, and flushes in a row that found none.
    appended: u64,
    quiet_flushes: u32,
    /// Set by the first failed write. After it nothing more is written: the file then ends at the
    /// last complete record, or in a torn one, never in records chained onto a partial write.
    failed: bool,
    /// Set once the seal is written: nothing may follow it (a record after the seal would make
    /// the recording fail verification), so later appends are refused.
    sealed: bool,
}

impl Writer {
    /// Creates a new compressed recording (zstd, per-record chunks of one stream).
    pub fn create_compressed(path: &Path, stream_id: &str) -> Result<Writer, WriteError> {
        Writer::create_with(path, stream_id, true)
    }

    /// Creates a new recording. Fails if the file exists: evidence is never overwritten.
    pub fn create(path: &Path, stream_id: &str) -> Result<Writer, WriteError> {
        Writer::create_with(path, stream_id, false)
    }

    fn create_with(path: &Path, stream_id: &str, compressed: bool) -> Result<Writer, WriteError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        let header = header_with(if compressed { MAGIC_Z } else { MAGIC }, stream_id);
        let identity = file_identity(&file)?;
        let mut out = BufWriter::with_capacity(BUFFER, file);
        out.write_all(&header)?;
        Ok(Writer {
            path: path.to_owned(),
            stream_id: stream_id.to_owned(),
            out: Some(out),
            identity,
            len: header.len() as u64,
            next_seq: 0,
            prev: genesis_hash(&header),
            compressor: compressed.then(Compressor::new),
            appended: 0,
            quiet_flushes: 0,
            failed: false,
            sealed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record stamped with the current time.
    pub fn append(&mut self, kind: Kind, channel: u32, payload: &[u8]) -> Result<u64, WriteError> {
        self.append_at(now_us(), kind, channel, payload)
    }

    /// Appends a record with an explicit time (microseconds since the epoch).
    pub fn append_at(
        &mut self,
        time_us: i64,
        kind: Kind,
        channel: u32,
        payload: &[u8],
    ) -> Result<u64, WriteError> {
        self.append_inner(time_us, kind, channel, payload, false)
    }

    /// For a compressed recording with no records over the last `quiet` flushes: appends an
    /// `idle` event that ends the compression frame and closes the file, so the idle session holds
    /// no compression context and no descriptor until its next record. Returns whether it did.
    pub fn rest_if_idle(&mut self, quiet: u32) -> Result<bool, WriteError> {
        let open = self.compressor.as_ref().is_some_and(Compressor::is_open);
        if !open || self.quiet_flushes < quiet {
            return Ok(false);
        }
        self.append_inner(now_us(), Kind::Event, 0, br#"{"event":"idle"}"#, true)?;
        self.flush()?;
        // Synced before closing, so that a write error shows here, on the descriptor that wrote
        // (some file systems report one only at close); the next append reopens the file.
        self.with_file(|out| out.get_ref().sync_data())?;
        self.out = None;
        Ok(true)
    }

    fn append_inner(
        &mut self,
        time_us: i64,
        kind: Kind,
        channel: u32,
        payload: &[u8],
        end_frame: bool,
    ) -> Result<u64, WriteError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WriteError::TooLarge(payload.len()));
        }
        self.check()?;
        if self.sealed {
            return Err(WriteError::Sealed);
        }
        // Reopened before the compressor runs: a record that cannot be written must not advance
        // the compression stream.
        self.file()?;
        let seq = self.next_seq;
        let body = encode_body(seq, time_us, kind, channel, payload);
        let hash = chain_hash(&self.prev, &body);
        let stored = match self.compressor.as_mut() {
            Some(c) => match c.chunk(&body, end_frame) {
                Ok(chunk) => frame(&chunk, &hash),
                Err(e) => {
                    // The compression stream's state is unknown now: stop here.
                    self.failed = true;
                    return Err(WriteError::Io(e));
                }
            },
            None => frame(&body, &hash),
        };
        self.with_file(|out| out.write_all(&stored))?;
        self.len += stored.len() as u64;
        self.prev = hash;
        self.next_seq += 1;
        self.appended += 1;
        Ok(seq)
    }

    /// Pushes buffered records to the operating system.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.check()?;
        if self.appended == 0 {
            self.quiet_flushes = self.quiet_flushes.saturating_add(1);
        } else {
            self.quiet_flushes = 0;
        }
        self.appended = 0;
        // A resting recording has nothing buffered: it is not reopened for this.
        match self.out.as_mut().map(BufWriter::flush) {
            Some(Err(e)) => {
                self.failed = true;
                Err(WriteError::Io(e))
            }
            _ => Ok(()),
        }
    }

    /// The open file, reopened for appending after a rest. The reopened file must be the one
    /// this writer created, as it left it (on Unix: same device and inode, same length, never
    /// through a symbolic link): anything else is refused, never written to, and nothing more
    /// is written to this recording. A file that cannot be opened (no descriptor free, say) is
    /// an error for this record only: nothing was written, so the recording can still be sealed.
    fn file(&mut self) -> Result<&mut BufWriter<File>, WriteError> {
        let out = match self.out.take() {
            Some(out) => out,
            None => {
                let mut options = OpenOptions::new();
                options.append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::custom_flags(
                    &mut options,
                    libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
                );
                let file = options.open(&self.path)?;
                let len = file.metadata()?.len();
                if file_identity(&file)? != self.identity || len != self.len {
                    self.failed = true;
                    return Err(WriteError::Damaged(format!(
                        "{} is no longer the file this recording wrote",
                        self.path.display()
                    )));
                }
                BufWriter::with_capacity(BUFFER, file)
            }
        };
        Ok(self.out.insert(out))
    }

    fn check(&self) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::Damaged(
                "an earlier write failed; nothing more is written to this recording".into(),
            ));
        }
        Ok(())
    }

    /// Runs `op` on the open file (reopened after a rest, see [`Writer::file`]). An I/O error
    /// from `op` is a failed write: nothing more is written to this recording.
    fn with_file(
        &mut self,
        op: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> Result<(), WriteError> {
        let out = self.file()?;
        op(out).map_err(|e| {
            self.failed = true;
            WriteError::Io(e)
        })
    }

    /// Appends the seal: a signature over every record written so far. Nothing may follow it.
    pub fn seal(&mut self, key: &crate::SealKey) -> Result<crate::Seal, WriteError> {
        let seal = key.seal(&self.stream_id, self.next_seq, &self.prev);
        self.write_seal(seal)
    }

    /// Appends a version 2 seal binding `meta` (see [`crate::SealMeta`]).
    pub fn seal_v2(
        &mut self,
        key: &crate::SealKey,
        meta: crate::SealMeta,
    ) -> Result<crate::Seal, WriteError> {
        let seal = key.seal_v2(&self.stream_id, self.next_seq, &self.prev, meta);
        self.write_seal(seal)
    }

    fn write_seal(&mut self, seal: crate::Seal) -> Result<crate::Seal, WriteError> {
        let payload =
            serde_json::to_vec(&seal).map_err(|e| WriteError::Io(std::io::Error::other(e)))?;
        self.append(Kind::Seal, 0, &payload)?;
        self.sealed = true;
        Ok(seal)
    }

    /// Flushes and fsyncs; returns the number of records and the final hash.
    pub fn finish(&mut self) -> Result<(u64, [u8; HASH_LEN]), WriteError> {
        self.check()?;
        self.with_file(|out| {
            out.flush()?;
            out.get_ref().sync_data()
        })?;
        Ok((self.next_seq, self.prev))
    }

    /// Records written so far and the hash of the last one.
    pub fn position(&self) -> (u64, [u8; HASH_LEN]) {
        (self.next_seq, self.prev)
    }
}

/// Device and inode numbers (on other systems, none: the check is Unix-only).
fn file_identity(file: &File) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok((0, 0))
    }
}

/// Reads the last complete record of a file from its end, using the trailing length.
/// Returns `None` for a file with a header and no records.
pub fn last_record(path: &Path) -> Result<Option<Record>, WriteError> {
    let mut file = File::open(path)?;
    last_record_of(&mut file)
}

fn last_record_of(file: &mut File) -> Result<Option<Record>, WriteError> {
    let size = file.seek(SeekFrom::End(0))?;
    let header_len = read_header_len(file)?;
    if size == header_len {
        return Ok(None);
    }
    let damaged = |why: &str| WriteError::Damaged(why.to_owned());
    if size < header_len + 8 + (BODY_FIXED + HASH_LEN) as u64 {
        return Err(damaged("file ends inside its first record"));
    }
    let mut len = [0u8; 4];
    file.seek(SeekFrom::Start(size - 4))?;
    file.read_exact(&mut len)?;
    let body_len = u32::from_be_bytes(len) as u64;
    let framed = body_len + HASH_LEN as u64 + 8;
    if body_len < BODY_FIXED as u64 || framed > size - header_len {
        return Err(damaged("last record's trailing length is out of range"));
    }
    let start = size - framed;
    file.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; framed as usize];
    file.read_exact(&mut buf)?;
    if buf[..4] != buf[buf.len() - 4..] {
        return Err(damaged("last record's leading and trailing lengths differ"));
    }
    crate::reader::decode_framed(&buf)
        .map(Some)
        .ok_or_else(|| damaged("last record does not decode"))
}

fn read_header_len(file: &mut File) -> Result<u64, WriteError> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = [0u8; 512];
    let n = file.read(&mut buf)?;
    if n < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        return Err(WriteError::Damaged("not a Postern record file".into()));
    }
    match buf[..n].iter().position(|b| *b == b'\n') {
        Some(i) => Ok(i as u64 + 1),
        None => Err(WriteError::Damaged(
            "record file header is not terminated".into(),
        )),
    }
}

/// What [`append_locked`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: [u8; HASH_LEN],
    /// An incomplete record at the end of the file (a write interrupted by a crash) was cut
    /// before appending: where it started and how many bytes went. The caller should say so in
    /// the log itself, so that the repair is never silent.
    pub repaired: Option<(u64, u64)>,
}

/// Appends one record to a file shared by several processes (the audit log).
///
/// Takes an exclusive lock, chains onto the last record, writes and syncs. A torn tail left by a
/// crash (an incomplete last record after a valid chain) is cut off before appending; any other
/// damage makes the append fail, so that nothing is chained onto a broken log.
pub fn append_locked(
    path: &Path,
    stream_id: &str,
    kind: Kind,
    payload: &[u8],
) -> Result<Appended, WriteError> {
    append_locked_batch(path, stream_id, kind, &[payload])
}

/// [`append_locked`] for several records at once (group commit): one lock, one read of the tail,
/// one write and one sync for all of them, in order. Returns what happened to the first; the
/// others follow it in sequence (`seq + i`). Either every record is appended and synced, or the
/// file is cut back to where it was and the error returned.
pub fn append_locked_batch(
    path: &Path,
    stream_id: &str,
    kind: Kind,
    payloads: &[&[u8]],
) -> Result<Appended, WriteError> {
    if payloads.is_empty() {
        return Err(WriteError::Io(std::io::Error::other("nothing to append")));
    }
    if let Some(big) = payloads.iter().find(|p| p.len() > MAX_PAYLOAD) {
        return Err(WriteError::TooLarge(big.len()));
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.lock()?;
    let result = append_under_lock(&mut file, path, stream_id, kind, payloads);
    let _ = file.unlock();
    result
}

fn append_under_lock(
    file: &mut File,
    path: &Path,
    stream_id: &str,
    kind: Kind,
    payloads: &[&[u8]],
) -> Result<Appended, WriteError> {
    let size = file.seek(SeekFrom::End(0))?;
    if size == 0 {
        file.write_all(&header_line(stream_id))?;
    }
    let mut repaired = None;
    let (first, mut prev) = match last_record_of(file) {
        Ok(Some(r)) => (r.seq + 1, r.hash),
        Ok(None) => {
            let mut reader = Reader::open(path).map_err(|e| WriteError::Damaged(e.to_string()))?;
            (0, reader.genesis())
        }
        Err(_) => {
            let (seq, prev, at) = repair_torn_tail(file, path)?;
            repaired = Some((at, size.saturating_sub(at)));
            (seq, prev)
        }
    };
    let mut out = Vec::new();
    let mut first_hash = prev;
    for (i, payload) in payloads.iter().enumerate() {
        let body = encode_body(first + i as u64, now_us(), kind, 0, payload);
        prev = chain_hash(&prev, &body);
        if i == 0 {
            first_hash = prev;
        }
        out.extend_from_slice(&frame(&body, &prev));
    }
    let end = file.seek(SeekFrom::End(0))?;
    if let Err(e) = file.write_all(&out).and_then(|()| file.sync_data()) {
        // None of the batch is acknowledged, so none of it may stay for the next append to
        // chain onto.
        let _ = file.set_len(end);
        let _ = file.sync_data();
        return Err(e.into());
    }
    Ok(Appended {
        seq: first,
        hash: first_hash,
        repaired,
    })
}

/// Called when the end of the file does not hold a complete record: verify the whole chain and,
/// only if the damage is a torn final record, cut it off.
fn repair_torn_tail(
    file: &mut File,
    path: &Path,
) -> Result<(u64, [u8; HASH_LEN], u64), WriteError> {
    let report = verify_file(path).map_err(|e| WriteError::Damaged(e.to_string()))?;
    if let Some(problem) = report.problem {
        return Err(WriteError::Damaged(problem.to_string()));
    }
    match report.tail {
        Tail::Torn { offset, .. } => {
            file.set_len(offset)?;
            let prev = match report.last_hash {
                Some(h) => h,
                None => Reader::open(path)
                    .map_err(|e| WriteError::Damaged(e.to_string()))?
                    .genesis(),
            };
            Ok((report.records, prev, offset))
        }
        Tail::Clean => Err(WriteError::Damaged(
            "file end does not match its records".into(),
        )),
    }
}
