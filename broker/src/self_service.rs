//! Self-service for vendors over stock OpenSSH: enrolment with a one-time code
//! (`ssh -i KEY enroll:CODE@broker`), renewal (`ssh VENDOR:renew@broker`) and a ready
//! `~/.ssh/config` block for their grants (`ssh VENDOR:config@broker`). Certificates are issued
//! by [`crate::enrol::issue_certificate`] only, so every rule it applies applies here too.

use std::net::SocketAddr;
use std::path::PathBuf;

use approvals::store::invite_hash;
use approvals::time::{now, parse_duration};
use approvals::{ActionError, Actor, StoreError};
use russh::keys::PublicKey;

use crate::Node;
use crate::enrol::{IssueError, issue_certificate};
use crate::keys::{self, Restrictions};

/// Why a self-service step gave nothing. `Refused` is the vendor's to fix (one line, audited by
/// the caller); the others are outages.
#[derive(Debug, thiserror::Error)]
pub enum SelfServiceError {
    #[error("{0}")]
    Refused(String),
    #[error("the certificate could not be issued: {0}")]
    Issue(#[from] IssueError),
    #[error("the control plane is unavailable: {0}")]
    Outage(#[from] StoreError),
    #[error("{0}")]
    Totp(#[from] approvals::totp::TotpError),
}

impl SelfServiceError {
    /// An enrolment or renewal the vendor cannot make work by retrying (the code, the contract).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SelfServiceError::Refused(_)
                | SelfServiceError::Issue(IssueError::Refused(
                    ActionError::NotFound(_) | ActionError::Conflict(_) | ActionError::Invalid(_)
                ))
        )
    }
}

impl From<ActionError> for SelfServiceError {
    fn from(e: ActionError) -> SelfServiceError {
        match e {
            ActionError::NotFound(m) | ActionError::Conflict(m) | ActionError::Invalid(m) => {
                SelfServiceError::Refused(m)
            }
            other => SelfServiceError::Issue(IssueError::Refused(other)),
        }
    }
}

/// What an enrolment hands the vendor.
pub struct Enrolled {
    pub vendor: String,
    /// The certificate, one OpenSSH line.
    pub certificate: String,
    /// The TOTP enrolment: the `otpauth://` URI and its QR code for a terminal.
    pub otpauth: String,
    pub qr: String,
}

/// The node's data directory and settings, as self-service needs them.
pub struct SelfService {
    node: Node,
    cert_validity: i64,
    public_address: Option<String>,
}

impl SelfService {
    /// Reads `cert_validity`; the node's parts are shared, not reopened.
    pub fn new(node: &Node) -> Result<SelfService, approvals::time::TimeError> {
        let cert_validity = parse_duration(&node.cfg.cert_validity)?;
        Ok(SelfService {
            node: Node {
                data: node.data.clone(),
                cfg: node.cfg.clone(),
                store: node.store.clone(),
                audit: node.audit.clone(),
                notifier: node.notifier.clone(),
            },
            cert_validity,
            public_address: node.cfg.ssh_public_address.clone(),
        })
    }

    /// Burns `code` for `key` (which the vendor proved to hold), gives the vendor a new TOTP
    /// secret (one audited transaction), then certifies exactly that key.
    pub async fn enrol(&self, code: &str, key: &PublicKey) -> Result<Enrolled, SelfServiceError> {
        let secret = approvals::totp::new_secret();
        let vendor = self
            .node
            .actions()
            .enrol_vendor(&invite_hash(code), &keys::fingerprint(key), &secret, now())
            .await?;
        let otpauth = approvals::totp::otpauth_uri(&secret, &vendor)?;
        let certificate = self.certify(&vendor, key, Restrictions::default()).await?;
        Ok(Enrolled {
            vendor,
            certificate,
            qr: qr(&otpauth),
            otpauth,
        })
    }

    /// A fresh certificate for the key that just logged in with its current one (checked by the
    /// front door: trusted, issued, not revoked, in time, this vendor's) and a TOTP code.
    pub async fn renew(
        &self,
        vendor: &str,
        key: &PublicKey,
        restrict: Restrictions,
    ) -> Result<String, SelfServiceError> {
        self.certify(vendor, key, restrict).await
    }

    /// Signs `cert_validity` (never past the contract end) through the one issuing function,
    /// which wants the key in a file and writes the certificate beside it: a private scratch
    /// directory, removed afterwards.
    async fn certify(
        &self,
        vendor: &str,
        key: &PublicKey,
        restrict: Restrictions,
    ) -> Result<String, SelfServiceError> {
        let start = now() - 60;
        let contract_end = self
            .node
            .store
            .vendor(vendor)
            .await?
            .and_then(|v| v.contract_end);
        let end = contract_end.map_or(start + self.cert_validity, |c| {
            c.min(start + self.cert_validity)
        });
        if end <= now() {
            return Err(SelfServiceError::Refused(format!(
                "the contract of vendor {vendor} has ended"
            )));
        }
        let scratch = Scratch::new(&self.node)?;
        let pubkey = scratch.0.join("key.pub");
        let line = keys::openssh_line(key).map_err(IssueError::from)?;
        std::fs::write(&pubkey, format!("{line}\n")).map_err(|error| IssueError::Write {
            path: pubkey.display().to_string(),
            error,
        })?;
        let actor = Actor::vendor(vendor);
        let (path, _) = issue_certificate(
            &self.node,
            &actor,
            vendor,
            &pubkey,
            start,
            end - start,
            restrict,
        )
        .await?;
        let text = std::fs::read_to_string(&path).map_err(|error| IssueError::Write {
            path: path.display().to_string(),
            error,
        })?;
        Ok(text.trim().to_owned())
    }

    /// An `~/.ssh/config` block for the vendor's current and coming grants: one `Host` per
    /// granted device (per device and function where several functions are granted there).
    /// `reached` is the address the vendor's connection came in on, used unless
    /// `ssh_public_address` is set; `identity` is the vendor's key file, if they named it.
    pub async fn config_block(
        &self,
        vendor: &str,
        reached: SocketAddr,
        identity: Option<&str>,
    ) -> Result<String, StoreError> {
        let hosts = crate::ssh_config::granted_hosts(&self.node.store, vendor, now()).await?;
        let (host, port) = match &self.public_address {
            Some(a) => crate::ssh_config::split_address(a),
            None => (reached.ip().to_string(), reached.port()),
        };
        Ok(crate::ssh_config::render(
            vendor, &hosts, &host, port, identity,
        ))
    }
}

/// A private scratch directory under the keys directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(node: &Node) -> Result<Scratch, IssueError> {
        let name = format!("issue-{}", hex::encode(rand::random::<[u8; 8]>()));
        let dir = node.data.keys().join(name);
        std::fs::create_dir_all(&dir).map_err(|error| IssueError::Write {
            path: dir.display().to_string(),
            error,
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A QR code for a terminal (two pixel rows per line).
fn qr(uri: &str) -> String {
    use qrcode::QrCode;
    use qrcode::render::unicode::Dense1x2;
    QrCode::new(uri.as_bytes())
        .map(|c| c.render::<Dense1x2>().quiet_zone(true).build())
        .unwrap_or_default()
}
