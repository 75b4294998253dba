//! The command log: what a vendor ran, as the device finally saw it.
//!
//! Exec requests are logged exactly. For interactive shells the device's output is fed through a
//! terminal emulator (avt); when the vendor presses Enter, the command is the text of the screen
//! line from where they started typing (just after the prompt) to its end, once the device has
//! echoed everything typed before Enter. Line editing, history recall and completion are
//! therefore logged as the shell showed them, not as raw keystrokes. Keystrokes the device never
//! echoed (a password at a no-echo prompt) are not logged. Known limit: a line typed ahead, before
//! the shell has drawn its prompt, has no echo where typing began and is not logged either (the
//! recording still holds the keystrokes and the output).

use serde::Serialize;

use crate::asciicast::Utf8Stream;
use crate::format::{Kind, Record};
use crate::reader::ReadError;

/// One command, with where it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandEntry {
    /// Microseconds since the epoch (when Enter was pressed, or the exec request).
    pub time_us: i64,
    /// Seconds since the recording's first record: where `replay --at` jumps to.
    pub offset: f64,
    pub channel: u32,
    /// `exec`, `shell`, `upload`, `download` or `forward`.
    pub kind: &'static str,
    pub command: String,
}

/// Per-channel terminal state.
struct Shell {
    term: avt::Terminal,
    utf8: Utf8Stream,
    /// Where the current command starts (just after the prompt), set at the first keystroke.
    start: Option<avt::Anchor>,
    /// Enter was pressed; the command is taken when the device echoes the line end.
    pending: Option<i64>,
    /// Printable keys typed since `start`, and whether the line was still empty at Enter: then it
    /// is a command only if the line later shows exactly what was typed (an echo that lagged),
    /// not output printed after a no-echo prompt.
    typed: String,
    empty_at_enter: bool,
}

impl Shell {
    fn new(cols: usize, rows: usize) -> Shell {
        let term = avt::Terminal::with_scrollback(cols.max(1), rows.max(1), Some(1000))
            .unwrap_or_else(|_| avt::Terminal::new(80, 24).expect("80x24 is a valid size"));
        Shell {
            term,
            utf8: Utf8Stream::default(),
            start: None,
            pending: None,
            typed: String::new(),
            empty_at_enter: false,
        }
    }

    /// The logical line from the start anchor to the end of its (possibly wrapped) rows.
    fn command_text(&self) -> Option<String> {
        let anchor = self.start.as_ref()?;
        let pos = self.term.resolve(anchor)?;
        let screen = self.term.screen();
        let mut row = usize::try_from(pos.row).ok()?;
        let mut text = String::new();
        let mut col = pos.col;
        while let Some(line) = screen.line(row) {
            let chars: Vec<char> = line.chars().collect();
            text.extend(chars.iter().skip(col));
            if !line.is_wrapped() {
                break;
            }
            row += 1;
            col = 0;
        }
        Some(text.trim_end().to_owned())
    }
}

/// Extracts the command log of one recording.
pub struct CommandLog {
    shells: std::collections::HashMap<u32, Shell>,
    size: (usize, usize),
    start_us: Option<i64>,
    pub entries: Vec<CommandEntry>,
}

impl Default for CommandLog {
    fn default() -> Self {
        CommandLog {
            shells: Default::default(),
            size: (80, 24),
            start_us: None,
            entries: Vec::new(),
        }
    }
}

impl CommandLog {
    fn offset(&self, t: i64) -> f64 {
        (t - self.start_us.unwrap_or(t)).max(0) as f64 / 1e6
    }

    fn take(&mut self, ch: u32, at: i64) {
        let offset = self.offset(at);
        let Some(sh) = self.shells.get_mut(&ch) else {
            return;
        };
        let mut text = sh.command_text();
        if sh.empty_at_enter && text.as_deref() != Some(sh.typed.as_str()) {
            text = None;
        }
        sh.start = None;
        sh.pending = None;
        sh.typed.clear();
        // Typed but nothing appeared on the line (a no-echo prompt, e.g. a password): not logged.
        if let Some(cmd) = text.filter(|c| !c.is_empty()) {
            self.entries.push(CommandEntry {
                time_us: at,
                offset,
                channel: ch,
                kind: "shell",
                command: cmd,
            });
        }
    }

    /// Logs an entry that a record states directly (exec, transfer, forward).
    fn log(&mut self, r: &Record, kind: &'static str, command: String) {
        let offset = self.offset(r.time_us);
        self.entries.push(CommandEntry {
            time_us: r.time_us,
            offset,
            channel: r.channel,
            kind,
            command,
        });
    }

    /// Feeds one record.
    pub fn push(&mut self, r: &Record) {
        self.start_us.get_or_insert(r.time_us);
        match r.kind {
            Kind::Exec => {
                if let Some(cmd) = r
                    .json()
                    .and_then(|v| v["command"].as_str().map(str::to_owned))
                {
                    self.log(r, "exec", cmd);
                }
            }
            Kind::Resize => {
                if let Some(v) = r.json() {
                    let cols = v["cols"].as_u64().unwrap_or(80).clamp(1, 1000) as usize;
                    let rows = v["rows"].as_u64().unwrap_or(24).clamp(1, 1000) as usize;
                    match self.shells.get_mut(&r.channel) {
                        Some(sh) => sh.term.resize(cols, rows),
                        None => self.size = (cols, rows),
                    }
                }
            }
            Kind::Event => {
                let Some(v) = r.json() else { return };
                if v["event"] == "shell" {
                    let (c, rows) = self.size;
                    self.shells.insert(r.channel, Shell::new(c, rows));
                } else if v["event"] == "transfer" {
                    // File transfers are part of the log: direction, path, size and digest.
                    let kind = if v["direction"] == "upload" {
                        "upload"
                    } else {
                        "download"
                    };
                    let sha = v["sha256"].as_str().unwrap_or("unknown");
                    let command = format!(
                        "{} ({} bytes, sha256 {sha})",
                        v["path"].as_str().unwrap_or("?"),
                        v["size"].as_u64().unwrap_or(0)
                    );
                    self.log(r, kind, command);
                }
            }
            Kind::ChannelClose => {
                // Port forwards: target, bytes each way, when.
                let Some(v) = r.json().filter(|v| v["type"] == "direct-tcpip") else {
                    return;
                };
                let command = format!(
                    "localhost:{} ({} bytes to the device, {} to the vendor, {} to {})",
                    v["port"].as_u64().unwrap_or(0),
                    v["bytes_to_device"].as_u64().unwrap_or(0),
                    v["bytes_to_vendor"].as_u64().unwrap_or(0),
                    v["opened"].as_str().unwrap_or("?"),
                    v["closed"].as_str().unwrap_or("?")
                );
                self.log(r, "forward", command);
            }
            Kind::Output | Kind::Stderr => {
                let Some(sh) = self.shells.get_mut(&r.channel) else {
                    return;
                };
                let text = sh.utf8.push(&r.payload);
                match sh.pending {
                    // Feed up to the echoed line end, take the command, then the rest.
                    Some(at) => match text.find(['\r', '\n']) {
                        Some(i) => {
                            sh.term.feed(&text[..i]);
                            self.take(r.channel, at);
                            if let Some(sh) = self.shells.get_mut(&r.channel) {
                                sh.term.feed(&text[i..]);
                            }
                        }
                        None => sh.term.feed(text.as_str()),
                    },
                    None => sh.term.feed(text.as_str()),
                }
            }
            Kind::Input => {
                let Some(sh) = self.shells.get_mut(&r.channel) else {
                    return;
                };
                for &b in &r.payload {
                    match b {
                        b'\r' | b'\n' => {
                            if sh.start.is_some() && sh.pending.is_none() {
                                sh.pending = Some(r.time_us);
                                sh.empty_at_enter = sh.command_text().is_none_or(|t| t.is_empty());
                            }
                        }
                        // Ctrl-C or Ctrl-D abandon the line.
                        0x03 | 0x04 => {
                            sh.start = None;
                            sh.pending = None;
                        }
                        _ => {
                            if sh.start.is_none() && sh.pending.is_none() {
                                sh.start = Some(sh.term.anchor_at_cursor());
                                sh.typed.clear();
                            }
                            if (0x20..0x7f).contains(&b) {
                                sh.typed.push(b as char);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Whatever Enter is still waiting for its echo at the end of the recording.
    pub fn finish(&mut self) {
        let pending: Vec<(u32, i64)> = self
            .shells
            .iter()
            .filter_map(|(c, s)| s.pending.map(|t| (*c, t)))
            .collect();
        for (ch, at) in pending {
            self.take(ch, at);
        }
        self.entries.sort_by_key(|e| e.time_us);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::HASH_LEN;

    fn rec(seq: u64, kind: Kind, payload: &[u8]) -> Record {
        Record {
            seq,
            time_us: seq as i64 * 1000,
            kind,
            channel: 0,
            payload: payload.to_vec(),
            hash: [0; HASH_LEN],
        }
    }

    /// A shell session as (input?, bytes) steps, the way readline echoes.
    fn session(steps: &[(bool, &str)]) -> Vec<CommandEntry> {
        let mut recs = vec![
            rec(0, Kind::Resize, br#"{"cols":80,"rows":24}"#),
            rec(1, Kind::Event, br#"{"event":"shell"}"#),
        ];
        for (i, (input, bytes)) in steps.iter().enumerate() {
            recs.push(rec(
                i as u64 + 2,
                if *input { Kind::Input } else { Kind::Output },
                bytes.as_bytes(),
            ));
        }
        extract_commands(recs.into_iter().map(Ok)).0
    }

    #[test]
    fn backspace_and_cursor_moves_give_the_final_line() {
        let log = session(&[
            (false, "dev:~$ "),
            (true, "ls -x"),
            (false, "ls -x"),
            (true, "\x7f"),
            (false, "\x08\x1b[K"),
            (true, "l"),
            (false, "l"),
            (true, "\x1b[D\x1b[D\x1b[D"),
            (false, "\x08\x08\x08"),
            (true, "a"),
            (false, "\x1b[1@a"),
            (true, "\r"),
            (false, "\r\nfile1\r\ndev:~$ "),
        ]);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].command, "lsa -l");
        assert_eq!(log[0].kind, "shell");
    }

    #[test]
    fn nothing_echoed_is_not_a_command() {
        let log = session(&[
            (false, "Password: "),
            (true, "hunter2\r"),
            (false, "\r\n"),
            (false, "dev:~$ "),
            (true, "id\r"),
            (false, "id\r\nuid=0\r\n"),
        ]);
        assert_eq!(
            log.iter().map(|e| e.command.as_str()).collect::<Vec<_>>(),
            vec!["id"]
        );
    }

    #[test]
    fn output_after_a_no_echo_prompt_is_not_a_command() {
        // `read -s` hides the typed secret and the line end; the next output lands on that line.
        let log = session(&[
            (false, "password: "),
            (true, "hunter2\r"),
            (false, "got-7\r\n$ "),
        ]);
        assert!(log.is_empty(), "{log:?}");
    }

    #[test]
    fn echo_arriving_after_enter_is_waited_for() {
        let log = session(&[
            (false, "$ "),
            (true, "uptime\r"),
            (false, "upt"),
            (false, "ime\r\n 10:00 up\r\n$ "),
        ]);
        assert_eq!(log[0].command, "uptime");
    }

    #[test]
    fn exec_lines_are_logged_exactly() {
        let log = extract_commands(vec![Ok(rec(
            0,
            Kind::Exec,
            br#"{"command":"cat /etc/os-release | head -1"}"#,
        ))])
        .0;
        assert_eq!(
            (log[0].kind, log[0].command.as_str()),
            ("exec", "cat /etc/os-release | head -1")
        );
    }
}
