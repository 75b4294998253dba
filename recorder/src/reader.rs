//! Reading and verifying record files. Nothing here panics on input: every malformed byte
//! becomes a [`ReadError`] that names the record where reading stopped.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::format::{
    BODY_FIXED, Decompressor, HASH_LEN, Kind, MAGIC, MAGIC_Z, MAX_CHUNK, MAX_PAYLOAD, Record,
    chain_hash, genesis_hash,
};

/// Why reading stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("not a Postern record file (bad header)")]
    BadHeader,
    #[error("record {seq}: framing damaged at byte {offset} ({why})")]
    BadFrame {
        seq: u64,
        offset: u64,
        why: &'static str,
    },
    #[error("record {seq}: sequence number is {found} (a record was dropped or reordered)")]
    SeqGap { seq: u64, found: u64 },
    #[error("record {seq}: hash does not match its content or its predecessor (altered)")]
    HashMismatch { seq: u64 },
    #[error("record {seq}: unknown record kind {code}")]
    UnknownKind { seq: u64, code: u8 },
    #[error("record {seq}: incomplete at byte {offset} (file truncated or torn write)")]
    Torn { seq: u64, offset: u64 },
}

impl ReadError {
    /// The record at which the problem was found, if it concerns one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ReadError::BadFrame { seq, .. }
            | ReadError::SeqGap { seq, .. }
            | ReadError::HashMismatch { seq }
            | ReadError::UnknownKind { seq, .. }
            | ReadError::Torn { seq, .. } => Some(*seq),
            ReadError::Io(_) | ReadError::BadHeader => None,
        }
    }
}

/// Sequential reader that checks the chain as it goes.
pub struct Reader<R> {
    input: R,
    offset: u64,
    next_seq: u64,
    genesis: [u8; HASH_LEN],
    prev: [u8; HASH_LEN],
    stream_id: String,
    done: bool,
    decompressor: Option<Decompressor>,
}

/// Where a reader stands, to continue reading a growing file later (`audit --follow`).
#[derive(Debug, Clone)]
pub struct ResumePoint {
    offset: u64,
    next_seq: u64,
    prev: [u8; HASH_LEN],
    genesis: [u8; HASH_LEN],
    stream_id: String,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let file = File::open(path).map_err(|e| ReadError::Io(e.to_string()))?;
        Reader::new(BufReader::with_capacity(64 * 1024, file))
    }

    /// Reopens `path` and continues after the last complete record read before, chain included.
    pub fn resume(path: &Path, at: &ResumePoint) -> Result<Self, ReadError> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(path).map_err(|e| ReadError::Io(e.to_string()))?;
        file.seek(SeekFrom::Start(at.offset))
            .map_err(|e| ReadError::Io(e.to_string()))?;
        Ok(Reader {
            input: BufReader::with_capacity(64 * 1024, file),
            offset: at.offset,
            next_seq: at.next_seq,
            genesis: at.genesis,
            prev: at.prev,
            stream_id: at.stream_id.clone(),
            done: false,
            // Following a compressed stream from the middle needs its state: only plain files.
            decompressor: None,
        })
    }
}

impl<R: BufRead> Reader<R> {
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut header = Vec::new();
        // Bound the header read so a garbage file cannot make us buffer it whole.
        (&mut input)
            .take(512)
            .read_until(b'\n', &mut header)
            .map_err(|e| ReadError::Io(e.to_string()))?;
        let magic = if header.starts_with(MAGIC) {
            MAGIC
        } else if header.starts_with(MAGIC_Z) {
            MAGIC_Z
        } else {
            return Err(ReadError::BadHeader);
        };
        if header.last() != Some(&b'\n') {
            return Err(ReadError::BadHeader);
        }
        let stream_id =
            String::from_utf8_lossy(&header[magic.len()..header.len() - 1]).into_owned();
        let decompressor = if magic == MAGIC_Z {
            Some(Decompressor::new().map_err(|e| ReadError::Io(e.to_string()))?)
        } else {
            None
        };
        let genesis = genesis_hash(&header);
        Ok(Reader {
            input,
            offset: header.len() as u64,
            next_seq: 0,
            genesis,
            prev: genesis,
            stream_id,
            done: false,
            decompressor,
        })
    }

    /// The id written in the file's header (the session id for a recording).
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn genesis(&mut self) -> [u8; HASH_LEN] {
        self.genesis
    }

    /// The point after the last complete record read.
    pub fn position(&self) -> ResumePoint {
        ResumePoint {
            offset: self.offset,
            next_seq: self.next_seq,
            prev: self.prev,
            genesis: self.genesis,
            stream_id: self.stream_id.clone(),
        }
    }

    /// Byte offset just after the last complete record read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e.to_string())),
            }
        }
        Ok(got)
    }

    /// Reads the next record; `None` at a clean end of file.
    pub fn next_record(&mut self) -> Option<Result<Record, ReadError>> {
        if self.done {
            return None;
        }
        let r = self.read_one();
        match &r {
            Ok(None) | Err(_) => self.done = true,
            Ok(Some(_)) => {}
        }
        r.transpose()
    }

    /// One record: its frame read, its body unpacked, checked against the chain.
    fn read_one(&mut self) -> Result<Option<Record>, ReadError> {
        let Some((frame, body_len)) = self.read_frame()? else {
            return Ok(None);
        };
        let body = self.unpack(&frame[..body_len])?;
        let stored: [u8; HASH_LEN] = frame[body_len..body_len + HASH_LEN]
            .try_into()
            .map_err(|_| self.bad_frame("hash"))?;
        let record = self.check(&body, stored)?;
        self.prev = stored;
        self.next_seq += 1;
        self.offset += 4 + frame.len() as u64;
        Ok(Some(record))
    }

    /// Damaged framing at the record being read.
    fn bad_frame(&self, why: &'static str) -> ReadError {
        ReadError::BadFrame {
            seq: self.next_seq,
            offset: self.offset,
            why,
        }
    }

    /// The next frame after its length (`body hash length`) and the body's length; `None` at a
    /// clean end of file.
    fn read_frame(&mut self) -> Result<Option<(Vec<u8>, usize)>, ReadError> {
        let torn = ReadError::Torn {
            seq: self.next_seq,
            offset: self.offset,
        };
        let mut len = [0u8; 4];
        match self.fill(&mut len)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(torn),
        }
        let body_len = u32::from_be_bytes(len) as usize;
        let range = if self.decompressor.is_some() {
            1..=MAX_CHUNK
        } else {
            BODY_FIXED..=BODY_FIXED + MAX_PAYLOAD
        };
        if !range.contains(&body_len) {
            return Err(self.bad_frame("length out of range"));
        }
        let mut rest = vec![0u8; body_len + HASH_LEN + 4];
        if self.fill(&mut rest)? < rest.len() {
            return Err(torn);
        }
        if rest[rest.len() - 4..] != len {
            return Err(self.bad_frame("lengths differ"));
        }
        Ok(Some((rest, body_len)))
    }

    /// The body as hashed: as framed, or decompressed in a compressed file.
    fn unpack<'a>(&mut self, framed: &'a [u8]) -> Result<Cow<'a, [u8]>, ReadError> {
        let Some(d) = self.decompressor.as_mut() else {
            return Ok(Cow::Borrowed(framed));
        };
        match d.chunk(framed, BODY_FIXED + MAX_PAYLOAD) {
            Some(body) => Ok(Cow::Owned(body)),
            None => Err(self.bad_frame("compressed data undecodable")),
        }
    }

    /// Decodes a body and checks that it is the next record of the chain.
    fn check(&self, body: &[u8], stored: [u8; HASH_LEN]) -> Result<Record, ReadError> {
        let seq = self.next_seq;
        let record = decode_body(body, stored).ok_or_else(|| self.bad_frame("body too short"))?;
        if record.seq != seq {
            return Err(ReadError::SeqGap {
                seq,
                found: record.seq,
            });
        }
        if chain_hash(&self.prev, body) != stored {
            return Err(ReadError::HashMismatch { seq });
        }
        if Kind::from_code(body[16]).is_none() {
            return Err(ReadError::UnknownKind {
                seq,
                code: body[16],
            });
        }
        Ok(record)
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Record, ReadError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}

fn decode_body(body: &[u8], hash: [u8; HASH_LEN]) -> Option<Record> {
    if body.len() < BODY_FIXED {
        return None;
    }
    let seq = u64::from_be_bytes(body[0..8].try_into().ok()?);
    let time_us = i64::from_be_bytes(body[8..16].try_into().ok()?);
    // An unknown kind is reported by the reader with its sequence number; decode as Event here.
    let kind = Kind::from_code(body[16]).unwrap_or(Kind::Event);
    let channel = u32::from_be_bytes(body[17..21].try_into().ok()?);
    Some(Record {
        seq,
        time_us,
        kind,
        channel,
        payload: body[21..].to_vec(),
        hash,
    })
}

/// Decodes one framed record (`len body hash len`) without chain checks.
pub(crate) fn decode_framed(buf: &[u8]) -> Option<Record> {
    let body_len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let body = buf.get(4..4 + body_len)?;
    let hash: [u8; HASH_LEN] = buf
        .get(4 + body_len..4 + body_len + HASH_LEN)?
        .try_into()
        .ok()?;
    decode_body(body, hash)
}

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "tail", rename_all = "snake_case")]
pub enum Tail {
    /// The last byte ends a complete record.
    Clean,
    /// An incomplete record starts at `offset`; `bytes` bytes of it are present.
    Torn { offset: u64, bytes: u64 },
}

/// The result of checking one file's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub stream_id: String,
    /// Complete, chained records read.
    pub records: u64,
    /// Hash of the last good record.
    pub last_hash: Option<[u8; HASH_LEN]>,
    pub first_time_us: Option<i64>,
    pub last_time_us: Option<i64>,
    /// Whether the file ends with a `SessionEnd` (before its seal, if sealed).
    pub ended: bool,
    /// The last good record, and the hash of the one before it (what a seal covers).
    pub last: Option<Record>,
    pub before_last_hash: Option<[u8; HASH_LEN]>,
    pub tail: Tail,
    /// Damage other than a torn tail, at the first bad record.
    pub problem: Option<ReadError>,
}

/// Recomputes a stream's chain. A torn final record is reported in `tail`; whether that is
/// acceptable (a crash) or tampering (a sealed recording cut short) is for the caller to judge
/// against the seal.
pub fn verify<R: BufRead>(input: R) -> Result<VerifyReport, ReadError> {
    let mut reader = Reader::new(input)?;
    let mut report = VerifyReport {
        stream_id: reader.stream_id().to_owned(),
        records: 0,
        last_hash: None,
        first_time_us: None,
        last_time_us: None,
        ended: false,
        last: None,
        before_last_hash: None,
        tail: Tail::Clean,
        problem: None,
    };
    while let Some(item) = reader.next_record() {
        match item {
            Ok(r) => {
                report.records += 1;
                report.before_last_hash = report.last_hash;
                report.last_hash = Some(r.hash);
                report.first_time_us.get_or_insert(r.time_us);
                report.last_time_us = Some(r.time_us);
                match r.kind {
                    Kind::SessionEnd => report.ended = true,
                    Kind::Seal => {}
                    _ => report.ended = false,
                }
                // Keep payloads of the kinds a caller inspects at the end; not terminal data.
                report.last = Some(
                    if matches!(
                        r.kind,
                        Kind::Output
                            | Kind::Input
                            | Kind::Stderr
                            | Kind::TransferIn
                            | Kind::TransferOut
                    ) {
                        Record {
                            payload: Vec::new(),
                            ..r
                        }
                    } else {
                        r
                    },
                );
            }
            Err(ReadError::Torn { offset, .. }) => {
                report.tail = Tail::Torn { offset, bytes: 0 };
            }
            Err(e) => report.problem = Some(e),
        }
    }
    Ok(report)
}

/// [`verify`] on a file; a torn tail's size is filled in from the file length.
pub fn verify_file(path: &Path) -> Result<VerifyReport, ReadError> {
    let file = File::open(path).map_err(|e| ReadError::Io(e.to_string()))?;
    let size = file
        .metadata()
        .map_err(|e| ReadError::Io(e.to_string()))?
        .len();
    let mut report = verify(BufReader::with_capacity(64 * 1024, file))?;
    if let Tail::Torn { offset, .. } = report.tail {
        report.tail = Tail::Torn {
            offset,
            bytes: size.saturating_sub(offset),
        };
    }
    Ok(report)
}

impl VerifyReport {
    /// Checks the file's seal against `trusted` keys. Meaningful only when `problem` is `None`
    /// and the tail is clean.
    pub fn seal(&self, trusted: &[crate::SealPublicKey]) -> Result<crate::Seal, crate::SealError> {
        match &self.last {
            Some(last) => crate::check_seal(&self.stream_id, last, self.before_last_hash, trusted),
            None => Err(crate::SealError::Missing),
        }
    }
}
