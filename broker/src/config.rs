//! The data directory and its configuration file.
//!
//! ```text
//! DATA/postern.toml          operator configuration (node name, database, listen addresses)
//! DATA/postern.db            embedded SQLite database (unless database_url points elsewhere)
//! DATA/keys/host_ed25519     the broker's SSH host key
//! DATA/keys/vendor_ca[.pub]  the CA that signs vendor certificates
//! DATA/recordings/ID.rec     one hash-chained recording per session
//! DATA/audit.log             the hash-chained audit log
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This broker node's name; live sessions are tracked per node.
    #[serde(default = "default_node")]
    pub node: String,
    /// `sqlite://...` (default: the data dir's postern.db) or `postgres://...` for several nodes.
    #[serde(default)]
    pub database_url: Option<String>,
    #[serde(default = "default_ssh_listen")]
    pub ssh_listen: String,
    #[serde(default = "default_web_listen")]
    pub web_listen: String,
    /// How long before a window ends the vendor is warned.
    #[serde(default = "default_warn_before")]
    pub warn_before: String,
    /// How long a vendor's connection waits for a decision on an access request filed from ssh.
    #[serde(default = "default_request_wait")]
    pub request_wait: String,
    /// PEM certificate chain and private key for the web UI: HTTPS when both are set.
    #[serde(default)]
    pub web_tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub web_tls_key: Option<PathBuf>,
    /// Where notifications are POSTed as JSON (Slack-compatible `text` field); none when unset.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Environment variables a vendor may pass to the device (exact names, or prefixes ending in `*`).
    #[serde(default = "default_env_allow")]
    pub env_allow: Vec<String>,
}

fn default_node() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node-1".into())
}
fn default_ssh_listen() -> String {
    "0.0.0.0:2222".into()
}
fn default_web_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_warn_before() -> String {
    "5m".into()
}
fn default_request_wait() -> String {
    "10m".into()
}
fn default_env_allow() -> Vec<String> {
    vec!["LANG".into(), "LC_*".into(), "TZ".into()]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: default_node(),
            database_url: None,
            ssh_listen: default_ssh_listen(),
            web_listen: default_web_listen(),
            warn_before: default_warn_before(),
            request_wait: default_request_wait(),
            env_allow: default_env_allow(),
            web_tls_cert: None,
            web_tls_key: None,
            webhook_url: None,
        }
    }
}

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: &Path) -> DataDir {
        DataDir {
            root: root.to_owned(),
        }
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("postern.toml")
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn host_key(&self) -> PathBuf {
        self.keys().join("host_ed25519")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.keys().join("vendor_ca")
    }
    /// The Ed25519 seed that seals recordings (hex), and its exported public key next to it.
    pub fn seal_key(&self) -> PathBuf {
        self.keys().join("seal_ed25519")
    }
    pub fn recordings(&self) -> PathBuf {
        self.root.join("recordings")
    }
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }
    pub fn sqlite_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.root.join("postern.db").display()
        )
    }

    pub fn is_initialised(&self) -> bool {
        self.config_file().exists() && self.host_key().exists() && self.ca_key().exists()
    }

    /// Loads the configuration: `--config FILE` if given, else the data dir's postern.toml.
    pub fn load_config(&self, explicit: Option<&Path>) -> Result<Config> {
        let path = explicit
            .map(Path::to_owned)
            .unwrap_or_else(|| self.config_file());
        if !path.exists() {
            if explicit.is_some() {
                bail!("config file {} does not exist", path.display());
            }
            bail!(
                "{} is not a Postern data directory (no postern.toml): run `postern init --data {}` first",
                self.root.display(),
                self.root.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        approvals::time::parse_duration(&cfg.warn_before)
            .map_err(|e| anyhow::anyhow!("{}: warn_before: {e}", path.display()))?;
        if cfg.web_tls_cert.is_some() != cfg.web_tls_key.is_some() {
            bail!(
                "{}: set both web_tls_cert and web_tls_key for HTTPS, or neither",
                path.display()
            );
        }
        if let Some(url) = &cfg.webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            bail!(
                "{}: webhook_url must be an http:// or https:// URL",
                path.display()
            );
        }
        Ok(cfg)
    }

    pub fn database_url(&self, cfg: &Config) -> String {
        cfg.database_url
            .clone()
            .unwrap_or_else(|| self.sqlite_url())
    }
}

/// Writes a file readable only by its owner (keys, secrets). Fails if it exists.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}
