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
use futures::StreamExt;
use recorder::events::Event;

use super::headers::{answer, content_length, not_for_the_device, to_device};
use super::upstream::{self, DeviceClient};
use super::{WebDoor, bodies, new_token, refused, socket, token_hash, well_formed};
use crate::session::{EndReason, LiveSession};

/// The device session's cookie (host-only: each device origin has its own).
pub(super) const DEVICE_COOKIE: &str = "__Host-postern_dev";
/// How long a handoff from the sign-in page to a device origin may take.
pub(super) const HANDOFF_TTL: Duration = Duration::from_secs(30);
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

/// An open device web session, by its cookie's hash.
pub(super) struct DeviceSession {
    pub(super) live: Arc<LiveSession>,
    origin: String,
    pub(super) url: String,
    port: u16,
    client: DeviceClient,
    /// Sent instead of the browser's own, for a UI Postern signs in to.
    pub(super) authorization: Option<HeaderValue>,
    /// When the last request or websocket message came.
    pub(super) last: std::sync::Mutex<Instant>,
    /// Bytes of each body kept in the recording; 0 for none.
    record_bodies: usize,
    /// Websockets open now: a session with one is not idle.
    pub(super) sockets: AtomicUsize,
    /// Answers streaming now: a session with one is not idle either.
    streaming: AtomicUsize,
    /// The recording's channel number of the next websocket.
    next_socket: AtomicU32,
}

/// Closes the session once it has been idle for [`IDLE`], and forgets it once closed.
async fn close_when_idle(door: Arc<WebDoor>, key: String, ds: Arc<DeviceSession>) {
    let mut stopping = ds.live.stopping();
    loop {
        let mut idle = ds.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        if ds.sockets.load(Ordering::SeqCst) + ds.streaming.load(Ordering::SeqCst) > 0 {
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
    let ds = Arc::new(DeviceSession {
        live,
        origin: hand.origin,
        url: hand.url,
        port: hand.port,
        client,
        authorization: hand.authorization,
        record_bodies: door.record_bodies,
        last: std::sync::Mutex::new(Instant::now()),
        sockets: AtomicUsize::new(0),
        streaming: AtomicUsize::new(0),
        next_socket: AtomicU32::new(1),
    });
    admit(door, ds)
}

/// Keeps an opened device session under a new cookie, closed once idle; sends the browser to
/// the device's front page with the cookie.
fn admit(door: &Arc<WebDoor>, ds: Arc<DeviceSession>) -> Response {
    let cookie = new_token();
    let max_age = (ds.live.ends_at() - approvals::time::now()).max(0);
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
    if let Some(refusal) = not_for_the_device(req.method(), req.uri(), req.headers(), host) {
        return refusal;
    }
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
    // Revoked while the body was arriving: nothing reaches the device.
    if ds.live.is_closed() {
        return refused(StatusCode::FORBIDDEN, "this device web session is over");
    }
    let Some(out) = to_device(ds, &parts, body.clone(), upgrade) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the request could not be passed on",
        );
    };
    let line = RequestLine {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        request_bytes: body.len() as u64,
    };
    if !request_noted(ds, &line, &body) {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session cannot be recorded; it is over",
        );
    }
    let slot = match upgrade {
        true => match SocketSlot::take(ds) {
            Some(slot) => Some(slot),
            None => {
                return refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    "this device web session has as many websockets open as it may",
                );
            }
        },
        false => None,
    };
    // Sent and recorded by a task of its own: a browser that goes away mid-request does not
    // leave a request at the device without its record.
    let exchange = tokio::spawn(send_and_record(ds.clone(), out, line));
    let Ok((sent, recorded)) = exchange.await else {
        return refused(StatusCode::BAD_GATEWAY, "the device could not be reached");
    };
    // Evidence first: an answer that could not be recorded is not given.
    if !recorded {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session cannot be recorded; it is over",
        );
    }
    match sent {
        Ok(r) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
            open_socket(ds, r, browser_side.zip(slot), parts.uri.path())
        }
        Ok(r) if ds.record_bodies == 0 => answer(r.map(|b| until_closed(ds, Body::new(b))), false),
        Ok(r) => match answer_recorded(ds, r).await {
            Ok(r) => answer(r.map(|b| until_closed(ds, b)), false),
            Err(refusal) => refusal,
        },
        Err(why) => unreachable_device(ctx, ds, why).await,
    }
}

/// The device accepted a websocket: recorded as opened on a channel of its own, then relayed
/// once both sides have switched protocols.
fn open_socket(
    ds: &Arc<DeviceSession>,
    mut r: hyper::Response<hyper::body::Incoming>,
    asked: Option<(hyper::upgrade::OnUpgrade, SocketSlot<'_>)>,
    path: &str,
) -> Response {
    let Some((browser_side, slot)) = asked else {
        return refused(
            StatusCode::BAD_GATEWAY,
            "the device switched protocols unasked",
        );
    };
    let channel = ds.next_socket.fetch_add(1, Ordering::SeqCst);
    let opened = Event::WebSocket {
        path: path.to_owned(),
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
    // The relay gives the place back when the socket ends.
    slot.keep();
    tokio::spawn(socket::relay(
        ds.clone(),
        channel,
        browser_side,
        device_side,
    ));
    answer(r.map(Body::new), true)
}

/// A websocket's place in the session's cap ([`socket::MAX_SOCKETS`]), taken before the
/// handshake so that handshakes at once cannot pass it; given back when dropped, unless kept
/// for a socket that opened.
struct SocketSlot<'a>(Option<&'a DeviceSession>);

impl<'a> SocketSlot<'a> {
    fn take(ds: &'a DeviceSession) -> Option<SocketSlot<'a>> {
        if ds.sockets.fetch_add(1, Ordering::SeqCst) >= socket::MAX_SOCKETS {
            ds.sockets.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(SocketSlot(Some(ds)))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for SocketSlot<'_> {
    fn drop(&mut self) {
        if let Some(ds) = self.0 {
            ds.sockets.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What the recording says of a request, before it is sent (`web.sent`) and with its answer
/// (`web.request`).
struct RequestLine {
    method: String,
    path: String,
    query: Option<String>,
    request_bytes: u64,
}

/// The request as it is about to be sent: its body's first bytes (when kept) and `web.sent`.
fn request_noted(ds: &DeviceSession, line: &RequestLine, body: &[u8]) -> bool {
    if ds.record_bodies > 0 && !body.is_empty() {
        let kept = bodies::event(false, body, ds.record_bodies, true, None);
        if !noted_or_closed(ds, 0, &kept) {
            return false;
        }
    }
    let sent = Event::WebSent {
        method: line.method.clone(),
        path: line.path.clone(),
        query: line.query.clone(),
        request_bytes: line.request_bytes,
    };
    noted_or_closed(ds, 0, &sent)
}

/// How long the device may take to begin its answer (a long poll's hold included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends the request and records it with the device's answer's status, size and time (or why
/// there was none). Returns the answer, or why the device failed, and whether the record was
/// written.
async fn send_and_record(
    ds: Arc<DeviceSession>,
    out: hyper::Request<Body>,
    line: RequestLine,
) -> (Result<hyper::Response<hyper::body::Incoming>, String>, bool) {
    let began = Instant::now();
    let sent = match tokio::time::timeout(ANSWER_TIMEOUT, ds.client.request(out)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer in {} s", ANSWER_TIMEOUT.as_secs())),
    };
    let answered = Event::WebRequest {
        method: line.method,
        path: line.path,
        query: line.query,
        status: sent.as_ref().map_or(0, |r| r.status().as_u16()),
        request_bytes: line.request_bytes,
        response_bytes: sent.as_ref().ok().and_then(|r| content_length(r.headers())),
        millis: began.elapsed().as_millis() as u64,
        error: sent.as_ref().err().cloned(),
    };
    let recorded = noted_or_closed(&ds, 0, &answered);
    (sent, recorded)
}

/// The answer's body, cut off once the session ends: a camera's endless stream or a large
/// download stops with a revocation, as the next request would be refused. While it streams the
/// session is not idle.
fn until_closed(ds: &Arc<DeviceSession>, body: Body) -> Body {
    let mut stopping = ds.live.stopping();
    let stopped = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let streaming = Streaming::new(ds.clone());
    let counted = body.into_data_stream().map(move |chunk| {
        let _held = &streaming;
        chunk
    });
    Body::from_stream(counted.take_until(Box::pin(stopped)))
}

/// An answer being passed on, counted in [`DeviceSession::streaming`] until it is dropped.
struct Streaming(Arc<DeviceSession>);

impl Streaming {
    fn new(ds: Arc<DeviceSession>) -> Streaming {
        ds.streaming.fetch_add(1, Ordering::SeqCst);
        Streaming(ds)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.streaming.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The device's answer with its body's first bytes recorded before any of it is passed on.
async fn answer_recorded(
    ds: &DeviceSession,
    r: hyper::Response<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, Response> {
    let total = content_length(r.headers());
    let (parts, body) = r.into_parts();
    let Ok((kept, complete, whole)) = bodies::prefix(body, ds.record_bodies).await else {
        return Err(refused(
            StatusCode::BAD_GATEWAY,
            "the device's answer broke off",
        ));
    };
    let noted = bodies::event(true, &kept, ds.record_bodies, complete, total);
    if !kept.is_empty() && !noted_or_closed(ds, 0, &noted) {
        return Err(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session cannot be recorded; it is over",
        ));
    }
    Ok(hyper::Response::from_parts(parts, whole))
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

/// The device could not be reached: audited (a certificate other than the pinned one as a host
/// key mismatch) and said to the vendor.
async fn unreachable_device(
    ctx: &crate::session::Ctx,
    ds: &DeviceSession,
    why: String,
) -> Response {
    // A certificate other than the pinned one is someone in the middle, or a device replaced:
    // either way the operator must look, as for an SSH host key.
    let mismatch = why.contains(crate::device_web::NOT_PINNED);
    let event = match mismatch {
        true => approvals::audit::AuditEvent::DeviceHostkeyMismatch,
        false => approvals::audit::AuditEvent::DeviceConnectFailed,
    };
    let t = &ds.live.target;
    let fields = serde_json::json!({"session": ds.live.id, "site": t.site,
        "device": t.device, "web": ds.url, "error": why});
    ctx.audit(event, fields).await;
    // The details (addresses inside the site, node names) are the operator's, in the audit log.
    let said = match mismatch {
        true => {
            "the device's certificate is not the one pinned for it: it was not trusted, and the operator was told"
        }
        false => "the device could not be reached; if this goes on, tell the operator",
    };
    refused(StatusCode::BAD_GATEWAY, said)
}

/// An error with its causes (the pin refusal is a cause of the client's connect error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        parts.push(s.to_string());
        next = s.source();
    }
    parts.join(": ")
}
