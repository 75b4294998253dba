//! A device's own origin, `DEVICE--SITE.DOMAIN`: the one-time handoff from the sign-in page, then
//! every request proxied to the device's web UI over TLS to its pinned certificate, each checked
//! by the policy (window, contract, revocation: the session ends at once) and written to the
//! session's hash-chained recording before its answer reaches the browser.
//!
//! A device web session is a [`LiveSession`] without an SSH connection: the same recording,
//! supervisor, revocation watch and seal as a shell. Its cookie is held by the node that opened
//! it (a load balancer in front of several nodes must keep a browser on one node).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use approvals::{AccessRequest, Channel, Refusal};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use recorder::events::Event;

use super::upstream::{self, DeviceClient};
use super::{WebDoor, new_token, refused, socket, token_hash, well_formed};
use crate::session::{EndReason, LiveSession};

/// The device session's cookie (host-only: each device origin has its own).
pub(super) const DEVICE_COOKIE: &str = "__Host-postern_dev";
/// How long a handoff from the sign-in page to a device origin may take.
const HANDOFF_TTL: Duration = Duration::from_secs(30);
/// A device web session without a request for this long is over (a browser has no connection
/// whose end would say the vendor left).
const IDLE: Duration = Duration::from_secs(600);
/// The largest request body passed to a device (firmware uploads go over sftp).
const MAX_REQUEST_BODY: usize = 16 << 20;

/// A device the sign-in page is handing a vendor to.
pub(super) struct Handoff {
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub origin: String,
    pub url: String,
    pub pin: Option<String>,
    /// `Basic ...` for a UI Postern signs in to itself (see [`basic_authorization`]).
    pub authorization: Option<HeaderValue>,
    pub port: u16,
    pub made: Instant,
}

/// The `Authorization` header that signs in to a device UI behind HTTP basic auth, marked
/// sensitive (never logged).
pub(super) fn basic_authorization(w: &approvals::store::DeviceWeb) -> Option<HeaderValue> {
    use base64::Engine;
    let (user, password) = (w.basic_user.as_ref()?, w.basic_password.as_ref()?);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// An open device web session, by its cookie's hash.
pub(super) struct DeviceSession {
    pub(super) live: Arc<LiveSession>,
    origin: String,
    url: String,
    port: u16,
    client: DeviceClient,
    /// Sent instead of the browser's own, for a UI Postern signs in to.
    authorization: Option<HeaderValue>,
    /// When the last request or websocket message came.
    pub(super) last: std::sync::Mutex<Instant>,
    /// Websockets open now: a session with one is not idle.
    pub(super) sockets: AtomicUsize,
    /// The recording's channel number of the next websocket.
    next_socket: AtomicU32,
}

/// Closes the session once it has been idle for [`IDLE`], and forgets it once closed.
async fn close_when_idle(door: Arc<WebDoor>, key: String, ds: Arc<DeviceSession>) {
    let mut stopping = ds.live.stopping();
    loop {
        let mut idle = ds.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        if ds.sockets.load(Ordering::SeqCst) > 0 {
            idle = Duration::ZERO;
        }
        if idle >= IDLE {
            ds.live.request_close(EndReason::VendorDisconnected);
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE.saturating_sub(idle).max(Duration::from_secs(1))) => {}
            _ = stopping.changed() => {}
        }
        if ds.live.is_closed() {
            (door.devices.lock().unwrap_or_else(|p| p.into_inner())).remove(&key);
            return;
        }
    }
}

/// `GET /.postern/enter/TOKEN` on a device origin: opens the recorded session and its cookie.
pub(super) async fn enter(
    door: &Arc<WebDoor>,
    peer: SocketAddr,
    host: &str,
    token: &str,
) -> Response {
    let hand = match well_formed(token) {
        true => {
            (door.handoffs.lock().unwrap_or_else(|p| p.into_inner())).remove(&token_hash(token))
        }
        false => None,
    };
    let Some(hand) = hand.filter(|h| h.origin == host && h.made.elapsed() < HANDOFF_TTL) else {
        return refused(
            StatusCode::FORBIDDEN,
            "this link to the device was used already or has expired: open the device again from your list",
        );
    };
    let req = AccessRequest {
        vendor: hand.vendor.clone(),
        site: hand.site.clone(),
        device: hand.device.clone(),
        function: Some(hand.function.clone()),
        channel: Some(Channel::Web(hand.port)),
    };
    let allowed = match approvals::PolicyGate::new(&door.ctx.store)
        .check(&req)
        .await
    {
        Ok(a) => a,
        Err(Refusal::Deny(d)) => return refused(StatusCode::FORBIDDEN, &d.to_string()),
        Err(Refusal::Unavailable(_)) => {
            return refused(StatusCode::SERVICE_UNAVAILABLE, crate::session::OUTAGE);
        }
    };
    let edges = door.ctx.edges.clone();
    let client = match upstream::client(edges, &hand.site, &hand.device, &hand.url, hand.pin) {
        Ok(c) => c,
        Err(e) => return refused(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let target = crate::login::Target {
        vendor: hand.vendor,
        site: hand.site,
        device: hand.device,
        function: Some(hand.function),
        service: None,
    };
    let live = match LiveSession::start(&door.ctx, target, &allowed, peer.to_string(), None).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "device web session could not start");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session could not be started (it could not be recorded); try again shortly",
            );
        }
    };
    let cookie = new_token();
    let max_age = (live.ends_at() - approvals::time::now()).max(0);
    let ds = Arc::new(DeviceSession {
        live,
        origin: hand.origin,
        url: hand.url,
        port: hand.port,
        client,
        authorization: hand.authorization,
        last: std::sync::Mutex::new(Instant::now()),
        sockets: AtomicUsize::new(0),
        next_socket: AtomicU32::new(1),
    });
    let key = token_hash(&cookie);
    (door.devices.lock().unwrap_or_else(|p| p.into_inner())).insert(key.clone(), ds.clone());
    tokio::spawn(close_when_idle(door.clone(), key, ds));
    let mut r = refused(StatusCode::SEE_OTHER, "Opening the device.");
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    let set = format!(
        "{DEVICE_COOKIE}={cookie}; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}"
    );
    if let Ok(v) = HeaderValue::from_str(&set) {
        h.insert(header::SET_COOKIE, v);
    }
    r
}

/// The session of this origin's cookie.
fn session_of(door: &WebDoor, headers: &HeaderMap, host: &str) -> Option<Arc<DeviceSession>> {
    let cookie = super::only_cookie(headers, DEVICE_COOKIE)?;
    let devices = door.devices.lock().unwrap_or_else(|p| p.into_inner());
    (devices.get(&token_hash(cookie)))
        .filter(|d| d.origin == host)
        .cloned()
}

/// Any other request on a device origin: checked, recorded, passed to the device.
pub(super) async fn request(door: &WebDoor, host: &str, req: Request) -> Response {
    let Some(ds) = session_of(door, req.headers(), host) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "open this device from your list of device web UIs first",
        );
    };
    let live = &ds.live;
    if live.is_closed() {
        // Forgotten here: the cookie of a closed session opens nothing any more.
        (door.devices.lock().unwrap_or_else(|p| p.into_inner()))
            .retain(|_, d| !Arc::ptr_eq(&d.live, live));
        return refused(StatusCode::FORBIDDEN, "this device web session is over");
    }
    let check = AccessRequest {
        channel: Some(Channel::Web(ds.port)),
        ..live.request(None)
    };
    match approvals::PolicyGate::new(&door.ctx.store)
        .check(&check)
        .await
    {
        Ok(_) => {}
        Err(Refusal::Deny(d)) => {
            live.request_close(EndReason::Revoked(d.to_string()));
            return refused(StatusCode::FORBIDDEN, &d.to_string());
        }
        Err(Refusal::Unavailable(_)) => {
            return refused(StatusCode::SERVICE_UNAVAILABLE, crate::session::OUTAGE);
        }
    }
    *ds.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    proxy(&door.ctx, &ds, req).await
}

/// Headers that belong to one hop, not to the request or answer.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The browser's cookies without Postern's own.
fn device_cookies(headers: &HeaderMap) -> Option<String> {
    let kept: Vec<&str> = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with("__Host-postern_"))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

async fn proxy(ctx: &crate::session::Ctx, ds: &Arc<DeviceSession>, mut req: Request) -> Response {
    let upgrade = socket::is_upgrade(req.method(), req.headers());
    let browser_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request is too large for a device web UI",
        );
    };
    let Some(out) = to_device(ds, &parts, body.clone(), upgrade) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the request could not be passed on",
        );
    };
    let began = Instant::now();
    let sent = ds.client.request(out).await;
    let (status, response_bytes, error) = match &sent {
        Ok(r) => (r.status().as_u16(), content_length(r.headers()), None),
        Err(e) => (0, None, Some(error_chain(e))),
    };
    let noted = Event::WebRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        status,
        request_bytes: body.len() as u64,
        response_bytes,
        millis: began.elapsed().as_millis() as u64,
        error: error.clone(),
    };
    // Evidence first: an answer that could not be recorded is not given.
    if !noted_or_closed(ds, 0, &noted) {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session cannot be recorded; it is over",
        );
    }
    match sent {
        Ok(mut r) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let Some(browser_side) = browser_side else {
                return refused(
                    StatusCode::BAD_GATEWAY,
                    "the device switched protocols unasked",
                );
            };
            let channel = ds.next_socket.fetch_add(1, Ordering::SeqCst);
            let opened = Event::WebSocket {
                path: parts.uri.path().to_owned(),
                protocol: (r.headers().get(header::SEC_WEBSOCKET_PROTOCOL))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            };
            if !noted_or_closed(ds, channel, &opened) {
                return refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the session cannot be recorded; it is over",
                );
            }
            let device_side = hyper::upgrade::on(&mut r);
            tokio::spawn(socket::relay(
                ds.clone(),
                channel,
                browser_side,
                device_side,
            ));
            answer(r, true)
        }
        Ok(r) => answer(r, false),
        Err(_) => unreachable_device(ctx, ds, error.unwrap_or_default()).await,
    }
}

/// Writes `event` to the recording; a recording that fails ends the session (`false`).
fn noted_or_closed(ds: &DeviceSession, channel: u32, event: &Event) -> bool {
    match ds.live.recording.write(channel, event) {
        Ok(()) => true,
        Err(e) => {
            ds.live
                .request_close(EndReason::RecordingFailed(e.to_string()));
            false
        }
    }
}

/// The browser's request as the device is sent it: its own URL, the browser's headers without
/// the hop's or Postern's cookies, and for a websocket the upgrade (without extensions, so that
/// each message can be read to be recorded).
fn to_device(
    ds: &DeviceSession,
    parts: &axum::http::request::Parts,
    body: axum::body::Bytes,
    upgrade: bool,
) -> Option<hyper::Request<Body>> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{pq}", ds.url));
    let injected = ds.authorization.is_some();
    let kept = (parts.headers.iter()).filter(|(k, _)| {
        !hop_by_hop(k)
            && *k != header::COOKIE
            && *k != header::SEC_WEBSOCKET_EXTENSIONS
            && !(injected && *k == header::AUTHORIZATION)
    });
    for (k, v) in kept {
        out = out.header(k, v);
    }
    if let Some(a) = &ds.authorization {
        out = out.header(header::AUTHORIZATION, a.clone());
    }
    if upgrade {
        out = out
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket");
    }
    if let Some(c) = device_cookies(&parts.headers) {
        out = out.header(header::COOKIE, c);
    }
    out.body(Body::from(body)).ok()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    (headers.get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The device could not be reached: audited (a certificate other than the pinned one as a host
/// key mismatch) and said to the vendor.
async fn unreachable_device(
    ctx: &crate::session::Ctx,
    ds: &DeviceSession,
    why: String,
) -> Response {
    // A certificate other than the pinned one is someone in the middle, or a device replaced:
    // either way the operator must look, as for an SSH host key.
    let event = match why.contains(crate::device_web::NOT_PINNED) {
        true => approvals::audit::AuditEvent::DeviceHostkeyMismatch,
        false => approvals::audit::AuditEvent::DeviceConnectFailed,
    };
    let t = &ds.live.target;
    let fields = serde_json::json!({"session": ds.live.id, "site": t.site,
        "device": t.device, "web": ds.url, "error": why});
    ctx.audit(event, fields).await;
    refused(
        StatusCode::BAD_GATEWAY,
        &format!("the device could not be reached ({why})"),
    )
}

/// An error with its causes (the pin refusal is a cause of reqwest's connect error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        parts.push(s.to_string());
        next = s.source();
    }
    parts.join(": ")
}

/// The device's answer for the browser: its status, headers (cookies kept to this origin) and
/// body, streamed; for a websocket's `101` the upgrade headers too.
fn answer(r: hyper::Response<hyper::body::Incoming>, switching: bool) -> Response {
    let mut out = Response::builder().status(r.status());
    let passed = |k: &header::HeaderName| {
        !hop_by_hop(k) || (switching && (*k == header::UPGRADE || *k == header::CONNECTION))
    };
    for (k, v) in r.headers().iter().filter(|(k, _)| passed(k)) {
        if *k == header::SET_COOKIE {
            // A device's cookie stays on its own origin: no Domain attribute reaches the browser.
            let kept: Vec<&str> = (v.to_str().unwrap_or_default().split(';'))
                .filter(|a| !a.trim().to_ascii_lowercase().starts_with("domain="))
                .collect();
            if let Ok(v) = HeaderValue::from_str(&kept.join(";")) {
                out = out.header(k, v);
            }
            continue;
        }
        out = out.header(k, v);
    }
    out.body(Body::new(r.into_body())).unwrap_or_else(|_| {
        refused(
            StatusCode::BAD_GATEWAY,
            "the device's answer could not be passed on",
        )
    })
}
