//! Postern's evidence plane.
//!
//! Everything an auditor relies on is written here as *records*: append-only, each carrying the
//! SHA-256 of the previous one, so that changing, dropping, reordering or truncating anything is
//! found by [`verify`] at the exact record. Two kinds of files use the same format:
//!
//! * a **recording** per session (terminal I/O with timing, exec lines, channel events), written by
//!   one [`Writer`] that buffers and is flushed at least every second by its owner;
//! * the **audit log**, appended to by several processes (the server, the CLI) through
//!   [`append_locked`], which takes an exclusive file lock and chains onto the last record.
//!
//! What each JSON record payload holds is [`events`]: the one schema the broker writes and the
//! readers here read.
//!
//! This crate depends on nothing else of Postern's: whoever holds a recording and its expected
//! final hash can check it.

#![forbid(unsafe_code)]

mod asciicast;
mod commands;
pub mod events;
mod format;
pub mod keyring;
mod keys;
mod reader;
mod screens;
mod seal;
mod writer;

pub use asciicast::{
    AsciicastEvent, KeyLine, TerminalEvents, Utf8Stream, export_asciicast, key_lines,
    terminal_events,
};
pub use commands::{CommandEntry, CommandLog, extract_commands};
pub use format::{GENESIS_DOMAIN, HASH_LEN, Kind, MAX_PAYLOAD, Record, genesis_hash};
pub use keys::{escape_controls, escape_keys, is_secret_prompt, reconstruct_line};
pub use reader::{ReadError, Reader, ResumePoint, Tail, VerifyReport, verify, verify_file};
pub use screens::{Screen, screens};
pub use seal::{
    CHECKPOINT_DOMAIN, KEY_PREFIX, Seal, SealError, SealKey, SealMeta, SealPublicKey, check_seal,
    seal_message, seal_message_v2,
};
pub use writer::{Appended, Writer, append_locked, append_locked_batch, last_record};

/// Errors raised while writing evidence.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("recording I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("record payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("existing file is damaged, refusing to append: {0}")]
    Damaged(String),
    #[error("the recording is sealed: nothing more is written to it")]
    Sealed,
}
