//! The data directory and its configuration file.
//!
//! ```text
//! DATA/postern.toml          operator configuration (node name, database, listen addresses)
//! DATA/postern.db            embedded SQLite database (unless database_url points elsewhere)
//! DATA/keys/host_ed25519     the broker's SSH host key
//! DATA/keys/vendor_ca[.pub]  the CA that signs vendor certificates
//! DATA/recordings/ID.rec     one hash-chained recording per session
//! DATA/audit.log             the hash-chained audit log
//! DATA/journal/ID.end.json   session ends not yet in the database (applied when it is back)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

// In these errors the cause is part of the message and not a `source`: the binary prints an error
// with its chain of sources on one line, which would say the cause twice.

/// Why the configuration cannot be used. `Display` names the file and the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    NoFile(String),
    #[error(
        "{0} is not a Postern data directory (no postern.toml): run `postern init --data {0}` first"
    )]
    NotDataDir(String),
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not valid: {error}")]
    Invalid {
        path: String,
        error: toml::de::Error,
    },
    #[error("{path}: {error}")]
    Limits { path: String, error: LimitsError },
    #[error("{0}: set both web_tls_cert and web_tls_key for HTTPS, or neither")]
    TlsHalf(String),
    #[error("{0}: webhook_url must be an http:// or https:// URL")]
    WebhookUrl(String),
}

/// A limit or duration in the configuration that is out of range or not understood.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("{setting}: {error}")]
    Duration {
        setting: &'static str,
        error: approvals::time::TimeError,
    },
    #[error("max_startups: {0}")]
    MaxStartups(crate::admission::StartupsError),
    #[error("per_source_max_startups must be at least 1")]
    PerSourceMaxStartups,
    #[error("web_max_connections and web_per_source_connections must be at least 1")]
    WebConnections,
    #[error("{setting}: {error}")]
    Network {
        setting: &'static str,
        error: NotANetwork,
    },
    #[error("forwarded_header: {0}")]
    ForwardedHeader(String),
}

/// An entry of `penalty_exempt` or `trusted_proxies` that is neither an address nor a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an address or a CIDR network")]
pub struct NotANetwork(String);

/// A private file (key, secret) that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("creating {path}: {error}")]
    Create { path: String, error: std::io::Error },
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

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
    /// Where site edges connect (mutually authenticated TLS 1.3); `off` for none.
    #[serde(default = "default_edge_listen")]
    pub edge_listen: String,
    /// How long an edge goes on deciding alone after it last heard from the central; past that
    /// only break-glass of `--offline-ok` functions opens there.
    #[serde(default = "default_edge_offline_grace")]
    pub edge_offline_grace: String,
    /// The HTTPS front door for device web UIs (`HOST:PORT`, `off` for none); needs
    /// `web_devices_domain`.
    #[serde(default = "default_web_devices_listen")]
    pub web_devices_listen: String,
    /// The domain under which each device UI gets an origin of its own, `DEVICE--SITE.DOMAIN`
    /// (a wildcard DNS name pointing at the front door); the domain itself is the sign-in page.
    #[serde(default)]
    pub web_devices_domain: Option<String>,
    /// The front door's certificate chain and key (PEM) for the domain and its wildcard; unset,
    /// Postern's own web CA (`DATA/keys/web_ca.crt`, for labs and tests) issues one at start.
    #[serde(default)]
    pub web_devices_cert: Option<PathBuf>,
    #[serde(default)]
    pub web_devices_key: Option<PathBuf>,
    /// The front door as vendors' browsers reach it (e.g. `https://devices.example.com`), for
    /// the sign-in links; unset, `https://DOMAIN:PORT` of `web_devices_listen`.
    #[serde(default)]
    pub web_devices_url: Option<String>,
    /// Bytes of each device web request's and answer's body kept in the recording (at most
    /// 1 MiB); 0, the default, keeps none (a device's sign-in form carries passwords).
    #[serde(default)]
    pub web_devices_record_bodies: usize,
    /// Where Prometheus scrapes `GET /metrics`; `off` for none.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    /// A grant longer than this is an exception (standing access), listed by `postern exceptions`.
    #[serde(default = "default_standing_grant_threshold")]
    pub standing_grant_threshold: String,
    /// How long before a window ends the vendor is warned.
    #[serde(default = "default_warn_before")]
    pub warn_before: String,
    /// How long a vendor's connection waits for a decision on an access request filed from ssh.
    #[serde(default = "default_request_wait")]
    pub request_wait: String,
    /// A request nobody decided within this long is closed as `expired`.
    #[serde(default = "default_request_ttl")]
    pub request_ttl: String,
    /// A request still pending after this long is escalated once (audited, notified, overdue).
    #[serde(default = "default_approval_slo")]
    pub approval_slo: String,
    /// Approvers named in every escalation, besides those of the site's region.
    #[serde(default)]
    pub escalate_to: Vec<String>,
    /// PEM certificate chain and private key for the web UI: HTTPS when both are set.
    #[serde(default)]
    pub web_tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub web_tls_key: Option<PathBuf>,
    /// Where notifications are POSTed as JSON (Slack-compatible `text` field); none when unset.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Where sealed recordings are shared so that every node can replay, export and verify them:
    /// unset (this node's `recordings/` only) or `s3://BUCKET[/PREFIX]`.
    #[serde(default)]
    pub evidence_store: Option<String>,
    /// The S3-compatible server of `evidence_store` (e.g. `http://minio.internal:9000`); unset
    /// for AWS itself. Credentials and region come from the `AWS_*` environment variables.
    #[serde(default)]
    pub evidence_s3_endpoint: Option<String>,
    /// Environment variables a vendor may pass to the device (exact names, or prefixes ending in `*`).
    #[serde(default = "default_env_allow")]
    pub env_allow: Vec<String>,
    /// How long a vendor connection may take to authenticate (both factors) before it is closed.
    #[serde(default = "default_login_grace")]
    pub login_grace: String,
    /// Unauthenticated SSH connections in all, as OpenSSH's MaxStartups `start:rate:full`: from
    /// `start` on, new ones are refused with a probability rising from `rate`% to 100% at `full`.
    #[serde(default = "default_max_startups")]
    pub max_startups: String,
    /// Unauthenticated SSH connections from one source address (an IPv6 /64) at once.
    #[serde(default = "default_per_source_max_startups")]
    pub per_source_max_startups: usize,
    /// Refuse for a while sources whose connections fail before the first factor, close without
    /// trying, or idle past `login_grace` (as OpenSSH's PerSourcePenalties).
    #[serde(default = "default_true")]
    pub per_source_penalties: bool,
    /// Sources (addresses or CIDR networks) never penalised or capped per source, e.g. a
    /// monitoring probe or a NAT gateway many vendors share.
    #[serde(default)]
    pub penalty_exempt: Vec<String>,
    /// Open connections to the web UI in all, and from one client address.
    #[serde(default = "default_web_max_connections")]
    pub web_max_connections: usize,
    #[serde(default = "default_web_per_source_connections")]
    pub web_per_source_connections: usize,
    /// A web connection that moves no byte for this long is closed.
    #[serde(default = "default_web_idle_timeout")]
    pub web_idle_timeout: String,
    /// Time a web client has to send a request's headers (and its first request).
    #[serde(default = "default_web_header_timeout")]
    pub web_header_timeout: String,
    /// TLS-terminating proxies in front of the web UI (addresses or CIDR networks): for requests
    /// from them, the client address is taken from `forwarded_header`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_forwarded_header")]
    pub forwarded_header: String,
    /// Refused and throttled attempts are written to the audit log as one summary per interval.
    #[serde(default = "default_audit_summary_interval")]
    pub audit_summary_interval: String,
    /// Keepalive interval towards devices; a device that misses three in a row "stopped
    /// answering" and its sessions end with that reason.
    #[serde(default = "default_device_keepalive")]
    pub device_keepalive: String,
    /// A signed checkpoint of the audit log's head is made after this many audit events or
    /// `checkpoint_interval`, whichever comes first (only when the head moved), and shipped off
    /// the host: the database, the webhook (when set) and `checkpoint_file` (when set).
    #[serde(default = "default_checkpoint_every_events")]
    pub checkpoint_every_events: u64,
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
    /// An append-only file (e.g. on a mounted remote volume) that gets every checkpoint as a
    /// JSON line, for setups without a SIEM.
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
    /// Validity of certificates from self-service enrolment and renewal (always capped at the
    /// vendor's contract end).
    #[serde(default = "default_cert_validity")]
    pub cert_validity: String,
    /// How long a `postern vendor invite` code stays usable unless `--ttl` says otherwise.
    #[serde(default = "default_invite_ttl")]
    pub invite_ttl: String,
    /// `HOST[:PORT]` vendors use to reach this node's SSH front door, for the `VENDOR:config`
    /// block; unset, the address the vendor's connection reached is used.
    #[serde(default)]
    pub ssh_public_address: Option<String>,
    /// The master key that unlocks the database's secrets, instead of `DATA/keys/master.key`
    /// (e.g. a systemd credential, `/run/credentials/postern.service/master.key`). Nodes sharing
    /// one PostgreSQL database need the same key.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Further authorized-keys files `postern scan` reads on each device (globs allowed, e.g.
    /// `/home/*/.ssh/authorized_keys`), besides the device login's own.
    #[serde(default)]
    pub scan_paths: Vec<String>,
    /// TCP ports of remote-access services that should not listen on devices (e.g. 23, 5900);
    /// `postern scan` reports each one found listening.
    #[serde(default)]
    pub scan_ports: Vec<u16>,
    /// Device credentials older than this (e.g. `"30d"`) are rotated in the background; unset,
    /// never.
    #[serde(default)]
    pub rotate_every: Option<String>,
    /// How many background rotations one node runs at once.
    #[serde(default = "default_rotate_concurrency")]
    pub rotate_concurrency: usize,
}

fn default_rotate_concurrency() -> usize {
    8
}

fn default_cert_validity() -> String {
    "7d".into()
}
fn default_invite_ttl() -> String {
    "24h".into()
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
fn default_web_devices_listen() -> String {
    "off".into()
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_standing_grant_threshold() -> String {
    "24h".into()
}
fn default_edge_offline_grace() -> String {
    "24h".into()
}
fn default_edge_listen() -> String {
    "0.0.0.0:8443".into()
}
fn default_warn_before() -> String {
    "5m".into()
}
fn default_request_wait() -> String {
    "10m".into()
}
fn default_request_ttl() -> String {
    "24h".into()
}
fn default_approval_slo() -> String {
    "15m".into()
}
fn default_login_grace() -> String {
    "60s".into()
}
fn default_max_startups() -> String {
    "100:30:1000".into()
}
fn default_per_source_max_startups() -> usize {
    10
}
fn default_true() -> bool {
    true
}
fn default_web_max_connections() -> usize {
    1024
}
fn default_web_per_source_connections() -> usize {
    64
}
fn default_web_idle_timeout() -> String {
    "60s".into()
}
fn default_web_header_timeout() -> String {
    "10s".into()
}
fn default_forwarded_header() -> String {
    "X-Forwarded-For".into()
}
fn default_audit_summary_interval() -> String {
    "60s".into()
}
fn default_device_keepalive() -> String {
    "15s".into()
}
fn default_checkpoint_every_events() -> u64 {
    1000
}
fn default_checkpoint_interval() -> String {
    "60s".into()
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
            edge_listen: default_edge_listen(),
            edge_offline_grace: default_edge_offline_grace(),
            standing_grant_threshold: default_standing_grant_threshold(),
            metrics_listen: default_metrics_listen(),
            warn_before: default_warn_before(),
            request_wait: default_request_wait(),
            request_ttl: default_request_ttl(),
            approval_slo: default_approval_slo(),
            escalate_to: Vec::new(),
            env_allow: default_env_allow(),
            web_tls_cert: None,
            web_tls_key: None,
            webhook_url: None,
            evidence_store: None,
            evidence_s3_endpoint: None,
            login_grace: default_login_grace(),
            max_startups: default_max_startups(),
            per_source_max_startups: default_per_source_max_startups(),
            per_source_penalties: true,
            penalty_exempt: Vec::new(),
            web_max_connections: default_web_max_connections(),
            web_per_source_connections: default_web_per_source_connections(),
            web_idle_timeout: default_web_idle_timeout(),
            web_header_timeout: default_web_header_timeout(),
            trusted_proxies: Vec::new(),
            forwarded_header: default_forwarded_header(),
            audit_summary_interval: default_audit_summary_interval(),
            device_keepalive: default_device_keepalive(),
            checkpoint_every_events: default_checkpoint_every_events(),
            checkpoint_interval: default_checkpoint_interval(),
            checkpoint_file: None,
            cert_validity: default_cert_validity(),
            invite_ttl: default_invite_ttl(),
            ssh_public_address: None,
            web_devices_listen: default_web_devices_listen(),
            web_devices_domain: None,
            web_devices_cert: None,
            web_devices_key: None,
            web_devices_url: None,
            web_devices_record_bodies: 0,
            master_key_file: None,
            scan_paths: Vec::new(),
            scan_ports: Vec::new(),
            rotate_every: None,
            rotate_concurrency: default_rotate_concurrency(),
        }
    }
}

/// The front doors' limits, parsed and checked.
#[derive(Debug, Clone)]
pub struct Limits {
    pub warn_before: i64,
    pub login_grace: std::time::Duration,
    pub startups: crate::admission::Limits,
    pub penalty_exempt: Vec<ipnet::IpNet>,
    pub web_idle_timeout: std::time::Duration,
    pub web_header_timeout: std::time::Duration,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub audit_summary_interval: std::time::Duration,
    pub device_keepalive: std::time::Duration,
    /// `request_ttl`, `approval_slo` and `escalate_to`.
    pub deadlines: approvals::actions::Deadlines,
    /// `rotate_every` in seconds (`None`: no scheduled rotation).
    pub rotate_every: Option<i64>,
    /// `edge_offline_grace` in seconds.
    pub edge_offline_grace: i64,
    /// `standing_grant_threshold` in seconds.
    pub standing_grant_threshold: i64,
}

impl Limits {
    /// The thresholds that make access an exception (`postern exceptions`, the metrics).
    pub fn exceptions(&self) -> approvals::exceptions::ExceptionLimits {
        approvals::exceptions::ExceptionLimits {
            standing_grant: self.standing_grant_threshold,
            approval_slo: self.deadlines.approval_slo,
            rotate_every: self.rotate_every,
            edge_offline_grace: self.edge_offline_grace,
        }
    }
}

/// Parses an address or a CIDR network (`10.0.0.5`, `10.0.0.0/8`, `::1`).
fn parse_net(s: &str) -> Result<ipnet::IpNet, NotANetwork> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| NotANetwork(s.to_owned()))
}

/// Parses the duration setting `setting` (seconds).
fn seconds(setting: &'static str, value: &str) -> Result<i64, LimitsError> {
    approvals::time::parse_duration(value).map_err(|error| LimitsError::Duration { setting, error })
}

fn duration(setting: &'static str, value: &str) -> Result<std::time::Duration, LimitsError> {
    seconds(setting, value).map(|s| std::time::Duration::from_secs(s as u64))
}

/// Parses the networks of the list setting `setting`.
fn networks(setting: &'static str, list: &[String]) -> Result<Vec<ipnet::IpNet>, LimitsError> {
    list.iter()
        .map(|n| parse_net(n).map_err(|error| LimitsError::Network { setting, error }))
        .collect()
}

impl Config {
    /// Every limit and duration in the config, checked: a typo stops the broker at start.
    pub fn limits(&self) -> Result<Limits, LimitsError> {
        let (start, rate, full) = crate::admission::Limits::parse_startups(&self.max_startups)
            .map_err(LimitsError::MaxStartups)?;
        if self.per_source_max_startups == 0 {
            return Err(LimitsError::PerSourceMaxStartups);
        }
        if self.web_max_connections == 0 || self.web_per_source_connections == 0 {
            return Err(LimitsError::WebConnections);
        }
        approvals::web::ClientAddress::new(Vec::new(), &self.forwarded_header)
            .map_err(|e| LimitsError::ForwardedHeader(e.to_string()))?;
        Ok(Limits {
            warn_before: seconds("warn_before", &self.warn_before)?,
            login_grace: duration("login_grace", &self.login_grace)?,
            startups: crate::admission::Limits {
                start,
                rate,
                full,
                per_source: self.per_source_max_startups,
                penalties: self.per_source_penalties,
            },
            penalty_exempt: networks("penalty_exempt", &self.penalty_exempt)?,
            web_idle_timeout: duration("web_idle_timeout", &self.web_idle_timeout)?,
            web_header_timeout: duration("web_header_timeout", &self.web_header_timeout)?,
            trusted_proxies: networks("trusted_proxies", &self.trusted_proxies)?,
            audit_summary_interval: duration(
                "audit_summary_interval",
                &self.audit_summary_interval,
            )?,
            device_keepalive: duration("device_keepalive", &self.device_keepalive)?,
            deadlines: approvals::actions::Deadlines {
                request_ttl: seconds("request_ttl", &self.request_ttl)?,
                approval_slo: seconds("approval_slo", &self.approval_slo)?,
                escalate_to: self.escalate_to.clone(),
            },
            rotate_every: self
                .rotate_every
                .as_deref()
                .map(|every| seconds("rotate_every", every))
                .transpose()?,
            edge_offline_grace: seconds("edge_offline_grace", &self.edge_offline_grace)?,
            standing_grant_threshold: seconds(
                "standing_grant_threshold",
                &self.standing_grant_threshold,
            )?,
        })
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
    /// The installation's random id (written by `init`), bound into the audit log's genesis.
    pub fn installation_file(&self) -> PathBuf {
        self.root.join("installation")
    }
    /// The installation id, if this data directory has one (older ones do not).
    pub fn installation_id(&self) -> Option<String> {
        std::fs::read_to_string(self.installation_file())
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }
    /// Session ends the database has not recorded yet (see `journal`).
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
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
    pub fn load_config(&self, explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = explicit
            .map(Path::to_owned)
            .unwrap_or_else(|| self.config_file());
        let shown = path.display().to_string();
        if !path.exists() {
            if explicit.is_some() {
                return Err(ConfigError::NoFile(shown));
            }
            return Err(ConfigError::NotDataDir(self.root.display().to_string()));
        }
        let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: shown.clone(),
            error,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|error| ConfigError::Invalid {
            path: shown.clone(),
            error,
        })?;
        cfg.limits().map_err(|error| ConfigError::Limits {
            path: shown.clone(),
            error,
        })?;
        if cfg.web_tls_cert.is_some() != cfg.web_tls_key.is_some() {
            return Err(ConfigError::TlsHalf(shown));
        }
        if let Some(url) = &cfg.webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::WebhookUrl(shown));
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
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PrivateFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| PrivateFileError::Create {
            path: path.display().to_string(),
            error,
        })?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Config;

    /// The documented example is a configuration the broker takes, with every option it names.
    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../deploy/postern.toml");
        let cfg: Config = toml::from_str(text).expect("deploy/postern.toml parses");
        cfg.limits().expect("its limits are valid");
    }
}
