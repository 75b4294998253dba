//! The vendor's keystrokes, as evidence: shown escaped (so they cannot act on an auditor's
//! terminal or page) and, where the keys allow, turned back into the line they typed.

/// Shows keystrokes as readable text: printable characters as they are, `\r` Enter, `\t` Tab,
/// `\e` Escape (so `\e[D` is the left arrow), `\x7f` Backspace and `\xNN` for other control
/// characters; a literal backslash is `\\`.
pub fn escape_keys(keys: &str) -> String {
    escape(keys, true)
}

/// Text for the command log: control characters escaped as in [`escape_keys`] (they would act on
/// whoever reads the log, and some databases refuse them), backslashes as typed.
pub fn escape_controls(text: &str) -> String {
    escape(text, false)
}

fn escape(keys: &str, backslash: bool) -> String {
    let mut out = String::with_capacity(keys.len());
    for c in keys.chars() {
        match c {
            '\\' if backslash => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\x1b' => out.push_str("\\e"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // C1 controls and other invisible format characters could still steer a terminal.
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// The line a readline-style editor holds after `keys` (everything typed before Enter), or
/// `None` when some key's effect depends on what the recording does not hold: history recall,
/// completion, word motion, yank, or a key this model does not know.
pub fn reconstruct_line(keys: &str) -> Option<String> {
    let mut editor = Editor::default();
    let mut keys = keys.chars();
    while let Some(c) = keys.next() {
        editor.apply(edit_for(c, &mut keys)?);
    }
    Some(editor.line.into_iter().collect())
}

/// What one key does to the line in the readline model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Insert(char),
    Home,
    End,
    Left,
    Right,
    /// Backspace: the character before the cursor.
    DeleteBack,
    /// Delete (and Ctrl-D on a non-empty line): the character under the cursor.
    DeleteHere,
    KillToEnd,
    KillToStart,
    /// unix-word-rubout: blanks before the cursor, then the word.
    RuboutWord,
    /// Redraws (Ctrl-L) and bracketed paste markers: the line is unchanged.
    Nothing,
}

/// The edit for key `c`, reading the rest of an escape sequence from `rest`; `None` for a key
/// whose effect the model cannot know.
fn edit_for(c: char, rest: &mut impl Iterator<Item = char>) -> Option<Edit> {
    Some(match c {
        '\x01' => Edit::Home,
        '\x05' => Edit::End,
        '\x02' => Edit::Left,
        '\x06' => Edit::Right,
        '\x08' | '\x7f' => Edit::DeleteBack,
        // Ctrl-D on an empty line is EOF, which the caller handles.
        '\x04' => Edit::DeleteHere,
        '\x0b' => Edit::KillToEnd,
        '\x15' => Edit::KillToStart,
        '\x17' => Edit::RuboutWord,
        '\x0c' => Edit::Nothing,
        '\x1b' => return escape_edit(rest),
        c if c.is_control() => return None,
        c => Edit::Insert(c),
    })
}

/// The edit for an escape sequence (after its `ESC`): CSI (`ESC [ params final`) or SS3
/// (`ESC O final`) cursor keys, Home, End, Delete and paste markers.
fn escape_edit(rest: &mut impl Iterator<Item = char>) -> Option<Edit> {
    match rest.next()? {
        '[' => {
            let mut params = String::new();
            let fin = loop {
                let p = rest.next()?;
                if ('\x40'..='\x7e').contains(&p) {
                    break p;
                }
                params.push(p);
            };
            match (fin, params.as_str()) {
                ('D', "") => Some(Edit::Left),
                ('C', "") => Some(Edit::Right),
                ('H', "") | ('~', "1") | ('~', "7") => Some(Edit::Home),
                ('F', "") | ('~', "4") | ('~', "8") => Some(Edit::End),
                ('~', "3") => Some(Edit::DeleteHere),
                // Bracketed paste markers: what lies between is typed text.
                ('~', "200") | ('~', "201") => Some(Edit::Nothing),
                _ => None,
            }
        }
        'O' => match rest.next()? {
            'D' => Some(Edit::Left),
            'C' => Some(Edit::Right),
            'H' => Some(Edit::Home),
            'F' => Some(Edit::End),
            _ => None,
        },
        _ => None,
    }
}

/// The readline model's line and cursor.
#[derive(Default)]
struct Editor {
    line: Vec<char>,
    cur: usize,
}

impl Editor {
    fn apply(&mut self, edit: Edit) {
        let (line, cur) = (&mut self.line, &mut self.cur);
        match edit {
            Edit::Insert(c) => {
                line.insert(*cur, c);
                *cur += 1;
            }
            Edit::Home => *cur = 0,
            Edit::End => *cur = line.len(),
            Edit::Left => *cur = cur.saturating_sub(1),
            Edit::Right => *cur = (*cur + 1).min(line.len()),
            Edit::DeleteBack => {
                if *cur > 0 {
                    *cur -= 1;
                    line.remove(*cur);
                }
            }
            Edit::DeleteHere => {
                if *cur < line.len() {
                    line.remove(*cur);
                }
            }
            Edit::KillToEnd => line.truncate(*cur),
            Edit::KillToStart => {
                line.drain(..*cur);
                *cur = 0;
            }
            Edit::RuboutWord => {
                let mut start = *cur;
                while start > 0 && line[start - 1].is_whitespace() {
                    start -= 1;
                }
                while start > 0 && !line[start - 1].is_whitespace() {
                    start -= 1;
                }
                line.drain(start..*cur);
                *cur = start;
            }
            Edit::Nothing => {}
        }
    }
}

/// Whether a prompt asks for a secret (`Password:`, `[sudo] password for x:`, `Enter passphrase
/// for key ...:`): then what is typed after it stays out of the command log (it is still in the
/// recording). A shell prompt ends in `$`, `#` or `>`, not in a colon.
pub fn is_secret_prompt(prompt: &str) -> bool {
    let prompt = prompt.trim_end();
    if !prompt.ends_with(':') {
        return false;
    }
    let tail: String = prompt
        .chars()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>()
        .to_lowercase();
    ["password", "passphrase", "passcode", "pin:"]
        .iter()
        .any(|w| tail.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_control_character() {
        assert_eq!(escape_keys("ls -x\x7fl\r"), "ls -x\\x7fl\\r");
        assert_eq!(escape_keys("\x1b[D\t\\\x15"), "\\e[D\\t\\\\\\x15");
        assert_eq!(escape_keys("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape_keys("grüße"), "grüße");
    }

    #[test]
    fn reconstructs_editing_keys() {
        assert_eq!(reconstruct_line("ls -x\x7fl").as_deref(), Some("ls -l"));
        assert_eq!(
            reconstruct_line("echo abc\x1b[D\x1b[DX").as_deref(),
            Some("echo aXbc")
        );
        assert_eq!(
            reconstruct_line("cho start\x01e\x05 end").as_deref(),
            Some("echo start end")
        );
        assert_eq!(
            reconstruct_line("rm -rf /tmp/x\x15id").as_deref(),
            Some("id")
        );
        assert_eq!(
            reconstruct_line("cat /etc/shadow\x17passwd").as_deref(),
            Some("cat passwd")
        );
        assert_eq!(
            reconstruct_line("abc\x1bOD\x1bOD\x0b").as_deref(),
            Some("a")
        );
        assert_eq!(reconstruct_line("xab\x1b[H\x1b[3~").as_deref(), Some("ab"));
        assert_eq!(
            reconstruct_line("\x1b[200~uname -a\x1b[201~").as_deref(),
            Some("uname -a")
        );
    }

    #[test]
    fn reconstructs_the_other_motion_and_delete_keys() {
        // Ctrl-B/Ctrl-F, Ctrl-D under the cursor, Ctrl-L, Home/End as `~` codes and SS3.
        assert_eq!(reconstruct_line("abc\x02\x02\x04").as_deref(), Some("ac"));
        assert_eq!(reconstruct_line("ab\x01\x06\x0cX").as_deref(), Some("aXb"));
        assert_eq!(
            reconstruct_line("bc\x1b[1~a\x1b[4~d").as_deref(),
            Some("abcd")
        );
        assert_eq!(
            reconstruct_line("bc\x1b[7~a\x1b[8~d").as_deref(),
            Some("abcd")
        );
        assert_eq!(
            reconstruct_line("bc\x1bOHa\x1bOFd\x1b[F!").as_deref(),
            Some("abcd!")
        );
        assert_eq!(reconstruct_line("\x7f\x1b[D\x1b[3~x").as_deref(), Some("x"));
        assert_eq!(reconstruct_line("a  \x17b").as_deref(), Some("b"));
        assert_eq!(reconstruct_line("ab\x1b[C\x1b[C!").as_deref(), Some("ab!"));
    }

    #[test]
    fn history_and_completion_are_not_guessed() {
        assert_eq!(reconstruct_line("\x1b[A"), None);
        assert_eq!(reconstruct_line("cat /etc/pas\t"), None);
        assert_eq!(reconstruct_line("ls\x1bb"), None);
        assert_eq!(reconstruct_line("ls\x12"), None);
        assert_eq!(reconstruct_line("ls\x1b["), None);
        assert_eq!(reconstruct_line("ls\x1b"), None);
        assert_eq!(reconstruct_line("ls\x1bOA"), None);
    }

    #[test]
    fn secret_prompts() {
        assert!(is_secret_prompt("[sudo] password for admin: "));
        assert!(is_secret_prompt(
            "Enter passphrase for key '/root/.ssh/id':"
        ));
        assert!(is_secret_prompt("Password:"));
        assert!(!is_secret_prompt("dev:~$ "));
        assert!(!is_secret_prompt("root@cam-01:/etc#"));
        assert!(!is_secret_prompt("admin@passwords-host:~$"));
    }
}
