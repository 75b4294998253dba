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
    let mut line: Vec<char> = Vec::new();
    let mut cur = 0usize;
    let mut it = keys.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\x01' => cur = 0,
            '\x05' => cur = line.len(),
            '\x02' => cur = cur.saturating_sub(1),
            '\x06' => cur = (cur + 1).min(line.len()),
            '\x08' | '\x7f' => {
                if cur > 0 {
                    cur -= 1;
                    line.remove(cur);
                }
            }
            // Ctrl-D on a non-empty line deletes under the cursor (on an empty one it is EOF,
            // which the caller handles).
            '\x04' => {
                if cur < line.len() {
                    line.remove(cur);
                }
            }
            '\x0b' => line.truncate(cur),
            '\x15' => {
                line.drain(..cur);
                cur = 0;
            }
            '\x17' => {
                // unix-word-rubout: blanks before the cursor, then the word.
                let mut start = cur;
                while start > 0 && line[start - 1].is_whitespace() {
                    start -= 1;
                }
                while start > 0 && !line[start - 1].is_whitespace() {
                    start -= 1;
                }
                line.drain(start..cur);
                cur = start;
            }
            // Ctrl-L redraws; the line is unchanged.
            '\x0c' => {}
            '\x1b' => match it.next()? {
                '[' => {
                    let mut params = String::new();
                    let fin = loop {
                        let p = it.next()?;
                        if ('\x40'..='\x7e').contains(&p) {
                            break p;
                        }
                        params.push(p);
                    };
                    match (fin, params.as_str()) {
                        ('D', "") => cur = cur.saturating_sub(1),
                        ('C', "") => cur = (cur + 1).min(line.len()),
                        ('H', "") | ('~', "1") | ('~', "7") => cur = 0,
                        ('F', "") | ('~', "4") | ('~', "8") => cur = line.len(),
                        ('~', "3") => {
                            if cur < line.len() {
                                line.remove(cur);
                            }
                        }
                        // Bracketed paste markers: what lies between is typed text.
                        ('~', "200") | ('~', "201") => {}
                        _ => return None,
                    }
                }
                'O' => match it.next()? {
                    'D' => cur = cur.saturating_sub(1),
                    'C' => cur = (cur + 1).min(line.len()),
                    'H' => cur = 0,
                    'F' => cur = line.len(),
                    _ => return None,
                },
                _ => return None,
            },
            c if c.is_control() => return None,
            c => {
                line.insert(cur, c);
                cur += 1;
            }
        }
    }
    Some(line.into_iter().collect())
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
    fn history_and_completion_are_not_guessed() {
        assert_eq!(reconstruct_line("\x1b[A"), None);
        assert_eq!(reconstruct_line("cat /etc/pas\t"), None);
        assert_eq!(reconstruct_line("ls\x1bb"), None);
        assert_eq!(reconstruct_line("ls\x12"), None);
        assert_eq!(reconstruct_line("ls\x1b["), None);
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
