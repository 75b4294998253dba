//! The pages and form actions of the web UI.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::html::{self, Nav, csrf_field, dur, esc, time};
use super::{
    LOGIN_COOKIE, LOGIN_TTL, MAX_NAME, SESSION_COOKIE, Signed, WebState, cookie, random_token,
    same_token, set_cookie, token_hash,
};
use crate::actions::{ActionError, Actor};
use crate::audit::bounded;
use crate::lockout::{Attempt, Subject};
use crate::model::RequestStatus;
use crate::store::StoreError;
use crate::time::{now, parse_duration, parse_time};

type St = State<Arc<WebState>>;
type Page = Result<Response, Response>;

/// Turns a store error into a page: what the approver did wrong, or that the control plane failed.
fn store_error(e: StoreError) -> Response {
    let status = match &e {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Timeout => {
            warn!(error = %e, "web: database error");
            return html::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The control plane is unavailable; nothing was changed. Try again shortly.",
            );
        }
    };
    html::error(status, &e.to_string())
}

/// Turns a refused action into a page; nothing was changed in any case.
fn action_error(e: ActionError) -> Response {
    let status = match &e {
        ActionError::NotFound(_) => StatusCode::NOT_FOUND,
        ActionError::Conflict(_) => StatusCode::CONFLICT,
        ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
        ActionError::AuditUnwritable(_) => {
            warn!(error = %e, "web: action refused");
            return audit_failed();
        }
        ActionError::Unavailable(_) => {
            warn!(error = %e, "web: action refused");
            return html::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The control plane is unavailable; nothing was changed. Try again shortly.",
            );
        }
    };
    html::error(status, &e.to_string())
}

fn audit_failed() -> Response {
    html::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The audit log cannot be written, so nothing was changed.",
    )
}

/// Refuses a form whose CSRF token is missing or not this sign-in's, and records the attempt.
async fn check_csrf(
    state: &WebState,
    s: &Signed,
    token: &str,
    action: &str,
) -> Result<(), Response> {
    if same_token(token, &s.login.csrf) {
        return Ok(());
    }
    state
        .audit(
            "web.csrf_refused",
            s.name(),
            json!({"action": action, "token": if token.is_empty() { "missing" } else { "wrong" }}),
        )
        .await;
    Err(html::error(
        StatusCode::FORBIDDEN,
        "This form did not come from your Postern session (its CSRF token is missing or wrong). Reload the page and try again.",
    ))
}

/// The sites an approver answers for, with each site's region.
struct Scope {
    regions: HashMap<String, Option<String>>,
}

impl Scope {
    async fn load(state: &WebState) -> Result<Scope, Response> {
        let sites = state.store.sites().await.map_err(store_error)?;
        Ok(Scope {
            regions: sites.into_iter().map(|s| (s.name, s.region)).collect(),
        })
    }

    fn covers(&self, s: &Signed, site: &str) -> bool {
        let region = self.regions.get(site).and_then(|r| r.as_deref());
        s.login.approver.covers(site, region)
    }
}

fn not_yours(what: &str, id: &str) -> Response {
    html::error(
        StatusCode::NOT_FOUND,
        &format!("There is no {what} {id} among your sites."),
    )
}

fn back(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- sign-in ----

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    name: String,
    password: String,
    code: String,
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let token = random_token();
    let msg = message
        .map(|m| format!(r#"<p class="error" role="alert">{}</p>"#, esc(m)))
        .unwrap_or_default();
    let body = format!(
        r#"<main class="narrow"><h1>Postern</h1><p>Approvers sign in with their password and the code from their authenticator app.</p>{msg}
<form method="post" action="/login" class="card">{}
<label>Name <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<label>Code <input name="code" inputmode="numeric" pattern="[0-9]{{6}}" autocomplete="one-time-code" required></label>
<button type="submit">Sign in</button></form></main>"#,
        csrf_field(&token)
    );
    let mut r = (status, Html(html::document("Sign in", &body))).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, "/login", 900),
    );
    r
}

pub async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

pub async fn login(
    State(state): St,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ip = state.client_address.of(addr.ip(), &headers);
    let source = ip.to_string();
    // The sign-in form's token must match its cookie (no cross-site sign-in).
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same_token(c, &f.csrf)) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or did not come from Postern. Please sign in again."),
        );
    }
    let name = f.name.trim().to_owned();
    let wrong = || {
        login_page(
            StatusCode::UNAUTHORIZED,
            Some("Name, password or code is wrong."),
        )
    };
    // Whatever the client typed is logged bounded and escaped.
    let logged_name = bounded(&name, MAX_NAME);
    // Limits apply to the address, or its /64 for IPv6 (one host holds a whole /64).
    let limit_source = crate::audit::source_key(ip).to_string();
    let name_at_source = format!("{limit_source} {logged_name}");
    // Before the first factor, failures count per address and per name *at that address*: a
    // stranger elsewhere cannot lock an approver out. Throttled attempts are only counted, into
    // one summary event per interval, so a flood cannot flood the audit log.
    if !state.per_source.allowed(&limit_source) || !state.per_name_source.allowed(&name_at_source) {
        state.throttled.count("web sign-in rate limited", ip);
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many failed sign-ins. Wait a few minutes and try again."),
        );
    }
    // The attempt counts as a failure from now on, before the slow password check, so a burst
    // of parallel attempts cannot all pass the check above; a right password takes it back.
    state.per_source.failed(&limit_source);
    state.per_name_source.failed(&name_at_source);
    let first_factor_failed = |reason: &'static str| {
        let state = state.clone();
        let (name, source) = (logged_name.clone(), source.clone());
        async move {
            state
                .audit(
                    "web.login_failed",
                    &name,
                    json!({"approver": name, "source": source, "reason": reason}),
                )
                .await;
        }
    };
    if name.chars().count() > MAX_NAME {
        first_factor_failed("name too long").await;
        return wrong();
    }
    let approver = match state.store.approver(&name).await {
        Ok(a) => a,
        Err(e) => return store_error(e),
    };
    let password = f.password;
    let hash = approver.as_ref().map(|a| a.password_hash.clone());
    // Checked on a few dedicated threads with a bounded queue: memory stays bounded however
    // many sign-ins arrive. Unknown names are hashed too, so timing does not tell which exist.
    let checked =
        tokio::time::timeout(super::HASHING_WAIT, state.passwords.check(password, hash)).await;
    let Ok(Some(password_ok)) = checked else {
        state
            .throttled
            .count("web sign-in refused: password checks busy", ip);
        return login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Postern is busy checking other sign-ins. Try again in a moment."),
        );
    };
    let a = match &approver {
        None => {
            first_factor_failed("unknown approver").await;
            return wrong();
        }
        Some(a) if a.disabled => {
            first_factor_failed("approver disabled").await;
            return wrong();
        }
        Some(_) if !password_ok => {
            first_factor_failed("wrong password").await;
            return wrong();
        }
        Some(a) => a,
    };
    // The password was right: the first factor passed, so this attempt no longer counts against
    // the address. From here on, wrong codes count against the approver, in the database (every
    // node, across restarts), with exponential backoff.
    state.per_source.forgive(&limit_source);
    state.per_name_source.forgive(&name_at_source);
    let who = Subject::Approver(&a.name);
    let t = now();
    match state.store.second_factor_attempt(who, t).await {
        Ok(Attempt::Granted) => {}
        Ok(Attempt::Locked(until)) => {
            state
                .audit(
                    "web.login_failed",
                    &name,
                    json!({"approver": name, "source": source, "reason": "too many wrong codes", "locked_until": crate::time::fmt_time(until)}),
                )
                .await;
            return login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many wrong codes. Wait a few minutes and try again."),
            );
        }
        Err(e) => return store_error(e),
    }
    let reason = match crate::totp::check(&a.totp_secret, &f.code, t as u64) {
        Ok(Some(step)) => match state
            .store
            .consume_approver_totp_step(&a.name, step as i64)
            .await
        {
            Ok(true) => None,
            Ok(false) => Some("TOTP code already used"),
            Err(e) => return store_error(e),
        },
        Ok(None) => Some("wrong TOTP code"),
        Err(_) => Some("TOTP secret unreadable"),
    };
    if let Some(reason) = reason {
        // Counted already, when the attempt was granted.
        let locked = match state.store.second_factor_locked_until(who, t).await {
            Ok(l) => l,
            Err(e) => return store_error(e),
        };
        state
            .audit(
                "web.login_failed",
                &name,
                json!({"approver": name, "source": source, "reason": reason,
                       "locked_until": locked.map(crate::time::fmt_time)}),
            )
            .await;
        return wrong();
    }
    if let Err(e) = state.store.second_factor_passed(who).await {
        return store_error(e);
    }
    let token = random_token();
    let csrf = random_token();
    if let Err(e) = state
        .store
        .create_web_login(&token_hash(&token), &name, &csrf, t, t + LOGIN_TTL)
        .await
    {
        return store_error(e);
    }
    if !state
        .audit(
            "web.login",
            &name,
            json!({"approver": name, "source": source}),
        )
        .await
    {
        let _ = state.store.end_web_login(&token_hash(&token)).await;
        return audit_failed();
    }
    let mut r = Redirect::to("/requests").into_response(); // 303 See Other
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, "/", LOGIN_TTL),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", "/login", 0),
    );
    r
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfOnly {
    csrf: String,
}

pub async fn logout(State(state): St, s: Signed, Form(f): Form<CsrfOnly>) -> Page {
    check_csrf(&state, &s, &f.csrf, "logout").await?;
    state
        .store
        .end_web_login(&s.token_hash)
        .await
        .map_err(store_error)?;
    state
        .audit("web.logout", s.name(), json!({"approver": s.name()}))
        .await;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/", 0));
    Ok(r)
}

// ---- requests ----

pub async fn requests(State(state): St, s: Signed) -> Page {
    let scope = Scope::load(&state).await?;
    let all = state.store.requests(None).await.map_err(store_error)?;
    let orgs: HashMap<String, String> = state
        .store
        .vendors()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|v| (v.name, v.org))
        .collect();
    let max: HashMap<String, i64> = state
        .store
        .functions()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|f| (f.name, f.max_window))
        .collect();
    let mine: Vec<_> = all
        .into_iter()
        .filter(|r| scope.covers(&s, &r.site))
        .collect();
    let csrf = &s.login.csrf;
    let mut body = String::from("<h1>Pending requests</h1>");
    let pending: Vec<_> = mine
        .iter()
        .filter(|r| r.status == RequestStatus::Pending)
        .collect();
    if pending.is_empty() {
        body.push_str(r#"<p class="empty">No requests are waiting for you.</p>"#);
    }
    for r in pending {
        let id = esc(&r.id);
        body.push_str(&format!(
            r#"<section class="card request" id="{id}"><h2>{vendor} <small>{org}</small></h2>
<dl><dt>Target</dt><dd>{site}/{device}</dd><dt>Function</dt><dd>{function}</dd><dt>Asked for</dt><dd>{asked}</dd><dt>Filed</dt><dd>{filed}</dd><dt>Reason</dt><dd class="reason">{reason}</dd></dl>
<form method="post" action="/requests/{id}/approve" class="inline">{csrf_f}
<label>From <input name="from" value="now" size="8"></label>
<label>For <input name="duration" value="{asked}" size="8"> <small>at most {max}</small></label>
<button type="submit" class="approve">Approve</button> <small class="covers">grants {device} at {site} only</small></form>
<form method="post" action="/requests/{id}/deny" class="inline">{csrf_f}
<label>Reason <input name="reason" required placeholder="why not"></label>
<button type="submit" class="deny">Deny</button></form></section>"#,
            vendor = esc(&r.vendor),
            org = esc(orgs.get(&r.vendor).map_or("", String::as_str)),
            site = esc(&r.site),
            device = esc(&r.device),
            function = esc(&r.function),
            asked = esc(&dur(r.duration)),
            filed = time(r.created),
            reason = esc(&r.reason),
            max = esc(&dur(max.get(&r.function).copied().unwrap_or(0))),
            csrf_f = csrf_field(csrf),
        ));
    }
    body.push_str("<h2>Recently decided</h2><ul class=\"list\">");
    for r in mine
        .iter()
        .filter(|r| r.status != RequestStatus::Pending)
        .take(20)
    {
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
        body.push_str(&format!(
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
        ));
    }
    body.push_str("</ul>");
    Ok(html::page("Requests", Nav::Requests, s.name(), csrf, &body))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ApproveForm {
    csrf: String,
    from: String,
    duration: String,
}

async fn my_request(
    state: &WebState,
    s: &Signed,
    id: &str,
) -> Result<crate::AccessRequestRow, Response> {
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
    check_csrf(&state, &s, &f.csrf, "request.approve").await?;
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
    check_csrf(&state, &s, &f.csrf, "request.deny").await?;
    my_request(&state, &s, &id).await?;
    state
        .actions()
        .deny_request(&Actor::web(s.name()), &id, &f.reason, now())
        .await
        .map_err(action_error)?;
    Ok(back("/requests"))
}

// ---- grants ----

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
    check_csrf(&state, &s, &f.csrf, "grant.revoke").await?;
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

// ---- sessions ----

fn session_line(x: &crate::Session) -> String {
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
    check_csrf(&state, &s, &f.csrf, "session.kill").await?;
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
    let path = state.recordings.join(&x.recording);
    // What `postern verify ID` says about this session, from the same verifier.
    let integrity = match crate::verify::verify(&state.store, &state.evidence(), Some(&id)).await {
        Ok(findings) => findings.into_iter().next(),
        Err(e) => {
            warn!(error = %e, "web: verification failed");
            None
        }
    }
    .unwrap_or_else(|| {
        crate::verify::Finding::bad(
            &format!("session {id}"),
            0,
            "could not be verified right now",
        )
    });
    let events = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            recorder::Reader::open(&path)
                .ok()
                .map(|reader| recorder::terminal_events(reader, true))
        }
    })
    .await
    .map_err(|_| html::error(StatusCode::INTERNAL_SERVER_ERROR, "replay failed"))?;
    let frames = events
        .as_ref()
        .map(|e| recorder::screens(e, 0.05, REPLAY_SCREENS))
        .unwrap_or_default();
    let key_lines = events.as_ref().map(recorder::key_lines).unwrap_or_default();
    let shown = match q.at {
        Some(at) => frames
            .iter()
            .rev()
            .find(|f| f.time <= at)
            .or(frames.first()),
        None => frames.last(),
    };
    let commands = state
        .store
        .commands_of_session(&id)
        .await
        .map_err(store_error)?;
    let bg = match &x.breakglass {
        Some(b) => state.store.breakglass(b).await.map_err(store_error)?,
        None => None,
    };
    let mut body = format!(
        r#"<h1>Session {id}</h1><section class="card"><h2>{line}</h2><dl>
<dt>Started</dt><dd>{started}</dd><dt>Ended</dt><dd>{ended}</dd><dt>From</dt><dd>{source}</dd><dt>Grant</dt><dd>{grant}</dd><dt>Recording</dt><dd class="{cls}">{integrity}</dd>{bgline}</dl></section>"#,
        id = esc(&x.id),
        line = session_line(&x),
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
    );
    body.push_str("<h2>Commands</h2>");
    if commands.is_empty() {
        body.push_str(r#"<p class="empty">No commands recorded (yet).</p>"#);
    } else {
        body.push_str(r#"<ol class="commands">"#);
        for c in &commands {
            let at = c.offset_ms as f64 / 1000.0;
            body.push_str(&format!(
                r##"<li><a href="?at={at:.3}#replay" data-at="{at:.3}">{clock}</a> <span class="kind">{kind}</span> <code>{cmd}</code></li>"##,
                clock = clock(at),
                kind = esc(&c.kind),
                cmd = esc(&c.command),
            ));
        }
        body.push_str("</ol>");
    }
    body.push_str(r#"<h2 id="replay">Replay</h2>"#);
    match shown {
        None => body
            .push_str(r#"<p class="empty">Nothing was shown on a terminal in this session.</p>"#),
        Some(f) => {
            let data = serde_json::to_string(&frames)
                .unwrap_or_else(|_| "[]".into())
                .replace('<', "\\u003c");
            body.push_str(&format!(
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
            ));
        }
    }
    body.push_str(&keystrokes(&key_lines));
    Ok(html::page(
        "Session",
        Nav::Sessions,
        s.name(),
        &s.login.csrf,
        &body,
    ))
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
    check_csrf(&state, &s, &f.csrf, "breakglass.review").await?;
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

// ---- static files (our own) ----

pub async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/style.css"),
    )
        .into_response()
}

pub async fn replay_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/replay.js"),
    )
        .into_response()
}
