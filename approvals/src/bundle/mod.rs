//! The signed policy bundle: everything an edge needs to decide for its sites on its own when the
//! WAN is down, as the central last knew it.
//!
//! - **Contents** ([`PolicyBundle`]): the edge's sites; the vendors with live grants there (or
//!   pre-approved for an emergency function), each with contract end and TOTP secret; trusted
//!   vendor CA keys and revoked certificate serials; grants; functions; devices with their
//!   credentials.
//! - **Secrets are sealed to the edge** ([`SealedToEdge`]): X25519 with a fresh ephemeral key per
//!   secret, the shared secret hashed with both public keys into an XChaCha20-Poly1305 key, and the
//!   row the secret belongs to as associated data. Only the holder of the edge's box key opens
//!   them; a bundle copied off the edge's disk gives nothing away.
//! - **Signed by the central** ([`SignedBundle`]): Ed25519 over the exact bytes of the body, which
//!   names the edge and a version that only goes up. The edge pins the signing key and checks
//!   the signature, its own name, and that the version never goes back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

mod source;
pub use source::BundleSource;

/// What an edge is told about one vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleVendor {
    pub name: String,
    pub org: String,
    pub contract_end: Option<i64>,
    pub disabled: bool,
    /// The TOTP secret, sealed to the edge.
    pub totp: SealedToEdge,
    /// The last TOTP step used at the central: codes up to it are spent at the edge too.
    #[serde(default)]
    pub totp_last_step: i64,
}

/// One device at the edge's sites, with its credential sealed to the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleDevice {
    pub site: String,
    pub name: String,
    pub addr: String,
    pub login: String,
    pub credential_kind: String,
    pub credential: SealedToEdge,
    pub host_key: String,
}

/// A live grant at one of the edge's sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleGrant {
    pub id: String,
    pub vendor: String,
    pub site: String,
    pub function: String,
    pub valid_from: i64,
    pub valid_until: i64,
    /// Comma-separated device names; empty for the whole site.
    pub devices: String,
}

/// A function, as the policy decision needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFunction {
    pub name: String,
    pub allow: String,
    pub login: Option<String>,
    pub max_window: i64,
    pub emergency: bool,
    /// Opens as break-glass even when the edge's policy is past its offline grace.
    #[serde(default)]
    pub offline_ok: bool,
    pub emergency_orgs: String,
}

/// Everything an edge needs to decide for its sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBundle {
    pub edge: String,
    /// Goes up by one whenever the contents change; an edge never accepts a lower one.
    pub version: i64,
    /// When the central signed it (Unix seconds).
    pub issued: i64,
    /// Seconds the edge goes on deciding with this bundle after it last heard from the central;
    /// past that, only break-glass of offline-ok functions opens.
    pub offline_grace: i64,
    pub sites: Vec<String>,
    pub vendors: Vec<BundleVendor>,
    /// Trusted vendor CA public keys, OpenSSH format.
    pub vendor_cas: Vec<String>,
    /// The certificates issued to the vendors above that have not ended, revoked ones marked.
    pub certificates: Vec<BundleCertificate>,
    pub grants: Vec<BundleGrant>,
    pub functions: Vec<BundleFunction>,
    pub devices: Vec<BundleDevice>,
}

/// A vendor certificate as the central issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleCertificate {
    pub serial: String,
    pub vendor: String,
    pub key_id: String,
    pub key_fingerprint: String,
    pub valid_after: i64,
    pub valid_before: i64,
    pub revoked: bool,
    pub ca: String,
}

/// A secret only one edge can open: `epk` is the ephemeral X25519 public key, `sealed` the
/// nonce and ciphertext (base64 both).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedToEdge {
    pub epk: String,
    pub sealed: String,
}

impl std::fmt::Debug for SealedToEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedToEdge(..)")
    }
}

/// A bundle as sent: the body's exact bytes (JSON) and the central's signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBundle {
    pub body: String,
    /// The signing key, `postern-policy-ed25519 BASE64`.
    pub key: String,
    /// Base64 Ed25519 signature over `body`.
    pub signature: String,
}

/// Why a bundle, a key or a sealed secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("not a policy signing key")]
    NotASigningKey,
    #[error("not an edge box key")]
    NotABoxKey,
    #[error("the bundle is signed by {given}, not by the central's pinned key {pinned}")]
    WrongSigner { given: String, pinned: String },
    #[error("the bundle's signature does not verify")]
    BadSignature,
    #[error("the bundle does not read: {0}")]
    Malformed(String),
    #[error("the bundle is for edge {given}, not {expected}")]
    OtherEdge { given: String, expected: String },
    #[error("bundle version {given} is older than version {held}, which this edge already holds")]
    Rollback { given: i64, held: i64 },
    #[error("a sealed secret does not open: it was altered, or sealed for another edge or row")]
    Sealed,
}

const SIGNING_PREFIX: &str = "postern-policy-ed25519";
const BOX_PREFIX: &str = "postern-edge-x25519";

/// The central's bundle signing key.
pub struct BundleSigner(SigningKey);

impl BundleSigner {
    pub fn from_seed(seed: &[u8; 32]) -> BundleSigner {
        BundleSigner(SigningKey::from_bytes(seed))
    }

    /// The public key, as edges pin it.
    pub fn public(&self) -> String {
        format!(
            "{SIGNING_PREFIX} {}",
            B64.encode(self.0.verifying_key().as_bytes())
        )
    }

    pub fn sign(&self, bundle: &PolicyBundle) -> SignedBundle {
        // A struct of strings and integers always serialises.
        let body = serde_json::to_string(bundle).unwrap_or_default();
        let signature = B64.encode(self.0.sign(body.as_bytes()).to_bytes());
        SignedBundle {
            body,
            key: self.public(),
            signature,
        }
    }
}

fn b64_32(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let b64 = text.trim().strip_prefix(prefix)?.trim_start();
    B64.decode(b64).ok()?.try_into().ok()
}

impl SignedBundle {
    /// Checks the signature against the `pinned` key and that the bundle is for `edge` and not
    /// older than version `held`; gives the bundle.
    pub fn open(&self, pinned: &str, edge: &str, held: i64) -> Result<PolicyBundle, BundleError> {
        if self.key.trim() != pinned.trim() {
            return Err(BundleError::WrongSigner {
                given: self.key.clone(),
                pinned: pinned.to_owned(),
            });
        }
        let key = b64_32(pinned, SIGNING_PREFIX)
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
            .ok_or(BundleError::NotASigningKey)?;
        let sig: [u8; 64] = B64
            .decode(&self.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(BundleError::BadSignature)?;
        key.verify(self.body.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| BundleError::BadSignature)?;
        let bundle: PolicyBundle =
            serde_json::from_str(&self.body).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if bundle.edge != edge {
            return Err(BundleError::OtherEdge {
                given: bundle.edge,
                expected: edge.to_owned(),
            });
        }
        if bundle.version < held {
            return Err(BundleError::Rollback {
                given: bundle.version,
                held,
            });
        }
        Ok(bundle)
    }
}

/// An edge's box key: secrets in its bundles are sealed to its public half.
pub struct EdgeBoxKey(StaticSecret);

impl EdgeBoxKey {
    pub fn from_seed(seed: [u8; 32]) -> EdgeBoxKey {
        EdgeBoxKey(StaticSecret::from(seed))
    }

    pub fn public(&self) -> String {
        format!(
            "{BOX_PREFIX} {}",
            B64.encode(PublicKey::from(&self.0).as_bytes())
        )
    }

    /// Opens a secret sealed to this key for `row` (as [`seal_to_edge`] was given it).
    pub fn open(&self, sealed: &SealedToEdge, row: &str) -> Result<Zeroizing<String>, BundleError> {
        let epk: [u8; 32] = B64
            .decode(&sealed.epk)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or(BundleError::Sealed)?;
        let epk = PublicKey::from(epk);
        let ours = PublicKey::from(&self.0);
        let key = box_key(self.0.diffie_hellman(&epk).as_bytes(), &epk, &ours);
        let raw = B64
            .decode(&sealed.sealed)
            .map_err(|_| BundleError::Sealed)?;
        if raw.len() < 24 {
            return Err(BundleError::Sealed);
        }
        let (nonce, ct) = raw.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| BundleError::Sealed)?;
        let plain = XChaCha20Poly1305::new(&key.into())
            .decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: row.as_bytes(),
                },
            )
            .map_err(|_| BundleError::Sealed)?;
        String::from_utf8(plain)
            .map(Zeroizing::new)
            .map_err(|_| BundleError::Sealed)
    }
}

/// The symmetric key for one sealed secret: the X25519 shared secret bound to both public keys.
fn box_key(shared: &[u8; 32], epk: &PublicKey, edge: &PublicKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"postern bundle seal v1\0");
    h.update(shared);
    h.update(epk.as_bytes());
    h.update(edge.as_bytes());
    h.finalize().into()
}

/// Seals `secret` (belonging to `row`, e.g. `vendor:NAME`) so that only the edge holding the box
/// key `edge_key` (as [`EdgeBoxKey::public`] wrote it) opens it.
pub fn seal_to_edge(edge_key: &str, row: &str, secret: &str) -> Result<SealedToEdge, BundleError> {
    let edge = PublicKey::from(b64_32(edge_key, BOX_PREFIX).ok_or(BundleError::NotABoxKey)?);
    let eph = StaticSecret::from(rand::random::<[u8; 32]>());
    let epk = PublicKey::from(&eph);
    let key = box_key(eph.diffie_hellman(&edge).as_bytes(), &epk, &edge);
    let nonce_bytes = rand::random::<[u8; 24]>();
    let nonce = XNonce::from(nonce_bytes);
    let ct = XChaCha20Poly1305::new(&key.into())
        .encrypt(
            &nonce,
            Payload {
                msg: secret.as_bytes(),
                aad: row.as_bytes(),
            },
        )
        .map_err(|_| BundleError::Sealed)?;
    let mut sealed = nonce_bytes.to_vec();
    sealed.extend_from_slice(&ct);
    Ok(SealedToEdge {
        epk: B64.encode(epk.as_bytes()),
        sealed: B64.encode(sealed),
    })
}

/// Checks that `key` is an edge box key as [`EdgeBoxKey::public`] writes it.
pub fn check_box_key(key: &str) -> Result<(), BundleError> {
    b64_32(key, BOX_PREFIX)
        .map(|_| ())
        .ok_or(BundleError::NotABoxKey)
}

/// The identity a vendor's TOTP secret is sealed under.
pub fn vendor_row(name: &str) -> String {
    format!("vendor:{name}")
}

/// The identity a device credential is sealed under.
pub fn device_row(site: &str, name: &str) -> String {
    format!("device:{site}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(version: i64) -> PolicyBundle {
        PolicyBundle {
            edge: "e1".into(),
            version,
            issued: 100,
            offline_grace: 86_400,
            sites: vec!["s1".into()],
            vendors: vec![],
            vendor_cas: vec![],
            certificates: vec![],
            grants: vec![],
            functions: vec![],
            devices: vec![],
        }
    }

    #[test]
    fn a_signed_bundle_opens_only_with_the_pinned_key_for_its_edge_and_never_goes_back() {
        let signer = BundleSigner::from_seed(&[7; 32]);
        let signed = signer.sign(&bundle(5));
        let pinned = signer.public();
        assert_eq!(signed.open(&pinned, "e1", 5).unwrap().version, 5);
        assert!(matches!(
            signed.open(&pinned, "e1", 6),
            Err(BundleError::Rollback { given: 5, held: 6 })
        ));
        assert!(matches!(
            signed.open(&pinned, "e2", 0),
            Err(BundleError::OtherEdge { .. })
        ));
        let other = BundleSigner::from_seed(&[8; 32]).public();
        assert!(matches!(
            signed.open(&other, "e1", 0),
            Err(BundleError::WrongSigner { .. })
        ));
        let mut tampered = signed.clone();
        tampered.body = tampered.body.replace("\"version\":5", "\"version\":9");
        assert_eq!(
            tampered.open(&pinned, "e1", 0),
            Err(BundleError::BadSignature)
        );
        let mut forged = signed;
        forged.signature = B64.encode([0u8; 64]);
        assert_eq!(
            forged.open(&pinned, "e1", 0),
            Err(BundleError::BadSignature)
        );
    }

    #[test]
    fn a_secret_sealed_to_an_edge_opens_only_there_and_only_for_its_row() {
        let edge = EdgeBoxKey::from_seed([1; 32]);
        let sealed = seal_to_edge(&edge.public(), &vendor_row("ann"), "JBSWY3DP").unwrap();
        assert_eq!(
            edge.open(&sealed, &vendor_row("ann")).unwrap().as_str(),
            "JBSWY3DP"
        );
        assert_eq!(
            edge.open(&sealed, &vendor_row("bob")).map(|_| ()),
            Err(BundleError::Sealed)
        );
        let other = EdgeBoxKey::from_seed([2; 32]);
        assert_eq!(
            other.open(&sealed, &vendor_row("ann")).map(|_| ()),
            Err(BundleError::Sealed)
        );
        assert!(seal_to_edge("garbage", "r", "s").is_err());
        assert!(!format!("{sealed:?}").contains(&sealed.sealed));
    }
}
