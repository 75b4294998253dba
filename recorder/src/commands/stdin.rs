//! A channel without a terminal (`ssh -T host bash`, `ssh host sh < script`): its input is
//! logged line by line.

use super::{Decision, MAX_LINE, MAX_RAW_LINES, withheld};
use crate::asciicast::Utf8Stream;
use crate::keys::{escape_controls, is_secret_prompt};

/// A channel without a terminal: its input is taken line by line, as a shell reading stdin does.
#[derive(Default)]
pub(super) struct Stdin {
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
    pub(super) fn output(&mut self, bytes: &[u8]) {
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

    pub(super) fn input(&mut self, bytes: &[u8], at: i64) -> Vec<Decision> {
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

    pub(super) fn finish(&mut self) -> Vec<Decision> {
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
