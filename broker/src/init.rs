//! Creating a data directory: config, host key, vendor SSH CA, seal key, installation id,
//! database and the audit log's first record.

use approvals::audit::AuditEvent;
use std::path::Path;

use approvals::{Actor, AuditLog, Store};
use serde_json::json;

use crate::config::{Config, DataDir, PrivateFileError};
use crate::keys::{self, KeyError};

/// Why no data directory was made (nothing half-written is left).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} is already initialised")]
    Initialised(String),
    #[error("{0} exists and is not empty; choose another --data directory")]
    NotEmpty(String),
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("writing config: {0}")]
    Config(#[from] toml::ser::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    #[error("creating the database: {0}")]
    Store(#[from] approvals::StoreError),
    #[error(transparent)]
    Audit(#[from] approvals::audit::AuditError),
    #[error(transparent)]
    MasterKey(#[from] crate::master_key::MasterKeyError),
}

type Result<T, E = InitError> = std::result::Result<T, E>;

/// An I/O step of making the directory, named for the error.
fn io<T>(what: &'static str, path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|error| InitError::Io {
        what,
        path: path.display().to_string(),
        error,
    })
}

/// Creates a data directory. Everything is built in a sibling temporary directory and renamed
/// into place at the end, so a failure leaves nothing half-written.
pub async fn init(data: &DataDir, actor: &Actor) -> Result<()> {
    let root = &data.root;
    if root.join("postern.toml").exists() {
        return Err(InitError::Initialised(root.display().to_string()));
    }
    if root.exists()
        && io("reading", root, std::fs::read_dir(root))?
            .next()
            .is_some()
    {
        return Err(InitError::NotEmpty(root.display().to_string()));
    }
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    io("creating", parent, std::fs::create_dir_all(parent))?;
    let staging = parent.join(format!(".postern-init-{}", std::process::id()));
    let result = build_data_dir(&DataDir::new(&staging), actor).await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if root.exists() {
        io("replacing", root, std::fs::remove_dir(root))?;
    }
    io(
        "moving the new data directory to",
        root,
        std::fs::rename(&staging, root),
    )?;
    Ok(())
}

async fn build_data_dir(d: &DataDir, actor: &Actor) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let private_dir = |path: &Path, recursive: bool| {
        let made = std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(recursive)
            .create(path);
        io("creating", path, made)
    };
    private_dir(&d.root, true)?;
    private_dir(&d.keys(), false)?;
    private_dir(&d.recordings(), false)?;
    let cfg = Config::default();
    let text = format!(
        "# Postern configuration. See deploy/postern.toml for every option.\n{}",
        toml::to_string_pretty(&cfg)?
    );
    io(
        "writing",
        &d.config_file(),
        std::fs::write(d.config_file(), text),
    )?;
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
    let master = crate::master_key::create(&d.keys().join("master.key"))?;
    let store = Store::open(&d.sqlite_url()).await?.unlock(&master).await?;
    store.close().await;
    AuditLog::of_installation(&d.audit_log(), &cfg.node, Some(&installation)).record(
        AuditEvent::Init,
        json!({"actor": actor.tag(), "installation": installation}),
    )?;
    Ok(())
}

// ---- vendors ----
