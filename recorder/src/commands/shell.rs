//! A channel with a terminal: the device's output through a terminal emulator, the vendor's
//! keys as lines, each judged when the device ends the line (see the module above).

use std::collections::VecDeque;

use super::{Decision, MAX_LINE, MAX_WAITING, withheld};
use crate::asciicast::Utf8Stream;
use crate::keys::{escape_keys, is_secret_prompt, reconstruct_line};

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
    fn unseen(&self, shown: &str) -> Option<Decision> {
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

/// Per-channel terminal state.
pub(super) struct Shell {
    term: avt::Terminal,
    utf8: Utf8Stream,
    /// The line being typed (no Enter yet).
    typing: Option<Line>,
    /// Lines entered, in order, waiting for the device's echo or for a decision.
    waiting: VecDeque<Line>,
}

impl Shell {
    pub(super) fn new(cols: usize, rows: usize) -> Shell {
        let term = avt::Terminal::with_scrollback(cols.max(1), rows.max(1), Some(1000))
            .unwrap_or_else(|_| avt::Terminal::new(80, 24).expect("80x24 is a valid size"));
        Shell {
            term,
            utf8: Utf8Stream::default(),
            typing: None,
            waiting: VecDeque::new(),
        }
    }

    /// A window size change (the pty's, as the vendor's terminal resized).
    pub(super) fn resize(&mut self, cols: usize, rows: usize) {
        self.term.resize(cols, rows);
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

    /// One vendor key; gives a decision when too many lines wait and the oldest is settled.
    pub(super) fn key(&mut self, b: u8, at: i64) -> Option<Decision> {
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
    pub(super) fn output(&mut self, bytes: &[u8]) -> Vec<Decision> {
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
    pub(super) fn settle_ahead(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|l| l.start.is_none()) {
            if let Some(line) = self.waiting.pop_front() {
                out.extend(line.unseen(""));
            }
        }
        out
    }

    /// End of the recording: every line still waiting, as it stands.
    pub(super) fn finish(&mut self) -> Vec<Decision> {
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
