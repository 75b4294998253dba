//! Proxying one vendor channel to one device channel.
//!
//! Each channel is driven by one task that owns both ends and loops on their messages, so every
//! request, reply, exit status and EOF passes in order and each is recorded as it passes.
//! Backpressure is end to end: a write towards a slow peer waits for its SSH window, and while it
//! waits this task reads nothing more from the other side, whose bounded channel buffer then stops
//! its connection from reading the socket.

use approvals::audit::AuditEvent;
use recorder::events;
use std::sync::Arc;

use approvals::time::{fmt_time, now};
use approvals::{Channel as ChannelKind, PolicyGate, Refusal};
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg};
use serde_json::json;

use crate::session::{Ctx, LiveSession};

mod held_input;
mod session_channel;
pub use session_channel::session_channel;

/// Why a channel, or a request on one, is refused. `Display` is the one line the vendor sees.
#[derive(Debug, thiserror::Error)]
pub enum ChannelRefused {
    /// The policy, the vendor's certificate or the broker's own rules say no.
    #[error("{0}")]
    Denied(String),
    /// No decision could be made: the control plane is unreachable (an outage, not a denial).
    #[error("{}", crate::session::OUTAGE)]
    Unavailable,
    /// The decision could not be written to the audit log, so it is not acted on (fail closed).
    #[error("the audit log cannot be written")]
    Unaudited,
    /// A subsystem other than sftp.
    #[error("subsystem {0} is not supported")]
    Subsystem(String),
}

/// Asks the policy whether this channel kind may be opened now; audits the answer.
pub async fn allowed(
    ctx: &Ctx,
    live: &LiveSession,
    channel: ChannelKind,
) -> Result<(), ChannelRefused> {
    let req = live.request(Some(channel));
    let refusal = match PolicyGate::new(&ctx.store).check(&req).await {
        Ok(_) => None,
        Err(Refusal::Deny(reason)) => {
            ctx.metrics.denied(reason.code());
            Some(reason.to_string())
        }
        Err(Refusal::Unavailable(e)) => {
            tracing::warn!(session = %live.id, error = %e, "channel decision: control plane unavailable");
            return Err(ChannelRefused::Unavailable);
        }
    };
    audited_answer(ctx, live, &channel.to_string(), refusal).await
}

/// Writes the channel decision to the audit log (failing closed if it cannot) and returns it.
pub async fn audited_answer(
    ctx: &Ctx,
    live: &LiveSession,
    channel: &str,
    refusal: Option<String>,
) -> Result<(), ChannelRefused> {
    let event = if refusal.is_none() {
        AuditEvent::ChannelAllow
    } else {
        AuditEvent::ChannelDeny
    };
    let fields = json!({"session": live.id, "vendor": live.target.vendor, "channel": channel, "reason": refusal});
    if !ctx.audit(event, fields).await {
        return Err(ChannelRefused::Unaudited);
    }
    let (channel, reason) = (channel.to_owned(), refusal.clone());
    let noted = if refusal.is_none() {
        events::Event::ChannelAllow { channel, reason }
    } else {
        events::Event::ChannelDeny { channel, reason }
    };
    let _ = live.recording.write(0, &noted);
    match refusal {
        None => Ok(()),
        Some(reason) => Err(ChannelRefused::Denied(reason)),
    }
}

/// Why `kind` is no longer allowed on this session, if its function no longer allows it.
pub fn disallowed(
    live: &LiveSession,
    set: Option<&approvals::ChannelSet>,
    kind: ChannelKind,
) -> Option<String> {
    set.filter(|set| !set.allows(kind))
        .map(|_| format!("function {} no longer allows {kind}", live.function))
}

/// Waits until the session's function no longer allows `kind`; returns why.
pub async fn until_disallowed(live: &LiveSession, kind: ChannelKind) -> String {
    let mut set = live.watch_channels();
    loop {
        if let Some(why) = disallowed(live, set.borrow_and_update().as_ref(), kind) {
            return why;
        }
        if set.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Records and audits that an open channel was closed because its function no longer allows it.
pub async fn revoked(ctx: &Ctx, live: &LiveSession, ch: u32, channel: &str, reason: &str) {
    let fields = json!({"session": live.id, "vendor": live.target.vendor, "function": live.function, "channel": channel, "reason": reason});
    ctx.audit(AuditEvent::ChannelRevoked, fields).await;
    let noted = events::Event::ChannelDeny {
        channel: channel.to_owned(),
        reason: Some(reason.to_owned()),
    };
    let _ = live.recording.write(ch, &noted);
}

/// Tells the vendor why a channel is refused, on stderr, and closes it with exit status 1.
pub async fn refuse(handle: &russh::server::Handle, id: ChannelId, message: &str) {
    let _ = handle
        .extended_data(id, 1, format!("postern: {message}\r\n").into_bytes())
        .await;
    let _ = handle.channel_failure(id).await;
    let _ = handle.exit_status_request(id, 1).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}

/// Refuses a channel in answer to the client's first real request (shell, exec, subsystem), when
/// it waits for the reply and prints what comes before it. Refusing earlier races the request.
pub async fn refuse_when_asked(
    handle: &russh::server::Handle,
    mut vch: Channel<Msg>,
    message: &str,
) {
    let id = vch.id();
    let asked = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match vch.wait().await {
                Some(
                    ChannelMsg::RequestShell { .. }
                    | ChannelMsg::Exec { .. }
                    | ChannelMsg::RequestSubsystem { .. },
                ) => return true,
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return false,
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or(true);
    if asked {
        refuse(handle, id, message).await;
    }
}

/// Counts bytes read through it, so counts survive an abrupt end of the copy.
struct Counted<S> {
    inner: S,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drives a direct-tcpip channel (`ssh -L`): bytes both ways, counted and recorded at close.
pub async fn forward_channel(
    ctx: Arc<Ctx>,
    live: Arc<LiveSession>,
    vch: Channel<Msg>,
    uch: Channel<russh::client::Msg>,
    port: u32,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ch = u32::from(vch.id());
    let started = now();
    let (to_device, to_vendor) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut a = Counted {
        inner: vch.into_stream(),
        read: to_device.clone(),
    };
    let mut b = Counted {
        inner: uch.into_stream(),
        read: to_vendor.clone(),
    };
    // A forward whose function stops allowing it is cut (there is no stderr to tell it on).
    let kind = ChannelKind::Forward(u16::try_from(port).unwrap_or(0));
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        why = until_disallowed(&live, kind) => revoked(&ctx, &live, ch, &kind.to_string(), &why).await,
    }
    let (to_device, to_vendor) = (
        to_device.load(Ordering::Relaxed),
        to_vendor.load(Ordering::Relaxed),
    );
    let summary = events::ChannelClose::Forward(events::ForwardSummary {
        port,
        bytes_to_device: to_device,
        bytes_to_vendor: to_vendor,
        opened: fmt_time(started),
        closed: fmt_time(now()),
    });
    let _ = live.recording.write(ch, &summary);
}
