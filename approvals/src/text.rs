//! Text from outside (names, reasons people typed) on its way to someone's terminal.

/// Text as it may reach a person's terminal (an operator's table, a vendor's ssh session): control characters (escape sequences that clear
/// the screen or forge lines) and bidirectional overrides are shown escaped, never acted on.
/// Every human-readable output goes through this; attacker-supplied names and reasons end up in
/// tables and the audit log.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn hostile_text_is_shown_escaped() {
        assert_eq!(printable("alice"), "alice");
        let shown = printable("x\u{1b}[2J\u{1b}[1;1Hforged\r\nline\u{202e}cba");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        assert!(shown.contains("\\r\\n"), "{shown}");
        assert!(shown.contains("\\u{202e}"), "{shown}");
    }
}
