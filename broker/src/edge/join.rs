//! `postern edge join`: a one-time token and a CSR in; the edge's client certificate and the
//! pinned edge CA out (kept in `DATA/edge/`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::agent::{AgentError, EdgeFiles, Joined};
use super::token::JoinToken;
use super::wire::{self, Message};

pub(super) async fn tcp(central: &str) -> Result<TcpStream, AgentError> {
    let err = |error: String| AgentError::Connect {
        central: central.to_owned(),
        error,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(central))
        .await
        .map_err(|_| err("timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5)),
    );
    Ok(tcp)
}

pub(super) fn csr() -> Result<(String, String), AgentError> {
    let key = KeyPair::generate().map_err(|e| AgentError::Cert(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Cert(e.to_string()))?;
    Ok((csr, key.serialize_pem()))
}

pub(super) fn not_after(cert_pem: &str) -> Result<i64, AgentError> {
    let der = super::ca::pem_der(cert_pem).map_err(|e| AgentError::Cert(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| AgentError::Cert(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// `postern edge join`: gets a certificate for a fresh key with the one-time token.
pub async fn join(central: &str, token: &str, data: &Path) -> Result<Joined, AgentError> {
    let token = JoinToken::parse(token)?;
    let (csr, key) = csr()?;
    let connector = TlsConnector::from(Arc::new(super::tls::joining(&token.pin)?));
    let mut tls = connector
        .connect(super::tls::central_name(), tcp(central).await?)
        .await
        .map_err(|e| AgentError::Connect {
            central: central.to_owned(),
            error: e.to_string(),
        })?;
    let join = Message::Join {
        edge: token.edge.clone(),
        secret: token.secret.clone(),
        csr,
    };
    wire::write(&mut tls, &join).await?;
    let (certificate, ca) = match wire::read(&mut tls).await? {
        Message::Joined { certificate, ca } => (certificate, ca),
        Message::Refused { reason } => return Err(AgentError::Refused(reason)),
        other => return Err(wire::WireError::Unexpected(other.kind()).into()),
    };
    let ca_der = super::ca::pem_der(&ca).map_err(|e| AgentError::Cert(e.to_string()))?;
    if hex::encode(Sha256::digest(&ca_der)) != token.pin {
        return Err(AgentError::Cert(
            "the CA sent is not the one the token pins".into(),
        ));
    }
    let end = not_after(&certificate)?;
    let state = Joined {
        edge: token.edge,
        central: central.to_owned(),
        not_after: end,
        ttl: (end - approvals::time::now()).max(60),
    };
    let files = EdgeFiles::new(data);
    files.write("ca.crt", &ca, false)?;
    files.save(&state, &certificate, &key)?;
    Ok(state)
}
