//! The edge's own front door: a complete Postern node in `DATA/site/` (made at `edge join`)
//! whose store holds what the edge's signed policy bundle says. `postern edge run --ssh-listen
//! ADDR` serves vendors there with the same code as the central: the same login string,
//! certificate and TOTP, policy decision, credential injection, recording (sealed with the site
//! node's own key, certified by the operator's root like any node's) and audit. It keeps working
//! when the link to the central is down.
//!
//! The site node trusts only the central's vendor CAs (from the bundle): it has no vendor CA of
//! its own, no web UI and no edge listener.

use std::path::Path;

use approvals::bundle::{BundleError, EdgeBoxKey, PolicyBundle};
use approvals::{Actor, Store};

use crate::config::DataDir;
use crate::node::Node;
use crate::server::{Listen, Server};

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("the site node in {path}: {error}")]
    Init { path: String, error: String },
    #[error("the site node: {0}")]
    Open(#[from] crate::node::OpenError),
    #[error("the site node's front door: {0}")]
    Serve(String),
    #[error("the bundle does not open with this edge's key: {0}")]
    Bundle(#[from] BundleError),
    #[error("the site node's store: {0}")]
    Store(#[from] approvals::StoreError),
}

/// The site node's data directory.
pub fn site_dir(data: &Path) -> DataDir {
    DataDir::new(&data.join("site"))
}

/// Makes the site node for edge `edge` unless it exists: `postern init`, named `edge-NAME`,
/// without a vendor CA, web UI or edge listener of its own.
pub async fn prepare(data: &Path, edge: &str) -> Result<(), SiteError> {
    let site = site_dir(data);
    let failed = |error: String| SiteError::Init {
        path: site.root.display().to_string(),
        error,
    };
    if site.config_file().exists() {
        return Ok(());
    }
    let actor = Actor::node(&format!("edge-{edge}"));
    (crate::init::init(&site, &actor).await).map_err(|e| failed(e.to_string()))?;
    let text = std::fs::read_to_string(site.config_file()).map_err(|e| failed(e.to_string()))?;
    let mut cfg: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| failed(e.to_string()))?;
    cfg.insert("node".into(), format!("edge-{edge}").into());
    cfg.insert("edge_listen".into(), "off".into());
    cfg.insert("web_listen".into(), "off".into());
    let text = format!(
        "# The site node of edge {edge}: its store is written from the central's signed policy bundle.\n{}",
        toml::to_string_pretty(&cfg).map_err(|e| failed(e.to_string()))?
    );
    std::fs::write(site.config_file(), text).map_err(|e| failed(e.to_string()))?;
    // Only the central issues vendor certificates; the site trusts its CAs from the bundle.
    for p in [site.ca_key(), site.ca_key().with_extension("pub")] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// The site node's store, for writing bundles into.
pub async fn store(data: &Path) -> Result<Store, SiteError> {
    Ok(Node::open(&site_dir(data).root, None).await?.store)
}

/// Writes an accepted bundle into the site node's store.
pub async fn apply(
    store: &Store,
    key: &EdgeBoxKey,
    bundle: &PolicyBundle,
) -> Result<(), SiteError> {
    let source = bundle.open_with(key)?;
    store
        .mirror_bundle(&source, bundle.version, approvals::time::now())
        .await?;
    Ok(())
}

/// Serves vendors at the site on `ssh` until the process is stopped.
pub async fn serve(data: &Path, ssh: &str) -> Result<(), SiteError> {
    let node = Node::open(&site_dir(data).root, None).await?;
    let actor = Actor::node(&node.cfg.node);
    let listen = Listen {
        ssh,
        web: "off",
        edge: "off",
        metrics: "off",
    };
    let hint = |e: crate::server::ServeError| {
        SiteError::Serve(format!(
            "{e} (the site node's seal key is certified with `postern keys certify --root ROOT_KEY_FILE --data {}`)",
            site_dir(data).root.display()
        ))
    };
    let server = Server::build(node, actor, &listen).await.map_err(hint)?;
    let stopped = server
        .run(|l| println!("postern edge: serving vendors at the site on {}", l.ssh))
        .await
        .map_err(|e| SiteError::Serve(e.to_string()))?;
    if stopped.failed {
        return Err(SiteError::Serve(format!("stopped: {}", stopped.reason)));
    }
    Ok(())
}
