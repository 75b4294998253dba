//! The vendor CAs this node trusts: every vendor CA public key registered in the shared database
//! (each node registers its own at `serve` start), so a certificate issued on one node works on
//! every node without copying keys. The set is loaded at start and reloaded when the database's
//! change counter moves (registering a key moves it).
//!
//! Rotation: `rotate` gives this node a new CA that signs from then on; the old ones stay trusted
//! until `retire`, which takes a CA out of every node's set (this node's own included) and revokes
//! every certificate it signed.

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
        let rows = store.vendor_ca_rows().await?;
        let mut retired = Vec::new();
        let mut set: Vec<Fingerprint> = Vec::new();
        for row in rows {
            match crate::keys::parse_public(&row.public_key) {
                Ok(k) => {
                    let fp = k.fingerprint(HashAlg::Sha256);
                    if row.retired.is_some() {
                        retired.push(fp);
                    } else if !set.contains(&fp) {
                        set.push(fp);
                    }
                }
                // One bad row must not stop the others from being trusted.
                Err(e) => warn!(error = %e, "a registered vendor CA key is unreadable; skipped"),
            }
        }
        // This node's own CA, unless it was retired (a node may still hold a retired key).
        if let Some(own) = self
            .own
            .filter(|o| !retired.contains(o) && !set.contains(o))
        {
            set.insert(0, own);
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

/// Why the vendor CA set could not be listed or changed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Store(#[from] approvals::StoreError),
    #[error(transparent)]
    Refused(#[from] approvals::ActionError),
    #[error("no vendor CA has fingerprint {0} (see `postern ca list`)")]
    Unknown(String),
    #[error(
        "vendor CA {0} is the one this node signs with: run `postern ca rotate` first, then retire it"
    )]
    Signing(String),
    #[error("installing the new vendor CA key at {path}: {error}")]
    Install { path: String, error: std::io::Error },
}

/// One registered vendor CA, as `postern ca list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaEntry {
    pub fingerprint: String,
    /// The node that registered it.
    pub node: String,
    pub created: i64,
    pub retired: Option<i64>,
    /// Whether this node signs new certificates with it.
    pub signing: bool,
}

/// This node's signing CA's fingerprint, if it has one: taken from the private key, the one that
/// signs (its `.pub` beside it is a copy).
fn signing_fingerprint(node: &crate::Node) -> Result<Option<String>, CaError> {
    let path = node.data.ca_key();
    if !path.exists() {
        return Ok(None);
    }
    let key = crate::keys::load_private(&path)?;
    Ok(Some(crate::keys::fingerprint(key.public_key())))
}

/// Every registered vendor CA (this node's signing CA registered first if `serve` has not yet).
pub async fn list(node: &crate::Node) -> Result<Vec<CaEntry>, CaError> {
    register_own(node).await?;
    let signing = signing_fingerprint(node)?;
    let mut out = Vec::new();
    for row in node.store.vendor_ca_rows().await? {
        let Ok(key) = crate::keys::parse_public(&row.public_key) else {
            warn!(
                node = row.node,
                "a registered vendor CA key is unreadable; not listed"
            );
            continue;
        };
        let fingerprint = crate::keys::fingerprint(&key);
        out.push(CaEntry {
            signing: signing.as_deref() == Some(fingerprint.as_str()),
            fingerprint,
            node: row.node,
            created: row.created,
            retired: row.retired,
        });
    }
    Ok(out)
}

/// Registers this node's signing CA (as `serve` does at start), so that a rotation keeps the
/// old one trusted even if this node never served.
async fn register_own(node: &crate::Node) -> Result<(), CaError> {
    let path = node.data.ca_key().with_extension("pub");
    if path.exists() {
        let line = crate::keys::openssh_line(&crate::keys::load_public(&path)?)?;
        node.store
            .register_vendor_ca(&line, &node.cfg.node, approvals::time::now())
            .await?;
    }
    Ok(())
}

/// Gives this node a new vendor CA: registered and audited first (one action), then installed in
/// place of the old key, which no longer signs (its public key stays trusted until retired).
/// Returns the new and the previous fingerprint.
pub async fn rotate(
    node: &crate::Node,
    actor: &approvals::Actor,
) -> Result<(String, Option<String>), CaError> {
    register_own(node).await?;
    let previous = signing_fingerprint(node)?;
    let key = crate::keys::generate_ed25519("postern-vendor-ca")?;
    let line = crate::keys::openssh_line(key.public_key())?;
    let fingerprint = crate::keys::fingerprint(key.public_key());
    // Written beside the old key first, so a refused action leaves the old one in place.
    let target = node.data.ca_key();
    let next = target.with_file_name("vendor_ca-next");
    crate::keys::write_keypair(&next, &key)?;
    let registered = node
        .actions()
        .rotate_vendor_ca(
            actor,
            &line,
            &fingerprint,
            &node.cfg.node,
            approvals::time::now(),
        )
        .await;
    if let Err(e) = registered {
        let _ = std::fs::remove_file(&next);
        let _ = std::fs::remove_file(next.with_extension("pub"));
        return Err(e.into());
    }
    // The public copy first, the private key (what signs, and what `signing_fingerprint` reads)
    // last: an interruption between the two leaves the old key signing, as registered before.
    for (from, to) in [
        (next.with_extension("pub"), target.with_extension("pub")),
        (next.clone(), target.clone()),
    ] {
        std::fs::rename(&from, &to).map_err(|error| CaError::Install {
            path: to.display().to_string(),
            error,
        })?;
    }
    Ok((fingerprint, previous))
}

/// Retires the vendor CA with `fingerprint` on every node and revokes the certificates it signed
/// (returned). This node's signing CA cannot be retired: rotate first.
pub async fn retire(
    node: &crate::Node,
    actor: &approvals::Actor,
    fingerprint: &str,
) -> Result<Vec<String>, CaError> {
    if signing_fingerprint(node)?.as_deref() == Some(fingerprint) {
        return Err(CaError::Signing(fingerprint.to_owned()));
    }
    let row = node
        .store
        .vendor_ca_rows()
        .await?
        .into_iter()
        .find(|r| {
            crate::keys::parse_public(&r.public_key)
                .is_ok_and(|k| crate::keys::fingerprint(&k) == fingerprint)
        })
        .ok_or_else(|| CaError::Unknown(fingerprint.to_owned()))?;
    Ok(node
        .actions()
        .retire_vendor_ca(actor, &row.public_key, fingerprint, approvals::time::now())
        .await?)
}
