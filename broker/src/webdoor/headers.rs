//! What crosses between the browser and the device, and what does not: the methods and
//! origins a device is sent requests from, the headers of one hop, Postern's own cookies (never
//! to the device) and the device's cookies (kept to its own origin), and the credential Postern
//! signs in to a basic-auth UI with in place of the browser's.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::device::DeviceSession;
use super::refused;

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

/// A request no device is sent: a method that echoes or tunnels (TRACE would give back the
/// credential Postern signs in with), or one started by another origin's page. Device origins
/// are one site, so their SameSite cookies reach each other: without this, one device's page
/// could drive another device, or read its websocket, with that device's session.
pub(super) fn not_for_the_device(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    host: &str,
) -> Option<Response> {
    if matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT") {
        return Some(refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "that method is not passed to devices",
        ));
    }
    let other_page = || {
        Some(refused(
            StatusCode::FORBIDDEN,
            "a request from another origin's page is not passed to this device",
        ))
    };
    // A browser says where a request comes from even without `Origin` (an image, a link). From
    // another site or a sibling device only a navigation to the UI's front page goes through:
    // that is how the list hands the vendor over.
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if matches!(text("sec-fetch-site"), Some("same-site" | "cross-site")) {
        let front_page = method == axum::http::Method::GET
            && text("sec-fetch-mode") == Some("navigate")
            && uri.path() == "/"
            && uri.query().is_none();
        if !front_page {
            return other_page();
        }
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or_default();
    let from = super::without_port(origin.strip_prefix("https://").unwrap_or_default());
    match from.eq_ignore_ascii_case(host) {
        true => None,
        false => other_page(),
    }
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
            | "proxy-authorization"
            | "proxy-authenticate"
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

/// The browser's request as the device is sent it: its own URL, the browser's headers without
/// the hop's or Postern's cookies, and for a websocket the upgrade (without extensions, so that
/// each message can be read to be recorded).
pub(super) fn to_device(
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

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    (headers.get(header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The device's answer for the browser: its status, headers (cookies kept to this origin) and
/// body, streamed; for a websocket's `101` the upgrade headers too.
pub(super) fn answer(r: hyper::Response<Body>, switching: bool) -> Response {
    let mut out = Response::builder().status(r.status());
    let passed = |k: &header::HeaderName| {
        !hop_by_hop(k) || (switching && (*k == header::UPGRADE || *k == header::CONNECTION))
    };
    for (k, v) in r.headers().iter().filter(|(k, _)| passed(k)) {
        if *k == header::SET_COOKIE {
            if let Some(v) = own_origin_cookie(v) {
                out = out.header(k, v);
            }
            continue;
        }
        // No extension was asked for (see `to_device`): each message must be readable.
        if *k != header::SEC_WEBSOCKET_EXTENSIONS {
            out = out.header(k, v);
        }
    }
    out.body(r.into_body()).unwrap_or_else(|_| {
        refused(
            StatusCode::BAD_GATEWAY,
            "the device's answer could not be passed on",
        )
    })
}

/// A device's cookie kept to its own origin: no `Domain` attribute reaches the browser, and a
/// cookie named as Postern's own is dropped (a device cannot plant or replace a session).
fn own_origin_cookie(v: &HeaderValue) -> Option<HeaderValue> {
    let text = v.to_str().ok()?;
    let mut parts = text.split(';');
    let cookie = parts.next()?;
    let name = cookie.split_once('=').map_or(cookie, |(n, _)| n).trim();
    if name.to_ascii_lowercase().starts_with("__host-postern_") {
        return None;
    }
    let attribute = |a: &&str| {
        a.split_once('=')
            .map_or(*a, |(n, _)| n)
            .trim()
            .to_ascii_lowercase()
    };
    let kept: Vec<&str> = std::iter::once(cookie)
        .chain(parts.filter(|a| attribute(a) != "domain"))
        .collect();
    HeaderValue::from_str(&kept.join(";")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_cookies_stay_on_their_origin() {
        let kept = |s: &str| own_origin_cookie(&HeaderValue::from_str(s).unwrap());
        let v = kept("sid=1; Domain =devices.test; Path=/; domain\t= x").unwrap();
        assert_eq!(v, "sid=1; Path=/");
        assert_eq!(kept("domain=keep; Path=/").unwrap(), "domain=keep; Path=/");
        assert!(kept("__Host-postern_dev=0; Path=/").is_none());
        assert!(kept("__host-POSTERN_web=0").is_none());
    }

    #[test]
    fn other_origins_and_echoing_methods_are_refused() {
        let root: axum::http::Uri = "/".parse().unwrap();
        let mut h = HeaderMap::new();
        let get = axum::http::Method::GET;
        let host = "cam--s.devices.test";
        assert!(
            not_for_the_device(&get, &root, &h, host).is_none(),
            "no Origin: a navigation"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://cam--s.devices.test:8443"),
        );
        assert!(not_for_the_device(&get, &root, &h, host).is_none());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://nvr--s.devices.test:8443"),
        );
        assert!(not_for_the_device(&get, &root, &h, host).is_some());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://cam--s.devices.test"),
        );
        assert!(
            not_for_the_device(&get, &root, &h, host).is_some(),
            "not over TLS"
        );
        // Without Origin, the browser's Sec-Fetch headers tell: a sibling's image is refused, a
        // navigation to the front page (the list's handoff) is not.
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        h.insert("sec-fetch-mode", HeaderValue::from_static("no-cors"));
        let reboot: axum::http::Uri = "/reboot.cgi".parse().unwrap();
        assert!(not_for_the_device(&get, &reboot, &h, host).is_some());
        h.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert!(
            not_for_the_device(&get, &reboot, &h, host).is_some(),
            "a deep link"
        );
        assert!(
            not_for_the_device(&get, &root, &h, host).is_none(),
            "the front page"
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(not_for_the_device(&get, &reboot, &h, host).is_none());
        let trace = axum::http::Method::TRACE;
        assert!(not_for_the_device(&trace, &root, &HeaderMap::new(), host).is_some());
    }
}
