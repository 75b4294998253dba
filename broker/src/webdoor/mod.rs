//! The HTTPS front door for device web UIs (`web_devices_listen`). The vendor signs in from ssh:
//! `ssh VENDOR:web@BROKER` (certificate and TOTP, as always) prints a one-time link to
//! `https://DOMAIN/enter/TOKEN`, valid a minute, which opens a browser session bound to that
//! vendor: a Secure, HttpOnly, SameSite=Strict cookie for the domain's own host only. The sign-in
//! page then lists the device UIs the vendor's grants reach now, each at an origin of its own,
//! `https://DEVICE--SITE.DOMAIN/`, so that one device's UI can never read another's cookies.
//!
//! A device origin ([`device`]) is a recorded session: every request and websocket message
//! ([`socket`]) is checked and written to the session's recording before it is passed on, to the
//! device reached through its site's edge or directly, over TLS to its pinned certificate
//! ([`upstream`]).

mod bodies;
mod device;
mod headers;
mod socket;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use approvals::actions::ActionError;
use approvals::actions::Browser;
use approvals::store::WebTarget;
use approvals::web::html::{esc, time};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use crate::node::Node;
use crate::web::Serving;

/// The session cookie's name: `__Host-` makes browsers refuse it unless it is Secure, host-only
/// and for `/`, so a sibling host (a device UI) cannot plant one for the sign-in page.
const COOKIE: &str = "__Host-postern_web";

/// Requests of the front door that may wait on the database at once: the rest are told the
/// broker is busy, so that a flood here cannot starve the SSH front door of the shared pool.
const DB_AT_ONCE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WebDoorError {
    #[error("web_devices_listen is set but web_devices_domain is not")]
    NoDomain,
    #[error("web_devices_listen {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("the device web front door's certificate: {0}")]
    Certificate(String),
    #[error("web_devices_url {0}: it must be https://{1}[:PORT], where the sign-in page is")]
    Url(String, String),
    #[error("web_devices_cert and web_devices_key go together: give both, or neither")]
    HalfCertificate,
}

/// What every request of the front door shares.
pub struct WebDoor {
    actions: approvals::Actions,
    domain: String,
    db: tokio::sync::Semaphore,
    /// The sessions the device origins record into, their policy and revocation watch.
    ctx: Arc<crate::session::Ctx>,
    /// `:PORT` in device origins' links, when browsers reach the door on another port than 443.
    port_suffix: String,
    /// One-time handoffs from the sign-in page to a device origin, by the token's hash.
    handoffs: Mutex<HashMap<String, device::Handoff>>,
    /// Open device web sessions, by their cookie's hash.
    devices: Mutex<HashMap<String, Arc<device::DeviceSession>>>,
    /// Bytes of each body kept in the recording (`web_devices_record_bodies`); 0 for none.
    record_bodies: usize,
}

/// The front door as vendors' browsers reach it: `web_devices_url`, or `https://DOMAIN:PORT`.
pub fn public_url(cfg: &crate::config::Config) -> Option<String> {
    let domain = cfg.web_devices_domain.as_deref()?;
    if cfg.web_devices_listen == "off" {
        return None;
    }
    if let Some(url) = &cfg.web_devices_url {
        return Some(url.trim_end_matches('/').to_owned());
    }
    let port = cfg.web_devices_listen.rsplit_once(':')?.1;
    Some(format!("https://{domain}:{port}"))
}

pub use approvals::web::{random_token as new_token, token_hash};

/// Binds the front door on `addr` with its certificate (the configured one, or one from
/// Postern's own web CA for the domain and its wildcard).
pub async fn bind(
    node: &Node,
    addr: &str,
    limits: crate::web::Limits,
    ctx: Arc<crate::session::Ctx>,
) -> Result<(SocketAddr, Serving), WebDoorError> {
    let domain = node
        .cfg
        .web_devices_domain
        .clone()
        .ok_or(WebDoorError::NoDomain)?
        .to_ascii_lowercase();
    if let Some(url) = &node.cfg.web_devices_url {
        let ok = url::Url::parse(url).is_ok_and(|u| {
            u.scheme() == "https"
                && u.host_str()
                    .is_some_and(|h| h.eq_ignore_ascii_case(&domain))
        });
        if !ok {
            return Err(WebDoorError::Url(url.clone(), domain));
        }
    }
    if node.cfg.web_devices_cert.is_some() != node.cfg.web_devices_key.is_some() {
        return Err(WebDoorError::HalfCertificate);
    }
    let (cert, key) = certificate(node, &domain)?;
    let config = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key)
        .await
        .map_err(|e| WebDoorError::Certificate(e.to_string()))?;
    let listener = std::net::TcpListener::bind(addr).map_err(|error| WebDoorError::Listen {
        addr: addr.to_owned(),
        error,
    })?;
    let local = listener
        .local_addr()
        .map_err(|error| WebDoorError::Listen {
            addr: addr.to_owned(),
            error,
        })?;
    let state = Arc::new(WebDoor {
        record_bodies: node.cfg.web_devices_record_bodies.min(bodies::MAX_KEPT),
        actions: node.actions(),
        port_suffix: public_url(&node.cfg)
            .and_then(|u| url::Url::parse(&u).ok()?.port())
            .map(|p| format!(":{p}"))
            .unwrap_or_default(),
        domain,
        db: tokio::sync::Semaphore::new(DB_AT_ONCE),
        ctx,
        handoffs: Mutex::default(),
        devices: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/", axum::routing::get(home))
        .route("/enter/{token}", axum::routing::get(enter))
        .route("/open/{site}/{device}", axum::routing::get(open))
        .route(
            "/static/style.css",
            axum::routing::get(approvals::web::style),
        )
        .fallback(axum::routing::any(elsewhere))
        .layer(axum::middleware::from_fn_with_state(state.clone(), by_host))
        .with_state(state);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let serving = crate::web::tls_serving(listener, config, &limits, app).map_err(|error| {
        WebDoorError::Listen {
            addr: addr.to_owned(),
            error,
        }
    })?;
    Ok((local, serving))
}

/// The configured certificate and key, or a fresh one from Postern's web CA.
fn certificate(node: &Node, domain: &str) -> Result<(Vec<u8>, Vec<u8>), WebDoorError> {
    let failed = |e: String| WebDoorError::Certificate(e);
    if let (Some(cert), Some(key)) = (&node.cfg.web_devices_cert, &node.cfg.web_devices_key) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| failed(format!("{}: {e}", p.display())))
        };
        return Ok((read(cert)?, read(key)?));
    }
    let keys = node.data.keys();
    let ca = crate::edge::ca::LocalCa::load_or_create(
        &keys.join("web_ca.key"),
        &keys.join("web_ca.crt"),
        "Postern device web CA",
        Some(domain),
    )
    .map_err(|e| failed(e.to_string()))?;
    let (cert, key) = ca
        .server_certificate(&[domain.to_owned(), format!("*.{domain}")])
        .map_err(|e| failed(e.to_string()))?;
    Ok((cert.into_bytes(), key.into_bytes()))
}

/// The request's host, lower-case, without its port: the Host header (HTTP/1.1) or the
/// request's authority (HTTP/2).
fn host(headers: &HeaderMap, uri: &Uri) -> String {
    let raw = (headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    without_port(raw)
}

/// `HOST[:PORT]` as its host, lower-case.
pub(super) fn without_port(raw: &str) -> String {
    let bare = match raw.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => raw,
    };
    bare.to_ascii_lowercase()
}

/// A page of the front door: no caching, no framing, no referrer (a link's token must not leak).
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = approvals::web::html::document(title, &format!("<main>{body}</main>"));
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    // Stricter than the approvers' pages: these pages run no script and show no image.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'"),
    );
    approvals::web::security_headers(h, true);
    r
}

/// A token or cookie as Postern makes them (64 lower-case hex digits): anything else is refused
/// before the database is asked.
fn well_formed(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A turn at the database, if one is free.
fn db_turn(door: &WebDoor) -> Option<tokio::sync::SemaphorePermit<'_>> {
    door.db.try_acquire().ok()
}

/// What a request is told when every turn at the database is taken.
fn busy() -> Response {
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "the broker is busy; try again in a moment",
    )
}

fn refused(status: StatusCode, line: &str) -> Response {
    let body = format!(
        r#"<h1>Postern</h1><p class="error">{}</p><p>Sign in from your terminal: <code>ssh YOU:web@BROKER</code> prints a link.</p>"#,
        esc(line)
    );
    page(status, "Device web access", &body)
}

/// `GET /enter/TOKEN` on the domain: uses the link once and sets the session cookie.
async fn enter(
    State(door): State<Arc<WebDoor>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(token): Path<String>,
) -> Response {
    if host(&headers, &uri) != door.domain {
        return refused(
            StatusCode::NOT_FOUND,
            "sign-in links open on the sign-in page's own address",
        );
    }
    if !well_formed(&token) {
        return refused(
            StatusCode::FORBIDDEN,
            approvals::actions::LINK_USED_OR_EXPIRED,
        );
    }
    let Some(_turn) = db_turn(&door) else {
        return busy();
    };
    let session = new_token();
    let now = approvals::time::now();
    let browser = Browser {
        source: peer.to_string(),
        agent: (headers.get(header::USER_AGENT))
            .and_then(|v| v.to_str().ok())
            .map(|a| approvals::audit::bounded(a, 200))
            .unwrap_or_default(),
    };
    let entered = (door.actions)
        .enter_web(&token_hash(&token), &token_hash(&session), now, &browser)
        .await;
    match entered {
        Ok((_, until)) => {
            let cookie = approvals::web::set_cookie(COOKIE, &session, "/", (until - now).max(0));
            let mut r = page(StatusCode::SEE_OTHER, "Signed in", "<p>Signed in.</p>");
            let h = r.headers_mut();
            h.insert(header::LOCATION, HeaderValue::from_static("/"));
            h.insert(header::SET_COOKIE, cookie);
            r
        }
        Err(e) => action_refused(e),
    }
}

fn action_refused(e: ActionError) -> Response {
    match e {
        // The detail is for the log, not for whoever holds the link.
        ActionError::Unavailable(_) | ActionError::AuditUnwritable(_) => {
            tracing::warn!(error = %e, "device web sign-in refused");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the broker cannot sign you in right now (an outage, not a refusal); try again shortly",
            )
        }
        other => refused(StatusCode::FORBIDDEN, &other.to_string()),
    }
}

/// The value of the one cookie `name` the request carries, as Postern made it (64 hex digits).
/// Two cookies of one name mean one was planted by a sibling host: neither counts.
fn only_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let prefix = format!("{name}=");
    let found: Vec<&str> = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(prefix.as_str()))
        .collect();
    match found[..] {
        [cookie] if well_formed(cookie) => Some(cookie),
        _ => None,
    }
}

/// The vendor of the request's session cookie, if it is open.
async fn signed_in(door: &WebDoor, headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(cookie) = only_cookie(headers, COOKIE) else {
        return Ok(None);
    };
    let _turn = db_turn(door).ok_or_else(busy)?;
    let now = approvals::time::now();
    (door.ctx.store.web_session(&token_hash(cookie), now))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "device web session lookup failed");
            refused(StatusCode::SERVICE_UNAVAILABLE, crate::session::OUTAGE)
        })
}

/// The signed-in vendor and the device UIs their grants reach now, or the page saying why not.
async fn vendor_targets(
    door: &WebDoor,
    headers: &HeaderMap,
) -> Result<(String, Vec<WebTarget>), Response> {
    let vendor = match signed_in(door, headers).await? {
        Some(v) => v,
        None => return Err(refused(StatusCode::UNAUTHORIZED, "You are not signed in.")),
    };
    let now = approvals::time::now();
    match door.ctx.store.web_targets(&vendor, now).await {
        Ok(t) => Ok((vendor, t)),
        Err(e) => {
            tracing::warn!(error = %e, "device web targets unavailable");
            Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::session::OUTAGE,
            ))
        }
    }
}

/// `GET /` on the domain: the device UIs the vendor's grants reach now.
async fn home(State(door): State<Arc<WebDoor>>, headers: HeaderMap) -> Response {
    let (vendor, targets) = match vendor_targets(&door, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    page(
        StatusCode::OK,
        "Device web UIs",
        &listing(&door, &vendor, &targets),
    )
}

/// The origin of a device's UI: `DEVICE--SITE.DOMAIN`, when both names make a DNS label.
pub fn device_origin(domain: &str, site: &str, device: &str) -> Option<String> {
    let label = format!("{device}--{site}").to_ascii_lowercase();
    // `--` inside a name would make two devices one origin; `xn--` is punycode to browsers.
    let ok = !site.contains("--")
        && !device.contains("--")
        && !label.starts_with("xn--")
        && label.len() <= 63
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    ok.then(|| format!("{label}.{domain}"))
}

fn listing(door: &WebDoor, vendor: &str, targets: &[WebTarget]) -> String {
    let mut body = format!(
        "<h1>Device web UIs</h1><p>Signed in as <b>{}</b>.</p>",
        esc(vendor)
    );
    if targets.is_empty() {
        body += r#"<p class="empty">None of your grants reaches a device web UI now.</p>"#;
    }
    body += r#"<ul class="list">"#;
    for t in targets {
        let name = format!("{}/{}", t.site, t.device);
        let link = device_origin(&door.domain, &t.site, &t.device).map_or_else(
            || format!("{} (its name cannot be a web address)", esc(&name)),
            |_| {
                let open = format!("/open/{}/{}", t.site, t.device);
                format!(r#"<a href="{}">{}</a>"#, esc(&open), esc(&name))
            },
        );
        body += &format!(
            "<li>{link} <small>function {}, until {}</small></li>",
            esc(&t.function),
            time(t.until)
        );
    }
    body + "</ul>"
}

/// Any other path of the sign-in page.
async fn elsewhere() -> Response {
    refused(StatusCode::NOT_FOUND, "there is nothing here")
}

/// Requests for a device origin go to the device; the sign-in page's own host to its routes.
async fn by_host(
    State(door): State<Arc<WebDoor>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = host(req.headers(), req.uri());
    if host == door.domain {
        return next.run(req).await;
    }
    if !host.ends_with(&format!(".{}", door.domain)) {
        return refused(StatusCode::NOT_FOUND, "there is nothing here");
    }
    match req.uri().path().strip_prefix("/.postern/enter/") {
        Some(token) => {
            let token = token.to_owned();
            device::enter(&door, peer, &host, &token).await
        }
        None => device::request(&door, &host, req).await,
    }
}

/// `GET /open/SITE/DEVICE` on the sign-in page: hands the vendor to the device's own origin
/// with a one-time token (its cookie cannot be read there).
async fn open(
    State(door): State<Arc<WebDoor>>,
    headers: HeaderMap,
    Path((site, device)): Path<(String, String)>,
) -> Response {
    let (vendor, targets) = match vendor_targets(&door, &headers).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(t) = targets
        .into_iter()
        .find(|t| t.site == site && t.device == device)
    else {
        return refused(
            StatusCode::FORBIDDEN,
            "none of your grants reaches that device's web UI now",
        );
    };
    let (Some(origin), Ok(web)) = (
        device_origin(&door.domain, &t.site, &t.device),
        crate::device_web::WebEndpoint::parse(&t.url),
    ) else {
        return refused(
            StatusCode::NOT_FOUND,
            "that device's name cannot be a web address",
        );
    };
    // Names that differ only in case are one host name: one origin for two devices would let
    // each UI read the other's cookies.
    match door.ctx.store.web_uis_named_alike(&t.site, &t.device).await {
        Ok(1) => {}
        Ok(_) => {
            return refused(
                StatusCode::CONFLICT,
                "another device's name differs from this one only in case, so their web addresses would be one: the operator must rename one",
            );
        }
        Err(_) => return refused(StatusCode::SERVICE_UNAVAILABLE, crate::session::OUTAGE),
    }
    let (pin, authorization) = match door.ctx.store.device_web(&t.site, &t.device).await {
        Ok(Some(w)) => (w.cert_sha256.clone(), headers::basic_authorization(&w)),
        Ok(None) => return refused(StatusCode::NOT_FOUND, "that device has no web UI now"),
        Err(_) => return refused(StatusCode::SERVICE_UNAVAILABLE, crate::session::OUTAGE),
    };
    let token = new_token();
    let to = format!(
        "https://{origin}{}/.postern/enter/{token}",
        door.port_suffix
    );
    let mut handoffs = door.handoffs.lock().unwrap_or_else(|p| p.into_inner());
    // Handoffs never used are dropped once stale (they hold a device's sign-in, if any).
    handoffs.retain(|_, h| h.made.elapsed() < device::HANDOFF_TTL);
    handoffs.insert(
        token_hash(&token),
        device::Handoff {
            vendor,
            site: t.site,
            device: t.device,
            function: t.function,
            origin,
            url: web.to_string(),
            pin,
            authorization,
            port: web.port,
            made: std::time::Instant::now(),
        },
    );
    drop(handoffs);
    let mut r = refused(StatusCode::SEE_OTHER, "Opening the device.");
    if let Ok(v) = HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
