//! How commands speak to the operator: tables, JSON, and text made safe to print.

use approvals::time::fmt_time;

/// Text as it may reach an operator's terminal: control characters (escape sequences that clear
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

pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub fn opt_time(t: Option<i64>) -> String {
    t.map(fmt_time).unwrap_or_else(|| "-".into())
}

/// The TOTP enrolment URI as a QR code an authenticator app scans off the terminal.
pub fn print_qr(uri: &str) {
    use qrcode::QrCode;
    use qrcode::render::unicode::Dense1x2;
    if let Ok(code) = QrCode::new(uri.as_bytes()) {
        let img = code.render::<Dense1x2>().quiet_zone(true).build();
        println!("{img}");
    }
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
