//! The vendor CAs this node trusts: every vendor CA public key registered in the shared database
//! (each node registers its own at `serve` start), so a certificate issued on one node works on
//! every node without copying keys. The set is loaded at start and reloaded when the database's
//! change counter moves (registering a key moves it).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use approvals::Store;
use russh::keys::HashAlg;
use russh::keys::ssh_key::Fingerprint;
use tracing::warn;

pub struct VendorCas {
    /// This node's own CA, trusted even before the database answers.
    own: Option<Fingerprint>,
    trusted: RwLock<Vec<Fingerprint>>,
}

impl VendorCas {
    /// Loads the registered set (plus `own`).
    pub async fn load(
        store: &Store,
        own: Option<Fingerprint>,
    ) -> Result<VendorCas, approvals::StoreError> {
        let cas = VendorCas {
            own,
            trusted: RwLock::new(Vec::new()),
        };
        cas.reload(store).await?;
        Ok(cas)
    }

    /// The fingerprints certificates are checked against.
    pub fn current(&self) -> Vec<Fingerprint> {
        self.trusted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn reload(&self, store: &Store) -> Result<(), approvals::StoreError> {
        let mut set: Vec<Fingerprint> = self.own.iter().cloned().collect();
        for text in store.vendor_cas().await? {
            match crate::keys::parse_public(&text) {
                Ok(k) => {
                    let fp = k.fingerprint(HashAlg::Sha256);
                    if !set.contains(&fp) {
                        set.push(fp);
                    }
                }
                // One bad row must not stop the others from being trusted.
                Err(e) => warn!(error = %e, "a registered vendor CA key is unreadable; skipped"),
            }
        }
        *self.trusted.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// Reloads the set whenever the database's revision changes (checked every second). While the
    /// database cannot be reached the last set stays; logins fail closed on their own then.
    pub async fn watch(self: Arc<Self>, store: Store) {
        let mut last = store.revision().await.ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Ok(rev) = store.revision().await else {
                continue;
            };
            if last == Some(rev) {
                continue;
            }
            match self.reload(&store).await {
                Ok(()) => last = Some(rev),
                Err(e) => warn!(error = %e, "could not reload the vendor CA keys"),
            }
        }
    }
}
