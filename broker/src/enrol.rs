//! Issuing vendor certificates: signed by the vendor CA, registered, audited, then written where
//! OpenSSH looks for them.

use std::path::{Path, PathBuf};

use approvals::Actor;
use approvals::time::now;

use russh::keys::PublicKey;

use crate::Node;
use crate::keys::{self, KeyError};

/// Why a certificate was not issued (nothing is left behind).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("certificate validity out of range")]
    OutOfRange,
    #[error("no vendor named {0}")]
    NoVendor(String),
    /// The contract ends before the certificate would start: nothing is left to certify.
    #[error("the contract of vendor {vendor} ended at {end}")]
    ContractEnded { vendor: String, end: String },
    #[error(transparent)]
    Store(#[from] approvals::StoreError),
    /// This node still holds a CA no node trusts any more.
    #[error("this node's vendor CA {0} was retired: run `postern ca rotate` first")]
    CaRetired(String),
    #[error(transparent)]
    Refused(#[from] approvals::ActionError),
    #[error("writing {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// A certificate signed by this node's vendor CA and not yet registered: until the registry
/// holds it (an action), every node refuses it.
pub struct Signed {
    /// One OpenSSH line (`ssh-ed25519-cert-v01@openssh.com AAAA...`).
    pub text: String,
    pub issued: keys::IssuedCert,
    /// The registry row to record with it.
    pub record: approvals::IssuedCertificate,
}

/// Signs a user certificate for `subject` with the vendor CA. The validity ends at the vendor's
/// contract end if that comes first (the certificate's own `valid_before` is the effective end);
/// a contract already ended, or a CA retired elsewhere, issues nothing.
pub async fn sign(
    node: &Node,
    vendor: &str,
    subject: &PublicKey,
    start: i64,
    secs: i64,
    restrict: keys::Restrictions,
) -> Result<Signed, IssueError> {
    let ca = keys::load_private(&node.data.ca_key())?;
    let asked = start.checked_add(secs).ok_or(IssueError::OutOfRange)?;
    let end = capped_at_contract(node, vendor, start, asked).await?;
    refuse_retired(node, &ca).await?;
    let issued = keys::sign_user_cert(
        &ca,
        subject,
        vendor,
        start.max(0) as u64,
        end.max(0) as u64,
        restrict,
    )?;
    let text = issued.cert.to_openssh().map_err(|error| KeyError::Ssh {
        what: "encoding certificate",
        error,
    })?;
    let record = approvals::IssuedCertificate {
        serial: issued.serial.to_string(),
        vendor: vendor.to_owned(),
        key_id: issued.key_id.clone(),
        key_fingerprint: keys::fingerprint(subject),
        valid_after: start,
        valid_before: end,
        revoked: false,
        created: now(),
        ca: keys::fingerprint(ca.public_key()),
    };
    Ok(Signed {
        text,
        issued,
        record,
    })
}

/// Signs and registers (one audited action) a certificate for `subject`; see [`sign`].
pub async fn issue(
    node: &Node,
    actor: &Actor,
    vendor: &str,
    subject: &PublicKey,
    start: i64,
    secs: i64,
    restrict: keys::Restrictions,
) -> Result<Signed, IssueError> {
    let began = std::time::Instant::now();
    let signed = sign(node, vendor, subject, start, secs, restrict).await?;
    node.actions()
        .issue_certificate(actor, &signed.record)
        .await?;
    measured(node, began, &signed.record.serial).await;
    Ok(signed)
}

/// Records how long issuing the certificate `serial` took, from `began` (the request) to its
/// registration: the operator's certificate issuance SLO. A measurement, not evidence: one the
/// database cannot take is logged and dropped.
pub async fn measured(node: &Node, began: std::time::Instant, serial: &str) {
    let millis = began.elapsed().as_millis() as i64;
    let at_ms = chrono::Utc::now().timestamp_millis();
    let kind = approvals::store::SloKind::CertificateIssuance;
    let sampled = node.store.record_sample(kind, at_ms, millis, serial);
    if let Err(e) = approvals::store::deadline(sampled).await {
        tracing::warn!(serial, error = %e, "certificate issuance time not recorded");
    }
}

/// Issues a certificate for the public key in the file `pubkey` (see [`issue`]) and only then
/// writes it next to the key as `KEY-cert.pub` (where OpenSSH looks for it): a refused action
/// leaves no certificate behind. Returns the certificate's path.
pub async fn issue_certificate(
    node: &Node,
    actor: &Actor,
    vendor: &str,
    pubkey: &Path,
    start: i64,
    secs: i64,
    restrict: keys::Restrictions,
) -> Result<(PathBuf, keys::IssuedCert), IssueError> {
    let subject = keys::load_public(pubkey)?;
    let signed = issue(node, actor, vendor, &subject, start, secs, restrict).await?;
    let out = cert_path(pubkey);
    let tmp = out.with_extension("tmp");
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |error| IssueError::Write { path, error }
    };
    std::fs::write(&tmp, format!("{}\n", signed.text)).map_err(failed(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(failed(&out))?;
    Ok((out, signed.issued))
}

/// A certificate from a retired CA would be refused everywhere: none is issued.
async fn refuse_retired(node: &Node, ca: &russh::keys::PrivateKey) -> Result<(), IssueError> {
    let fp = keys::fingerprint(ca.public_key());
    let retired = node.store.vendor_ca_rows().await?.into_iter().any(|r| {
        r.retired.is_some()
            && keys::parse_public(&r.public_key).is_ok_and(|k| keys::fingerprint(&k) == fp)
    });
    if retired {
        return Err(IssueError::CaRetired(fp));
    }
    Ok(())
}

/// `end`, or the vendor's contract end if that is earlier; refused if the contract ends
/// before `start`.
async fn capped_at_contract(
    node: &Node,
    vendor: &str,
    start: i64,
    end: i64,
) -> Result<i64, IssueError> {
    let v = node
        .store
        .vendor(vendor)
        .await?
        .ok_or_else(|| IssueError::NoVendor(vendor.to_owned()))?;
    match v.contract_end {
        Some(c) if c <= start.max(now()) => Err(IssueError::ContractEnded {
            vendor: vendor.to_owned(),
            end: approvals::time::fmt_time(c),
        }),
        Some(c) => Ok(end.min(c)),
        None => Ok(end),
    }
}

/// `id_ed25519.pub` -> `id_ed25519-cert.pub`, where OpenSSH looks for it.
pub fn cert_path(pubkey: &Path) -> PathBuf {
    let s = pubkey.to_string_lossy();
    match s.strip_suffix(".pub") {
        Some(base) => PathBuf::from(format!("{base}-cert.pub")),
        None => PathBuf::from(format!("{s}-cert.pub")),
    }
}
