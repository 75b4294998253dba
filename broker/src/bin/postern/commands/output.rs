//! How commands speak to the operator: tables, JSON, and text made safe to print.

use approvals::time::fmt_time;

pub use approvals::text::printable;

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
