//! Certificates and the vendor CA set: issuing (by the operator, or by the vendor's own
//! enrolment and renewal), revoking, rotating and retiring CAs. Each is one transaction with its
//! audit record, as every action.

use super::{ActionError, ActionRecord, Actions, Actor, Result};
use crate::model::IssuedCertificate;
use crate::store::Tx;
use crate::time::fmt_time;

impl Actions {
    /// Registers a certificate the vendor CA signed, in one transaction with its audit record.
    pub async fn issue_certificate(&self, actor: &Actor, c: &IssuedCertificate) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.record_certificate_in(&mut tx, c).await?;
        let record = ActionRecord::VendorCert {
            vendor: c.vendor.clone(),
            serial: c.serial.clone(),
            key_id: c.key_id.clone(),
            key: c.key_fingerprint.clone(),
            valid_before: fmt_time(c.valid_before),
            renewed_from: None,
        };
        self.finish(tx, actor, record).await
    }

    /// Registers `new`, renewing the certificate `old` that logged in, in one transaction with
    /// its audit record. Refused unless `old` is in the registry, the same vendor's and key's,
    /// not revoked (a retired CA revokes what it signed) and not expired at `now`, as the
    /// transaction sees it: a revocation that commits first wins.
    pub async fn renew_certificate(
        &self,
        actor: &Actor,
        old: &str,
        new: &IssuedCertificate,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        let current = self.store.certificate_in(&mut tx, old).await?;
        let refused = match &current {
            None => Some("the certificate is not one Postern issued"),
            Some(c) if c.vendor != new.vendor || c.key_fingerprint != new.key_fingerprint => {
                Some("the certificate is another vendor's or another key's")
            }
            Some(c) if c.revoked => Some("the certificate has been revoked"),
            Some(c) if c.valid_before <= now => Some("the certificate has expired"),
            Some(_) => None,
        };
        if let Some(why) = refused {
            return Err(ActionError::Conflict(format!(
                "certificate serial {old} cannot be renewed: {why}"
            )));
        }
        self.record_certificate_in(&mut tx, new).await?;
        let record = ActionRecord::VendorCert {
            vendor: new.vendor.clone(),
            serial: new.serial.clone(),
            key_id: new.key_id.clone(),
            key: new.key_fingerprint.clone(),
            valid_before: fmt_time(new.valid_before),
            renewed_from: Some(old.to_owned()),
        };
        self.finish(tx, actor, record).await
    }

    /// Records `c` in the registry inside `tx`, refused for an unknown or disabled vendor and for
    /// a certificate that would outlive the vendor's contract, whoever issues it.
    async fn record_certificate_in(&self, tx: &mut Tx, c: &IssuedCertificate) -> Result<()> {
        // The vendor's row lock first (a write, as `Tx` wants writes first), so that a disable
        // or `revoke-cert --all` racing this cannot miss the new certificate; a refusal below
        // rolls everything back.
        self.store.lock_vendor_in(tx, &c.vendor).await?;
        self.store.record_certificate_in(tx, c).await?;
        let vendor = self
            .store
            .vendor_in(tx, &c.vendor)
            .await?
            .ok_or_else(|| ActionError::NotFound(format!("no vendor named {}", c.vendor)))?;
        if vendor.is_disabled() {
            return Err(ActionError::Conflict(format!(
                "vendor {} is disabled",
                c.vendor
            )));
        }
        if let Some(end) = vendor.contract_end.filter(|end| c.valid_before > *end) {
            return Err(ActionError::Conflict(format!(
                "the certificate would outlive the contract of vendor {} (ends at {})",
                c.vendor,
                fmt_time(end)
            )));
        }
        Ok(())
    }

    /// Stores a one-time enrolment code's hash for an enabled vendor, valid until `expires`.
    pub async fn invite_vendor(
        &self,
        actor: &Actor,
        vendor: &str,
        code_hash: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .add_invite_in(&mut tx, code_hash, vendor, now, expires)
            .await?;
        let v = self.store.vendor_in(&mut tx, vendor).await?;
        match v {
            None => return Err(ActionError::NotFound(format!("no vendor named {vendor}"))),
            Some(v) if v.is_disabled() => {
                return Err(ActionError::Conflict(format!(
                    "vendor {vendor} is disabled"
                )));
            }
            Some(_) => {}
        }
        let record = ActionRecord::VendorInvite {
            vendor: vendor.to_owned(),
            invite: code_hash.chars().take(12).collect(),
            expires: fmt_time(expires),
        };
        self.finish(tx, actor, record).await
    }

    /// Enrols a vendor from a one-time code, in one transaction with its audit record: burns the
    /// code for the certificate's key, gives the vendor the new TOTP secret and registers the
    /// certificate (already signed, so that nothing after the commit can fail half-way). A code
    /// that is unknown, used, expired or another vendor's is refused (`NotFound`/`Conflict`) and
    /// nothing changes; the unregistered certificate is then refused at every login.
    pub async fn enrol_vendor(
        &self,
        code_hash: &str,
        cert: &IssuedCertificate,
        totp_secret: &str,
        now: i64,
    ) -> Result<()> {
        use crate::store::InviteClaim;
        let mut tx = self.store.begin().await?;
        let claim = self
            .store
            .claim_invite_in(&mut tx, code_hash, &cert.key_fingerprint, now)
            .await?;
        match claim {
            InviteClaim::Claimed { vendor } if vendor == cert.vendor => {}
            InviteClaim::Claimed { .. } | InviteClaim::Unknown => {
                return Err(ActionError::NotFound("unknown enrolment code".into()));
            }
            InviteClaim::Used => {
                return Err(ActionError::Conflict("enrolment code already used".into()));
            }
            InviteClaim::Expired => {
                return Err(ActionError::Conflict("enrolment code expired".into()));
            }
        }
        let vendor = cert.vendor.as_str();
        self.store
            .set_totp_secret_in(&mut tx, vendor, totp_secret)
            .await?;
        self.record_certificate_in(&mut tx, cert).await?;
        let record = ActionRecord::VendorEnrol {
            vendor: vendor.to_owned(),
            invite: code_hash.chars().take(12).collect(),
            key: cert.key_fingerprint.clone(),
            serial: cert.serial.clone(),
            valid_before: fmt_time(cert.valid_before),
        };
        self.finish(tx, &Actor::vendor(vendor), record).await
    }

    /// Revokes `vendor`'s certificate `serial`, or all of them (`None`): refused at the next
    /// login on every node, and the live sessions they authenticated close (the revision moves).
    /// Returns the serials revoked.
    pub async fn revoke_certificates(
        &self,
        actor: &Actor,
        vendor: &str,
        serial: Option<&str>,
    ) -> Result<Vec<String>> {
        let mut tx = self.store.begin().await?;
        // Serialised with certificates being issued for the vendor (see `record_certificate_in`).
        self.store.lock_vendor_in(&mut tx, vendor).await?;
        if self.store.vendor_in(&mut tx, vendor).await?.is_none() {
            return Err(ActionError::NotFound(format!("no vendor named {vendor}")));
        }
        let serials = self
            .store
            .revoke_certificates_in(&mut tx, vendor, serial)
            .await?;
        if let Some(s) = serial.filter(|_| serials.is_empty()) {
            return Err(match self.store.certificate_in(&mut tx, s).await? {
                Some(c) if c.vendor == vendor => ActionError::Conflict(format!(
                    "certificate serial {s} of vendor {vendor} is already revoked"
                )),
                _ => ActionError::NotFound(format!(
                    "vendor {vendor} has no certificate with serial {s}"
                )),
            });
        }
        let record = ActionRecord::VendorRevokeCert {
            vendor: vendor.to_owned(),
            serials: serials.clone(),
        };
        self.finish(tx, actor, record).await?;
        Ok(serials)
    }

    /// Registers a new vendor CA (`public_key` in OpenSSH format, `fingerprint` its SHA256
    /// fingerprint) that `node` signs with from now on. The caller installs the private key only
    /// after this succeeded.
    pub async fn rotate_vendor_ca(
        &self,
        actor: &Actor,
        public_key: &str,
        fingerprint: &str,
        node: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        if !self
            .store
            .add_vendor_ca_in(&mut tx, public_key, node, now)
            .await?
        {
            return Err(ActionError::Conflict(format!(
                "vendor CA {fingerprint} is already registered"
            )));
        }
        let record = ActionRecord::CaRotate {
            ca: fingerprint.to_owned(),
            node: node.to_owned(),
        };
        self.finish(tx, actor, record).await
    }

    /// Retires a vendor CA: no node trusts it any more, and every certificate it signed is
    /// revoked (returned).
    pub async fn retire_vendor_ca(
        &self,
        actor: &Actor,
        public_key: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        let mut tx = self.store.begin().await?;
        let revoked = self
            .store
            .retire_vendor_ca_in(&mut tx, public_key, fingerprint, now)
            .await?
            .ok_or_else(|| {
                ActionError::Conflict(format!("vendor CA {fingerprint} is already retired"))
            })?;
        let record = ActionRecord::CaRetire {
            ca: fingerprint.to_owned(),
            certificates_revoked: revoked.clone(),
        };
        self.finish(tx, actor, record).await?;
        Ok(revoked)
    }
}
