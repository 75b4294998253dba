//! Which seal keys count: the keyring certified by the pinned root, or without one, the keys the
//! database and the data directory name.

use super::{Evidence, Finding};

/// Whose word makes a seal key trusted.
pub(super) enum Trust {
    /// The operator's root, through the keyring.
    Root {
        ring: recorder::keyring::Keyring,
        root: recorder::keyring::RootPublicKey,
    },
    /// No root pinned: the keys the database and the data directory name (labelled as such).
    Unpinned(Vec<recorder::SealPublicKey>),
    /// The keyring does not check against the root: nothing is trusted.
    Broken(String),
}

impl Trust {
    /// The seal keys to trust: the keyring certified by the pinned root, or without a pinned
    /// root, the keys the database and the data directory list.
    pub(super) fn of(evidence: &Evidence, keys: &[String]) -> Trust {
        match (&evidence.root, &evidence.keyring) {
            (Some(root), Some(path)) => match recorder::keyring::Keyring::load(path)
                .and_then(|ring| ring.check(root).map(|()| ring))
            {
                Ok(ring) => Trust::Root { ring, root: *root },
                Err(e) => Trust::Broken(format!(
                    "the seal keyring does not check against the root: {e}"
                )),
            },
            (Some(_), None) => Trust::Broken("no seal keyring to check seals with".into()),
            (None, _) => Trust::Unpinned(trusted_keys(keys)),
        }
    }

    /// What a full verification reports about the seal keys themselves.
    pub(super) fn finding(&self) -> Finding {
        match self {
            Trust::Root { root, .. } => Finding::ok(
                "seal keys",
                0,
                format!(
                    "trusted through the keyring certified by root {}",
                    root.fingerprint()
                ),
            ),
            Trust::Unpinned(_) => Finding::ok(
                "seal keys",
                0,
                "no root pinned: seal keys taken from the database and the data directory (an insider could add one; pin the operator's root with `postern keys pin` and verify with --root)",
            ),
            Trust::Broken(e) => Finding::bad("seal keys", 0, e.clone()),
        }
    }

    /// The keys trusted for a seal made at `at` (unix seconds).
    pub(super) fn keys_at(&self, at: i64) -> Vec<recorder::SealPublicKey> {
        match self {
            Trust::Root { ring, root } => ring
                .trusted(root, at)
                .map(|v| v.into_iter().map(|(k, _)| k).collect())
                .unwrap_or_default(),
            Trust::Unpinned(keys) => keys.clone(),
            Trust::Broken(_) => Vec::new(),
        }
    }

    /// Why `key` is not trusted at `at`, in words.
    pub(super) fn why_not(&self, key: &recorder::SealPublicKey, at: i64) -> Option<String> {
        match self {
            Trust::Root { ring, root } => ring.status(root, key, at).ok().map(|s| s.to_string()),
            Trust::Unpinned(_) => None,
            Trust::Broken(e) => Some(e.clone()),
        }
    }
}

/// The seal public keys among `lines` (one exported key a line); others are skipped.
fn trusted_keys(lines: &[String]) -> Vec<recorder::SealPublicKey> {
    lines
        .iter()
        .filter_map(|l| recorder::SealPublicKey::parse(l).ok())
        .collect()
}
