//! SSH keys and the vendor certificate authority.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{Certificate, PrivateKey, PublicKey};

use crate::config::write_private;

/// A fresh Ed25519 key. Seeded from the OS CSPRNG through `rand` (ssh-key's own generator wants
/// a different rand_core version than the rest of the tree).
pub fn generate_ed25519(comment: &str) -> Result<PrivateKey> {
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        comment,
    )
    .map_err(|e| anyhow!("generating key: {e}"))?;
    key.set_comment(comment);
    Ok(key)
}

/// Writes a private key (0600) and its `.pub` next to it.
pub fn write_keypair(path: &Path, key: &PrivateKey) -> Result<()> {
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| anyhow!("encoding key: {e}"))?;
    write_private(path, pem.as_bytes())?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow!("encoding key: {e}"))?;
    std::fs::write(path.with_extension("pub"), format!("{public}\n"))?;
    Ok(())
}

pub fn load_private(path: &Path) -> Result<PrivateKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    parse_private(&text)
        .with_context(|| format!("{} is not an OpenSSH private key", path.display()))
}

pub fn parse_private(text: &str) -> Result<PrivateKey> {
    PrivateKey::from_openssh(text.trim()).map_err(|e| anyhow!("{e}"))
}

pub fn load_public(path: &Path) -> Result<PublicKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_public(&text).with_context(|| format!("{} is not an OpenSSH public key", path.display()))
}

/// Parses the first key line of an OpenSSH public key or known_hosts-style file.
pub fn parse_public(text: &str) -> Result<PublicKey> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| anyhow!("no key in file"))?;
    // Accept "HOST ssh-ed25519 AAAA..." (ssh-keyscan output) as well as a bare key line.
    let from_alg = line
        .find("ssh-")
        .or_else(|| line.find("ecdsa-"))
        .unwrap_or(0);
    PublicKey::from_openssh(&line[from_alg..]).map_err(|e| anyhow!("{e}"))
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What `vendor cert` produced.
pub struct IssuedCert {
    pub cert: Certificate,
    pub serial: u64,
    pub key_id: String,
}

/// What a certificate withholds, as OpenSSH's `ssh-keygen -O no-pty` etc. The broker honours
/// the certificate's extensions as sshd does: no terminal without `permit-pty`, no `ssh -L`
/// without `permit-port-forwarding`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restrictions {
    pub no_pty: bool,
    pub no_port_forwarding: bool,
}

/// Signs an OpenSSH user certificate for `vendor` with the vendor CA.
pub fn sign_user_cert(
    ca: &PrivateKey,
    subject: &PublicKey,
    vendor: &str,
    valid_after: u64,
    valid_before: u64,
    restrict: Restrictions,
) -> Result<IssuedCert> {
    if valid_before <= valid_after {
        bail!("certificate validity must be positive");
    }
    let nonce: [u8; 32] = rand::random();
    let serial: u64 = rand::random::<u64>() >> 1;
    let key_id = format!("postern:{vendor}:{serial}");
    let mut b = Builder::new(
        nonce.to_vec(),
        subject.key_data().clone(),
        valid_after,
        valid_before,
    )
    .map_err(|e| anyhow!("certificate: {e}"))?;
    b.serial(serial)
        .and_then(|b| b.cert_type(CertType::User))
        .and_then(|b| b.key_id(key_id.clone()))
        .and_then(|b| b.valid_principal(vendor))
        .map_err(|e| anyhow!("certificate: {e}"))?;
    if !restrict.no_pty {
        b.extension("permit-pty", "")
            .map_err(|e| anyhow!("certificate: {e}"))?;
    }
    if !restrict.no_port_forwarding {
        b.extension("permit-port-forwarding", "")
            .map_err(|e| anyhow!("certificate: {e}"))?;
    }
    let cert = b
        .sign(ca)
        .map_err(|e| anyhow!("signing certificate: {e}"))?;
    Ok(IssuedCert {
        cert,
        serial,
        key_id,
    })
}

/// Loads the seal key, creating it (and its `.pub`) on first use.
pub fn seal_key(path: &Path) -> Result<recorder::SealKey> {
    if !path.exists() {
        let seed: [u8; 32] = rand::random();
        write_private(path, hex::encode(seed).as_bytes())?;
        let key = recorder::SealKey::from_seed(&seed);
        std::fs::write(
            path.with_extension("pub"),
            format!("{}\n", key.public().export()),
        )?;
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| anyhow!("{} is not a seal key", path.display()))?;
    Ok(recorder::SealKey::from_seed(&seed))
}
