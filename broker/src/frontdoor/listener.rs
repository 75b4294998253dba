//! The accept loop: admission, TCP keepalive, the login grace cut, and what is said about a
//! connection once it ends.

use approvals::audit::AuditEvent;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use approvals::audit::bounded;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::{Conn, LOGGED};
use crate::admission::{self, Ticket, accept_backoff};
use crate::session::{Ctx, LiveSession, connection_ended};

/// Failure reasons kept per connection for its summary event.
const MAX_REASONS: usize = 16;

/// State shared between a connection's handler and the task that waits for it to end.
pub(super) struct ConnShared {
    /// The connection's live session, whether the front door or the request dialogue started
    /// it: it is told when the vendor's connection ends.
    live: Mutex<Option<Arc<LiveSession>>>,
    door: Mutex<Door>,
    /// Opened when both factors passed; the login grace time no longer applies.
    gate: Arc<Gate>,
}

/// What the door keeps about a connection until it ends.
struct Door {
    /// This connection's place among the unauthenticated ones (see [`crate::admission`]).
    ticket: Option<Ticket>,
    /// The last user name tried, bounded.
    user: String,
    /// What went wrong so far, for the audit event of a connection that never authenticates.
    failures: Vec<String>,
    /// A certificate (or a plain key instead of one) was refused; one passed.
    certificate_failed: bool,
    certificate_passed: bool,
}

impl ConnShared {
    fn door(&self) -> std::sync::MutexGuard<'_, Door> {
        self.door.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn fail(&self, reason: String) {
        let mut door = self.door();
        if door.failures.len() < MAX_REASONS {
            door.failures.push(bounded(&reason, LOGGED));
        }
    }

    pub(super) fn set_user(&self, user: &str) {
        self.door().user = bounded(&super::self_service::redacted(user), LOGGED);
    }

    /// Notes a certificate (or a plain key) that passed or failed the first factor.
    pub(super) fn first_factor(&self, passed: bool) {
        let mut door = self.door();
        match passed {
            true => door.certificate_passed = true,
            false => door.certificate_failed = true,
        }
    }

    pub(super) fn outcome(&self, o: admission::Outcome) {
        if let Some(t) = self.door().ticket.as_mut() {
            t.set_outcome(o);
        }
    }

    /// Both factors passed: the grace cut and the admission cap no longer apply.
    pub(super) fn authenticated(&self) {
        self.gate.authenticated.store(true, Ordering::Release);
        if let Some(t) = self.door().ticket.as_mut() {
            t.authenticated();
        }
    }

    pub(super) fn set_live(&self, live: Arc<LiveSession>) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
    }

    pub(super) fn live(&self) -> Option<Arc<LiveSession>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Whether a connection has authenticated, and whether its login grace time ran out first.
#[derive(Default)]
struct Gate {
    authenticated: AtomicBool,
    expired: AtomicBool,
}

/// The vendor's TCP stream, cut (every read and write fails) once the login grace time has run
/// out before both factors passed. It works at the byte level, so it holds whatever state the
/// SSH session is in: a client that never sends its version line, stalls the key exchange or
/// sits at the TOTP prompt alike.
struct GraceStream {
    inner: TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    gate: Arc<Gate>,
}

impl GraceStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.gate.authenticated.load(Ordering::Acquire) {
            return None;
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.gate.expired.store(true, Ordering::Release);
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "login grace time exceeded",
            ));
        }
        None
    }
}

impl AsyncRead for GraceStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GraceStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts vendor connections for as long as the broker runs. A failing `accept` (descriptors
/// exhausted, the kernel short of memory) is retried with backoff, never the end of the loop:
/// live sessions must not die because a flood used up the descriptors for a moment.
pub async fn serve(
    ctx: Arc<Ctx>,
    config: Arc<russh::server::Config>,
    listener: TcpListener,
) -> std::io::Result<()> {
    let mut failures: u32 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => {
                failures = 0;
                s
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                accept_failed(&ctx, &e, failures).await;
                continue;
            }
        };
        let ticket = match ctx.admission.admit(peer.ip()) {
            Ok(t) => t,
            // Refused at the door: closed at once, counted into the periodic summary.
            Err(_) => continue,
        };
        set_keepalive(&stream, peer);
        tokio::spawn(connection(
            ctx.clone(),
            config.clone(),
            stream,
            peer,
            ticket,
        ));
    }
}

/// Counts a failed `accept` and waits before the next one.
async fn accept_failed(ctx: &Ctx, e: &std::io::Error, failures: u32) {
    if failures == 1 || failures.is_power_of_two() {
        warn!(error = %e, failures, "accepting a vendor connection failed; retrying");
    }
    ctx.throttled.count(
        "accept failed (descriptors or memory exhausted)",
        std::net::IpAddr::from([0, 0, 0, 0]),
    );
    tokio::time::sleep(accept_backoff(failures)).await;
}

/// A vanished vendor (laptop closed, network gone) is noticed within about two minutes.
fn set_keepalive(stream: &TcpStream, peer: SocketAddr) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        warn!(peer = %peer, error = %e, "could not set TCP keepalive");
    }
}

/// Runs one vendor connection to its end, then settles its admission ticket, summarises a
/// failed login and ends its live session.
async fn connection(
    ctx: Arc<Ctx>,
    config: Arc<russh::server::Config>,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
) {
    let local = stream.local_addr().unwrap_or(peer);
    let gate = Arc::new(Gate::default());
    let shared = Arc::new(ConnShared {
        live: Mutex::new(None),
        door: Mutex::new(Door {
            ticket: Some(ticket),
            user: String::new(),
            failures: Vec::new(),
            certificate_failed: false,
            certificate_passed: false,
        }),
        gate: gate.clone(),
    });
    let stream = GraceStream {
        inner: stream,
        deadline: Box::pin(tokio::time::sleep(ctx.login_grace)),
        gate: gate.clone(),
    };
    let conn = Conn::new(ctx.clone(), peer, local, shared.clone());
    // Boxed: starting the session takes a kilobyte of state that this task, which then only
    // waits for the session to end, need not keep.
    let result = match Box::pin(russh::server::run_stream(config, stream, conn)).await {
        Ok(running) => running.await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        info!(peer = %peer, error = %e, "connection ended with an error");
    }
    let live = shared.live.lock().unwrap_or_else(|p| p.into_inner()).take();
    let authenticated = gate.authenticated.load(Ordering::Acquire);
    let expired = gate.expired.load(Ordering::Acquire);
    if expired {
        shared.outcome(admission::Outcome::GraceExceeded);
    }
    // Settles the source's penalty and frees its place.
    let (user, reasons, certificate_failed) = {
        let mut door = shared.door();
        drop(door.ticket.take());
        let failures = std::mem::take(&mut door.failures);
        let certificate_failed = door.certificate_failed && !door.certificate_passed;
        (door.user.clone(), failures, certificate_failed)
    };
    if !authenticated && certificate_failed {
        (ctx.metrics).auth_failed(crate::metrics::AuthFailure::Certificate);
    }
    if !authenticated {
        login_failed(&ctx, peer, user, reasons, expired).await;
    }
    connection_ended(live).await;
}

/// Says why a connection never authenticated: one audit event per connection that named
/// someone, within the audit budget; a count for the rest.
async fn login_failed(
    ctx: &Ctx,
    peer: SocketAddr,
    user: String,
    mut reasons: Vec<String>,
    expired: bool,
) {
    if reasons.is_empty() && user.is_empty() {
        // Never named anyone (a scanner, a flood of idle connections): counted, not logged
        // one by one.
        let why = if expired {
            "login grace time exceeded before authenticating"
        } else {
            "closed before authenticating"
        };
        ctx.throttled.count(why, peer.ip());
        return;
    }
    if expired {
        reasons.push("login grace time exceeded".into());
    } else if reasons.is_empty() {
        reasons.push("closed before authenticating".into());
    }
    if ctx.admission.exempt(peer.ip()) || ctx.detail_budget.allow(peer.ip()) {
        ctx.audit(
            AuditEvent::AuthFailed,
            json!({"user": user, "source": peer.to_string(), "reasons": reasons}),
        )
        .await;
    } else {
        ctx.throttled
            .count("failed connection (beyond the audit budget)", peer.ip());
    }
}
