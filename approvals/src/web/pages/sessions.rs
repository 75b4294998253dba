//! Sessions: the live ones with their terminate buttons, the history, and one session's page
//! with its verification, command log, replay and keystrokes.

use crate::audit::AuditEvent;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tracing::warn;

use super::super::html::{self, Nav, csrf_field, esc, time};
use super::super::{Signed, WebState};
use super::{CsrfOnly, Page, Scope, St, action_error, back, check_csrf, not_yours, store_error};
use crate::actions::Actor;
use crate::breakglass::BreakGlass;
use crate::model::{CommandRow, Session};
use crate::verify::Finding;

fn session_line(x: &Session) -> String {
    format!(
        r#"<a href="/sessions/{id}">{id}</a> <b>{vendor}</b> at {site}/{device} ({function}){flag}"#,
        id = esc(&x.id),
        vendor = esc(&x.vendor),
        site = esc(&x.site),
        device = esc(&x.device),
        function = esc(&x.function),
        flag = if x.breakglass.is_some() {
            r#" <span class="flag">break-glass</span>"#
        } else {
            ""
        }
    )
}

pub async fn sessions(State(state): St, s: Signed) -> Page {
    let scope = Scope::load(&state).await?;
    let csrf = &s.login.csrf;
    let mut all: Vec<_> = state
        .store
        .sessions(false)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|x| scope.covers(&s, &x.site))
        .collect();
    all.reverse();
    let mut body = String::from("<h1>Live sessions</h1>");
    let live: Vec<_> = all.iter().filter(|x| x.ended.is_none()).collect();
    if live.is_empty() {
        body.push_str(r#"<p class="empty">No sessions are open at your sites.</p>"#);
    }
    for x in live {
        let closing = if x.kill_requested {
            r#" <span class="flag">closing</span>"#
        } else {
            ""
        };
        body.push_str(&format!(
            r#"<section class="card live"><h2>{line}{closing}</h2><dl><dt>Since</dt><dd>{since}</dd><dt>From</dt><dd>{source}</dd><dt>Node</dt><dd>{node}</dd></dl>
<form method="post" action="/sessions/{id}/terminate">{csrf_f}<button type="submit" class="deny">Terminate</button></form></section>"#,
            line = session_line(x),
            since = time(x.started),
            source = esc(&x.source),
            node = esc(&x.node),
            id = esc(&x.id),
            csrf_f = csrf_field(csrf),
        ));
    }
    body.push_str("<h1>History</h1><ul class=\"list\">");
    for x in all.iter().filter(|x| x.ended.is_some()).take(100) {
        body.push_str(&format!(
            "<li>{} — {} to {}: {}</li>",
            session_line(x),
            time(x.started),
            x.ended.map(time).unwrap_or_default(),
            esc(x.end_reason.as_deref().unwrap_or(""))
        ));
    }
    body.push_str("</ul>");
    Ok(html::page("Sessions", Nav::Sessions, s.name(), csrf, &body))
}

pub async fn terminate(
    State(state): St,
    s: Signed,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    check_csrf(&state, &s, &f.csrf, AuditEvent::SessionKill).await?;
    let scope = Scope::load(&state).await?;
    match state.store.session(&id).await.map_err(store_error)? {
        Some(x) if scope.covers(&s, &x.site) => {}
        _ => return Err(not_yours("session", &id)),
    }
    state
        .actions()
        .kill_session(&Actor::web(s.name()), &id)
        .await
        .map_err(action_error)?;
    Ok(back("/sessions"))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AtQuery {
    at: Option<f64>,
}

/// Screens kept for an in-browser replay: enough for smooth playback of a long session while the
/// page stays a reasonable size.
const REPLAY_SCREENS: usize = 1500;

pub async fn session_detail(
    State(state): St,
    s: Signed,
    Path(id): Path<String>,
    Query(q): Query<AtQuery>,
) -> Page {
    let scope = Scope::load(&state).await?;
    let x = match state.store.session(&id).await.map_err(store_error)? {
        Some(x) if scope.covers(&s, &x.site) => x,
        _ => return Err(not_yours("session", &id)),
    };
    let integrity = integrity(&state, &id).await;
    let replay = Replay::load(state.recordings.join(&x.recording)).await?;
    let commands = state
        .store
        .commands_of_session(&id)
        .await
        .map_err(store_error)?;
    let bg = match &x.breakglass {
        Some(b) => state.store.breakglass(b).await.map_err(store_error)?,
        None => None,
    };
    let mut body = summary(&x, &integrity, bg);
    body.push_str(&commands_list(&commands));
    body.push_str(r#"<h2 id="replay">Replay</h2>"#);
    body.push_str(&replay.player(q.at));
    body.push_str(&keystrokes(&replay.key_lines));
    Ok(html::page(
        "Session",
        Nav::Sessions,
        s.name(),
        &s.login.csrf,
        &body,
    ))
}

/// What `postern verify ID` says about this session, from the same verifier.
async fn integrity(state: &WebState, id: &str) -> Finding {
    match crate::verify::verify(&state.store, &state.evidence(), Some(id)).await {
        Ok(findings) => findings.into_iter().next(),
        Err(e) => {
            warn!(error = %e, "web: verification failed");
            None
        }
    }
    .unwrap_or_else(|| {
        Finding::bad(
            &format!("session {id}"),
            0,
            "could not be verified right now",
        )
    })
}

/// The session's heading card: who, when, from where, and whether its recording verifies.
fn summary(x: &Session, integrity: &Finding, bg: Option<BreakGlass>) -> String {
    format!(
        r#"<h1>Session {id}</h1><section class="card"><h2>{line}</h2><dl>
<dt>Started</dt><dd>{started}</dd><dt>Ended</dt><dd>{ended}</dd><dt>From</dt><dd>{source}</dd><dt>Grant</dt><dd>{grant}</dd><dt>Recording</dt><dd class="{cls}">{integrity}</dd>{bgline}</dl></section>"#,
        id = esc(&x.id),
        line = session_line(x),
        started = time(x.started),
        ended = x
            .ended
            .map(|e| format!(
                "{} ({})",
                time(e),
                esc(x.end_reason.as_deref().unwrap_or(""))
            ))
            .unwrap_or_else(|| "live".into()),
        source = esc(&x.source),
        grant = esc(&x.grant_id),
        cls = if integrity.ok { "ok" } else { "error" },
        integrity = esc(&integrity.line()),
        bgline = bg
            .map(|b| format!(
                "<dt>Break-glass</dt><dd class=\"reason\">{}{}</dd>",
                esc(&b.reason),
                b.reviewed_by
                    .map(|r| format!(" — reviewed by {}", esc(&r)))
                    .unwrap_or_else(|| " — not yet reviewed".into())
            ))
            .unwrap_or_default(),
    )
}

/// The command log, each command a link to its moment in the replay.
fn commands_list(commands: &[CommandRow]) -> String {
    let mut out = String::from("<h2>Commands</h2>");
    if commands.is_empty() {
        out.push_str(r#"<p class="empty">No commands recorded (yet).</p>"#);
        return out;
    }
    out.push_str(r#"<ol class="commands">"#);
    for c in commands {
        let at = c.offset_ms as f64 / 1000.0;
        out.push_str(&format!(
            r##"<li><a href="?at={at:.3}#replay" data-at="{at:.3}">{clock}</a> <span class="kind">{kind}</span> <code>{cmd}</code></li>"##,
            clock = clock(at),
            kind = esc(&c.kind),
            cmd = esc(&c.command),
        ));
    }
    out.push_str("</ol>");
    out
}

/// What the recording showed on a terminal, and the keys the vendor sent.
struct Replay {
    frames: Vec<recorder::Screen>,
    key_lines: Vec<recorder::KeyLine>,
}

impl Replay {
    /// Reads the recording off the async threads; an unreadable one replays as nothing.
    async fn load(path: std::path::PathBuf) -> Result<Replay, Response> {
        let events = tokio::task::spawn_blocking(move || {
            recorder::Reader::open(&path)
                .ok()
                .map(|reader| recorder::terminal_events(reader, true))
        })
        .await
        .map_err(|_| html::error(StatusCode::INTERNAL_SERVER_ERROR, "replay failed"))?;
        Ok(Replay {
            frames: events
                .as_ref()
                .map(|e| recorder::screens(e, 0.05, REPLAY_SCREENS))
                .unwrap_or_default(),
            key_lines: events.as_ref().map(recorder::key_lines).unwrap_or_default(),
        })
    }

    /// The player, showing the screen at `at` seconds (the last one when not given).
    fn player(&self, at: Option<f64>) -> String {
        let (frames, key_lines) = (&self.frames, &self.key_lines);
        let shown = match at {
            Some(at) => frames
                .iter()
                .rev()
                .find(|f| f.time <= at)
                .or(frames.first()),
            None => frames.last(),
        };
        let Some(f) = shown else {
            return r#"<p class="empty">Nothing was shown on a terminal in this session.</p>"#
                .to_owned();
        };
        let data = serde_json::to_string(frames)
            .unwrap_or_else(|_| "[]".into())
            .replace('<', "\\u003c");
        format!(
            r#"<div class="player"><div class="controls"><button type="button" id="play">Play</button> <input type="range" id="seek" min="0" max="{max:.3}" step="any" value="{at:.3}" aria-label="position"> <span id="clock">{clock}</span></div>
<pre id="screen" class="screen">{screen}</pre>{keybar}</div>
<script type="application/json" id="frames">{data}</script>{keydata}<script src="/static/replay.js"></script>"#,
            max = frames.last().map_or(0.0, |f| f.time),
            at = f.time,
            clock = clock(f.time),
            screen = esc(&f.lines.join("\n")),
            keybar = if key_lines.is_empty() {
                String::new()
            } else {
                r#"<p class="keybar"><label><input type="checkbox" id="showkeys"> Show keystrokes</label> <code id="keys"></code></p>"#.to_owned()
            },
            keydata = if key_lines.is_empty() {
                String::new()
            } else {
                format!(
                    r#"<script type="application/json" id="keylines">{}</script>"#,
                    serde_json::to_string(&key_lines[..key_lines.len().min(KEY_LINES)])
                        .unwrap_or_else(|_| "[]".into())
                        .replace('<', "\\u003c")
                )
            },
        )
    }
}

/// Most keystroke lines listed on a session page; the rest are in `postern replay --input`.
const KEY_LINES: usize = 3000;

/// The input view: every line of keys the vendor sent, echoed or not, escaped, with the time to
/// replay from. Approvers of the site see it, as they see the recording itself.
fn keystrokes(lines: &[recorder::KeyLine]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut out = format!(
        r#"<details class="keystrokes" id="keystrokes"><summary>Keystrokes: {n} lines, every key the vendor sent, shown or not (Enter is \r, Backspace \x7f, arrows \e[A..D)</summary><ol class="commands">"#,
        n = lines.len()
    );
    for l in lines.iter().take(KEY_LINES) {
        out.push_str(&format!(
            r##"<li><a href="?at={at:.3}#replay" data-at="{at:.3}">{clock}</a> <code>{keys}</code></li>"##,
            at = l.time,
            clock = clock(l.time),
            keys = esc(&l.keys),
        ));
    }
    out.push_str("</ol>");
    if lines.len() > KEY_LINES {
        out.push_str(&format!(
            r#"<p class="empty">{} more lines: <code>postern replay ID --input</code> on the broker host shows them all.</p>"#,
            lines.len() - KEY_LINES
        ));
    }
    out.push_str("</details>");
    out
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
