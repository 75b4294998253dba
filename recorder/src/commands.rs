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

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::asciicast::Utf8Stream;
use crate::events::{ChannelClose, Direction, Event, Exec, Resize};
use crate::format::{Kind, Record};
use crate::keys::{escape_controls, escape_keys, is_secret_prompt, reconstruct_line};
use crate::reader::ReadError;

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
    /// `exec`, `shell`, `input`, `unreconstructed`, `secret`, `upload`, `download` or `forward`.
    pub kind: &'static str,
    pub command: String,
}

/// One line the vendor typed at a terminal, from its first key to Enter.
struct Line {
    keys: Vec<u8>,
    /// Bytes beyond [`MAX_LINE`], not kept here.
    cut: usize,
    enter_us: i64,
    /// Where typing began on the screen, when the shell was waiting for this line (not typed
    /// ahead while an earlier line still awaited its echo).
    start: Option<avt::Anchor>,
    /// The screen line left of the cursor when typing began.
    prompt: String,
    /// Whether anything stood on the line from `start` when Enter was pressed.
    shown_at_enter: bool,
    /// The line rebuilt from the keys, once Enter is pressed (see [`reconstruct_line`]).
    recon: Option<String>,
}

impl Line {
    fn keys(&self) -> String {
        String::from_utf8_lossy(&self.keys).into_owned()
    }

    fn reconstructed(&self) -> Option<String> {
        self.recon.clone()
    }

    /// The entry for a line the device did not show as typed: withheld at a secret prompt,
    /// reconstructed from the keys, or the keys themselves.
    fn unseen(&self, shown: &str) -> Option<(i64, &'static str, String)> {
        if is_secret_prompt(&self.prompt) {
            return Some((self.enter_us, "secret", withheld(&self.prompt)));
        }
        match self.reconstructed() {
            Some(r) if r.trim().is_empty() => None,
            Some(r) => Some((self.enter_us, "input", r)),
            None => {
                let mut text = escape_keys(&self.keys());
                if self.cut > 0 {
                    text.push_str(&format!(" ... ({} more bytes)", self.cut));
                }
                if !shown.is_empty() {
                    text.push_str(&format!(" (line shown: {shown})"));
                }
                Some((self.enter_us, "unreconstructed", text))
            }
        }
    }
}

fn withheld(prompt: &str) -> String {
    let p = prompt.trim();
    let tail: String = p
        .chars()
        .skip(p.chars().count().saturating_sub(60))
        .collect();
    format!("(typed at \"{tail}\": withheld here, kept in the recording)")
}

/// Per-channel terminal state.
struct Shell {
    term: avt::Terminal,
    utf8: Utf8Stream,
    /// The line being typed (no Enter yet).
    typing: Option<Line>,
    /// Lines entered, in order, waiting for the device's echo or for a decision.
    waiting: VecDeque<Line>,
}

type Decision = (i64, &'static str, String);

impl Shell {
    fn new(cols: usize, rows: usize) -> Shell {
        let term = avt::Terminal::with_scrollback(cols.max(1), rows.max(1), Some(1000))
            .unwrap_or_else(|_| avt::Terminal::new(80, 24).expect("80x24 is a valid size"));
        Shell {
            term,
            utf8: Utf8Stream::default(),
            typing: None,
            waiting: VecDeque::new(),
        }
    }

    /// The logical line from an anchor to the end of its (possibly wrapped) rows.
    fn text_from(&self, anchor: &avt::Anchor) -> Option<String> {
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

    /// What stands on the screen where the line was typed. Erasing the line (readline's Ctrl-U
    /// redraw) drops the anchor; then the cursor's row after the same prompt is the line.
    fn line_text(&self, line: &Line) -> Option<String> {
        let anchor = line.start.as_ref()?;
        if let Some(text) = self.text_from(anchor) {
            return Some(text);
        }
        if line.prompt.is_empty() {
            return None;
        }
        self.cursor_row()
            .strip_prefix(line.prompt.as_str())
            .map(|t| t.trim_end().to_owned())
    }

    /// The cursor's whole screen line.
    fn cursor_row(&self) -> String {
        let c = self.term.cursor();
        self.term
            .screen()
            .line(c.row)
            .map(|l| l.chars().collect())
            .unwrap_or_default()
    }

    /// The cursor's screen line, left of the cursor.
    fn before_cursor(&self) -> String {
        let c = self.term.cursor();
        self.term
            .screen()
            .line(c.row)
            .map(|l| l.chars().take(c.col).collect())
            .unwrap_or_default()
    }

    /// One vendor key.
    /// One vendor key; gives a decision when too many lines wait and the oldest is settled.
    fn key(&mut self, b: u8, at: i64) -> Option<Decision> {
        match b {
            // Enter, Ctrl-J, and Ctrl-O (readline runs the line and fetches the next one).
            b'\r' | b'\n' | 0x0f => {
                let mut line = self.typing.take()?;
                line.enter_us = at;
                line.shown_at_enter = self.line_text(&line).is_some_and(|t| !t.is_empty());
                if line.cut == 0 {
                    line.recon = reconstruct_line(&line.keys());
                }
                self.waiting.push_back(line);
                // A flood of lines the device never answers must not grow without bound.
                if self.waiting.len() > MAX_WAITING {
                    let oldest = self.waiting.pop_front()?;
                    return if oldest.start.is_some() {
                        self.judge_echoed(&oldest)
                    } else {
                        oldest.unseen("")
                    };
                }
            }
            // Ctrl-C abandons the line; Ctrl-D on an empty line ends input.
            0x03 => self.typing = None,
            0x04 if self.typing.as_ref().is_none_or(|l| l.keys.is_empty()) => self.typing = None,
            _ => {
                if self.typing.is_none() {
                    let ready = self.waiting.is_empty();
                    self.typing = Some(Line {
                        keys: Vec::new(),
                        cut: 0,
                        enter_us: at,
                        start: ready.then(|| self.term.anchor_at_cursor()),
                        prompt: if ready {
                            self.before_cursor()
                        } else {
                            String::new()
                        },
                        shown_at_enter: false,
                        recon: None,
                    });
                }
                if let Some(line) = self.typing.as_mut() {
                    if line.keys.len() < MAX_LINE {
                        line.keys.push(b);
                    } else {
                        line.cut += 1;
                    }
                }
            }
        }
        None
    }

    /// The device echoed the line end of a line typed at its prompt.
    fn judge_echoed(&self, line: &Line) -> Option<Decision> {
        let screen = self.line_text(line).unwrap_or_default();
        let recon = line.reconstructed();
        if line.shown_at_enter && !screen.is_empty() {
            // Shown as typed: the shell's view wins, unless every key was understood and the
            // screen says otherwise (typing began before the prompt was drawn).
            return Some(match recon {
                Some(r) if r != screen && !r.trim().is_empty() => (line.enter_us, "input", r),
                _ => (line.enter_us, "shell", screen),
            });
        }
        if !screen.is_empty() && recon.as_deref() == Some(screen.as_str()) {
            // Echoed only after Enter (a burst, a slow link).
            return Some((line.enter_us, "shell", screen));
        }
        line.unseen(&screen)
    }

    /// At a line end in the output, for a line typed ahead: the line ends with it (a prompt and
    /// its echo), or it is a secret prompt; otherwise undecided.
    fn judge_ahead(&self, line: &Line) -> Option<Decision> {
        let shown = self.cursor_row();
        let shown = shown.trim_end();
        if let Some(r) = line.reconstructed().filter(|r| !r.trim().is_empty())
            && shown.ends_with(r.as_str())
        {
            return Some((line.enter_us, "shell", r));
        }
        if is_secret_prompt(shown) {
            return Some((line.enter_us, "secret", withheld(shown)));
        }
        None
    }

    /// Device output: fed to the terminal, stopping at each line end to judge the line waiting.
    fn output(&mut self, bytes: &[u8]) -> Vec<Decision> {
        let text = self.utf8.push(bytes);
        let mut rest = text.as_str();
        let mut out = Vec::new();
        while !rest.is_empty() {
            // The line end is a newline: a bare carriage return is the shell redrawing the line
            // (readline after Ctrl-U, or a history search).
            let (Some(head), Some(i)) = (self.waiting.front(), rest.find('\n')) else {
                self.term.feed(rest);
                break;
            };
            self.term.feed(&rest[..i]);
            let decided = if head.start.is_some() {
                Some(self.judge_echoed(head))
            } else {
                self.judge_ahead(head).map(Some)
            };
            if let Some(d) = decided {
                out.extend(d);
                self.waiting.pop_front();
            }
            self.term.feed(&rest[i..i + 1]);
            rest = &rest[i + 1..];
        }
        out
    }

    /// Lines typed ahead that no output showed by the time the vendor types again.
    fn settle_ahead(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|l| l.start.is_none()) {
            if let Some(line) = self.waiting.pop_front() {
                out.extend(line.unseen(""));
            }
        }
        out
    }

    /// End of the recording: every line still waiting, as it stands.
    fn finish(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while let Some(line) = self.waiting.pop_front() {
            out.extend(if line.start.is_some() {
                self.judge_echoed(&line)
            } else {
                line.unseen("")
            });
        }
        out
    }
}

/// A channel without a terminal: its input is taken line by line, as a shell reading stdin does.
#[derive(Default)]
struct Stdin {
    line: Vec<u8>,
    cut: usize,
    /// When the line's last byte came (a line is logged at its end, as Enter is).
    last_us: i64,
    logged: usize,
    /// Lines past [`MAX_RAW_LINES`]: count, bytes, time of the first.
    unlisted: (usize, usize, Option<i64>),
    /// The last line of output so far, unfinished: a prompt such as `sudo -S` prints.
    prompt: String,
    utf8: Utf8Stream,
}

impl Stdin {
    fn output(&mut self, bytes: &[u8]) {
        let text = self.utf8.push(bytes);
        match text.rfind(['\n', '\r']) {
            Some(i) => self.prompt = text[i + 1..].to_owned(),
            None => self.prompt.push_str(&text),
        }
        if self.prompt.len() > 512 {
            let cut = self.prompt.len() - 256;
            let at = (cut..self.prompt.len())
                .find(|i| self.prompt.is_char_boundary(*i))
                .unwrap_or(self.prompt.len());
            self.prompt.drain(..at);
        }
    }

    fn input(&mut self, bytes: &[u8], at: i64) -> Vec<Decision> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.extend(self.end_line(at));
                continue;
            }
            self.last_us = at;
            if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.cut += 1;
            }
        }
        out
    }

    fn end_line(&mut self, at: i64) -> Option<Decision> {
        let raw = std::mem::take(&mut self.line);
        let cut = std::mem::take(&mut self.cut);
        let text = String::from_utf8_lossy(&raw);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        if text.trim().is_empty() && cut == 0 {
            return None;
        }
        if is_secret_prompt(&self.prompt) {
            let prompt = std::mem::take(&mut self.prompt);
            return Some((at, "secret", withheld(&prompt)));
        }
        if self.logged >= MAX_RAW_LINES {
            let u = &mut self.unlisted;
            u.0 += 1;
            u.1 += raw.len() + cut;
            u.2.get_or_insert(at);
            return None;
        }
        self.logged += 1;
        let mut command = escape_controls(text);
        if cut > 0 {
            command.push_str(&format!(" ... ({cut} more bytes)"));
        }
        Some((at, "input", command))
    }

    fn finish(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        // A last line without a newline is still read by a shell at end of input.
        if !self.line.is_empty() || self.cut > 0 {
            out.extend(self.end_line(self.last_us));
        }
        if let (n, bytes, Some(t)) = self.unlisted
            && n > 0
        {
            out.push((
                t,
                "input",
                format!("({n} more input lines, {bytes} bytes, not listed: see the recording)"),
            ));
        }
        out
    }
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
            Kind::Exec => {
                let Ok(exec) = r.payload::<Exec>() else {
                    return;
                };
                self.log(r, "exec", escape_controls(&exec.command));
                // scp's stdin is file data, parsed as transfers elsewhere.
                if !exec.transfer {
                    self.started(r.channel);
                }
            }
            Kind::Resize => {
                if let Ok(size) = r.payload::<Resize>() {
                    let cols = size.cols.clamp(1, 1000) as usize;
                    let rows = size.rows.clamp(1, 1000) as usize;
                    match self.shells.get_mut(&r.channel) {
                        Some(sh) => sh.term.resize(cols, rows),
                        // A pty request (it names the terminal type) makes the channel a terminal.
                        None if size.term.is_some() => {
                            self.ptys.insert(r.channel, (cols, rows));
                        }
                        None => {}
                    }
                }
            }
            Kind::Event => match r.payload::<Event>() {
                Ok(Event::Shell) => self.started(r.channel),
                // File transfers are part of the log: direction, path, size and digest.
                Ok(Event::Transfer(t)) => {
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
                    self.log(r, kind, command);
                }
                _ => {}
            },
            Kind::ChannelClose => {
                if let Some(mut s) = self.stdins.remove(&r.channel) {
                    let d = s.finish();
                    self.add(r.channel, d);
                }
                // Port forwards: target, bytes each way, when.
                let Ok(ChannelClose::Forward(f)) = r.payload::<ChannelClose>() else {
                    return;
                };
                let command = format!(
                    "localhost:{} ({} bytes to the device, {} to the vendor, {} to {})",
                    f.port, f.bytes_to_device, f.bytes_to_vendor, f.opened, f.closed
                );
                self.log(r, "forward", command);
            }
            Kind::Output | Kind::Stderr => {
                if let Some(sh) = self.shells.get_mut(&r.channel) {
                    let d = sh.output(&r.payload);
                    self.add(r.channel, d);
                } else if let Some(s) = self.stdins.get_mut(&r.channel) {
                    s.output(&r.payload);
                }
            }
            Kind::Input => {
                if let Some(sh) = self.shells.get_mut(&r.channel) {
                    let mut d = sh.settle_ahead();
                    d.extend(r.payload.iter().filter_map(|&b| sh.key(b, r.time_us)));
                    self.add(r.channel, d);
                } else if let Some(s) = self.stdins.get_mut(&r.channel) {
                    let d = s.input(&r.payload, r.time_us);
                    self.add(r.channel, d);
                }
            }
            _ => {}
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
            rec(0, Kind::Resize, br#"{"cols":80,"rows":24,"term":"xterm"}"#),
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

    fn kinds(log: &[CommandEntry]) -> Vec<(&str, &str)> {
        log.iter().map(|e| (e.kind, e.command.as_str())).collect()
    }

    #[test]
    fn a_password_at_a_no_echo_prompt_is_withheld() {
        let log = session(&[
            (false, "Password: "),
            (true, "hunter2\r"),
            (false, "\r\n"),
            (false, "dev:~$ "),
            (true, "id\r"),
            (false, "id\r\nuid=0\r\n"),
        ]);
        assert_eq!(
            kinds(&log),
            vec![
                (
                    "secret",
                    "(typed at \"Password:\": withheld here, kept in the recording)"
                ),
                ("shell", "id")
            ]
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
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].kind, "secret");
        assert!(!log[0].command.contains("hunter2"));
    }

    #[test]
    fn echo_off_at_a_shell_is_logged_as_input() {
        let log = session(&[
            (false, "dev:~$ "),
            (true, "stty -echo\r"),
            (false, "stty -echo\r\ndev:~$ "),
            (true, "cat /etc/shad"),
            (true, "ow\r"),
            (false, "root:x:0\r\ndev:~$ "),
            (true, "ls -x\x7fl\r"),
            (false, "\r\nfile1\r\ndev:~$ "),
        ]);
        assert_eq!(
            kinds(&log),
            vec![
                ("shell", "stty -echo"),
                ("input", "cat /etc/shadow"),
                ("input", "ls -l")
            ]
        );
    }

    #[test]
    fn a_burst_with_editing_keys_is_reconstructed() {
        // The whole line, edits and Enter arrive in one packet; readline echoes it afterwards.
        let log = session(&[
            (false, "$ "),
            (true, "ls -x\x7fl\r"),
            (false, "ls -x\x08\x1b[Kl\r\nfile1\r\n$ "),
            (true, "rm -rf /tmp/x\x15id -u\r"),
            (
                false,
                "rm -rf /tmp/x\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x1b[Kid -u\r\n0\r\n$ ",
            ),
        ]);
        assert_eq!(kinds(&log), vec![("shell", "ls -l"), ("shell", "id -u")]);
        // Bash redraws a killed line from the start of the row: a carriage return is no line end.
        let log = session(&[
            (false, "root@vm:~# "),
            (true, "echo never-run\x15echo killed\r"),
            (
                false,
                "echo never-run\rroot@vm:~# \x1b[Kecho killed\r\n\x1b[?2004l\rkilled\r\n",
            ),
        ]);
        assert_eq!(kinds(&log), vec![("shell", "echo killed")]);
        // The same with echo off: rebuilt from the keys.
        let log = session(&[
            (false, "$ "),
            (true, "cat /etc/shadow\x17passwd\x1b[D\x1b[D\x1b[3~\r"),
            (false, "root:x:0\r\n$ "),
        ]);
        assert_eq!(kinds(&log), vec![("input", "cat passd")]);
    }

    #[test]
    fn keys_that_cannot_be_replayed_are_logged_raw() {
        let log = session(&[
            (false, "$ "),
            (true, "\x1b[A\r"),
            (false, "uid=0\r\n$ "),
            (true, "cat /etc/pas\t\r"),
            (false, "ls -la\r\ntotal 0\r\n$ "),
        ]);
        assert_eq!(
            kinds(&log),
            vec![
                ("unreconstructed", "\\e[A (line shown: uid=0)"),
                ("unreconstructed", "cat /etc/pas\\t (line shown: ls -la)")
            ]
        );
    }

    #[test]
    fn lines_typed_ahead_are_each_logged() {
        let log = session(&[
            (false, "$ "),
            (true, "echo one\recho two\x0fsudo id\rhunter2\r"),
            (
                false,
                "echo one\r\none\r\n$ echo two\r\ntwo\r\n$ sudo id\r\n",
            ),
            (false, "[sudo] password for ed: \r\nuid=0\r\n$ "),
        ]);
        assert_eq!(
            kinds(&log),
            vec![
                ("shell", "echo one"),
                ("shell", "echo two"),
                ("shell", "sudo id"),
                (
                    "secret",
                    "(typed at \"[sudo] password for ed:\": withheld here, kept in the recording)"
                )
            ]
        );
        // With echo off nothing shows them: they come from the keys.
        let log = session(&[
            (false, "$ "),
            (true, "stty -echo\r"),
            (false, "stty -echo\r\n$ "),
            (true, "echo one\recho two\r"),
            (false, "one\r\n$ two\r\n$ "),
        ]);
        assert_eq!(
            kinds(&log),
            vec![
                ("shell", "stty -echo"),
                ("input", "echo one"),
                ("input", "echo two")
            ]
        );
    }

    fn chan(seq: u64, kind: Kind, channel: u32, payload: &[u8]) -> Record {
        Record {
            channel,
            ..rec(seq, kind, payload)
        }
    }

    #[test]
    fn input_without_a_terminal_is_logged_line_by_line() {
        let log = extract_commands(
            vec![
                // `ssh -T host` (a shell without a pty) and `ssh -T host bash` (an exec).
                chan(0, Kind::Event, 1, br#"{"event":"shell"}"#),
                chan(1, Kind::Input, 1, b"id\nuname"),
                chan(2, Kind::Input, 1, b" -a\r\n\n\tprintf '\\e'\n"),
                chan(3, Kind::Exec, 2, br#"{"command":"bash","transfer":false}"#),
                chan(4, Kind::Input, 2, b"echo last-without-newline"),
                chan(5, Kind::ChannelClose, 1, br#"{"bytes_in":1}"#),
                // scp's stdin is file data, not lines.
                chan(
                    6,
                    Kind::Exec,
                    3,
                    br#"{"command":"scp -t /tmp","transfer":true}"#,
                ),
                chan(7, Kind::Input, 3, b"C0644 3 x\n"),
            ]
            .into_iter()
            .map(Ok),
        )
        .0;
        assert_eq!(
            kinds(&log),
            vec![
                ("input", "id"),
                ("input", "uname -a"),
                ("input", "\\tprintf '\\e'"),
                ("exec", "bash"),
                ("input", "echo last-without-newline"),
                ("exec", "scp -t /tmp"),
            ]
        );
        assert_eq!(log[1].time_us, 2000);
        assert!((log[1].offset - 0.002).abs() < 1e-9, "{:?}", log[1]);
    }

    #[test]
    fn a_password_asked_for_without_a_terminal_is_withheld() {
        let log = extract_commands(
            vec![
                chan(
                    0,
                    Kind::Exec,
                    1,
                    br#"{"command":"sudo -S id","transfer":false}"#,
                ),
                chan(1, Kind::Stderr, 1, b"[sudo] password for ed: "),
                chan(2, Kind::Input, 1, b"hunter2\n"),
                chan(3, Kind::Output, 1, b"uid=0(root)\n"),
                chan(4, Kind::Input, 1, b"more\n"),
            ]
            .into_iter()
            .map(Ok),
        )
        .0;
        assert_eq!(
            kinds(&log),
            vec![
                ("exec", "sudo -S id"),
                (
                    "secret",
                    "(typed at \"[sudo] password for ed:\": withheld here, kept in the recording)"
                ),
                ("input", "more")
            ]
        );
    }

    #[test]
    fn an_exec_with_a_pty_is_a_terminal() {
        let log = extract_commands(
            vec![
                rec(0, Kind::Resize, br#"{"cols":80,"rows":24,"term":"xterm"}"#),
                rec(1, Kind::Exec, br#"{"command":"bash","transfer":false}"#),
                rec(2, Kind::Output, b"$ "),
                rec(3, Kind::Input, b"id\r"),
                rec(4, Kind::Output, b"id\r\nuid=0\r\n$ "),
            ]
            .into_iter()
            .map(Ok),
        )
        .0;
        assert_eq!(kinds(&log), vec![("exec", "bash"), ("shell", "id")]);
    }

    #[test]
    fn floods_of_input_are_summarised_not_dropped() {
        let mut recs = vec![rec(0, Kind::Event, br#"{"event":"shell"}"#)];
        let blob: Vec<u8> = (0..MAX_RAW_LINES + 5)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        recs.push(rec(1, Kind::Input, &blob));
        recs.push(chan(2, Kind::Event, 5, br#"{"event":"shell"}"#));
        let long = vec![b'x'; MAX_LINE + 10];
        recs.push(chan(3, Kind::Input, 5, &long));
        let log = extract_commands(recs.into_iter().map(Ok)).0;
        assert_eq!(log.len(), MAX_RAW_LINES + 2);
        assert!(
            log.iter()
                .any(|e| e.command.ends_with("x ... (10 more bytes)"))
        );
        assert!(
            log.iter()
                .any(|e| e.command.starts_with("(5 more input lines")),
            "{:?}",
            log.last()
        );
    }

    #[test]
    fn lines_the_device_never_answers_are_logged_in_bounded_memory() {
        let burst: String = (0..MAX_WAITING + 50)
            .map(|i| format!("echo {i}\r"))
            .collect();
        let log = session(&[(false, "$ "), (true, &burst)]);
        assert_eq!(log.len(), MAX_WAITING + 50);
        assert_eq!(log[0].command, "echo 0");
        assert_eq!(
            log.last().unwrap().command,
            format!("echo {}", MAX_WAITING + 49)
        );
        assert!(log.iter().all(|e| e.kind == "input"));
    }

    #[test]
    fn arbitrary_keys_and_output_never_panic() {
        // A small LCG: the same noise every run, biased towards control and escape bytes.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        };
        let mut recs = vec![
            chan(0, Kind::Resize, 1, br#"{"cols":5,"rows":2,"term":"xterm"}"#),
            chan(1, Kind::Event, 1, br#"{"event":"shell"}"#),
            chan(2, Kind::Event, 2, br#"{"event":"shell"}"#),
        ];
        let alphabet = b"\r\n\x1b[~ODCABH\x7f\x08\x15\x17\x03\x04\tab :$#";
        for i in 0..3000u64 {
            let len = usize::from(next() % 40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => next(),
                    _ => alphabet[usize::from(next()) % alphabet.len()],
                })
                .collect();
            let kind = if next() % 2 == 0 {
                Kind::Input
            } else {
                Kind::Output
            };
            recs.push(chan(i + 3, kind, 1 + u32::from(next() % 2), &bytes));
            if next() % 200 == 0 {
                recs.push(chan(i + 3, Kind::Resize, 1, br#"{"cols":3,"rows":1}"#));
            }
        }
        let (log, _) = extract_commands(recs.into_iter().map(Ok));
        assert!(log.windows(2).all(|w| w[0].time_us <= w[1].time_us));
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
