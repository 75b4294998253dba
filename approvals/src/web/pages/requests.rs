//! Access requests: the pending ones with their forms, the decided ones, approve and deny.

use crate::audit::AuditEvent;
use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::super::html::{self, Nav, csrf_field, dur, esc, time};
use super::super::{Signed, WebState};
use super::{Page, Scope, St, action_error, back, check_csrf, not_yours, store_error};
use crate::actions::Actor;
use crate::approvers::AccessRequestRow;
use crate::model::RequestStatus;
use crate::time::{now, parse_duration, parse_time};

pub async fn requests(State(state): St, s: Signed) -> Page {
    let scope = Scope::load(&state).await?;
    let all = state.store.requests(None).await.map_err(store_error)?;
    let mine: Vec<_> = all
        .into_iter()
        .filter(|r| scope.covers(&s, &r.site))
        .collect();
    let (mut pending, decided): (Vec<_>, Vec<_>) = mine
        .iter()
        .partition(|r| r.status == RequestStatus::Pending);
    // Overdue requests first: they have waited longest past what was promised.
    pending.sort_by_key(|r| !r.overdue());
    let names = Names::load(&state).await?;
    let csrf = &s.login.csrf;
    let mut body = String::from("<h1>Pending requests</h1>");
    if pending.is_empty() {
        body.push_str(r#"<p class="empty">No requests are waiting for you.</p>"#);
    }
    for r in pending {
        body.push_str(&pending_card(r, &names, csrf));
    }
    body.push_str("<h2>Recently decided</h2><ul class=\"list\">");
    for r in decided.into_iter().take(20) {
        body.push_str(&decided_line(r));
    }
    body.push_str("</ul>");
    Ok(html::page("Requests", Nav::Requests, s.name(), csrf, &body))
}

/// What a pending request's card names besides the request: the vendor's organisation, the
/// function's longest window, and whether the site is offline (its edge lost contact).
struct Names {
    orgs: HashMap<String, String>,
    max: HashMap<String, i64>,
    /// Offline sites and what to say about them.
    offline: HashMap<String, String>,
}

impl Names {
    async fn load(state: &WebState) -> Result<Names, Response> {
        let vendors = state.store.vendors().await.map_err(store_error)?;
        let functions = state.store.functions().await.map_err(store_error)?;
        let edges = state.store.edges().await.map_err(store_error)?;
        let now = crate::time::now();
        let offline = edges
            .iter()
            .filter_map(|e| e.offline(now, time).map(|said| (e, said)))
            .flat_map(|(e, said)| e.sites.iter().map(move |s| (s.clone(), said.clone())))
            .collect();
        Ok(Names {
            offline,
            orgs: vendors.into_iter().map(|v| (v.name, v.org)).collect(),
            max: functions
                .into_iter()
                .map(|f| (f.name, f.max_window))
                .collect(),
        })
    }
}

/// A pending request with its approve and deny forms; an overdue one says so first.
fn pending_card(r: &AccessRequestRow, names: &Names, csrf: &str) -> String {
    let id = esc(&r.id);
    let (class, overdue) = match r.escalated_at {
        Some(at) if r.overdue() => (
            "card request overdue",
            format!(
                r#"<p class="status overdue"><b>Overdue</b>: no decision within the approval SLO; escalated {}</p>"#,
                time(at)
            ),
        ),
        _ => ("card request", String::new()),
    };
    let offline = names
        .offline
        .get(&r.site)
        .map(|said| {
            format!(
                r#"<p class="status offline"><b>Site {}</b> is {}: a grant cannot be used until it is back</p>"#,
                esc(&r.site),
                esc(said)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<section class="{class}" id="{id}"><h2>{vendor} <small>{org}</small></h2>{overdue}{offline}
<dl><dt>Target</dt><dd>{site}/{device}</dd><dt>Function</dt><dd>{function}</dd><dt>Asked for</dt><dd>{asked}</dd><dt>Filed</dt><dd>{filed}</dd><dt>Reason</dt><dd class="reason">{reason}</dd></dl>
<form method="post" action="/requests/{id}/approve" class="inline">{csrf_f}
<label>From <input name="from" value="now" size="8"></label>
<label>For <input name="duration" value="{asked}" size="8"> <small>at most {max}</small></label>
<button type="submit" class="approve">Approve</button> <small class="covers">grants {device} at {site} only</small></form>
<form method="post" action="/requests/{id}/deny" class="inline">{csrf_f}
<label>Reason <input name="reason" required placeholder="why not"></label>
<button type="submit" class="deny">Deny</button></form></section>"#,
        vendor = esc(&r.vendor),
        org = esc(names.orgs.get(&r.vendor).map_or("", String::as_str)),
        site = esc(&r.site),
        device = esc(&r.device),
        function = esc(&r.function),
        asked = esc(&dur(r.duration)),
        filed = time(r.created),
        reason = esc(&r.reason),
        max = esc(&dur(names.max.get(&r.function).copied().unwrap_or(0))),
        csrf_f = csrf_field(csrf),
    )
}

/// A decided request, one line.
fn decided_line(r: &AccessRequestRow) -> String {
    // The grant a request became covers the requested device only: say so next to its id.
    let granted = r
        .grant_id
        .as_deref()
        .map(|g| {
            format!(
                " (grant {} for {}/{})",
                esc(g),
                esc(&r.site),
                esc(&r.device)
            )
        })
        .unwrap_or_default();
    format!(
        "<li><b>{}</b> {} at {}/{} ({}): <span class=\"status {}\">{}</span>{granted} by {} after {}{}</li>",
        esc(&r.id),
        esc(&r.vendor),
        esc(&r.site),
        esc(&r.device),
        esc(&r.function),
        r.status,
        r.status,
        esc(r.decided_by.as_deref().unwrap_or("-")),
        esc(&r.latency().map(dur).unwrap_or_else(|| "-".into())),
        r.decision_reason
            .as_deref()
            .map(|d| format!(": {}", esc(d)))
            .unwrap_or_default(),
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ApproveForm {
    csrf: String,
    from: String,
    duration: String,
}

async fn my_request(state: &WebState, s: &Signed, id: &str) -> Result<AccessRequestRow, Response> {
    let scope = Scope::load(state).await?;
    match state.store.request(id).await.map_err(store_error)? {
        Some(r) if scope.covers(s, &r.site) => Ok(r),
        _ => Err(not_yours("request", id)),
    }
}

pub async fn approve(
    State(state): St,
    s: Signed,
    Path(id): Path<String>,
    Form(f): Form<ApproveForm>,
) -> Page {
    check_csrf(&state, &s, &f.csrf, AuditEvent::RequestApprove).await?;
    let req = my_request(&state, &s, &id).await?;
    let t = now();
    let from = if f.from.trim().is_empty() {
        t
    } else {
        parse_time(f.from.trim(), t)
            .map_err(|e| html::error(StatusCode::BAD_REQUEST, &format!("From: {e}")))?
    };
    let duration = if f.duration.trim().is_empty() {
        req.duration
    } else {
        parse_duration(f.duration.trim())
            .map_err(|e| html::error(StatusCode::BAD_REQUEST, &format!("For: {e}")))?
    };
    state
        .actions()
        .approve_request(&Actor::web(s.name()), &id, from, Some(from + duration), t)
        .await
        .map_err(action_error)?;
    Ok(back("/requests"))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ReasonForm {
    csrf: String,
    reason: String,
}

pub async fn deny(
    State(state): St,
    s: Signed,
    Path(id): Path<String>,
    Form(f): Form<ReasonForm>,
) -> Page {
    check_csrf(&state, &s, &f.csrf, AuditEvent::RequestDeny).await?;
    my_request(&state, &s, &id).await?;
    state
        .actions()
        .deny_request(&Actor::web(s.name()), &id, &f.reason, now())
        .await
        .map_err(action_error)?;
    Ok(back("/requests"))
}
