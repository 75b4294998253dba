//! HTML building blocks. Every value that came from a user, a vendor or a device goes through
//! [`esc`] before it reaches a page.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as a short duration: `1h 30m`.
pub fn dur(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// A Unix time for people (UTC).
pub fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// The hidden field every form carries.
pub fn csrf_field(token: &str) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(token)
    )
}

/// Which page of the navigation is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Requests,
    Grants,
    Sessions,
    Review,
    Dashboard,
}

/// A whole page for a signed-in approver.
pub fn page(title: &str, nav: Nav, approver: &str, csrf: &str, body: &str) -> Response {
    let link = |n: Nav, href: &str, label: &str| {
        let current = if n == nav {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{current}>{label}</a>"#)
    };
    let header = format!(
        r#"<header><span class="brand">Postern</span><nav>{}{}{}{}{}</nav><form method="post" action="/logout" class="logout">{}<button type="submit" class="link">Sign out {}</button></form></header>"#,
        link(Nav::Requests, "/requests", "Requests"),
        link(Nav::Grants, "/grants", "Grants"),
        link(Nav::Sessions, "/sessions", "Sessions"),
        link(Nav::Review, "/review", "Review"),
        link(Nav::Dashboard, "/dashboard", "Dashboard"),
        csrf_field(csrf),
        esc(approver),
    );
    Html(document(title, &format!("{header}<main>{body}</main>"))).into_response()
}

/// The outer document.
pub fn document(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · Postern</title><link rel="stylesheet" href="/static/style.css"></head>
<body>{body}</body></html>"#,
        esc(title)
    )
}

/// A plain error page with a status.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        r#"<main><h1>{}</h1><p class="error">{}</p><p><a href="/requests">Back to Postern</a></p></main>"#,
        status.as_u16(),
        esc(message)
    );
    (status, Html(document("Error", &body))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            esc(r#"<script>"x"&'y'</script>"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(esc("a\u{1b}[31mb"), "a\u{FFFD}[31mb");
    }
}
