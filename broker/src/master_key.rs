//! The master key file that unlocks the database's secrets (see `approvals::secrets`):
//! `DATA/keys/master.key` (0600, made by `init`), or the file `master_key_file` names (e.g. a
//! systemd credential). Every node sharing one PostgreSQL database needs the same master key.
//!
//! Rotation writes the new key beside the old one first (`master.key.new`), then re-wraps the
//! data keys in the database, then renames the new file over the old. A node that starts in
//! between, or after a crash there, finds the old key refused and the pending one accepted, and
//! finishes the rename.

use std::path::{Path, PathBuf};

use approvals::secrets::{MasterKey, SecretError};
use approvals::{Store, StoreError};

use crate::config::{Config, DataDir, PrivateFileError, write_private};

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error(
        "no master key at {0}: every node needs the master key file the database's secrets were sealed under (copy it from the node that made it)"
    )]
    Missing(String),
    #[error("reading the master key {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Format { path: String, error: SecretError },
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    #[error("replacing {path}: {error}")]
    Replace { path: String, error: std::io::Error },
    #[error("unlocking the database's secrets with {path}: {error}")]
    Unlock { path: String, error: StoreError },
}

type Result<T> = std::result::Result<T, MasterKeyError>;

/// Where this node's master key is.
pub fn path(data: &DataDir, cfg: &Config) -> PathBuf {
    cfg.master_key_file
        .clone()
        .unwrap_or_else(|| data.keys().join("master.key"))
}

/// Where a rotation puts the new key until the database has it.
pub fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    path.with_file_name(name)
}

/// Reads a master key file.
pub fn load(path: &Path) -> Result<MasterKey> {
    let shown = || path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MasterKeyError::Missing(shown()));
        }
        Err(error) => {
            return Err(MasterKeyError::Read {
                path: shown(),
                error,
            });
        }
    };
    MasterKey::parse(&text).map_err(|error| MasterKeyError::Format {
        path: shown(),
        error,
    })
}

/// Makes a new master key file (0600); fails if the file exists.
pub fn create(path: &Path) -> Result<MasterKey> {
    let key = MasterKey::generate();
    write_private(path, key.to_text().as_bytes())?;
    Ok(key)
}

/// Moves a pending key over the current one (atomic rename).
pub fn promote(path: &Path) -> Result<()> {
    std::fs::rename(pending_path(path), path).map_err(|error| MasterKeyError::Replace {
        path: path.display().to_string(),
        error,
    })
}

/// Unlocks `store` with this node's master key and returns it with the key that opened it. A
/// data directory from before encryption gets its master key made here, at the default place
/// only, and only while the database holds no data key (otherwise a new key could open nothing).
pub async fn unlock(store: Store, data: &DataDir, cfg: &Config) -> Result<(Store, MasterKey)> {
    let path = path(data, cfg);
    let unlocking = |error| MasterKeyError::Unlock {
        path: path.display().to_string(),
        error,
    };
    let master = match load(&path) {
        Err(MasterKeyError::Missing(_))
            if cfg.master_key_file.is_none()
                && !store.has_data_keys().await.map_err(unlocking)? =>
        {
            create(&path)?
        }
        other => other?,
    };
    match store.clone().unlock(&master).await {
        Ok(store) => Ok((store, master)),
        Err(StoreError::Secret(SecretError::WrongMaster { .. }))
            if pending_path(&path).exists() =>
        {
            let pending = load(&pending_path(&path))?;
            let store = store.unlock(&pending).await.map_err(unlocking)?;
            promote(&path)?;
            Ok((store, pending))
        }
        Err(e) => Err(unlocking(e)),
    }
}
