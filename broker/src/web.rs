//! Serves the approvers' web UI ([`approvals::web`]): HTTPS with rustls when a certificate is
//! configured, plain HTTP otherwise (for loopback or behind a TLS-terminating proxy).
//!
//! The listener has its own limits, so that nobody can hold it without signing in: a cap on
//! connections in all and per client address ([`crate::admission`] without penalties), a time
//! limit for the first request and for each request's headers, and an idle timeout that closes a
//! connection moving no bytes. Accept errors (descriptors exhausted) are retried with backoff by
//! axum-server; they never stop the listener.

use std::future::Ready;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use approvals::web::{WebState, router};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::admission::{Admission, Ticket};

/// The web UI being served.
pub type Serving = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// The web listener's limits.
#[derive(Clone)]
pub struct Limits {
    pub admission: Arc<Admission>,
    /// A connection that moves no byte for this long is closed.
    pub idle: Duration,
    /// Time for the TLS handshake, the first request, and each request's headers.
    pub header: Duration,
}

/// Why the web UI cannot be served. The cause is part of the message (not a chained source), as
/// the binary prints an error's whole chain on one line.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("web UI: listening on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("web UI: loading certificate {cert} and key {key}: {error}")]
    Certificate {
        cert: String,
        key: String,
        error: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Binds the web listener and loads the certificate now, so that a busy port or a bad certificate
/// fails `serve` at once, and returns the address with the future that serves it.
pub async fn bind(
    state: Arc<WebState>,
    addr: &str,
    tls: Option<(PathBuf, PathBuf)>,
    limits: Limits,
) -> Result<(SocketAddr, Serving), WebError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|error| WebError::Listen {
        addr: addr.to_owned(),
        error,
    })?;
    let local = listener.local_addr()?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let guard = Guard {
        admission: limits.admission.clone(),
        idle: limits.idle,
    };
    let serving: Serving = match tls {
        Some((cert, key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|error| WebError::Certificate {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                    error,
                })?;
            tls_serving(listener, config, &limits, app)?
        }
        None => {
            let server = axum_server::from_tcp(listener)?.acceptor(guard);
            Box::pin(timed(server, limits.header).serve(app))
        }
    };
    Ok((local, serving))
}

/// Serves `app` over TLS on `listener` within `limits` (connections admitted per source and in
/// all, idle, handshake, first-request and header timeouts): every HTTPS listener of Postern.
pub fn tls_serving(
    listener: std::net::TcpListener,
    config: axum_server::tls_rustls::RustlsConfig,
    limits: &Limits,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
) -> std::io::Result<Serving> {
    let guard = Guard {
        admission: limits.admission.clone(),
        idle: limits.idle,
    };
    let server = axum_server::from_tcp_rustls(listener, config)?
        .map(|tls| tls.handshake_timeout(limits.header).acceptor(guard));
    Ok(Box::pin(timed(server, limits.header).serve(app)))
}

/// The time limits every web server here has: the first request and each request's headers
/// within `header`. Refused connections are counted into the audit summary, not logged each.
fn timed<A>(
    server: axum_server::Server<SocketAddr, A>,
    header: Duration,
) -> axum_server::Server<SocketAddr, A> {
    let mut server = server
        .first_request_timeout(header)
        .accept_error_handler(|_, _| {});
    server.http_builder().http1().header_read_timeout(header);
    server
}

/// Admits a connection (or drops it at once) and wraps it in the idle timeout.
#[derive(Clone)]
struct Guard {
    admission: Arc<Admission>,
    idle: Duration,
}

impl<S> Accept<TcpStream, S> for Guard {
    type Stream = Idle;
    type Service = S;
    type Future = Ready<std::io::Result<(Idle, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        // Small answers go out at once: with Nagle's algorithm a response's last segment waits
        // for the browser's delayed acknowledgement (40 ms a request).
        let _ = stream.set_nodelay(true);
        let admitted = stream
            .peer_addr()
            .and_then(|peer| {
                self.admission
                    .admit(peer.ip())
                    .map_err(|r| std::io::Error::other(r.to_string()))
            })
            .map(|ticket| {
                (
                    Idle {
                        inner: stream,
                        timer: Box::pin(tokio::time::sleep(self.idle)),
                        idle: self.idle,
                        _ticket: ticket,
                    },
                    service,
                )
            });
        std::future::ready(admitted)
    }
}

/// A connection closed once it moves no byte either way for `idle`; it holds its place in the
/// listener's cap until it is dropped.
pub struct Idle {
    inner: TcpStream,
    timer: Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
    _ticket: Ticket,
}

impl Idle {
    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.timer.as_mut().reset(next);
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "web connection idle")
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
