//! The central's edge CA: a self-signed ECDSA P-256 CA kept in `DATA/keys/edge_ca.key` (0600) and
//! `edge_ca.crt`, made on first use. It signs edges' client certificates (from their CSRs, with
//! every requested field replaced: only the public key is taken) and the central's server
//! certificate for the edge listener.

use std::path::{Path, PathBuf};

use approvals::actions::EdgeCertificate;
use approvals::bundle::BundleSigner;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use super::{CENTRAL_NAME, EDGE_URI_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("CA: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("CA: {0}")]
    Pem(String),
}

/// The edge CA, loaded, with the key that signs edges' policy bundles (`edge_policy.key`, an
/// Ed25519 seed in hex, 0600, made on first use; several central nodes share both files).
pub struct EdgeCa {
    ca: LocalCa,
    signer: BundleSigner,
}

/// A CA of Postern's own: a self-signed ECDSA P-256 CA in a key file (0600) and a certificate
/// file, made on first use (the edge CA; the device web front door's CA for labs and tests).
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl LocalCa {
    /// Loads the CA from `key_path` and `crt_path`, making it (named `name`) if there is none.
    /// `only`: the DNS domain the CA may vouch for (a name constraint: a browser that trusts it
    /// trusts it for that domain and its subdomains, nothing else); a stored CA for another
    /// domain is refused.
    pub fn load_or_create(
        key_path: &Path,
        crt_path: &Path,
        name: &str,
        only: Option<&str>,
    ) -> Result<LocalCa, CaError> {
        let constraint = only.map(|d| NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(d.to_owned())],
            excluded_subtrees: Vec::new(),
        });
        if !key_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = ca_params(name);
            params.name_constraints = constraint.clone();
            let issuer = CertifiedIssuer::self_signed(params, key)?;
            // The certificate first, the key last: a key file means a whole CA.
            std::fs::write(crt_path, issuer.pem()).map_err(file_error(crt_path))?;
            crate::config::write_private(key_path, issuer.key().serialize_pem().as_bytes())
                .map_err(|e| CaError::Pem(e.to_string()))?;
        }
        let key_pem = std::fs::read_to_string(key_path).map_err(file_error(key_path))?;
        let crt_pem = std::fs::read_to_string(crt_path).map_err(file_error(crt_path))?;
        if let Some(domain) = only
            && permitted_domains(&crt_pem)? != [domain]
        {
            return Err(CaError::Pem(format!(
                "{} is not a CA for {domain} only: remove it and {} to make one",
                crt_path.display(),
                key_path.display()
            )));
        }
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&crt_pem, key)?;
        Ok(LocalCa {
            issuer,
            pem: crt_pem,
        })
    }

    /// The CA certificate, PEM (as stored).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards allowed), valid a year from
    /// now, with its key: made at each start.
    pub fn server_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("postern", |n| n.as_str()),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = approvals::time::now();
        params.not_before = time_at(now - 300);
        params.not_after = time_at(now + 365 * 86_400);
        params.serial_number = Some(serial().0);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn file_error(path: &Path) -> impl Fn(std::io::Error) -> CaError + '_ {
    move |error| CaError::File {
        path: path.display().to_string(),
        error,
    }
}

fn time_at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn load_signer(path: &Path) -> Result<BundleSigner, CaError> {
    if !path.exists() {
        let seed: [u8; 32] = rand::random();
        crate::config::write_private(path, hex::encode(seed).as_bytes())
            .map_err(|e| CaError::Pem(e.to_string()))?;
    }
    let text = std::fs::read_to_string(path).map_err(file_error(path))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CaError::Pem(format!("{}: not 64 hex digits", path.display())))?;
    Ok(BundleSigner::from_seed(&seed))
}

fn serial() -> (SerialNumber, String) {
    // Positive and never repeated: 16 random bytes with the top bit cleared.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    (SerialNumber::from_slice(&bytes), serial_hex(&bytes))
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = approvals::time::now();
    params.not_before = time_at(now - 3600);
    params.not_after = time_at(now + 20 * 365 * 86_400);
    params
}

impl EdgeCa {
    pub fn paths(keys: &Path) -> (PathBuf, PathBuf) {
        (keys.join("edge_ca.key"), keys.join("edge_ca.crt"))
    }

    /// Loads the CA from `keys`, making it first if there is none.
    pub fn load_or_create(keys: &Path) -> Result<EdgeCa, CaError> {
        let (key_path, crt_path) = Self::paths(keys);
        Ok(EdgeCa {
            ca: LocalCa::load_or_create(&key_path, &crt_path, "Postern edge CA", None)?,
            signer: load_signer(&keys.join("edge_policy.key"))?,
        })
    }

    /// The key that signs edges' policy bundles.
    pub fn signer(&self) -> &BundleSigner {
        &self.signer
    }

    /// The CA certificate, PEM (as stored).
    pub fn pem(&self) -> &str {
        self.ca.pem()
    }

    /// The CA certificate, DER (as stored).
    pub fn der(&self) -> Result<Vec<u8>, CaError> {
        pem_der(self.ca.pem())
    }

    /// What a join token pins: the SHA-256 of the CA certificate's DER, hex.
    pub fn pin(&self) -> Result<String, CaError> {
        Ok(hex::encode(Sha256::digest(self.der()?)))
    }

    /// Signs an edge's CSR: only its public key is used; the name, validity and usage are ours.
    pub fn issue_edge(
        &self,
        csr_pem: &str,
        edge: &str,
        ttl: i64,
    ) -> Result<EdgeCertificate, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("postern edge {edge}"));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("{EDGE_URI_PREFIX}{edge}")
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Cert(e))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = approvals::time::now();
        params.not_before = time_at(now - 300);
        params.not_after = time_at(now + ttl);
        let (sn, serial) = serial();
        params.serial_number = Some(sn);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr.signed_by(&self.ca.issuer)?;
        Ok(EdgeCertificate {
            serial,
            not_after: now + ttl,
            pem: cert.pem(),
        })
    }

    /// A server certificate for the edge listener (made at each start, a year long), with its key.
    pub fn server_certificate(&self) -> Result<(String, String), CaError> {
        self.ca.server_certificate(&[CENTRAL_NAME.to_owned()])
    }
}

/// A serial as recorded: hex, without leading zero bytes (DER drops them).
pub fn serial_hex(bytes: &[u8]) -> String {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    hex::encode(&bytes[first..])
}

/// The DER of the first PEM block of `text`.
pub fn pem_der(text: &str) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(text.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| CaError::Pem(e.to_string()))
}

/// The DNS names a CA certificate's name constraints permit (none: no constraint).
fn permitted_domains(pem: &str) -> Result<Vec<String>, CaError> {
    use x509_parser::extensions::GeneralName;
    let der = pem_der(pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| CaError::Pem(e.to_string()))?;
    let constraints = cert.name_constraints().ok().flatten();
    let subtrees = constraints.and_then(|c| c.value.permitted_subtrees.as_ref());
    Ok((subtrees.into_iter().flatten())
        .filter_map(|s| match &s.base {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect())
}
