//! The edge's side of the signed policy bundle: its box key (`DATA/edge/box.key`, an X25519 seed
//! in hex, 0600, made on first run), the central's signing key pinned on the first link
//! (`policy_signer`), and the last bundle it accepted (`policy.json`, the signed bytes as
//! received, checked again whenever they are read).
//!
//! A bundle is taken only if it is signed by the pinned key, names this edge and is not older
//! than the one held; anything else is refused, kept out, and recorded in the edge's audit log.

use approvals::bundle::{BundleError, EdgeBoxKey, PolicyBundle, SignedBundle};

use super::agent::{AgentError, EdgeFiles};

const BOX_KEY: &str = "box.key";
const SIGNER: &str = "policy_signer";
const BUNDLE: &str = "policy.json";

/// Why a bundle was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("no signing key is pinned yet")]
    NotPinned,
    #[error(
        "the central's policy signing key changed (pinned {pinned}, offered {offered}); refusing it"
    )]
    SignerChanged { pinned: String, offered: String },
    #[error(transparent)]
    Files(#[from] AgentError),
}

/// The edge's box key, made on first use.
pub fn box_key(files: &EdgeFiles) -> Result<EdgeBoxKey, AgentError> {
    if !files.exists(BOX_KEY) {
        let seed: [u8; 32] = rand::random();
        files.write(BOX_KEY, &hex::encode(seed), true)?;
    }
    let text = files.read(BOX_KEY)?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AgentError::State(format!("{BOX_KEY}: not 64 hex digits")))?;
    Ok(EdgeBoxKey::from_seed(seed))
}

/// Pins the central's signing key on first sight; a different key later is refused (a new one
/// needs the edge to join again).
pub fn pin_signer(files: &EdgeFiles, offered: &str) -> Result<(), PolicyError> {
    if !files.exists(SIGNER) {
        files.write(SIGNER, offered.trim(), false)?;
        return Ok(());
    }
    let pinned = files.read(SIGNER)?;
    if pinned.trim() != offered.trim() {
        return Err(PolicyError::SignerChanged {
            pinned: pinned.trim().to_owned(),
            offered: offered.trim().to_owned(),
        });
    }
    Ok(())
}

/// The bundle held, checked again against the pinned key (`None`: none yet).
pub fn held(files: &EdgeFiles, edge: &str) -> Result<Option<PolicyBundle>, PolicyError> {
    if !files.exists(BUNDLE) {
        return Ok(None);
    }
    let signed: SignedBundle = serde_json::from_str(&files.read(BUNDLE)?)
        .map_err(|e| BundleError::Malformed(e.to_string()))?;
    Ok(Some(signed.open(&pinned(files)?, edge, 0)?))
}

fn pinned(files: &EdgeFiles) -> Result<String, PolicyError> {
    if !files.exists(SIGNER) {
        return Err(PolicyError::NotPinned);
    }
    Ok(files.read(SIGNER)?)
}

/// Checks `signed` and, if it is good, keeps it as the bundle held; gives it.
pub fn accept(
    files: &EdgeFiles,
    edge: &str,
    signed: &SignedBundle,
) -> Result<PolicyBundle, PolicyError> {
    let held_version = match held(files, edge) {
        Ok(Some(b)) => b.version,
        // A held bundle that no longer checks is no floor to keep: the new one replaces it.
        _ => 0,
    };
    let bundle = signed.open(&pinned(files)?, edge, held_version)?;
    // The signed bytes as received, so they can be checked again at every read.
    let text = serde_json::to_string(signed).map_err(|e| BundleError::Malformed(e.to_string()))?;
    files.write(BUNDLE, &text, true)?;
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approvals::bundle::BundleSigner;

    fn bundle(edge: &str, version: i64) -> PolicyBundle {
        PolicyBundle {
            edge: edge.into(),
            version,
            issued: 1,
            offline_grace: 60,
            sites: vec!["s".into()],
            vendors: vec![],
            vendor_cas: vec![],
            certificates: vec![],
            grants: vec![],
            functions: vec![],
            devices: vec![],
        }
    }

    #[test]
    fn the_edge_keeps_only_newer_bundles_signed_by_the_pinned_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = EdgeFiles::new(dir.path());
        let central = BundleSigner::from_seed(&[3; 32]);
        assert!(matches!(
            accept(&files, "e1", &central.sign(&bundle("e1", 1))),
            Err(PolicyError::NotPinned)
        ));
        pin_signer(&files, &central.public()).unwrap();
        let other = BundleSigner::from_seed(&[4; 32]);
        assert!(matches!(
            pin_signer(&files, &other.public()),
            Err(PolicyError::SignerChanged { .. })
        ));
        assert_eq!(
            accept(&files, "e1", &central.sign(&bundle("e1", 2)))
                .unwrap()
                .version,
            2
        );
        assert!(matches!(
            accept(&files, "e1", &central.sign(&bundle("e1", 1))),
            Err(PolicyError::Bundle(BundleError::Rollback { .. }))
        ));
        assert!(accept(&files, "e1", &other.sign(&bundle("e1", 3))).is_err());
        assert!(accept(&files, "e1", &central.sign(&bundle("e2", 3))).is_err());
        assert_eq!(held(&files, "e1").unwrap().unwrap().version, 2);
        // Box keys persist.
        assert_eq!(
            box_key(&files).unwrap().public(),
            box_key(&files).unwrap().public()
        );
    }
}
