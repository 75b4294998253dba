//! The first factor (the vendor's certificate, as the broker issued it) and how every refusal
//! during authentication is audited, counted and delayed.

use approvals::audit::AuditEvent;
use std::time::Duration;

use approvals::audit::bounded;
use approvals::time::now;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Certificate, PublicKey};
use russh::server::Auth;
use russh::{MethodKind, MethodSet};
use serde_json::json;
use tracing::warn;

use super::state::{CertPassed, ConnState};
use super::{Conn, LOGGED, MAX_KEY_LOOKUPS, MAX_USER};
use crate::admission::Outcome;
use crate::login::{self, Target};
use crate::session::Permits;

/// How long a failed authentication step waits before it is answered.
pub(super) const FAILURE_DELAY: Duration = Duration::from_millis(300);

/// Keyboard-interactive (the TOTP prompt) is the only method left.
pub(super) fn ki_only() -> MethodSet {
    MethodSet::from(&[MethodKind::KeyboardInteractive][..])
}

impl Conn {
    /// A failure before the first factor passed (no certificate, a foreign or unissued one, a
    /// malformed login): audited (bounded), counted against the *source* only, never against the
    /// named vendor, so that a stranger cannot lock anyone out.
    pub(super) async fn refuse_first_factor(
        &mut self,
        event: AuditEvent,
        user: &str,
        reason: String,
    ) -> Auth {
        let user = bounded(user, LOGGED);
        let reason = bounded(&reason, LOGGED);
        warn!(peer = %self.peer, user, reason, "{event}");
        if self.ctx.admission.exempt(self.peer.ip()) || self.ctx.detail_budget.allow(self.peer.ip())
        {
            self.ctx
                .audit(event, json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason}))
                .await;
        } else {
            self.ctx.throttled.count(
                "failed before the first factor (beyond the audit budget)",
                self.peer.ip(),
            );
        }
        self.ctx.source_limiter.failed(&self.source());
        self.count_certificate_failure();
        self.shared.outcome(Outcome::AuthFail);
        self.shared.fail(reason);
        tokio::time::sleep(FAILURE_DELAY).await;
        Auth::reject()
    }

    /// Notes a failure at the first factor: a connection that ends without authenticating and
    /// without any certificate passing is counted once as a certificate failure, however many
    /// keys it offered (OpenSSH offers its bare key beside the certificate, and after a wrong
    /// code too).
    fn count_certificate_failure(&mut self) {
        self.shared.first_factor(false);
    }

    /// The source is over its limit of failures: counted into the periodic summary instead of
    /// one audit event each, so that a flood cannot fill the disk.
    pub(super) async fn throttled(&mut self) -> Auth {
        self.ctx
            .throttled
            .count("too many failed attempts from this address", self.peer.ip());
        (self.ctx.metrics).auth_failed(crate::metrics::AuthFailure::RateLimited);
        self.shared.outcome(Outcome::AuthFail);
        self.shared
            .fail("too many failed attempts from this address: try again later".into());
        tokio::time::sleep(FAILURE_DELAY).await;
        Auth::reject()
    }

    /// The control plane failed during authentication: nothing is counted against anyone.
    pub(super) async fn outage_during_auth(
        &mut self,
        event: AuditEvent,
        user: &str,
        error: String,
    ) -> Auth {
        warn!(peer = %self.peer, error, "{event}: control plane unavailable");
        self.ctx
            .audit(event, json!({"user": bounded(user, LOGGED), "source": self.peer.to_string(), "outcome": "error", "reason": format!("control plane unavailable: {}", bounded(&error, LOGGED))}))
            .await;
        self.shared.fail("control plane unavailable".into());
        self.tries.control_plane_down = true;
        // Keyboard-interactive next, where the vendor is told why (see there).
        Auth::Reject {
            proceed_with_methods: Some(ki_only()),
            partial_success: false,
        }
    }

    /// A plain key: never enough. Notes why for the connection's failure summary: OpenSSH
    /// offers the bare key after russh silently refused its expired certificate, so the
    /// registry of issued certificates can name that reason (for the first few keys only: each
    /// lookup is a database query). A connection that ends on plain keys alone failed before
    /// the first factor.
    pub(super) async fn plain_key(&mut self, user: &str, key: &PublicKey) -> Auth {
        if let Some(code) = login::enrolment_code(user) {
            return self.enrolment_key(user, code, key).await;
        }
        self.shared.set_user(user);
        if user.len() > MAX_USER {
            self.shared
                .fail(format!("user name of {} bytes refused", user.len()));
            self.shared.outcome(Outcome::AuthFail);
            return Auth::reject();
        }
        self.shared.outcome(Outcome::AuthFail);
        // OpenSSH offers a plain key only once its certificate was refused (or it has none).
        self.count_certificate_failure();
        let fp = crate::keys::fingerprint(key);
        let lookups = self.tries.key_lookups;
        self.tries.key_lookups = lookups.saturating_add(1);
        let reason = if lookups >= MAX_KEY_LOOKUPS {
            plain_key_refused(&fp)
        } else {
            self.why_plain_key(&fp).await
        };
        self.shared.fail(reason);
        Auth::reject()
    }

    /// What the registry says about a key offered without its certificate.
    async fn why_plain_key(&self, fp: &str) -> String {
        let certs = match approvals::store::deadline(self.ctx.store.certificates_for_key(fp)).await
        {
            Ok(certs) if !certs.is_empty() => certs,
            _ => return plain_key_refused(fp),
        };
        let t = now();
        if certs
            .iter()
            .any(|c| c.valid_after <= t && t < c.valid_before && !c.revoked)
        {
            format!("key {fp} was offered without its certificate")
        } else if let Some(c) = certs
            .iter()
            .filter(|c| c.valid_before <= t)
            .max_by_key(|c| c.valid_before)
        {
            format!(
                "certificate {} for key {fp} expired at {}",
                c.key_id,
                approvals::time::fmt_time(c.valid_before)
            )
        } else {
            format!("certificate for key {fp} is not yet valid")
        }
    }

    /// The first factor: the login names a vendor and the certificate is one the broker issued
    /// to that vendor. On success the TOTP prompt is next.
    pub(super) async fn certificate(&mut self, user: &str, cert: &Certificate) -> Auth {
        self.state = ConnState::Unauthenticated;
        self.shared.set_user(user);
        // Refused before anything else: no parsing, no lookup, a bounded audit entry.
        if user.len() > MAX_USER {
            let reason = format!("user name of {} bytes is too long", user.len());
            return self
                .refuse_first_factor(AuditEvent::AuthCertificate, user, reason)
                .await;
        }
        if !self.ctx.source_limiter.allowed(&self.source()) {
            return self.throttled().await;
        }
        if login::enrolment_code(user).is_some() {
            // An old certificate beside the key being enrolled: OpenSSH offers the key next.
            return Auth::reject();
        }
        let target = match login::parse(user) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .refuse_first_factor(AuditEvent::AuthCertificate, user, e.to_string())
                    .await;
            }
        };
        match self.check_certificate(&target, cert).await {
            Ok(()) => {}
            Err(CertRefusal::Outage(e)) => {
                return self
                    .outage_during_auth(AuditEvent::AuthCertificate, user, e.to_string())
                    .await;
            }
            Err(refused) => {
                return self
                    .refuse_first_factor(AuditEvent::AuthCertificate, user, refused.to_string())
                    .await;
            }
        }
        let (key_id, serial) = (cert.key_id().to_owned(), cert.serial());
        if !self
            .ctx
            .audit(AuditEvent::AuthCertificate, json!({"user": user, "source": self.peer.to_string(), "outcome": "accepted", "key_id": key_id, "serial": serial}))
            .await
        {
            return Auth::reject();
        }
        self.shared.first_factor(true);
        self.state = ConnState::CertificateAccepted(CertPassed {
            user: user.to_owned(),
            target,
            key_id,
            serial,
            permits: Permits::of(cert),
            key: cert.public_key().clone().into(),
        });
        Auth::Reject {
            proceed_with_methods: Some(ki_only()),
            partial_success: true,
        }
    }

    /// The checks russh leaves to us: CA, type, principal, critical options, vendor state.
    async fn check_certificate(
        &self,
        target: &Target,
        cert: &Certificate,
    ) -> Result<(), CertRefusal> {
        // A CA registered by another node a moment ago is looked up before anything is refused.
        let ca = cert
            .signature_key()
            .fingerprint(russh::keys::HashAlg::Sha256);
        let _ = self.ctx.ca.knows(&self.ctx.store, &ca).await;
        self.certificate_fields(target, cert)?;
        let vendor = || target.vendor.clone();
        match approvals::store::deadline(self.ctx.store.vendor(&target.vendor)).await {
            Err(e) => return Err(CertRefusal::Outage(e)),
            Ok(None) => return Err(CertRefusal::UnknownVendor(vendor())),
            Ok(Some(v)) if v.is_disabled() => return Err(CertRefusal::VendorDisabled(vendor())),
            Ok(Some(v)) if v.contract_end.is_some_and(|end| now() >= end) => {
                return Err(CertRefusal::ContractEnded(vendor()));
            }
            Ok(Some(_)) => {}
        }
        // Only certificates the broker issued to this vendor (serial, key id and key as
        // registered, not revoked): a CA key copied elsewhere cannot mint working certificates.
        let fp = cert
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string();
        let issued = approvals::store::deadline(self.ctx.store.certificates_for_key(&fp))
            .await
            .map_err(CertRefusal::Outage)?;
        let serial = cert.serial().to_string();
        match issued
            .iter()
            .find(|c| c.serial == serial && c.vendor == target.vendor && c.key_id == cert.key_id())
        {
            None => Err(CertRefusal::NotIssued {
                serial,
                key_id: bounded(cert.key_id(), 80),
                vendor: vendor(),
            }),
            Some(c) if c.revoked => Err(CertRefusal::Revoked(serial)),
            Some(_) => Ok(()),
        }
    }

    /// What can be checked from the certificate alone: CA, type, principal, critical options.
    fn certificate_fields(
        &self,
        target: &Target,
        cert: &Certificate,
    ) -> Result<(), CertFieldError> {
        cert.validate(&self.ctx.ca.current()).map_err(|e| match e {
            russh::keys::ssh_key::Error::CertificateValidation => CertFieldError::Untrusted,
            other => CertFieldError::Invalid(other),
        })?;
        if cert.cert_type() != CertType::User {
            return Err(CertFieldError::NotUser);
        }
        if cert.valid_principals().is_empty() {
            return Err(CertFieldError::NoPrincipals);
        }
        if !cert.valid_principals().iter().any(|p| p == &target.vendor) {
            return Err(CertFieldError::NotForVendor {
                principals: cert.valid_principals().to_vec(),
                vendor: target.vendor.clone(),
            });
        }
        for (name, value) in cert.critical_options().iter() {
            match name.as_str() {
                "source-address" if source_allowed(value, self.peer.ip()) => {}
                "source-address" => {
                    return Err(CertFieldError::SourceAddress {
                        peer: self.peer.ip(),
                        allowed: value.clone(),
                    });
                }
                other => {
                    return Err(CertFieldError::CriticalOption(bounded(other, 64)));
                }
            }
        }
        Ok(())
    }
}

fn plain_key_refused(fp: &str) -> String {
    format!("plain public key {fp} offered: a vendor certificate is required")
}

/// Whether `peer` is in a certificate's `source-address` list (addresses and networks).
fn source_allowed(list: &str, peer: std::net::IpAddr) -> bool {
    list.split(',').any(|net| {
        let net = net.trim();
        net.parse::<ipnet::IpNet>()
            .map(|n| n.contains(&peer))
            .unwrap_or(false)
            || net
                .parse::<std::net::IpAddr>()
                .map(|a| a == peer)
                .unwrap_or(false)
    })
}

/// What the certificate alone shows to be wrong; `Display` is the audited reason.
#[derive(Debug, thiserror::Error)]
enum CertFieldError {
    #[error("certificate is not signed by a trusted vendor CA (or is outside its validity)")]
    Untrusted,
    #[error("certificate rejected: {0}")]
    Invalid(russh::keys::ssh_key::Error),
    #[error("certificate is not a user certificate")]
    NotUser,
    #[error("certificate has no principals")]
    NoPrincipals,
    #[error("certificate principals {principals:?} do not include vendor {vendor}")]
    NotForVendor {
        principals: Vec<String>,
        vendor: String,
    },
    #[error("source address {peer} is not allowed by the certificate ({allowed})")]
    SourceAddress {
        peer: std::net::IpAddr,
        allowed: String,
    },
    /// The option's name, bounded: it comes from the vendor.
    #[error("certificate has unsupported critical option {0}")]
    CriticalOption(String),
}

/// Why a certificate was not accepted. Every variant but `Outage` is a refusal counted against
/// the source; `Display` is the audited reason.
#[derive(Debug, thiserror::Error)]
enum CertRefusal {
    #[error(transparent)]
    Fields(#[from] CertFieldError),
    #[error("unknown vendor {0}")]
    UnknownVendor(String),
    #[error("vendor {0} is disabled")]
    VendorDisabled(String),
    #[error("the contract of vendor {0} has ended")]
    ContractEnded(String),
    #[error(
        "certificate serial {serial} (key id {key_id}) was not issued by this broker to vendor {vendor}"
    )]
    NotIssued {
        serial: String,
        key_id: String,
        vendor: String,
    },
    #[error("certificate serial {0} has been revoked")]
    Revoked(String),
    /// The control plane could not be asked: nothing is counted against anyone.
    #[error("{0}")]
    Outage(approvals::StoreError),
}
