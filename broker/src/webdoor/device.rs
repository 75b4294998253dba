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
use std::time::{Duration, Instant};

use approvals::{AccessRequest, Channel, Refusal};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use recorder::events::Event;

use super::{WebDoor, new_token, refused, token_hash, well_formed};
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
    pub port: u16,
    pub made: Instant,
}

/// An open device web session, by its cookie's hash.
pub(super) struct DeviceSession {
    live: Arc<LiveSession>,
    origin: String,
    url: String,
    port: u16,
    client: reqwest::Client,
    /// When the last request came.
    last: std::sync::Mutex<Instant>,
}

/// Closes the session once it has been idle for [`IDLE`], and forgets it once closed.
async fn close_when_idle(door: Arc<WebDoor>, key: String, ds: Arc<DeviceSession>) {
    let mut stopping = ds.live.stopping();
    loop {
        let idle = ds.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
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

/// A client that trusts exactly the device's pinned certificate (or plain HTTP).
fn client(pin: Option<String>) -> Result<reqwest::Client, String> {
    let verifier = crate::device_web::PinnedCert::new(pin);
    let tls = verifier.client_config().map_err(|e| e.to_string())?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
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
    let client = match client(hand.pin.clone()) {
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
        last: std::sync::Mutex::new(Instant::now()),
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

async fn proxy(ctx: &crate::session::Ctx, ds: &DeviceSession, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
        return refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request is too large for a device web UI",
        );
    };
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = ds
        .client
        .request(parts.method.clone(), format!("{}{pq}", ds.url));
    for (k, v) in parts
        .headers
        .iter()
        .filter(|(k, _)| !hop_by_hop(k) && *k != header::COOKIE)
    {
        out = out.header(k, v);
    }
    if let Some(c) = device_cookies(&parts.headers) {
        out = out.header(header::COOKIE, c);
    }
    let request_bytes = body.len() as u64;
    let began = Instant::now();
    let sent = out.body(body).send().await;
    let millis = began.elapsed().as_millis() as u64;
    let (status, response_bytes, error) = match &sent {
        Ok(r) => (r.status().as_u16(), r.content_length(), None),
        Err(e) => (0, None, Some(error_chain(e))),
    };
    let noted = Event::WebRequest {
        method: parts.method.to_string(),
        path,
        query,
        status,
        request_bytes,
        response_bytes,
        millis,
        error: error.clone(),
    };
    // Evidence first: an answer that could not be recorded is not given.
    if let Err(e) = ds.live.recording.write(0, &noted) {
        ds.live
            .request_close(EndReason::RecordingFailed(e.to_string()));
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session cannot be recorded; it is over",
        );
    }
    match sent {
        Ok(r) => answer(r),
        Err(_) => {
            let why = error.unwrap_or_default();
            // A certificate other than the pinned one is someone in the middle, or a device
            // replaced: either way the operator must look, as for an SSH host key.
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
    }
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
/// body, streamed.
fn answer(r: reqwest::Response) -> Response {
    let mut out = Response::builder().status(r.status());
    for (k, v) in r.headers().iter().filter(|(k, _)| !hop_by_hop(k)) {
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
    out.body(Body::from_stream(r.bytes_stream()))
        .unwrap_or_else(|_| {
            refused(
                StatusCode::BAD_GATEWAY,
                "the device's answer could not be passed on",
            )
        })
}
