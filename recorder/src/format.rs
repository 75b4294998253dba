//! The on-disk record format.
//!
//! ```text
//! file    := header record*
//! header  := ("POSTERN-REC/1 " | "POSTERN-RECZ/1 ") stream-id "\n"
//! record  := len:u32be body hash:[u8;32] len:u32be
//! body    := seq:u64be time_us:i64be kind:u8 channel:u32be payload
//! hash    := SHA-256(prev_hash || body); prev_hash of record 0 := genesis_hash(header)
//! ```
//!
//! In a `RECZ` file (compressed), each record's body is stored as one flushed chunk of a single
//! zstd stream for the whole file, so small terminal chunks share the compression window; the
//! length fields give the chunk's size and the hash is still over the uncompressed body.
//!
//! The length is repeated after the hash so that the last record can be read from the end of the
//! file without scanning it (the audit log appender does this under a lock).

use sha2::{Digest, Sha256};

pub const HASH_LEN: usize = 32;
/// Largest payload accepted; bigger terminal chunks are split by the writer's caller.
pub const MAX_PAYLOAD: usize = 1 << 20;
pub(crate) const MAGIC: &[u8] = b"POSTERN-REC/1 ";
pub(crate) const MAGIC_Z: &[u8] = b"POSTERN-RECZ/1 ";
/// Largest stored (compressed) chunk accepted: zstd's worst case for the largest body.
pub(crate) const MAX_CHUNK: usize = BODY_FIXED + MAX_PAYLOAD + (MAX_PAYLOAD >> 7) + 1024;
pub(crate) const BODY_FIXED: usize = 8 + 8 + 1 + 4;
/// Domain-separation prefix for the first record's previous hash.
pub const GENESIS_DOMAIN: &[u8] = b"postern genesis\0";

/// What a record says. The numeric values are part of the file format: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// JSON: who, where, which grant, terminal size. First record of a recording.
    SessionStart,
    /// JSON: channel kind and its details (pty, exec line, subsystem, forward target).
    ChannelOpen,
    /// Bytes the device sent on a channel's stdout.
    Output,
    /// Bytes the vendor sent on a channel.
    Input,
    /// JSON `{"cols":..,"rows":..}`.
    Resize,
    /// JSON: an exec command line exactly as requested.
    Exec,
    /// JSON: exit status or exit signal.
    Exit,
    /// JSON: channel closed (with byte counts).
    ChannelClose,
    /// Bytes the device sent on a channel's stderr.
    Stderr,
    /// JSON: anything else worth keeping (refused requests, warnings shown).
    Event,
    /// JSON: why and when the session ended. Last record of a complete recording.
    SessionEnd,
    /// JSON: one audit log entry.
    Audit,
    /// JSON: the broker's signature over every record before it. Last record of a sealed file.
    Seal,
    /// Bytes the vendor sent on a file-transfer channel (sftp, scp): evidence, not terminal output.
    TransferIn,
    /// Bytes the device sent on a file-transfer channel.
    TransferOut,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::SessionStart => 1,
            Kind::ChannelOpen => 2,
            Kind::Output => 3,
            Kind::Input => 4,
            Kind::Resize => 5,
            Kind::Exec => 6,
            Kind::Exit => 7,
            Kind::ChannelClose => 8,
            Kind::Stderr => 9,
            Kind::Event => 10,
            Kind::SessionEnd => 11,
            Kind::Audit => 12,
            Kind::Seal => 13,
            Kind::TransferIn => 14,
            Kind::TransferOut => 15,
        }
    }

    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::SessionStart,
            2 => Kind::ChannelOpen,
            3 => Kind::Output,
            4 => Kind::Input,
            5 => Kind::Resize,
            6 => Kind::Exec,
            7 => Kind::Exit,
            8 => Kind::ChannelClose,
            9 => Kind::Stderr,
            10 => Kind::Event,
            11 => Kind::SessionEnd,
            12 => Kind::Audit,
            13 => Kind::Seal,
            14 => Kind::TransferIn,
            15 => Kind::TransferOut,
            _ => return None,
        })
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    pub kind: Kind,
    /// SSH channel number on the vendor side; 0 for session-wide records.
    pub channel: u32,
    pub payload: Vec<u8>,
    /// SHA-256 over the previous hash and this record's body.
    pub hash: [u8; HASH_LEN],
}

impl Record {
    /// The payload parsed as JSON, for the kinds whose payload is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

pub(crate) fn header_line(stream_id: &str) -> Vec<u8> {
    header_with(MAGIC, stream_id)
}

pub(crate) fn header_with(magic: &[u8], stream_id: &str) -> Vec<u8> {
    let mut h = magic.to_vec();
    // The stream id is free text chosen by us; keep it on one line.
    h.extend(stream_id.bytes().filter(|b| *b != b'\n' && *b != b'\r'));
    h.push(b'\n');
    h
}

/// The "previous hash" of record 0: binds the chain to the file's header (its stream id).
pub fn genesis_hash(header: &[u8]) -> [u8; HASH_LEN] {
    let mut d = Sha256::new();
    d.update(GENESIS_DOMAIN);
    d.update(header);
    d.finalize().into()
}

pub(crate) fn encode_body(
    seq: u64,
    time_us: i64,
    kind: Kind,
    channel: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_FIXED + payload.len());
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(&time_us.to_be_bytes());
    body.push(kind.code());
    body.extend_from_slice(&channel.to_be_bytes());
    body.extend_from_slice(payload);
    body
}

pub(crate) fn chain_hash(prev: &[u8; HASH_LEN], body: &[u8]) -> [u8; HASH_LEN] {
    let mut d = Sha256::new();
    d.update(prev);
    d.update(body);
    d.finalize().into()
}

/// Frames a body into the bytes appended to the file.
pub(crate) fn frame(body: &[u8], hash: &[u8; HASH_LEN]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut out = Vec::with_capacity(body.len() + HASH_LEN + 8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(hash);
    out.extend_from_slice(&len.to_be_bytes());
    out
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Streaming compression of record bodies: zstd frames, flushed at every record. A frame can be
/// ended with a record ([`Compressor::chunk`] with `end_frame`), which frees the compression
/// context until the next record starts a new frame: an idle session then holds no compressor.
pub(crate) struct Compressor(Option<zstd::stream::raw::Encoder<'static>>);

impl Compressor {
    pub(crate) fn new() -> Compressor {
        Compressor(None)
    }

    /// Whether a frame is open (a context is held).
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_some()
    }

    /// Level 1 with a 16 KiB window: terminal output repeats itself within a screen or two, and
    /// every active session holds one of these: 149 KiB, against 3.5 MiB for the level-3 defaults.
    fn encoder(&mut self) -> std::io::Result<&mut zstd::stream::raw::Encoder<'static>> {
        use zstd::stream::raw::CParameter;
        if self.0.is_none() {
            let mut e = zstd::stream::raw::Encoder::new(1)?;
            e.set_parameter(CParameter::WindowLog(14))?;
            e.set_parameter(CParameter::HashLog(12))?;
            self.0 = Some(e);
        }
        self.0
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no compressor"))
    }

    pub(crate) fn chunk(&mut self, body: &[u8], end_frame: bool) -> std::io::Result<Vec<u8>> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let enc = self.encoder()?;
        let mut out: Vec<u8> = Vec::with_capacity(body.len() / 2 + 64);
        let mut input = InBuffer::around(body);
        while input.pos() < body.len() {
            out.reserve(body.len() - input.pos() + 256);
            let len = out.len();
            let mut ob = OutBuffer::around_pos(&mut out, len);
            enc.run(&mut input, &mut ob)?;
        }
        loop {
            out.reserve(256);
            let len = out.len();
            let mut ob = OutBuffer::around_pos(&mut out, len);
            let left = if end_frame {
                enc.finish(&mut ob, true)?
            } else {
                enc.flush(&mut ob)?
            };
            if left == 0 {
                break;
            }
        }
        if end_frame {
            self.0 = None;
        }
        Ok(out)
    }
}

/// The reading side of [`Compressor`].
pub(crate) struct Decompressor(zstd::stream::raw::Decoder<'static>);

impl Decompressor {
    pub(crate) fn new() -> std::io::Result<Decompressor> {
        zstd::stream::raw::Decoder::new().map(Decompressor)
    }

    /// Decodes one chunk; `None` if it is undecodable or would exceed `limit` bytes.
    pub(crate) fn chunk(&mut self, chunk: &[u8], limit: usize) -> Option<Vec<u8>> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut out: Vec<u8> = Vec::with_capacity(limit.min(chunk.len() * 4 + 64) + 1);
        let mut input = InBuffer::around(chunk);
        loop {
            if out.len() > limit {
                return None;
            }
            if out.capacity() - out.len() < 1024 {
                out.reserve((out.capacity()).min(limit + 1 - out.len().min(limit)) + 1024);
            }
            let before = (input.pos(), out.len());
            {
                let len = out.len();
                let mut ob = OutBuffer::around_pos(&mut out, len);
                self.0.run(&mut input, &mut ob).ok()?;
            }
            if input.pos() == chunk.len() && (input.pos(), out.len()) == before {
                break;
            }
        }
        (out.len() <= limit).then_some(out)
    }
}
