//! Serves the approvers' web UI ([`approvals::web`]): HTTPS with rustls when a certificate is
//! configured, plain HTTP otherwise (for loopback or behind a TLS-terminating proxy).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use approvals::web::{WebState, router};

/// The web UI being served.
pub type Serving = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// Binds the web listener and loads the certificate now, so that a busy port or a bad certificate
/// fails `serve` at once, and returns the address with the future that serves it.
pub async fn bind(
    state: Arc<WebState>,
    addr: &str,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<(SocketAddr, Serving)> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("web UI: listening on {addr}"))?;
    let local = listener.local_addr()?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let serving: Serving = match tls {
        Some((cert, key)) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .with_context(|| {
                    format!(
                        "web UI: loading certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?;
            Box::pin(axum_server::from_tcp_rustls(listener, config)?.serve(app))
        }
        None => Box::pin(axum_server::from_tcp(listener)?.serve(app)),
    };
    Ok((local, serving))
}
