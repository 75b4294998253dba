//! Grants (the active ones, revoke) and the break-glass review queue.

use crate::audit::AuditEvent;
use axum::Form;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::super::Signed;
use super::super::html::{self, Nav, csrf_field, esc, time};
use super::{CsrfOnly, Page, Scope, St, action_error, back, check_csrf, not_yours, store_error};
use crate::actions::Actor;
use crate::time::now;

pub async fn grants(State(state): St, s: Signed) -> Page {
    let scope = Scope::load(&state).await?;
    let t = now();
    let csrf = &s.login.csrf;
    let mut body = String::from("<h1>Active grants</h1>");
    let mut any = false;
    for g in state.store.grants().await.map_err(store_error)? {
        if g.revoked_at.is_some() || g.valid_until <= t || !scope.covers(&s, &g.site) {
            continue;
        }
        any = true;
        let flag = if g.granted_by == "break-glass" {
            r#" <span class="flag">break-glass</span>"#
        } else {
            ""
        };
        body.push_str(&format!(
            r#"<section class="card"><h2>{vendor} <small>{function} at {site}</small>{flag}</h2>
<dl><dt>Covers</dt><dd class="covers">{covers}</dd><dt>Window</dt><dd>{from} – {until}</dd><dt>Granted by</dt><dd>{by}</dd><dt>Reason</dt><dd class="reason">{reason}</dd></dl>
<form method="post" action="/grants/{id}/revoke">{csrf_f}<button type="submit" class="deny">Revoke</button></form></section>"#,
            id = esc(&g.id),
            vendor = esc(&g.vendor),
            function = esc(&g.function),
            site = esc(&g.site),
            covers = esc(&g.coverage()),
            from = time(g.valid_from),
            until = time(g.valid_until),
            by = esc(&g.granted_by),
            reason = esc(&g.reason),
            csrf_f = csrf_field(csrf),
        ));
    }
    if !any {
        body.push_str(r#"<p class="empty">No grants are active at your sites.</p>"#);
    }
    Ok(html::page("Grants", Nav::Grants, s.name(), csrf, &body))
}

pub async fn revoke(
    State(state): St,
    s: Signed,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    check_csrf(&state, &s, &f.csrf, AuditEvent::GrantRevoke).await?;
    let scope = Scope::load(&state).await?;
    let grant = match state.store.grant(&id).await.map_err(store_error)? {
        Some(g) if scope.covers(&s, &g.site) => g,
        _ => return Err(not_yours("grant", &id)),
    };
    state
        .actions()
        .revoke_grant(&Actor::web(s.name()), &grant.id, now())
        .await
        .map_err(action_error)?;
    Ok(back("/grants"))
}

// ---- break-glass review ----

pub async fn review(State(state): St, s: Signed) -> Page {
    let scope = Scope::load(&state).await?;
    let csrf = &s.login.csrf;
    let all: Vec<_> = state
        .store
        .breakglass_list(false)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|b| scope.covers(&s, &b.site))
        .collect();
    let sessions = state
        .store
        .breakglass_sessions()
        .await
        .map_err(store_error)?;
    let links = |bg: &str| {
        sessions
            .iter()
            .filter(|x| x.breakglass.as_deref() == Some(bg))
            .map(|x| format!(r#"<a href="/sessions/{0}">{0}</a>"#, esc(&x.id)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut body = String::from("<h1>Break-glass review</h1>");
    let open: Vec<_> = all.iter().filter(|b| b.reviewed_at.is_none()).collect();
    if open.is_empty() {
        body.push_str(r#"<p class="empty">Nothing is waiting for review.</p>"#);
    }
    for b in open {
        body.push_str(&format!(
            r#"<section class="card breakglass" id="{id}"><h2>{vendor} <small>{org}</small> <span class="flag">break-glass</span></h2>
<dl><dt>Target</dt><dd>{site}/{device}</dd><dt>Function</dt><dd>{function}</dd><dt>Opened</dt><dd>{opened}, until {until}</dd><dt>Reason</dt><dd class="reason">{reason}</dd><dt>Sessions</dt><dd>{sessions}</dd></dl>
<form method="post" action="/review/{id}" class="inline">{csrf_f}<label>Note <input name="note" placeholder="what you checked"></label><button type="submit" class="approve">Mark reviewed</button></form></section>"#,
            id = esc(&b.id),
            vendor = esc(&b.vendor),
            org = esc(&b.org),
            site = esc(&b.site),
            device = esc(&b.device),
            function = esc(&b.function),
            opened = time(b.opened),
            until = time(b.valid_until),
            reason = esc(&b.reason),
            sessions = links(&b.id),
            csrf_f = csrf_field(csrf),
        ));
    }
    body.push_str("<h2>Reviewed</h2><ul class=\"list\">");
    for b in all.iter().filter(|b| b.reviewed_at.is_some()).take(50) {
        body.push_str(&format!(
            "<li><b>{}</b> {} at {}/{} on {}: reviewed by {}{} — {}</li>",
            esc(&b.id),
            esc(&b.vendor),
            esc(&b.site),
            esc(&b.device),
            time(b.opened),
            esc(b.reviewed_by.as_deref().unwrap_or("")),
            b.review_note
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|n| format!(" ({})", esc(n)))
                .unwrap_or_default(),
            links(&b.id),
        ));
    }
    body.push_str("</ul>");
    Ok(html::page("Review", Nav::Review, s.name(), csrf, &body))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoteForm {
    csrf: String,
    note: String,
}

pub async fn mark_reviewed(
    State(state): St,
    s: Signed,
    Path(id): Path<String>,
    Form(f): Form<NoteForm>,
) -> Page {
    check_csrf(&state, &s, &f.csrf, AuditEvent::BreakglassReview).await?;
    let scope = Scope::load(&state).await?;
    match state.store.breakglass(&id).await.map_err(store_error)? {
        Some(b) if scope.covers(&s, &b.site) => {}
        _ => return Err(not_yours("break-glass opening", &id)),
    }
    state
        .actions()
        .review_breakglass(&Actor::web(s.name()), &id, &f.note, now())
        .await
        .map_err(action_error)?;
    Ok(back("/review"))
}
