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
    /// When an unknown CA last made us ask the database (at most once a second: strangers with
    /// their own CAs must not turn into database load).
    asked: std::sync::Mutex<Option<std::time::Instant>>,
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
            asked: std::sync::Mutex::new(None),
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

    /// Whether `ca` is trusted, asking the database once if it is not known yet: a CA another
    /// node registered a moment ago works at once, without waiting for the next reload.
    pub async fn knows(&self, store: &Store, ca: &Fingerprint) -> bool {
        if self.current().contains(ca) {
            return true;
        }
        {
            let mut asked = self.asked.lock().unwrap_or_else(|p| p.into_inner());
            if asked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return false;
            }
            *asked = Some(std::time::Instant::now());
        }
        if let Err(e) = approvals::store::deadline(self.reload(store)).await {
            warn!(error = %e, "could not reload the vendor CA keys");
        }
        self.current().contains(ca)
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
