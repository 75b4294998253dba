//! Creating a data directory: config, host key, vendor SSH CA, seal key, installation id,
//! database and the audit log's first record.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use approvals::{Actor, AuditLog, Store};
use serde_json::json;

use crate::config::{Config, DataDir};
use crate::keys;

/// Creates a data directory. Everything is built in a sibling temporary directory and renamed
/// into place at the end, so a failure leaves nothing half-written.
pub async fn init(data: &DataDir, actor: &Actor) -> Result<()> {
    let root = &data.root;
    if root.join("postern.toml").exists() {
        bail!("{} is already initialised", root.display());
    }
    if root.exists() && std::fs::read_dir(root)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose another --data directory",
            root.display()
        );
    }
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".postern-init-{}", std::process::id()));
    let result = build_data_dir(&DataDir::new(&staging), actor).await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if root.exists() {
        std::fs::remove_dir(root)?;
    }
    std::fs::rename(&staging, root)
        .with_context(|| format!("moving the new data directory to {}", root.display()))?;
    Ok(())
}

async fn build_data_dir(d: &DataDir, actor: &Actor) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&d.root)?;
    std::fs::DirBuilder::new().mode(0o700).create(d.keys())?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(d.recordings())?;
    let cfg = Config::default();
    let text = format!(
        "# Postern configuration. See deploy/postern.toml for every option.\n{}",
        toml::to_string_pretty(&cfg).context("writing config")?
    );
    std::fs::write(d.config_file(), text)?;
    keys::write_keypair(&d.host_key(), &keys::generate_ed25519("postern-host")?)?;
    keys::write_keypair(&d.ca_key(), &keys::generate_ed25519("postern-vendor-ca")?)?;
    keys::seal_key(&d.seal_key())?;
    let installation = hex::encode(rand::random::<[u8; 16]>());
    crate::config::write_private(
        &d.installation_file(),
        format!("{installation}\n").as_bytes(),
    )?;
    // The database lives in the final directory; create it there after the rename would leave a
    // window, so create it here: SQLite paths are not stored anywhere but derived at each start.
    let store = Store::open(&d.sqlite_url())
        .await
        .context("creating the database")?;
    store.close().await;
    AuditLog::of_installation(&d.audit_log(), &cfg.node, Some(&installation))
        .record(
            "init",
            json!({"actor": actor.tag(), "installation": installation}),
        )
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

// ---- vendors ----
