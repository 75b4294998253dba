//! Request and response bodies in the recording, when the operator asks for them
//! (`web_devices_record_bodies`, bytes per body; off by default, since a device's sign-in form
//! carries passwords). Each body's first bytes are written before it is passed on: the request's
//! before it is sent to the device, the answer's before the browser gets any of it.

use axum::body::{Body, Bytes};
use base64::Engine;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use recorder::events::Event;

/// The most of one body the recording keeps, whatever the configuration says.
pub(super) const MAX_KEPT: usize = 1 << 20;
/// How long an answer is held back for its first bytes: a stream or a long poll that sends
/// slowly is recorded with what came by then, and passed on.
const PREFIX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The recorded event for a body's first `limit` bytes: `body` holds at least those (all of it
/// when `complete`); `total` is its whole size, when known.
pub(super) fn event(
    from_device: bool,
    body: &[u8],
    limit: usize,
    complete: bool,
    total: Option<u64>,
) -> Event {
    let kept = &body[..body.len().min(limit)];
    Event::WebBody {
        from_device,
        bytes: total.unwrap_or(body.len() as u64),
        truncated: !complete || body.len() > limit,
        data: base64::engine::general_purpose::STANDARD.encode(kept),
    }
}

/// Reads the answer's first `limit` bytes (or all of it, if shorter; or what came within
/// [`PREFIX_WAIT`]). Returns them, whether that was all of it, and a body that gives them again
/// followed by the rest, streamed.
pub(super) async fn prefix(
    mut body: Incoming,
    limit: usize,
) -> Result<(Vec<u8>, bool, Body), hyper::Error> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut seen = 0;
    let mut complete = false;
    let deadline = tokio::time::Instant::now() + PREFIX_WAIT;
    while seen < limit {
        let Ok(next) = tokio::time::timeout_at(deadline, body.frame()).await else {
            break;
        };
        let Some(frame) = next else {
            complete = true;
            break;
        };
        if let Ok(data) = frame?.into_data() {
            seen += data.len();
            chunks.push(data);
        }
    }
    complete = complete || body.is_end_stream();
    let kept: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let again = futures::stream::iter(chunks.into_iter().map(Ok::<Bytes, hyper::Error>));
    let whole = Body::from_stream(again.chain(body.into_data_stream()));
    Ok((kept, complete, whole))
}
