//! Signing in (password, then TOTP code) and out.

use crate::audit::AuditEvent;
use std::net::{IpAddr, SocketAddr};

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::super::html::{self, csrf_field, esc};
use super::super::{
    HASHING_WAIT, LOGIN_COOKIE, LOGIN_TTL, MAX_NAME, SESSION_COOKIE, Signed, WebState, cookie,
    random_token, same_token, set_cookie, token_hash,
};
use super::{CsrfOnly, Page, St, audit_failed, check_csrf, store_error};
use crate::approvers::Approver;
use crate::audit::bounded;
use crate::lockout::{Attempt, Subject};
use crate::time::now;

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
    // The sign-in form's token must match its cookie (no cross-site sign-in).
    if !cookie(&headers, LOGIN_COOKIE).is_some_and(|c| same_token(c, &f.csrf)) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or did not come from Postern. Please sign in again."),
        );
    }
    let attempt = SignIn::new(&state, ip, &f.name);
    if let Some(refused) = attempt.throttled() {
        return refused;
    }
    let approver = match attempt.first_factor(f.password).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let t = now();
    if let Err(refused) = attempt.second_factor(&approver, &f.code, t).await {
        return refused;
    }
    attempt.signed_in(t).await
}

/// One sign-in attempt: who is signing in from where, and the keys its rate limits count under.
struct SignIn<'a> {
    state: &'a WebState,
    ip: IpAddr,
    source: String,
    /// The name as typed, trimmed.
    name: String,
    /// The name bounded and escaped, as the audit log gets whatever the client typed.
    logged_name: String,
    /// The address, or its /64 for IPv6 (one host holds a whole /64).
    limit_source: String,
    name_at_source: String,
}

impl<'a> SignIn<'a> {
    fn new(state: &'a WebState, ip: IpAddr, name: &str) -> SignIn<'a> {
        let name = name.trim().to_owned();
        let logged_name = bounded(&name, MAX_NAME);
        let limit_source = crate::audit::source_key(ip).to_string();
        let name_at_source = format!("{limit_source} {logged_name}");
        SignIn {
            state,
            ip,
            source: ip.to_string(),
            name,
            logged_name,
            limit_source,
            name_at_source,
        }
    }

    /// Before the first factor, failures count per address and per name *at that address*: a
    /// stranger elsewhere cannot lock an approver out. Throttled attempts are only counted, into
    /// one summary event per interval, so a flood cannot flood the audit log. Returns the page
    /// refusing a throttled attempt.
    fn throttled(&self) -> Option<Response> {
        let state = self.state;
        // Checked and counted in one step per limiter, so a burst of parallel attempts cannot
        // all pass the check: the attempt counts as a failure from now on, before the slow
        // password check; a right password takes it back.
        let by_source = state.per_source.attempt(&self.limit_source);
        let admitted = by_source && state.per_name_source.attempt(&self.name_at_source);
        if by_source && !admitted {
            // Refused attempts are not counted.
            state.per_source.forgive(&self.limit_source);
        }
        if !admitted {
            state.throttled.count("web sign-in rate limited", self.ip);
            return Some(login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many failed sign-ins. Wait a few minutes and try again."),
            ));
        }
        None
    }

    /// The name and password: the approver they belong to, if enabled.
    async fn first_factor(&self, password: String) -> Result<Approver, Response> {
        let state = self.state;
        if self.name.chars().count() > MAX_NAME {
            return Err(self.first_factor_failed("name too long").await);
        }
        let approver = state
            .store
            .approver(&self.name)
            .await
            .map_err(store_error)?;
        let hash = approver.as_ref().map(|a| a.password_hash.clone());
        // Checked on a few dedicated threads with a bounded queue: memory stays bounded however
        // many sign-ins arrive. Unknown names are hashed too, so timing does not tell which exist.
        let checked =
            tokio::time::timeout(HASHING_WAIT, state.passwords.check(password, hash)).await;
        let Ok(Some(password_ok)) = checked else {
            state
                .throttled
                .count("web sign-in refused: password checks busy", self.ip);
            return Err(login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("Postern is busy checking other sign-ins. Try again in a moment."),
            ));
        };
        let a = match approver {
            None => return Err(self.first_factor_failed("unknown approver").await),
            Some(a) if a.disabled => {
                return Err(self.first_factor_failed("approver disabled").await);
            }
            Some(_) if !password_ok => {
                return Err(self.first_factor_failed("wrong password").await);
            }
            Some(a) => a,
        };
        // The password was right: the first factor passed, so this attempt no longer counts
        // against the address. From here on, wrong codes count against the approver, in the
        // database (every node, across restarts), with exponential backoff.
        state.per_source.forgive(&self.limit_source);
        state.per_name_source.forgive(&self.name_at_source);
        Ok(a)
    }

    /// Records a failed first factor; the page says only that something was wrong.
    async fn first_factor_failed(&self, reason: &'static str) -> Response {
        let name = &self.logged_name;
        self.state
            .audit(
                AuditEvent::WebLoginFailed,
                name,
                json!({"approver": name, "source": self.source, "reason": reason}),
            )
            .await;
        wrong()
    }

    /// The TOTP code, once per step, within the approver's backoff.
    async fn second_factor(&self, a: &Approver, code: &str, t: i64) -> Result<(), Response> {
        let (state, name) = (self.state, &self.name);
        let who = Subject::Approver(&a.name);
        match state.store.second_factor_attempt(who, t).await {
            Ok(Attempt::Granted) => {}
            Ok(Attempt::Locked(until)) => {
                state
                    .audit(
                        AuditEvent::WebLoginFailed,
                        name,
                        json!({"approver": name, "source": self.source, "reason": "too many wrong codes", "locked_until": crate::time::fmt_time(until)}),
                    )
                    .await;
                return Err(login_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    Some("Too many wrong codes. Wait a few minutes and try again."),
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
        let reason = match crate::totp::check(&a.totp_secret, code, t as u64) {
            Ok(Some(step)) => match state
                .store
                .consume_approver_totp_step(&a.name, step as i64)
                .await
                .map_err(store_error)?
            {
                true => None,
                false => Some("TOTP code already used"),
            },
            Ok(None) => Some("wrong TOTP code"),
            Err(_) => Some("TOTP secret unreadable"),
        };
        if let Some(reason) = reason {
            // Counted already, when the attempt was granted.
            let locked = state
                .store
                .second_factor_locked_until(who, t)
                .await
                .map_err(store_error)?;
            state
                .audit(
                    AuditEvent::WebLoginFailed,
                    name,
                    json!({"approver": name, "source": self.source, "reason": reason,
                           "locked_until": locked.map(crate::time::fmt_time)}),
                )
                .await;
            return Err(wrong());
        }
        state
            .store
            .second_factor_passed(who)
            .await
            .map_err(store_error)
    }

    /// Both factors passed: a new login, its cookie, and the way to the requests.
    async fn signed_in(&self, t: i64) -> Response {
        let (state, name) = (self.state, &self.name);
        let token = random_token();
        let csrf = random_token();
        if let Err(e) = state
            .store
            .create_web_login(&token_hash(&token), name, &csrf, t, t + LOGIN_TTL)
            .await
        {
            return store_error(e);
        }
        if !state
            .audit(
                AuditEvent::WebLogin,
                name,
                json!({"approver": name, "source": self.source}),
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
}

fn wrong() -> Response {
    login_page(
        StatusCode::UNAUTHORIZED,
        Some("Name, password or code is wrong."),
    )
}

pub async fn logout(State(state): St, s: Signed, Form(f): Form<CsrfOnly>) -> Page {
    check_csrf(&state, &s, &f.csrf, AuditEvent::WebLogout).await?;
    state
        .store
        .end_web_login(&s.token_hash)
        .await
        .map_err(store_error)?;
    state
        .audit(
            AuditEvent::WebLogout,
            s.name(),
            json!({"approver": s.name()}),
        )
        .await;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/", 0));
    Ok(r)
}
