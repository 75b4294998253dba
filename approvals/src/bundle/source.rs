//! A bundle's contents with secrets in the clear: read from the central's store (to digest and
//! seal), or opened at the edge (to write into its own store).

use sha2::{Digest, Sha256};

use super::{
    BundleCertificate, BundleDevice, BundleError, BundleFunction, BundleGrant, BundleVendor,
    EdgeBoxKey, PolicyBundle, device_row, seal_to_edge, vendor_row,
};
use crate::model::{Device, Function, Grant, IssuedCertificate, Vendor};

/// What goes into an edge's bundle, read from the store, with secrets still in the clear: it is
/// only ever digested (to tell whether anything changed) or sealed into a [`PolicyBundle`].
pub struct BundleSource {
    pub sites: Vec<String>,
    pub vendors: Vec<Vendor>,
    pub vendor_cas: Vec<String>,
    pub certificates: Vec<IssuedCertificate>,
    pub grants: Vec<Grant>,
    pub functions: Vec<Function>,
    pub devices: Vec<Device>,
    /// Seconds an edge goes on deciding alone after it last heard from the central.
    pub offline_grace: i64,
}

impl BundleSource {
    /// SHA-256 over everything the bundle says, secrets included (a digest, never the secrets).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |v: serde_json::Value| {
            h.update(v.to_string().as_bytes());
            h.update([0]);
        };
        part(serde_json::json!([
            self.sites,
            self.vendor_cas,
            self.certificates
        ]));
        for v in &self.vendors {
            part(serde_json::json!([v, v.totp_secret, v.totp_last_step]));
        }
        part(serde_json::json!([
            self.grants,
            self.functions,
            self.offline_grace
        ]));
        for d in &self.devices {
            part(serde_json::json!([d, d.credential]));
        }
        hex::encode(h.finalize())
    }

    /// The bundle for `edge` at `version`, its secrets sealed to the edge's `box_key`.
    pub fn seal(
        self,
        edge: &str,
        version: i64,
        issued: i64,
        box_key: &str,
    ) -> Result<PolicyBundle, BundleError> {
        let vendors = self
            .vendors
            .iter()
            .map(|v| {
                Ok(BundleVendor {
                    name: v.name.clone(),
                    org: v.org.clone(),
                    contract_end: v.contract_end,
                    disabled: v.disabled,
                    totp: seal_to_edge(box_key, &vendor_row(&v.name), &v.totp_secret)?,
                    totp_last_step: v.totp_last_step,
                })
            })
            .collect::<Result<_, BundleError>>()?;
        let devices = self
            .devices
            .iter()
            .map(|d| {
                Ok(BundleDevice {
                    site: d.site.clone(),
                    name: d.name.clone(),
                    addr: d.addr.clone(),
                    login: d.login.clone(),
                    credential_kind: d.credential_kind.to_string(),
                    credential: seal_to_edge(
                        box_key,
                        &device_row(&d.site, &d.name),
                        &d.credential,
                    )?,
                    host_key: d.host_key.clone(),
                })
            })
            .collect::<Result<_, BundleError>>()?;
        Ok(PolicyBundle {
            edge: edge.to_owned(),
            version,
            issued,
            offline_grace: self.offline_grace,
            sites: self.sites,
            vendors,
            vendor_cas: self.vendor_cas,
            certificates: (self.certificates.into_iter())
                .map(|c| BundleCertificate {
                    serial: c.serial,
                    vendor: c.vendor,
                    key_id: c.key_id,
                    key_fingerprint: c.key_fingerprint,
                    valid_after: c.valid_after,
                    valid_before: c.valid_before,
                    revoked: c.revoked,
                    ca: c.ca,
                })
                .collect(),
            grants: self.grants.into_iter().map(BundleGrant::from).collect(),
            functions: self
                .functions
                .into_iter()
                .map(BundleFunction::from)
                .collect(),
            devices,
        })
    }
}

impl From<Grant> for BundleGrant {
    fn from(g: Grant) -> BundleGrant {
        BundleGrant {
            id: g.id,
            vendor: g.vendor,
            site: g.site,
            function: g.function,
            valid_from: g.valid_from,
            valid_until: g.valid_until,
            devices: g.devices,
        }
    }
}

impl From<Function> for BundleFunction {
    fn from(f: Function) -> BundleFunction {
        BundleFunction {
            name: f.name,
            allow: f.allow,
            login: f.login,
            max_window: f.max_window,
            emergency: f.emergency,
            emergency_orgs: f.emergency_orgs,
            offline_ok: f.offline_ok,
        }
    }
}

impl PolicyBundle {
    /// The bundle's contents with its secrets opened by the edge's `key` (what the edge's own
    /// store is made to hold). Fields the central keeps to itself (who granted, when made) are
    /// filled with what the edge knows.
    pub fn open_with(&self, key: &EdgeBoxKey) -> Result<BundleSource, BundleError> {
        let vendors = (self.vendors.iter())
            .map(|v| {
                Ok(Vendor {
                    name: v.name.clone(),
                    org: v.org.clone(),
                    contract_end: v.contract_end,
                    disabled: v.disabled,
                    totp_secret: key.open(&v.totp, &vendor_row(&v.name))?.to_string(),
                    totp_last_step: v.totp_last_step,
                    created: self.issued,
                })
            })
            .collect::<Result<_, BundleError>>()?;
        let devices = (self.devices.iter())
            .map(|d| {
                Ok(Device {
                    site: d.site.clone(),
                    name: d.name.clone(),
                    addr: d.addr.clone(),
                    login: d.login.clone(),
                    credential_kind: (d.credential_kind.parse()).map_err(
                        |e: crate::model::UnknownCredentialKind| {
                            BundleError::Malformed(e.to_string())
                        },
                    )?,
                    credential: key
                        .open(&d.credential, &device_row(&d.site, &d.name))?
                        .to_string(),
                    host_key: d.host_key.clone(),
                    created: self.issued,
                })
            })
            .collect::<Result<_, BundleError>>()?;
        Ok(BundleSource {
            sites: self.sites.clone(),
            vendors,
            vendor_cas: self.vendor_cas.clone(),
            certificates: self.issued_certificates(),
            grants: self.granted(),
            functions: self.function_rows(),
            devices,
            offline_grace: self.offline_grace,
        })
    }

    fn issued_certificates(&self) -> Vec<IssuedCertificate> {
        (self.certificates.iter())
            .map(|c| IssuedCertificate {
                serial: c.serial.clone(),
                vendor: c.vendor.clone(),
                key_id: c.key_id.clone(),
                key_fingerprint: c.key_fingerprint.clone(),
                valid_after: c.valid_after,
                valid_before: c.valid_before,
                revoked: c.revoked,
                created: self.issued,
                ca: c.ca.clone(),
            })
            .collect()
    }

    fn granted(&self) -> Vec<Grant> {
        let by = format!("central (policy v{})", self.version);
        (self.grants.iter())
            .map(|g| Grant {
                id: g.id.clone(),
                vendor: g.vendor.clone(),
                site: g.site.clone(),
                function: g.function.clone(),
                valid_from: g.valid_from,
                valid_until: g.valid_until,
                granted_by: by.clone(),
                reason: String::new(),
                created: self.issued,
                revoked_at: None,
                revoked_by: None,
                devices: g.devices.clone(),
            })
            .collect()
    }

    fn function_rows(&self) -> Vec<Function> {
        (self.functions.iter())
            .map(|f| Function {
                name: f.name.clone(),
                allow: f.allow.clone(),
                login: f.login.clone(),
                max_window: f.max_window,
                emergency: f.emergency,
                created: self.issued,
                emergency_orgs: f.emergency_orgs.clone(),
                offline_ok: f.offline_ok,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CredentialKind;

    #[test]
    fn a_sealed_bundle_opens_at_its_edge_to_the_same_secrets_and_rows() {
        let source = BundleSource {
            sites: vec!["s".into()],
            vendors: vec![Vendor {
                name: "ann".into(),
                org: "acme".into(),
                contract_end: Some(99),
                disabled: false,
                totp_secret: "JBSWY3DPEHPK3PXP".into(),
                totp_last_step: 7,
                created: 1,
            }],
            vendor_cas: vec!["ssh-ed25519 AAAA ca".into()],
            certificates: vec![],
            grants: vec![],
            functions: vec![],
            devices: vec![Device {
                site: "s".into(),
                name: "d".into(),
                addr: "10.0.0.5:22".into(),
                login: "root".into(),
                credential_kind: CredentialKind::Password,
                credential: "hunter2hunter2".into(),
                host_key: "ssh-ed25519 AAAA host".into(),
                created: 1,
            }],
            offline_grace: 60,
        };
        let digest = source.digest();
        let edge = EdgeBoxKey::from_seed([9; 32]);
        let bundle = source.seal("e1", 3, 100, &edge.public()).unwrap();
        let text = serde_json::to_string(&bundle).unwrap();
        assert!(!text.contains("JBSWY3DPEHPK3PXP") && !text.contains("hunter2hunter2"));
        let opened = bundle.open_with(&edge).unwrap();
        assert_eq!(opened.vendors[0].totp_secret, "JBSWY3DPEHPK3PXP");
        assert_eq!(opened.devices[0].credential, "hunter2hunter2");
        assert_eq!(opened.devices[0].credential_kind, CredentialKind::Password);
        let other = EdgeBoxKey::from_seed([8; 32]);
        assert_eq!(
            bundle.open_with(&other).map(|_| ()),
            Err(BundleError::Sealed)
        );
        // The digest moves with a secret, so a rotated credential makes a new version.
        let mut changed = opened;
        let before = changed.digest();
        changed.devices[0].credential = "other".into();
        assert_ne!(changed.digest(), before);
        assert_eq!(digest.len(), 64);
    }
}
