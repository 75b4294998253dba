//! The command log: what a vendor ran, as the device finally saw it, and every line they typed.
//!
//! Exec requests are logged exactly (`exec`). For terminals (a shell, or an exec with a pty such
//! as `ssh -t host bash`) the device's output is fed through a terminal emulator (avt); when the
//! vendor presses Enter, the command is the text of the screen line from where they started
//! typing (just after the prompt) to its end, once the device has echoed everything typed before
//! Enter (`shell`). Line editing, history recall and completion are therefore logged as the shell
//! showed them.
//!
//! A line the device did not show is still logged, from the keystrokes: typed with echo off
//! (`stty -echo`), sent in one burst, or typed ahead of the prompt. Its editing keys are replayed
//! through a readline model (`input`); when that is not possible (history, completion, unknown
//! keys) the raw keys are logged escaped (`unreconstructed`). Only a line typed at a prompt asking
//! for a secret (`Password:`, `[sudo] password for x:`, `Enter passphrase ...:`) is withheld: its
//! entry (`secret`) says where it was typed, the keys stay in the recording only. Input to a
//! channel without a terminal (`ssh -T host bash` fed from stdin, `ssh host sh < script`) is
//! logged line by line (`input`).
//!
//! Terminals are read in `shell.rs`, input without one in `stdin.rs`; entries a record states
//! outright (exec, transfer, forward) are made here.

mod shell;
mod stdin;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::Serialize;

use crate::events::{ChannelClose, Direction, Event, Exec, ForwardSummary, Resize, Transfer};
use crate::format::{Kind, Record};
use crate::keys::escape_controls;
use crate::reader::ReadError;
use shell::Shell;
use stdin::Stdin;

/// Most keystroke bytes kept for one line: a pasted blob must not grow the log without bound
/// (the recording holds all of it).
const MAX_LINE: usize = 4096;
/// Most input lines logged one by one per channel without a terminal (a file sent to a command's
/// stdin); the rest is summarised in one entry.
const MAX_RAW_LINES: usize = 1000;
/// Most lines entered at a terminal that wait for the device's echo at once.
const MAX_WAITING: usize = 256;

/// One command, with where it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandEntry {
    /// Microseconds since the epoch (when Enter was pressed, or the exec request).
    pub time_us: i64,
    /// Seconds since the recording's first record: where `replay --at` jumps to.
    pub offset: f64,
    pub channel: u32,
    /// `exec`, `shell`, `input`, `unreconstructed`, `secret`, `upload`, `download`, `forward`
    /// or `web` (a device web UI's request).
    pub kind: &'static str,
    pub command: String,
}

/// An entry as a channel's reader decides it: time, kind and text.
type Decision = (i64, &'static str, String);

fn withheld(prompt: &str) -> String {
    let p = prompt.trim();
    let tail: String = p
        .chars()
        .skip(p.chars().count().saturating_sub(60))
        .collect();
    format!("(typed at \"{tail}\": withheld here, kept in the recording)")
}

/// Extracts the command log of one recording.
#[derive(Default)]
pub struct CommandLog {
    shells: HashMap<u32, Shell>,
    stdins: HashMap<u32, Stdin>,
    /// Channels that asked for a pty, with its size.
    ptys: HashMap<u32, (usize, usize)>,
    start_us: Option<i64>,
    pub entries: Vec<CommandEntry>,
}

impl CommandLog {
    fn offset(&self, t: i64) -> f64 {
        (t - self.start_us.unwrap_or(t)).max(0) as f64 / 1e6
    }

    fn add(&mut self, channel: u32, decisions: Vec<Decision>) {
        for (time_us, kind, command) in decisions {
            let offset = self.offset(time_us);
            self.entries.push(CommandEntry {
                time_us,
                offset,
                channel,
                kind,
                command,
            });
        }
    }

    /// Logs an entry that a record states directly (exec, transfer, forward).
    fn log(&mut self, r: &Record, kind: &'static str, command: String) {
        self.add(r.channel, vec![(r.time_us, kind, command)]);
    }

    /// A shell or a command started on a channel: with a pty it is a terminal, else its stdin is
    /// read as lines.
    fn started(&mut self, channel: u32) {
        match self.ptys.get(&channel) {
            Some(&(cols, rows)) => {
                self.shells.insert(channel, Shell::new(cols, rows));
            }
            None => {
                self.stdins.insert(channel, Stdin::default());
            }
        }
    }

    /// Feeds one record.
    pub fn push(&mut self, r: &Record) {
        self.start_us.get_or_insert(r.time_us);
        match r.kind {
            Kind::Exec => self.exec(r),
            Kind::Resize => self.resize(r),
            Kind::Event => self.event(r),
            Kind::ChannelClose => self.close(r),
            Kind::Output | Kind::Stderr => self.output(r),
            Kind::Input => self.input(r),
            _ => {}
        }
    }

    fn exec(&mut self, r: &Record) {
        let Ok(exec) = r.payload::<Exec>() else {
            return;
        };
        self.log(r, "exec", escape_controls(&exec.command));
        // scp's stdin is file data, parsed as transfers elsewhere.
        if !exec.transfer {
            self.started(r.channel);
        }
    }

    fn resize(&mut self, r: &Record) {
        let Ok(size) = r.payload::<Resize>() else {
            return;
        };
        let cols = size.cols.clamp(1, 1000) as usize;
        let rows = size.rows.clamp(1, 1000) as usize;
        match self.shells.get_mut(&r.channel) {
            Some(sh) => sh.resize(cols, rows),
            // A pty request (it names the terminal type) makes the channel a terminal.
            None if size.term.is_some() => {
                self.ptys.insert(r.channel, (cols, rows));
            }
            None => {}
        }
    }

    fn event(&mut self, r: &Record) {
        match r.payload::<Event>() {
            Ok(Event::Shell) => self.started(r.channel),
            Ok(Event::Transfer(t)) => {
                let (kind, command) = transfer_entry(&t);
                self.log(r, kind, command);
            }
            // A device web UI's request log: searchable like commands.
            Ok(Event::WebRequest {
                method,
                path,
                query,
                status,
                ..
            }) => {
                let target = match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                let line = format!("{method} {target} -> {status}");
                self.log(r, "web", escape_controls(&line));
            }
            _ => {}
        }
    }

    /// A channel closed: input without a terminal ends, a port forward is logged.
    fn close(&mut self, r: &Record) {
        if let Some(mut s) = self.stdins.remove(&r.channel) {
            let d = s.finish();
            self.add(r.channel, d);
        }
        if let Ok(ChannelClose::Forward(f)) = r.payload::<ChannelClose>() {
            self.log(r, "forward", forward_entry(&f));
        }
    }

    fn output(&mut self, r: &Record) {
        if let Some(sh) = self.shells.get_mut(&r.channel) {
            let d = sh.output(&r.payload);
            self.add(r.channel, d);
        } else if let Some(s) = self.stdins.get_mut(&r.channel) {
            s.output(&r.payload);
        }
    }

    fn input(&mut self, r: &Record) {
        if let Some(sh) = self.shells.get_mut(&r.channel) {
            let mut d = sh.settle_ahead();
            d.extend(r.payload.iter().filter_map(|&b| sh.key(b, r.time_us)));
            self.add(r.channel, d);
        } else if let Some(s) = self.stdins.get_mut(&r.channel) {
            let d = s.input(&r.payload, r.time_us);
            self.add(r.channel, d);
        }
    }

    /// Whatever is still waiting at the end of the recording.
    pub fn finish(&mut self) {
        let mut shells: Vec<u32> = self.shells.keys().copied().collect();
        shells.sort_unstable();
        for ch in shells {
            if let Some(sh) = self.shells.get_mut(&ch) {
                let d = sh.finish();
                self.add(ch, d);
            }
        }
        let mut stdins: Vec<u32> = self.stdins.keys().copied().collect();
        stdins.sort_unstable();
        for ch in stdins {
            if let Some(s) = self.stdins.get_mut(&ch) {
                let d = s.finish();
                self.add(ch, d);
            }
        }
        self.stdins.clear();
        self.entries.sort_by_key(|e| e.time_us);
    }
}

/// File transfers are part of the log: direction, path, size and digest.
fn transfer_entry(t: &Transfer) -> (&'static str, String) {
    let kind = match t.direction {
        Direction::Upload => "upload",
        Direction::Download => "download",
    };
    let sha = t.sha256.as_deref().unwrap_or("unknown");
    let command = format!(
        "{} ({} bytes, sha256 {sha})",
        escape_controls(&t.path),
        t.size
    );
    (kind, command)
}

/// Port forwards: target, bytes each way, when.
fn forward_entry(f: &ForwardSummary) -> String {
    format!(
        "localhost:{} ({} bytes to the device, {} to the vendor, {} to {})",
        f.port, f.bytes_to_device, f.bytes_to_vendor, f.opened, f.closed
    )
}

/// The command log of a recording; stops at damage and reports it.
pub fn extract_commands<I>(records: I) -> (Vec<CommandEntry>, Option<ReadError>)
where
    I: IntoIterator<Item = Result<Record, ReadError>>,
{
    let mut log = CommandLog::default();
    let mut problem = None;
    for r in records {
        match r {
            Ok(r) => log.push(&r),
            Err(e) => {
                problem = Some(e);
                break;
            }
        }
    }
    log.finish();
    (log.entries, problem)
}
