//! A recording's terminal as a sequence of screens, for replay where no terminal is at hand (the
//! web UI). The same emulator ([`avt`]) that reads commands off the screen draws these.

use serde::Serialize;

use crate::asciicast::TerminalEvents;

/// The visible screen at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Screen {
    /// Seconds since the session started.
    pub time: f64,
    pub lines: Vec<String>,
}

/// The screens a recording shows, at most one per `min_gap` seconds (the last screen of each gap
/// is kept, so the final screen is always exact) and at most `limit` of them: a longer session is
/// sampled more coarsely rather than truncated.
pub fn screens(events: &TerminalEvents, min_gap: f64, limit: usize) -> Vec<Screen> {
    let duration = events.events.last().map_or(0.0, |e| e.time);
    // Widen the gap so the whole session fits in `limit` screens.
    let gap = if limit > 1 {
        min_gap.max(duration / (limit - 1) as f64)
    } else {
        f64::INFINITY
    };
    let cols = (events.width as usize).clamp(1, 1000);
    let rows = (events.height as usize).clamp(1, 500);
    let mut term = match avt::Terminal::new(cols, rows) {
        Ok(t) => t,
        Err(_) => return Vec::new(),
    };
    // Events are grouped in buckets of `gap` seconds; each bucket with a change gives the screen
    // as it stood after its last change.
    let bucket = |i: usize, t: f64| -> i64 {
        if gap > 0.0 && gap.is_finite() {
            (t / gap).floor() as i64
        } else if gap > 0.0 {
            0
        } else {
            i as i64
        }
    };
    let mut out: Vec<Screen> = Vec::new();
    let mut unshown: Option<i64> = None;
    let mut changed_at = 0.0;
    for (i, e) in events.events.iter().enumerate() {
        let b = bucket(i, e.time);
        if unshown.is_some_and(|u| u != b) {
            out.push(snapshot(&term, changed_at));
            unshown = None;
        }
        let changed = match e.code {
            "o" => {
                term.feed(e.data.as_str());
                true
            }
            "r" => match e.data.split_once('x') {
                Some((w, h)) => match (w.parse::<usize>(), h.parse::<usize>()) {
                    (Ok(w), Ok(h)) if w > 0 && h > 0 => {
                        term.resize(w.min(1000), h.min(500));
                        true
                    }
                    _ => false,
                },
                None => false,
            },
            _ => false,
        };
        if changed {
            unshown = Some(b);
            changed_at = e.time;
        }
    }
    if unshown.is_some() || out.is_empty() {
        out.push(snapshot(&term, changed_at));
    }
    out
}

fn snapshot(term: &avt::Terminal, time: f64) -> Screen {
    let mut lines: Vec<String> = term
        .screen()
        .visible_lines()
        .map(|l| l.text().trim_end().to_owned())
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    Screen {
        time: (time * 1000.0).round() / 1000.0,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asciicast::AsciicastEvent;

    fn ev(time: f64, code: &'static str, data: &str) -> AsciicastEvent {
        AsciicastEvent {
            time,
            code,
            data: data.into(),
        }
    }

    fn events(list: Vec<AsciicastEvent>) -> TerminalEvents {
        TerminalEvents {
            width: 20,
            height: 5,
            timestamp: 0,
            events: list,
            problem: None,
        }
    }

    #[test]
    fn draws_what_the_terminal_shows() {
        let e = events(vec![
            ev(0.0, "o", "$ "),
            ev(1.0, "o", "echo hi\r\nhi\r\n$ "),
            ev(2.0, "o", "\x1b[2J\x1b[Hcleared"),
        ]);
        let s = screens(&e, 0.1, 100);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].lines, vec!["$"]);
        assert_eq!(s[1].time, 1.0);
        assert_eq!(s[1].lines, vec!["$ echo hi", "hi", "$"]);
        assert_eq!(s[2].lines, vec!["cleared"]);
    }

    #[test]
    fn bursts_become_one_screen_and_the_last_is_exact() {
        let mut list: Vec<_> = (0..100)
            .map(|i| ev(i as f64 * 0.001, "o", &format!("{i}\r\n")))
            .collect();
        list.push(ev(5.0, "o", "end"));
        let s = screens(&events(list), 0.5, 100);
        assert!(s.len() <= 3, "{}", s.len());
        assert_eq!(s.last().unwrap().lines.last().unwrap(), "end");
    }

    #[test]
    fn long_sessions_are_sampled_within_the_limit() {
        let list: Vec<_> = (0..10_000)
            .map(|i| ev(i as f64, "o", &format!("line {i}\r\n")))
            .collect();
        let s = screens(&events(list), 0.1, 50);
        assert!(s.len() <= 50, "{}", s.len());
        assert!(s.last().unwrap().lines.iter().any(|l| l == "line 9999"));
    }

    #[test]
    fn resizes_apply_and_garbage_sizes_are_ignored() {
        let e = events(vec![
            ev(0.0, "r", "0x0"),
            ev(0.1, "r", "banana"),
            ev(0.2, "r", "40x10"),
            ev(0.3, "o", &"x".repeat(30)),
        ]);
        let s = screens(&e, 0.0, 10);
        assert_eq!(s.last().unwrap().lines, vec!["x".repeat(30)]);
    }
}
