//! Device web UIs: where a device serves its UI and the certificate Postern pins for it. A device
//! UI's certificate is usually self-signed, so no CA can vouch for it: like an SSH host key, the
//! operator pins it at enrolment (from a file, or fetched and printed to confirm), and Postern's
//! connections to the device trust that certificate and no other.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a device web endpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebEndpointError {
    #[error("'{0}' is not a device web address: use https://HOST:PORT or http://HOST:PORT")]
    Url(String),
    #[error("{path}: {why}")]
    CertFile { path: String, why: String },
    #[error("could not fetch the certificate of {url}: {why}")]
    Fetch { url: String, why: String },
}

/// A device's web UI address: scheme, host and port only (the UI's own paths are the vendor's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebEndpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl WebEndpoint {
    pub fn parse(s: &str) -> Result<WebEndpoint, WebEndpointError> {
        let bad = || WebEndpointError::Url(s.to_owned());
        let u = url::Url::parse(s).map_err(|_| bad())?;
        let https = match u.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad()),
        };
        let plain = u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
            && matches!(u.path(), "" | "/");
        let host = u.host_str().filter(|_| plain).ok_or_else(bad)?;
        Ok(WebEndpoint {
            https,
            host: host.trim_matches(['[', ']']).to_owned(),
            port: u.port_or_known_default().ok_or_else(bad)?,
        })
    }

    /// `host:port`, as a TCP connection names it.
    pub fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

impl std::fmt::Display for WebEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// What a refusal of a certificate other than the pinned one says.
pub const NOT_PINNED: &str = "is not the one pinned for it";

/// The SHA-256 (hex) of a certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// A fingerprint as people compare it (`openssl x509 -fingerprint -sha256` prints it so).
pub fn shown(fp: &str) -> String {
    let upper = fp.to_ascii_uppercase();
    let pairs: Vec<&str> = (0..upper.len() / 2)
        .map(|i| &upper[2 * i..2 * i + 2])
        .collect();
    format!("SHA256 {}", pairs.join(":"))
}

/// The fingerprint of the first certificate in a PEM file.
pub fn pem_fingerprint(path: &std::path::Path) -> Result<String, WebEndpointError> {
    let cert = CertificateDer::from_pem_file(path).map_err(|e| WebEndpointError::CertFile {
        path: path.display().to_string(),
        why: format!("not a PEM certificate ({e})"),
    })?;
    Ok(fingerprint(&cert))
}

/// Trusts exactly the certificate whose SHA-256 is `pin` (any, when fetching one to show), and
/// checks that the server holds its key. Notes the certificate it saw.
#[derive(Debug)]
pub struct PinnedCert {
    pin: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCert {
    pub fn new(pin: Option<String>) -> Arc<PinnedCert> {
        Arc::new(PinnedCert {
            pin,
            seen: Mutex::new(None),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        })
    }

    /// The fingerprint of the certificate the device presented, once it did.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A client configuration that trusts only this pin (TLS 1.2 and 1.3: appliances are old).
    pub fn client_config(self: &Arc<Self>) -> Result<ClientConfig, rustls::Error> {
        Ok(ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp.clone());
        match &self.pin {
            Some(pin) if *pin != fp => Err(rustls::Error::General(format!(
                "the device's certificate ({}) {NOT_PINNED} ({})",
                shown(&fp),
                shown(pin)
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to an HTTPS endpoint and returns its certificate's fingerprint, for the operator to
/// confirm (as `device add` shows a fetched host key). Bounded to ten seconds.
pub async fn fetch_fingerprint(e: &WebEndpoint) -> Result<String, WebEndpointError> {
    let failed = |why: String| WebEndpointError::Fetch {
        url: e.to_string(),
        why,
    };
    let verifier = PinnedCert::new(None);
    let config = verifier
        .client_config()
        .map_err(|x| failed(x.to_string()))?;
    let name = ServerName::try_from(e.host.clone()).map_err(|x| failed(x.to_string()))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(e.authority()).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
        Ok(Ok(_)) => verifier
            .seen()
            .ok_or_else(|| failed("no certificate was presented".into())),
        Ok(Err(x)) => Err(failed(x.to_string())),
        Err(_) => Err(failed("no answer within 10 seconds".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_their_default_ports_and_nothing_else() {
        let e = WebEndpoint::parse("https://10.0.0.5").unwrap();
        assert_eq!((e.https, e.port), (true, 443));
        assert_eq!(e.to_string(), "https://10.0.0.5:443");
        let e = WebEndpoint::parse("http://cam.local:8080/").unwrap();
        assert_eq!(
            (e.https, e.host.as_str(), e.port),
            (false, "cam.local", 8080)
        );
        assert_eq!(
            WebEndpoint::parse("https://[::1]:8443")
                .unwrap()
                .authority(),
            "[::1]:8443"
        );
        for bad in [
            "ftp://x",
            "https://user:pw@x",
            "https://x/admin",
            "https://x?a=1",
            "x:443",
            "",
        ] {
            assert!(WebEndpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(shown("ab01"), "SHA256 AB:01");
    }
}
