//! Turning a recording into asciicast v2 (the asciinema format) and terminal events for replay.

use std::io::Write;

use serde::Serialize;

use crate::events::{Event, Resize};
use crate::format::{Kind, Record};
use crate::keys::{escape_controls, escape_keys};
use crate::reader::ReadError;

/// Decodes a byte stream split at arbitrary points into valid UTF-8, holding back a multi-byte
/// character cut across chunks and replacing bytes that can never be valid with U+FFFD.
#[derive(Default, Debug)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // from_utf8 just said `good` is valid.
                    out.push_str(&String::from_utf8_lossy(good));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad; // incomplete character at the end: wait for more
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Whatever is still held back, lossily (end of stream).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// One asciicast event: seconds since the start, code ("o", "i", "r", "m"), data.
#[derive(Debug, Clone, PartialEq)]
pub struct AsciicastEvent {
    pub time: f64,
    pub code: &'static str,
    pub data: String,
}

/// What a recording shows as a terminal.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminalEvents {
    pub width: u32,
    pub height: u32,
    /// Seconds since the epoch of the first record.
    pub timestamp: i64,
    pub events: Vec<AsciicastEvent>,
    /// Damage that stopped reading early; events before it are complete.
    pub problem: Option<ReadError>,
}

/// Collects terminal events from a recording's records: output, stderr, input and resizes.
pub fn terminal_events<I>(records: I, include_input: bool) -> TerminalEvents
where
    I: IntoIterator<Item = Result<Record, ReadError>>,
{
    let mut te = TerminalEvents {
        width: 80,
        height: 24,
        timestamp: 0,
        events: Vec::new(),
        problem: None,
    };
    let mut start: Option<i64> = None;
    let mut sized = false;
    let mut out = std::collections::HashMap::<(u32, bool), Utf8Stream>::new();
    for item in records {
        let r = match item {
            Ok(r) => r,
            Err(e) => {
                te.problem = Some(e);
                break;
            }
        };
        let t0 = *start.get_or_insert(r.time_us);
        let time = (r.time_us - t0).max(0) as f64 / 1e6;
        let (code, text) = match r.kind {
            Kind::Output | Kind::Stderr => (
                "o",
                out.entry((r.channel, false)).or_default().push(&r.payload),
            ),
            Kind::Input if include_input => (
                "i",
                out.entry((r.channel, true)).or_default().push(&r.payload),
            ),
            Kind::Resize => {
                let Ok(size) = r.payload::<Resize>() else {
                    continue;
                };
                let cols = size.cols.clamp(1, 10_000);
                let rows = size.rows.clamp(1, 10_000);
                if !sized {
                    // The first size is the header's; later ones are resize events.
                    te.width = cols;
                    te.height = rows;
                    sized = true;
                    continue;
                }
                ("r", format!("{cols}x{rows}"))
            }
            // A device web UI session has no terminal: its request log is what it shows.
            Kind::Event => match r.payload::<Event>().ok().and_then(|e| e.web_line()) {
                Some(line) => ("o", format!("{}\r\n", escape_controls(&line))),
                None => continue,
            },
            _ => continue,
        };
        if !text.is_empty() {
            te.events.push(AsciicastEvent {
                time,
                code,
                data: text,
            });
        }
    }
    te.timestamp = start.unwrap_or(0) / 1_000_000;
    te
}

/// One line of the vendor's keystrokes, for the input view: when its first key came, and the
/// keys escaped (see [`crate::escape_keys`]), Enter included as `\r`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyLine {
    /// Seconds since the session started.
    pub time: f64,
    pub keys: String,
}

/// Most keys shown for one line (a file piped to a command's stdin can be one long "line").
const MAX_KEY_LINE: usize = 4096;

fn key_line(time: f64, keys: &str) -> KeyLine {
    let n = keys.chars().count();
    let mut shown = escape_keys(&keys.chars().take(MAX_KEY_LINE).collect::<String>());
    if n > MAX_KEY_LINE {
        shown.push_str(&format!(" ... ({} more keys)", n - MAX_KEY_LINE));
    }
    KeyLine { time, keys: shown }
}

/// The input events (`"i"`) of a recording as lines of keystrokes, split after each Enter.
pub fn key_lines(events: &TerminalEvents) -> Vec<KeyLine> {
    let mut lines: Vec<KeyLine> = Vec::new();
    let mut cur: Option<(f64, String)> = None;
    for e in events.events.iter().filter(|e| e.code == "i") {
        for c in e.data.chars() {
            // "\r\n" from one Enter belongs to one line.
            if c == '\n'
                && cur.is_none()
                && let Some(last) = lines.last_mut()
                && last.keys.ends_with("\\r")
            {
                last.keys.push_str("\\n");
                continue;
            }
            let (_, keys) = cur.get_or_insert_with(|| (e.time, String::new()));
            keys.push(c);
            if (c == '\r' || c == '\n')
                && let Some((time, keys)) = cur.take()
            {
                lines.push(key_line(time, &keys));
            }
        }
    }
    if let Some((time, keys)) = cur {
        lines.push(key_line(time, &keys));
    }
    lines
}

/// Writes asciicast v2: a JSON header line, then one JSON array per event.
pub fn export_asciicast<W: Write>(te: &TerminalEvents, mut out: W) -> std::io::Result<()> {
    let header = serde_json::json!({
        "version": 2,
        "width": te.width,
        "height": te.height,
        "timestamp": te.timestamp,
        "env": {"TERM": "xterm-256color"},
    });
    writeln!(out, "{header}")?;
    for e in &te.events {
        let line = serde_json::json!([(e.time * 1e6).round() / 1e6, e.code, e.data]);
        writeln!(out, "{line}")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_held_back() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(s.push(&[b'a', euro[0]]), "a");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'b']), "€b");
    }

    #[test]
    fn input_is_exported_as_i_events_and_split_into_key_lines() {
        use crate::format::HASH_LEN;
        let rec = |seq: u64, kind, payload: &[u8]| {
            Ok(Record {
                seq,
                time_us: 1_000_000 + seq as i64 * 500_000,
                kind,
                channel: 0,
                payload: payload.to_vec(),
                hash: [0; HASH_LEN],
            })
        };
        let records = || {
            vec![
                rec(0, Kind::Output, b"$ "),
                rec(1, Kind::Input, b"ls -x\x7fl\r\n"),
                rec(2, Kind::Input, b"stty -echo\rid"),
                rec(3, Kind::Input, b"\r"),
            ]
        };
        assert!(
            terminal_events(records(), false)
                .events
                .iter()
                .all(|e| e.code == "o")
        );
        let te = terminal_events(records(), true);
        let mut cast = Vec::new();
        export_asciicast(&te, &mut cast).unwrap();
        let cast = String::from_utf8(cast).unwrap();
        let second: serde_json::Value = serde_json::from_str(cast.lines().nth(2).unwrap()).unwrap();
        assert_eq!(
            second,
            serde_json::json!([0.5, "i", "ls -x\u{7f}l\r\n"]),
            "{cast}"
        );
        let lines = key_lines(&te);
        let shown: Vec<(f64, &str)> = lines.iter().map(|l| (l.time, l.keys.as_str())).collect();
        assert_eq!(
            shown,
            vec![
                (0.5, "ls -x\\x7fl\\r\\n"),
                (1.0, "stty -echo\\r"),
                (1.0, "id\\r")
            ]
        );
    }

    #[test]
    fn a_long_key_line_is_cut_with_a_count() {
        let te = TerminalEvents {
            width: 80,
            height: 24,
            timestamp: 0,
            events: vec![AsciicastEvent {
                time: 1.0,
                code: "i",
                data: "y".repeat(MAX_KEY_LINE + 3),
            }],
            problem: None,
        };
        let lines = key_lines(&te);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].keys.ends_with("y ... (3 more keys)"));
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'x', 0xff, b'y']), "x\u{FFFD}y");
        assert_eq!(s.push(&[0xe2]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }
}
