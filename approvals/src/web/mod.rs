//! The approvers' web form: pending requests, active grants, live sessions, session history with
//! the command log and a replay, and the break-glass review queue.
//!
//! Pages are rendered on the server as plain HTML (one small script of our own drives the replay),
//! so the form works on a phone and without third-party code. Security: sign-in with password and
//! TOTP; a random session token in a `Secure; HttpOnly; SameSite=Strict` cookie whose SHA-256 alone
//! is stored; a CSRF token in every form, checked on every POST; no secrets in URLs; a strict
//! content security policy. An approver sees and acts on their own sites only.
//!
//! This module builds the [`axum::Router`]; the `postern` binary serves it (HTTPS when configured).

pub mod html;
mod pages;
pub use pages::style;

use crate::audit::AuditEvent;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::actions::Actions;
use crate::approvers::WebLogin;
use crate::audit::AuditLog;
use crate::notify::Notifier;
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::verify::Evidence;

/// The cookie that carries a signed-in approver's token.
pub const SESSION_COOKIE: &str = "postern_session";
/// The cookie that carries the sign-in form's CSRF token (before there is a session).
pub const LOGIN_COOKIE: &str = "postern_login";
/// The largest request body accepted (every form fits easily).
pub const MAX_BODY: usize = 16 * 1024;
/// Password hashes checked at once (see [`WebState::passwords`]).
pub const HASHING_AT_ONCE: usize = 2;
/// Password checks waiting at most; beyond, sign-ins are told the broker is busy.
pub const HASHING_QUEUE: usize = 32;
/// How long a sign-in waits for its turn to have its password checked.
pub const HASHING_WAIT: Duration = Duration::from_secs(10);
/// The longest approver name looked at; longer names are refused before anything else.
pub const MAX_NAME: usize = 64;
/// How long a sign-in lasts.
pub const LOGIN_TTL: i64 = 12 * 3600;

/// What every page handler shares.
pub struct WebState {
    pub store: Store,
    pub audit: AuditLog,
    pub notifier: Notifier,
    pub recordings: PathBuf,
    /// Whether the page is served over HTTPS (adds Strict-Transport-Security).
    pub https: bool,
    /// Failed sign-ins per client address (wrong name or password: before the first factor).
    pub per_source: RateLimiter,
    /// Failed sign-ins per name *at one address*: a stranger elsewhere cannot lock the name out.
    /// Wrong codes after a right password go to [`crate::lockout`] instead, shared by all nodes.
    pub per_name_source: RateLimiter,
    /// Where the client address comes from (the peer, or a trusted proxy's header).
    pub client_address: ClientAddress,
    /// Sign-ins refused by the rate limits, written to the audit log as one summary per interval.
    pub throttled: crate::audit::Tally,
    /// Where approvers' passwords are checked: each check takes ~19 MiB and a core for a while,
    /// so a few dedicated threads do it, from a bounded queue.
    pub passwords: crate::approvers::PasswordChecker,
    /// This node's seal public key file, trusted by the session page's verification as by
    /// `postern verify`.
    pub local_seal_key: Option<PathBuf>,
    /// The seal keyring and the pinned root that certifies its keys (see `verify::Evidence`).
    pub keyring: Option<PathBuf>,
    pub root: Option<recorder::keyring::RootPublicKey>,
    /// The thresholds of the dashboard's exceptions (the node's configuration).
    pub exception_limits: Option<crate::exceptions::ExceptionLimits>,
    /// The dashboard's figures, computed at most once a minute however many approvers look
    /// (the lock makes concurrent views wait for one computation).
    pub dashboard: tokio::sync::Mutex<Option<pages::DashboardFigures>>,
}

/// How the web UI finds a client's address: the TCP peer, unless the peer is a trusted
/// TLS-terminating proxy, in which case the proxy's forwarding header says who the client is.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    trusted_proxies: Vec<ipnet::IpNet>,
    header: header::HeaderName,
}

/// The configured client-address header is not an HTTP header name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an HTTP header name")]
pub struct BadHeaderName(pub String);

impl ClientAddress {
    /// `header` is e.g. `X-Forwarded-For` (a list, client first, each proxy appending the address
    /// it saw) or `X-Real-IP` (one address).
    pub fn new(
        trusted_proxies: Vec<ipnet::IpNet>,
        header: &str,
    ) -> Result<ClientAddress, BadHeaderName> {
        let header = header
            .parse::<header::HeaderName>()
            .map_err(|_| BadHeaderName(header.to_owned()))?;
        Ok(ClientAddress {
            trusted_proxies,
            header,
        })
    }

    fn trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address. From a trusted proxy: the right-most address in the header that is
    /// not itself a trusted proxy (addresses further left were written by the client and prove
    /// nothing). Anyone else's header is ignored.
    pub fn of(&self, peer: std::net::IpAddr, headers: &HeaderMap) -> std::net::IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let mut hops: Vec<std::net::IpAddr> = Vec::new();
        for v in headers.get_all(&self.header).iter() {
            let Ok(text) = v.to_str() else { return peer };
            for item in text.split(',') {
                let item = item.trim();
                // Accept `1.2.3.4`, `[2001:db8::1]` and `1.2.3.4:5678` forms.
                let parsed = item
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .or_else(|| item.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
                    .or_else(|| {
                        item.trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse()
                            .ok()
                    });
                match parsed {
                    Some(ip) => hops.push(ip),
                    // A hop we cannot read: stop trusting the chain there.
                    None => hops.clear(),
                }
            }
        }
        hops.into_iter()
            .rev()
            .find(|ip| !self.trusted(*ip))
            .unwrap_or(peer)
    }
}

impl WebState {
    pub fn new(
        store: Store,
        audit: AuditLog,
        notifier: Notifier,
        recordings: PathBuf,
        https: bool,
    ) -> WebState {
        WebState {
            store,
            audit,
            notifier,
            recordings,
            https,
            // Per source 20, per name at one source 5 failed sign-ins in 5 minutes.
            per_source: RateLimiter::new(Duration::from_secs(300), 20, 100_000),
            per_name_source: RateLimiter::new(Duration::from_secs(300), 5, 100_000),
            client_address: ClientAddress {
                trusted_proxies: Vec::new(),
                header: header::HeaderName::from_static("x-forwarded-for"),
            },
            throttled: crate::audit::Tally::default(),
            passwords: crate::approvers::PasswordChecker::new(HASHING_AT_ONCE, HASHING_QUEUE),
            local_seal_key: None,
            keyring: None,
            root: None,
            exception_limits: None,
            dashboard: Default::default(),
        }
    }

    /// Counts exceptions on the dashboard with the node's thresholds.
    pub fn with_exception_limits(mut self, limits: crate::exceptions::ExceptionLimits) -> WebState {
        self.exception_limits = Some(limits);
        self
    }

    /// Trusts this node's own seal public key file too when verifying recordings.
    pub fn with_local_seal_key(mut self, path: PathBuf) -> WebState {
        self.local_seal_key = Some(path);
        self
    }

    /// Trusts seal keys only through `keyring`, as certified by `root` (the node's pinned root).
    pub fn with_keyring(
        mut self,
        keyring: PathBuf,
        root: Option<recorder::keyring::RootPublicKey>,
    ) -> WebState {
        self.keyring = Some(keyring);
        self.root = root;
        self
    }

    /// Where operator actions are taken (the same code the CLI uses).
    pub(crate) fn actions(&self) -> Actions {
        Actions::new(
            self.store.clone(),
            self.audit.clone(),
            self.notifier.clone(),
        )
    }

    /// Where the evidence is, for the verifier `postern verify` uses too.
    pub(crate) fn evidence(&self) -> Evidence {
        Evidence {
            node: self.audit.node().to_owned(),
            audit_log: self.audit.path().to_owned(),
            recordings: self.recordings.clone(),
            local_seal_key: self.local_seal_key.clone(),
            keyring: self.keyring.clone(),
            root: self.root,
            fetched: None,
        }
    }

    /// Serves behind the given proxies (see [`ClientAddress`]).
    pub fn with_client_address(mut self, client_address: ClientAddress) -> WebState {
        self.client_address = client_address;
        self
    }

    /// Writes an audit event on behalf of a web user. `false` if the audit log could not be
    /// written: the caller then refuses the action (fail closed).
    pub(crate) async fn audit(&self, event: AuditEvent, actor: &str, mut fields: Value) -> bool {
        if let Value::Object(m) = &mut fields {
            m.insert("actor".into(), json!(format!("web:{actor}")));
        }
        match self.audit.record_async(event, fields).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, event = %event, "audit log write failed");
                false
            }
        }
    }
}

/// The web UI's routes.
pub fn router(state: Arc<WebState>) -> Router {
    let https = state.https;
    Router::new()
        .route("/", get(|| async { Redirect::to("/requests") }))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/requests", get(pages::requests))
        .route("/requests/{id}/approve", post(pages::approve))
        .route("/requests/{id}/deny", post(pages::deny))
        .route("/grants", get(pages::grants))
        .route("/grants/{id}/revoke", post(pages::revoke))
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}", get(pages::session_detail))
        .route("/sessions/{id}/terminate", post(pages::terminate))
        .route("/review", get(pages::review))
        .route("/review/{id}", post(pages::mark_reviewed))
        .route("/dashboard", get(pages::dashboard))
        .route("/static/style.css", get(pages::style))
        .route("/static/replay.js", get(pages::replay_js))
        .fallback(|| async { html::error(StatusCode::NOT_FOUND, "There is no such page.") })
        // Every form is small; a large body is an attack on memory, refused before it is read.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(
            move |mut r: Response| async move {
                security_headers(r.headers_mut(), https);
                r
            },
        ))
        .with_state(state)
}

/// The headers every Postern page carries (each unless already set: a page may set a stricter
/// one of its own first); HSTS only when served over TLS.
pub fn security_headers(h: &mut HeaderMap, https: bool) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    if https {
        set(
            h,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        );
    }
}

/// SHA-256 of a cookie or link token, as stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh secret for a cookie or link: 32 random bytes, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Compares two tokens without leaking where they differ.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && !a.is_empty() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A cookie's value from the request headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value with Postern's attributes. Cookies are always `Secure`: browsers accept
/// them on HTTPS and on loopback addresses, which is where the web form should be reached.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
    let v = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    );
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("x=; Max-Age=0"))
}

/// A signed-in approver; pages that take one send everyone else to the sign-in form.
pub struct Signed {
    pub login: WebLogin,
    pub token_hash: String,
}

impl Signed {
    pub fn name(&self) -> &str {
        &self.login.approver.name
    }
}

impl FromRequestParts<Arc<WebState>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to("/login").into_response());
        };
        let hash = token_hash(token);
        match state.store.web_login(&hash, crate::time::now()).await {
            Ok(Some(login)) => Ok(Signed {
                login,
                token_hash: hash,
            }),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(e) => {
                warn!(error = %e, "web sign-in check failed");
                Err(html::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The control plane is unavailable; try again shortly.",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_trusts_only_configured_proxies() {
        let proxy: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let ca =
            ClientAddress::new(vec!["10.0.0.0/24".parse().unwrap()], "X-Forwarded-For").unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.0.0.7"),
        );
        // From the proxy: the right-most address that is not a proxy.
        assert_eq!(
            ca.of(proxy, &h),
            "203.0.113.9".parse::<std::net::IpAddr>().unwrap()
        );
        // From anyone else, the header is the client's own claim: ignored.
        let other: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(ca.of(other, &h), other);
        // No header: the proxy itself.
        assert_eq!(ca.of(proxy, &HeaderMap::new()), proxy);
        let mut bad = HeaderMap::new();
        bad.append(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, junk"),
        );
        assert_eq!(ca.of(proxy, &bad), proxy);
        assert_eq!(
            ClientAddress::new(vec![], "bad header")
                .unwrap_err()
                .to_string(),
            "'bad header' is not an HTTP header name"
        );
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", ""));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; postern_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
