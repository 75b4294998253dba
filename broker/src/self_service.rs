//! Self-service for vendors over stock OpenSSH: enrolment with a one-time code
//! (`ssh -i KEY enroll:CODE@broker`), renewal (`ssh VENDOR:renew@broker`) and a ready
//! `~/.ssh/config` block for their grants (`ssh VENDOR:config@broker`). Certificates are signed
//! by [`crate::enrol::sign`] only, so every rule it applies (contract-end cap, retired CA) applies
//! here too.

use std::net::SocketAddr;

use approvals::store::invite_hash;
use approvals::time::{now, parse_duration};
use approvals::{ActionError, Actor, StoreError};
use russh::keys::PublicKey;

use crate::Node;
use crate::enrol::IssueError;
use crate::keys::Restrictions;

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
                | SelfServiceError::Issue(
                    IssueError::ContractEnded { .. }
                        | IssueError::NoVendor(_)
                        | IssueError::Refused(
                            ActionError::NotFound(_)
                                | ActionError::Conflict(_)
                                | ActionError::Invalid(_)
                        )
                )
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
    /// The device web front door as browsers reach it, if this broker has one.
    web_url: Option<String>,
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
                evidence_store: node.evidence_store.clone(),
            },
            cert_validity,
            public_address: node.cfg.ssh_public_address.clone(),
            web_url: crate::webdoor::public_url(&node.cfg),
        })
    }

    /// Signs a certificate for `key` (which the vendor proved to hold) for the vendor the code
    /// was made for, then burns the code, gives the vendor a new TOTP secret and registers the
    /// certificate in one audited transaction: a code that loses a race, or a refusal, leaves
    /// nothing behind (an unregistered certificate is refused everywhere).
    pub async fn enrol(&self, code: &str, key: &PublicKey) -> Result<Enrolled, SelfServiceError> {
        let began = std::time::Instant::now();
        let hash = invite_hash(code);
        let Some(vendor) = self.node.store.invite_vendor(&hash).await? else {
            return Err(SelfServiceError::Refused("unknown enrolment code".into()));
        };
        let start = now() - 60;
        let signed = crate::enrol::sign(
            &self.node,
            &vendor,
            key,
            start,
            self.cert_validity,
            Restrictions::default(),
        )
        .await?;
        let secret = approvals::totp::new_secret();
        let otpauth = approvals::totp::otpauth_uri(&secret, &vendor)?;
        self.node
            .actions()
            .enrol_vendor(&hash, &signed.record, &secret, now())
            .await?;
        crate::enrol::measured(&self.node, began, &signed.record.serial).await;
        Ok(Enrolled {
            vendor,
            certificate: signed.text,
            qr: qr(&otpauth),
            otpauth,
        })
    }

    /// A fresh certificate for the key that just logged in with its current one (`serial`;
    /// checked again when the renewal is registered: this vendor's and key's, not revoked, not
    /// expired) and a TOTP code. Valid `cert_validity`, never longer than the certificate it
    /// renews was (a short one the operator issued stays short) nor past the contract end.
    pub async fn renew(
        &self,
        vendor: &str,
        key: &PublicKey,
        restrict: Restrictions,
        serial: Option<u64>,
    ) -> Result<String, SelfServiceError> {
        let began = std::time::Instant::now();
        let Some(serial) = serial.map(|s| s.to_string()) else {
            return Err(SelfServiceError::Refused(
                "the certificate that logged in is not one Postern issued".into(),
            ));
        };
        let current = self
            .node
            .store
            .certificates_of(vendor)
            .await?
            .into_iter()
            .find(|c| c.serial == serial);
        let lifetime = current.map_or(self.cert_validity, |c| c.valid_before - c.valid_after);
        let signed = crate::enrol::sign(
            &self.node,
            vendor,
            key,
            now() - 60,
            self.cert_validity.min(lifetime.max(60)),
            restrict,
        )
        .await?;
        self.node
            .actions()
            .renew_certificate(&Actor::vendor(vendor), &serial, &signed.record, now())
            .await?;
        crate::enrol::measured(&self.node, began, &signed.record.serial).await;
        Ok(signed.text)
    }

    /// A one-time sign-in link to the device web front door for `vendor` (who must hold a grant
    /// with web access now), and when it expires.
    pub async fn web_link(&self, vendor: &str) -> Result<(String, i64), ActionError> {
        let Some(base) = &self.web_url else {
            return Err(ActionError::Conflict(
                "device web UIs are not enabled on this broker (web_devices_listen, web_devices_domain)".into(),
            ));
        };
        let token = crate::webdoor::new_token();
        let hash = crate::webdoor::token_hash(&token);
        let expires = (self.node.actions())
            .open_web_entry(vendor, &hash, now())
            .await?;
        Ok((format!("{base}/enter/{token}"), expires))
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

/// A QR code for a terminal (two pixel rows per line).
fn qr(uri: &str) -> String {
    use qrcode::QrCode;
    use qrcode::render::unicode::Dense1x2;
    QrCode::new(uri.as_bytes())
        .map(|c| c.render::<Dense1x2>().quiet_zone(true).build())
        .unwrap_or_default()
}
