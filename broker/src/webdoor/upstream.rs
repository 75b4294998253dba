//! How a device web session reaches the device's UI: through its site's edge when the site has
//! one, otherwise directly; then TLS that trusts only the certificate pinned for the device (or
//! plain HTTP for a `web:80` UI). A hyper client on top keeps connections to the device alive
//! between the browser's requests, and passes websocket upgrades through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::device_web::{PinnedCert, WebEndpoint};
use crate::edge::hub::EdgeHub;

/// How long connecting to a device (through its edge, TLS included) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client a device web session sends its requests with.
pub(super) type DeviceClient = Client<DeviceConnector, Body>;

/// A client for one device's web UI, reached as [`DeviceConnector`] says.
pub(super) fn client(
    edges: Arc<EdgeHub>,
    site: &str,
    device: &str,
    url: &str,
    pin: Option<String>,
) -> Result<DeviceClient, String> {
    let endpoint = WebEndpoint::parse(url).map_err(|e| e.to_string())?;
    let tls = match endpoint.https {
        true => {
            let config = PinnedCert::new(pin).client_config();
            Some(Arc::new(config.map_err(|e| e.to_string())?))
        }
        false => None,
    };
    let connector = DeviceConnector {
        edges,
        site: site.to_owned(),
        device: device.to_owned(),
        endpoint: Arc::new(endpoint),
        tls,
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(8)
        .build(connector))
}

/// Opens connections to a device's web UI (see the module's documentation).
#[derive(Clone)]
pub(super) struct DeviceConnector {
    edges: Arc<EdgeHub>,
    site: String,
    device: String,
    endpoint: Arc<WebEndpoint>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl DeviceConnector {
    async fn connect(self) -> io::Result<TokioIo<DeviceIo>> {
        let addr = self.endpoint.authority();
        let routed = (self.edges.route_web(&self.site, &self.device, &addr).await)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let stream: Box<dyn Io> = match routed {
            Some(through_edge) => Box::new(through_edge),
            None => {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
        };
        let Some(tls) = self.tls else {
            return Ok(TokioIo::new(DeviceIo(stream)));
        };
        let name = ServerName::try_from(self.endpoint.host.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let tls = connector.connect(name, stream).await?;
        Ok(TokioIo::new(DeviceIo(Box::new(tls))))
    }
}

impl tower_service::Service<Uri> for DeviceConnector {
    type Response = TokioIo<DeviceIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<DeviceIo>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The URI is ignored: a session's client only ever reaches its one device.
    fn call(&mut self, _: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, me.connect()).await {
                Ok(connected) => connected,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }
        })
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection to a device's web UI: TCP or an edge stream, with TLS or without.
pub(super) struct DeviceIo(Box<dyn Io>);

impl Connection for DeviceIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for DeviceIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeviceIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
