//! The directory's nouns, in domain types: flags are `bool`, coded text is an enum. The store
//! maps database rows to these (`store::rows`); the database schema keeps its integers and text.
//! The rows and facts that the store hands to the policy and the approvers live here too, so the
//! store depends on the model alone.

use std::collections::HashMap;

use serde::{Serialize, Serializer};

/// Flags serialize as the integers 0 and 1, as they always have in `--json` output.
pub(crate) fn flag_json<S: Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(i64::from(*on))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vendor {
    pub name: String,
    pub org: String,
    /// Unix seconds; access ends at this instant.
    pub contract_end: Option<i64>,
    #[serde(serialize_with = "flag_json")]
    pub disabled: bool,
    #[serde(skip)]
    pub totp_secret: String,
    #[serde(skip)]
    pub totp_last_step: i64,
    pub created: i64,
}

impl Vendor {
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Site {
    pub name: String,
    pub region: Option<String>,
    pub created: i64,
}

/// How the broker logs in to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// An OpenSSH private key.
    Key,
    Password,
}

/// A stored credential kind that is neither `key` nor `password`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a credential kind: use key or password")]
pub struct UnknownCredentialKind(pub String);

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Key => "key",
            CredentialKind::Password => "password",
        }
    }
}

impl std::fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CredentialKind {
    type Err = UnknownCredentialKind;
    fn from_str(s: &str) -> Result<CredentialKind, UnknownCredentialKind> {
        match s {
            "key" => Ok(CredentialKind::Key),
            "password" => Ok(CredentialKind::Password),
            _ => Err(UnknownCredentialKind(s.to_owned())),
        }
    }
}

/// A device at a site and how the broker logs in to it. The credential never leaves the broker.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub site: String,
    pub name: String,
    pub addr: String,
    pub login: String,
    pub credential_kind: CredentialKind,
    #[serde(skip)]
    pub credential: String,
    /// Pinned host key, OpenSSH public key format.
    pub host_key: String,
    pub created: i64,
}

impl std::fmt::Debug for Device {
    // Hand-written so that the credential can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("site", &self.site)
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("login", &self.login)
            .field("credential_kind", &self.credential_kind)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Function {
    pub name: String,
    /// Comma-separated channel kinds: `shell,exec,sftp,forward:PORT`.
    pub allow: String,
    /// Device account to use instead of the device's default login.
    pub login: Option<String>,
    /// Longest window a grant of this function may have, in seconds.
    pub max_window: i64,
    /// Pre-approved for break-glass by the organisations in `emergency_orgs`.
    #[serde(serialize_with = "flag_json")]
    pub emergency: bool,
    pub created: i64,
    /// Vendor organisations pre-approved to open this (emergency) function at once, comma-separated.
    pub emergency_orgs: String,
    /// An edge whose policy is past its offline grace still opens this function as break-glass.
    #[serde(serialize_with = "flag_json")]
    pub offline_ok: bool,
}

impl Function {
    pub fn channels(&self) -> ChannelSet {
        // Stored values were validated on the way in; anything unreadable allows nothing.
        ChannelSet::parse(&self.allow).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Grant {
    pub id: String,
    pub vendor: String,
    pub site: String,
    pub function: String,
    pub valid_from: i64,
    pub valid_until: i64,
    pub granted_by: String,
    pub reason: String,
    pub created: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// The devices at the site this grant covers, comma-separated; empty for every device there.
    /// In JSON, a list (empty: the whole site).
    #[serde(serialize_with = "device_list_json")]
    pub devices: String,
}

fn device_list_json<S: serde::Serializer>(devices: &str, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(split_devices(devices))
}

/// The names in a stored comma-separated device list.
pub fn split_devices(devices: &str) -> impl Iterator<Item = &str> + Clone {
    devices.split(',').map(str::trim).filter(|d| !d.is_empty())
}

impl Grant {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.valid_from <= now && now < self.valid_until
    }

    /// Whether the grant names no devices, i.e. covers every device at its site.
    pub fn whole_site(&self) -> bool {
        split_devices(&self.devices).next().is_none()
    }

    /// The devices named by the grant (none: the whole site).
    pub fn device_list(&self) -> Vec<String> {
        split_devices(&self.devices).map(str::to_owned).collect()
    }

    /// Whether the grant reaches `device` at its site.
    pub fn covers(&self, device: &str) -> bool {
        self.whole_site() || split_devices(&self.devices).any(|d| d == device)
    }

    /// What the grant reaches, for people: `all devices at SITE` or `SITE/a, SITE/b`.
    pub fn coverage(&self) -> String {
        if self.whole_site() {
            format!("all devices at {}", self.site)
        } else {
            split_devices(&self.devices)
                .map(|d| format!("{}/{d}", self.site))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub id: String,
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub grant_id: String,
    pub node: String,
    pub source: String,
    /// File name of the recording, relative to the recordings directory.
    pub recording: String,
    pub started: i64,
    pub ended: Option<i64>,
    pub end_reason: Option<String>,
    #[serde(serialize_with = "flag_json")]
    pub kill_requested: bool,
    pub records: Option<i64>,
    pub final_hash: Option<String>,
    /// The break-glass opening this session came from: flagged for review.
    pub breakglass: Option<String>,
}

/// What a vendor asks to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Shell,
    Exec,
    Sftp,
    Forward(u16),
    /// The device's web UI on this port, through the HTTPS front door.
    Web(u16),
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Shell => f.write_str("shell"),
            Channel::Exec => f.write_str("exec"),
            Channel::Sftp => f.write_str("sftp"),
            Channel::Forward(p) => write!(f, "forward:{p}"),
            Channel::Web(p) => write!(f, "web:{p}"),
        }
    }
}

/// The channel kinds a function allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSet {
    pub shell: bool,
    pub exec: bool,
    pub sftp: bool,
    pub forwards: Vec<u16>,
    /// Device web UI ports (`web:443`, `web:80`).
    pub webs: Vec<u16>,
}

/// Why a function's `allow` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelSetError {
    #[error("'{0}' is not a channel kind: use shell, exec, sftp, forward:PORT or web:PORT")]
    UnknownKind(String),
    #[error("a function must allow at least one channel kind")]
    Empty,
}

impl ChannelSet {
    pub fn parse(s: &str) -> Result<ChannelSet, ChannelSetError> {
        let mut set = ChannelSet::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "shell" => set.shell = true,
                "exec" => set.exec = true,
                "sftp" => set.sftp = true,
                _ => {
                    let (kind, port) = item
                        .split_once(':')
                        .and_then(|(k, p)| Some((k, p.parse::<u16>().ok().filter(|p| *p != 0)?)))
                        .ok_or_else(|| ChannelSetError::UnknownKind(item.to_owned()))?;
                    let ports = match kind {
                        "forward" => &mut set.forwards,
                        "web" => &mut set.webs,
                        _ => return Err(ChannelSetError::UnknownKind(item.to_owned())),
                    };
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
            }
        }
        if set == ChannelSet::default() {
            return Err(ChannelSetError::Empty);
        }
        Ok(set)
    }

    pub fn allows(&self, channel: Channel) -> bool {
        match channel {
            Channel::Shell => self.shell,
            Channel::Exec => self.exec,
            Channel::Sftp => self.sftp,
            Channel::Forward(p) => self.forwards.contains(&p),
            Channel::Web(p) => self.webs.contains(&p),
        }
    }
}

impl std::fmt::Display for ChannelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        for (on, name) in [
            (self.shell, "shell"),
            (self.exec, "exec"),
            (self.sftp, "sftp"),
        ] {
            if on {
                parts.push(name.into());
            }
        }
        parts.extend(self.forwards.iter().map(|p| format!("forward:{p}")));
        parts.extend(self.webs.iter().map(|p| format!("web:{p}")));
        f.write_str(&parts.join(","))
    }
}

/// Where a vendor's access request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for an approver.
    Pending,
    Approved,
    Denied,
    /// Closed without a decision: superseded (see migration 0007), or undecided past
    /// `request_ttl`.
    Expired,
}

/// A request status that is none of `pending`, `approved`, `denied` or `expired`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a request status: use pending, approved, denied or expired")]
pub struct UnknownRequestStatus(pub String);

impl RequestStatus {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        }
    }
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RequestStatus {
    type Err = UnknownRequestStatus;
    fn from_str(s: &str) -> Result<RequestStatus, UnknownRequestStatus> {
        match s {
            "pending" => Ok(RequestStatus::Pending),
            "approved" => Ok(RequestStatus::Approved),
            "denied" => Ok(RequestStatus::Denied),
            "expired" => Ok(RequestStatus::Expired),
            _ => Err(UnknownRequestStatus(s.to_owned())),
        }
    }
}

/// A vendor certificate as issued (serial as text: OpenSSH serials are unsigned 64-bit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCertificate {
    pub serial: String,
    pub vendor: String,
    pub key_id: String,
    pub key_fingerprint: String,
    pub valid_after: i64,
    pub valid_before: i64,
    #[serde(serialize_with = "flag_json")]
    pub revoked: bool,
    pub created: i64,
    /// The fingerprint of the vendor CA that signed it (`SHA256:...`; empty for certificates
    /// issued before this was recorded).
    pub ca: String,
}

/// A vendor CA public key registered in the shared database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VendorCa {
    /// OpenSSH format.
    pub public_key: String,
    /// The node that registered it.
    pub node: String,
    pub created: i64,
    /// When it was retired (no node trusts it since); `None` while trusted.
    pub retired: Option<i64>,
}

/// One logged command, linked to its session and the offset where replay finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CommandRow {
    pub session: String,
    pub seq: i64,
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub time_us: i64,
    pub offset_ms: i64,
    pub channel: i64,
    pub kind: String,
    pub command: String,
}

/// An approver, accountable for the listed sites and every site of the listed regions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approver {
    pub name: String,
    #[serde(skip)]
    pub password_hash: String,
    #[serde(skip)]
    pub totp_secret: String,
    #[serde(skip)]
    pub totp_last_step: i64,
    /// Comma-separated site names.
    pub sites: String,
    /// Comma-separated region names.
    pub regions: String,
    #[serde(serialize_with = "flag_json")]
    pub disabled: bool,
    pub created: i64,
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

impl Approver {
    /// Whether this approver is accountable for `site` (in `region`).
    pub fn covers(&self, site: &str, region: Option<&str>) -> bool {
        !self.disabled
            && (list(&self.sites).any(|s| s == site)
                || region.is_some_and(|r| list(&self.regions).any(|x| x == r)))
    }
}

/// A vendor's request for a window of one function at one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRequestRow {
    pub id: String,
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub reason: String,
    /// Seconds asked for.
    pub duration: i64,
    pub status: RequestStatus,
    pub created: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub grant_id: Option<String>,
    /// When the request was escalated for missing `approval_slo` (at most once).
    pub escalated_at: Option<i64>,
}

impl AccessRequestRow {
    /// Request-to-decision time in seconds, once decided.
    pub fn latency(&self) -> Option<i64> {
        self.decided_at.map(|d| d - self.created)
    }

    /// Still waiting, and escalated for having waited past `approval_slo`.
    pub fn overdue(&self) -> bool {
        self.status == RequestStatus::Pending && self.escalated_at.is_some()
    }
}

/// Everything the decision looks at, loaded by the store in one go.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub vendor: Option<Vendor>,
    pub site_exists: bool,
    pub device: Option<Device>,
    /// The vendor's grants at the site, revoked ones included (to say why access is refused).
    pub grants: Vec<Grant>,
    /// Functions named by the request or by any of the grants.
    pub functions: HashMap<String, Function>,
    /// At an edge's site node: until when its policy counts as current (it heard from the
    /// central lately, plus the offline grace). `None` at the central.
    pub policy_fresh_until: Option<i64>,
    /// At an edge's site node: its evidence waiting to be shipped is over `edge_buffer_max`.
    pub evidence_buffer_full: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sets_parse_and_refuse_with_their_reasons() {
        let set = ChannelSet::parse("shell, sftp,forward:8080,forward:8080").unwrap();
        assert_eq!(set.to_string(), "shell,sftp,forward:8080");
        assert!(set.allows(Channel::Forward(8080)) && !set.allows(Channel::Exec));
        let e = ChannelSet::parse("shell,telnet").unwrap_err();
        assert_eq!(e, ChannelSetError::UnknownKind("telnet".into()));
        assert_eq!(
            e.to_string(),
            "'telnet' is not a channel kind: use shell, exec, sftp, forward:PORT or web:PORT"
        );
        let web = ChannelSet::parse("web:443,web:80,shell").unwrap();
        assert_eq!(web.to_string(), "shell,web:443,web:80");
        assert!(web.allows(Channel::Web(443)) && !web.allows(Channel::Forward(443)));
        assert!(ChannelSet::parse("web:").is_err() && ChannelSet::parse("ftp:21").is_err());
        assert_eq!(
            ChannelSet::parse("forward:0"),
            Err(ChannelSetError::UnknownKind("forward:0".into()))
        );
        assert_eq!(ChannelSet::parse(" , "), Err(ChannelSetError::Empty));
    }
}
