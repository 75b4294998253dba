//! A device web UI's websockets: the handshake is passed through like any request, then each
//! message between the browser and the device is written to the session's recording (direction,
//! kind and size; not its content) before it is passed on. A session that ends (revoked, killed,
//! idle, shut down) closes its websockets with code 1008, policy violation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use recorder::events::{Event, SocketEnd};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::device::DeviceSession;
use crate::session::EndReason;

/// The largest websocket message passed either way.
const MAX_MESSAGE: usize = 4 << 20;
/// Websockets one device web session may hold open at once.
pub(super) const MAX_SOCKETS: usize = 16;
/// How long passing one message, or a close, may wait on a side that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A websocket handshake: `GET` with `Upgrade: websocket`.
pub(super) fn is_upgrade(method: &axum::http::Method, headers: &HeaderMap) -> bool {
    method == axum::http::Method::GET
        && (headers.get_all(header::UPGRADE).iter())
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Once both sides have switched protocols, relays the socket's messages as recorded on
/// `channel` (its own number within the session), until either side or the session ends it.
/// The caller counted the socket in `ds.sockets`; it is uncounted here when it ends.
pub(super) async fn relay(
    ds: Arc<DeviceSession>,
    channel: u32,
    browser: OnUpgrade,
    device: OnUpgrade,
) {
    let both = async { (browser.await, device.await) };
    let Ok((Ok(browser), Ok(device))) = tokio::time::timeout(CLOSE_TIMEOUT, both).await else {
        // A side never switched: nothing was relayed, the close is still evidence.
        ds.sockets.fetch_sub(1, Ordering::SeqCst);
        note_close(&ds, channel, SocketEnd::Postern, None);
        return;
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let browser =
        WebSocketStream::from_raw_socket(TokioIo::new(browser), Role::Server, Some(config)).await;
    let device =
        WebSocketStream::from_raw_socket(TokioIo::new(device), Role::Client, Some(config)).await;
    let (mut browser, mut device) = (browser, device);
    let ended = pass_messages(&ds, channel, &mut browser, &mut device).await;
    ds.sockets.fetch_sub(1, Ordering::SeqCst);
    // Recorded before the close frames are sent (a side that does not read would hold them up
    // past the session's seal).
    note_close(&ds, channel, ended.0, ended.1);
    close_both(&mut browser, &mut device, ended).await;
}

/// What ended the socket: who, and the close code.
type Ended = (SocketEnd, Option<u16>);

async fn pass_messages(
    ds: &DeviceSession,
    channel: u32,
    browser: &mut Socket,
    device: &mut Socket,
) -> Ended {
    const OVER: Ended = (SocketEnd::Postern, Some(1008));
    let mut stopping = ds.live.stopping();
    let mut stopped = std::pin::pin!(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    loop {
        // The session's end first: no message is passed once it is closing.
        let ended = tokio::select! {
            biased;
            _ = &mut stopped => return OVER,
            m = browser.next() => match ds.live.is_closed() {
                true => return OVER,
                false => pass(ds, channel, m, SocketEnd::Vendor, device).await,
            },
            m = device.next() => match ds.live.is_closed() {
                true => return OVER,
                false => pass(ds, channel, m, SocketEnd::Device, browser).await,
            },
        };
        if let Some(ended) = ended {
            return ended;
        }
    }
}

/// Passes one message from `from`'s side to `to`; `Some` once the socket is over.
async fn pass(
    ds: &DeviceSession,
    channel: u32,
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    from: SocketEnd,
    to: &mut Socket,
) -> Option<Ended> {
    let message = match message {
        Some(Ok(m)) => m,
        Some(Err(_)) | None => return Some((from, None)),
    };
    let (bytes, binary) = match &message {
        Message::Text(t) => (t.len(), false),
        Message::Binary(b) => (b.len(), true),
        Message::Close(frame) => return Some((from, frame.as_ref().map(|f| u16::from(f.code)))),
        // Pings are answered by each side's own end; they are neither passed nor recorded.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
    };
    let noted = Event::WebMessage {
        from_device: from == SocketEnd::Device,
        bytes: bytes as u64,
        binary,
    };
    // Evidence first: a message that could not be recorded is not passed on.
    if let Err(e) = ds.live.recording.write(channel, &noted) {
        ds.live
            .request_close(EndReason::RecordingFailed(e.to_string()));
        return Some((SocketEnd::Postern, Some(1011)));
    }
    *ds.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    match tokio::time::timeout(SEND_TIMEOUT, to.send(message)).await {
        Ok(Ok(())) => None,
        _ => Some((other(from), None)),
    }
}

fn other(side: SocketEnd) -> SocketEnd {
    match side {
        SocketEnd::Vendor => SocketEnd::Device,
        _ => SocketEnd::Vendor,
    }
}

/// Closes both sides with the code that ended the socket (each side's close is best effort: it
/// may be gone already).
async fn close_both(browser: &mut Socket, device: &mut Socket, (by, code): Ended) {
    let frame = code.map(|c| CloseFrame {
        code: CloseCode::from(c),
        reason: match by {
            SocketEnd::Postern => "the Postern session ended".into(),
            _ => "".into(),
        },
    });
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, browser.close(frame.clone())).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, device.close(frame)).await;
}

fn note_close(ds: &DeviceSession, channel: u32, by: SocketEnd, code: Option<u16>) {
    let noted = Event::WebSocketClose { by, code };
    match ds.live.recording.write(channel, &noted) {
        // Sealed already: the session's end record says how it ended.
        Ok(()) | Err(recorder::WriteError::Sealed) => {}
        Err(e) => ds
            .live
            .request_close(EndReason::RecordingFailed(e.to_string())),
    }
}
