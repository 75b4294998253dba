//! The audit log: every authentication attempt, decision, grant and directory change and session
//! event, as JSON records in a hash-chained file (see the `recorder` crate).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value, json};

/// Appends audit events. Cheap to clone; every append takes the file lock, so the server and CLI
/// commands can write to the same log. Appends from async callers are group-committed (see
/// [`AuditLog::record_async`]).
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    node: String,
    /// The stream id in the file's header, which the chain's genesis hash binds: `audit:` and the
    /// installation's random id, so that no two installations' logs share a genesis.
    stream: String,
    /// Appends that failed, in this process and shared by every clone (the metrics endpoint's
    /// `postern_audit_append_failures_total`).
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The group-commit writer shared by every clone, started by the first async append.
    committer: Arc<OnceLock<Option<std::sync::mpsc::Sender<Queued>>>>,
}

/// An event waiting for the group-commit writer, and who to tell once it is on disk.
#[derive(Debug)]
struct Queued {
    payload: Vec<u8>,
    done: tokio::sync::oneshot::Sender<Result<u64, recorder::WriteError>>,
}

/// Events written together at most: one lock, one write and one sync for all of them.
const MAX_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    path: String,
    #[source]
    source: recorder::WriteError,
}

impl AuditLog {
    pub fn new(path: &Path, node: &str) -> AuditLog {
        AuditLog {
            path: path.to_owned(),
            node: node.to_owned(),
            stream: "audit".to_owned(),
            failures: Default::default(),
            committer: Default::default(),
        }
    }

    /// The audit log of the installation `id` (its genesis is bound to the id; an existing log
    /// keeps the header it was created with).
    pub fn of_installation(path: &Path, node: &str, id: Option<&str>) -> AuditLog {
        AuditLog {
            stream: match id {
                Some(id) => format!("audit:{id}"),
                None => "audit".to_owned(),
            },
            ..AuditLog::new(path, node)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node this log belongs to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Appends that failed so far, by this process through any clone of this log.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes one event synchronously (the write is fsynced). `fields` must be a JSON object.
    pub fn record(&self, event: AuditEvent, fields: Value) -> Result<u64, AuditError> {
        let written = self.write(event, fields);
        if written.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        written
    }

    fn write(&self, event: AuditEvent, fields: Value) -> Result<u64, AuditError> {
        let payload = self.payload(event, fields);
        append(&self.path, &self.stream, &self.node, &[payload.as_bytes()])
            .map_err(|e| self.error(e))
    }

    /// The record's JSON: time, node and event name, then the event's fields.
    fn payload(&self, event: AuditEvent, fields: Value) -> String {
        let mut obj = Map::new();
        obj.insert(
            "time".into(),
            json!(crate::time::fmt_time(crate::time::now())),
        );
        obj.insert("node".into(), json!(self.node));
        obj.insert("event".into(), json!(event.name()));
        if let Value::Object(extra) = fields {
            obj.extend(extra);
        }
        Value::Object(obj).to_string()
    }

    /// [`AuditLog::record`] off the async runtime's threads, group-committed: events queued while
    /// the writer syncs the previous ones are written together with one lock and one sync. Each
    /// caller still returns only once its own event is on disk (or with the error that stopped it).
    pub async fn record_async(&self, event: AuditEvent, fields: Value) -> Result<u64, AuditError> {
        let Some(writer) = self.committer() else {
            let me = self.clone();
            return match tokio::task::spawn_blocking(move || me.record(event, fields)).await {
                Ok(r) => r,
                Err(e) => Err(self.error(std::io::Error::other(e.to_string()).into())),
            };
        };
        let (done, written) = tokio::sync::oneshot::channel();
        let payload = self.payload(event, fields).into_bytes();
        let result = if payload.len() > recorder::MAX_PAYLOAD {
            // Refused here, alone, rather than failing a whole batch.
            Err(self.error(recorder::WriteError::TooLarge(payload.len())))
        } else {
            match writer.send(Queued { payload, done }) {
                Ok(()) => match written.await {
                    Ok(r) => r.map_err(|e| self.error(e)),
                    Err(_) => Err(self.error(stopped())),
                },
                Err(_) => Err(self.error(stopped())),
            }
        };
        if result.is_err() {
            self.failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn error(&self, source: recorder::WriteError) -> AuditError {
        AuditError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The group-commit writer's queue, started on first use; `None` if no thread could be
    /// started (each append then goes alone, as [`AuditLog::record`] does).
    fn committer(&self) -> Option<&std::sync::mpsc::Sender<Queued>> {
        self.committer
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                // The thread holds no clone of this log: it ends when the last clone is dropped.
                let (path, stream, node) =
                    (self.path.clone(), self.stream.clone(), self.node.clone());
                std::thread::Builder::new()
                    .name("audit-commit".into())
                    .spawn(move || group_commit(&path, &stream, &node, &rx))
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }
}

fn stopped() -> recorder::WriteError {
    std::io::Error::other("the audit log's writer has stopped").into()
}

/// Appends `payloads` as audit records, in one locked write, and returns the first one's sequence
/// number (the others follow it). Never silent: a torn tail cut before appending goes on record
/// right after them (another process may append in between; the note names the first record
/// after the cut).
fn append(
    path: &Path,
    stream: &str,
    node: &str,
    payloads: &[&[u8]],
) -> Result<u64, recorder::WriteError> {
    let kind = recorder::Kind::Audit;
    let appended = recorder::append_locked_batch(path, stream, kind, payloads)?;
    if let Some((at, bytes)) = appended.repaired {
        let note = repair_note(node, at, bytes, appended.seq);
        recorder::append_locked(path, stream, kind, note.as_bytes())?;
    }
    Ok(appended.seq)
}

/// The record that says a torn tail was cut before `before_seq` was appended.
fn repair_note(node: &str, at: u64, bytes: u64, before_seq: u64) -> String {
    json!({
        "time": crate::time::fmt_time(crate::time::now()),
        "node": node,
        "event": AuditEvent::AuditTailRepaired.name(),
        "cut_at_byte": at,
        "bytes_cut": bytes,
        "before_seq": before_seq,
    })
    .to_string()
}

/// The group-commit writer: takes whatever has queued (up to [`MAX_BATCH`]), appends it with one
/// lock and one sync, and answers each caller with its sequence number or the error.
fn group_commit(path: &Path, stream: &str, node: &str, queue: &std::sync::mpsc::Receiver<Queued>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let payloads: Vec<&[u8]> = batch.iter().map(|q| q.payload.as_slice()).collect();
        let written = append(path, stream, node, &payloads);
        for (i, q) in batch.into_iter().enumerate() {
            let answer = match &written {
                Ok(seq) => Ok(seq + i as u64),
                Err(e) => Err(duplicate(e)),
            };
            // A caller that stopped waiting has nothing left to tell.
            let _ = q.done.send(answer);
        }
    }
}

/// The same error for each caller of a failed batch.
fn duplicate(e: &recorder::WriteError) -> recorder::WriteError {
    use recorder::WriteError as W;
    match e {
        W::Io(io) => W::Io(std::io::Error::new(io.kind(), io.to_string())),
        W::TooLarge(n) => W::TooLarge(*n),
        W::Damaged(why) => W::Damaged(why.clone()),
        W::Sealed => W::Sealed,
    }
}

/// The source a limit applies to: the address, or its /64 for IPv6 (one host has a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts of things refused or throttled at the door, written to the audit log as one summary
/// event per interval so that a flood cannot flood the log.
#[derive(Default)]
pub struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    by_reason: HashMap<String, u64>,
    by_source: HashMap<IpAddr, u64>,
}

/// Sources named in one summary; the rest are only counted.
const SUMMARY_SOURCES: usize = 10;
/// Distinct sources counted per interval (memory bound under a flood of sources).
const SUMMARY_MAX_SOURCES: usize = 4096;

impl Tally {
    /// Counts one event under `reason` (bounded text chosen by us, not by the client).
    pub fn count(&self, reason: &str, ip: IpAddr) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *s.by_reason.entry(reason.to_owned()).or_insert(0) += 1;
        let key = source_key(ip);
        if s.by_source.len() < SUMMARY_MAX_SOURCES || s.by_source.contains_key(&key) {
            *s.by_source.entry(key).or_insert(0) += 1;
        }
    }

    /// Takes the counts since the last call: `None` if nothing happened.
    pub fn take(&self) -> Option<serde_json::Value> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.by_reason.is_empty() {
            return None;
        }
        let total: u64 = s.by_reason.values().sum();
        let sources = s.by_source.len();
        let mut top: Vec<(IpAddr, u64)> = s.by_source.drain().collect();
        top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        top.truncate(SUMMARY_SOURCES);
        let reasons = std::mem::take(&mut s.by_reason);
        Some(serde_json::json!({
            "count": total,
            "reasons": reasons,
            "distinct_sources": sources,
            "top_sources": top.into_iter().map(|(ip, n)| serde_json::json!({"source": ip.to_string(), "count": n})).collect::<Vec<_>>(),
        }))
    }
}

/// Truncates and escapes text that came from a client before it is logged: at most `max`
/// characters, control characters escaped, and the original length noted when cut. An attacker
/// must not be able to grow the audit log by more than a few hundred bytes per attempt.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (shown, c) in s.chars().enumerate() {
        if shown >= max {
            out.push_str(&format!("…[{} bytes]", s.len()));
            return out;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Every event the audit log records, by name. The names are the log's schema: auditors search
/// and alert on them, so a variant is never renamed (old logs keep reading); add new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditEvent {
    Init,
    Verify,
    ServeStart,
    ServeStop,
    DemoSetup,
    ActionNotCommitted,
    ApproverAdd,
    ApproverDisable,
    ApproverReset,
    AuditCheckpoint,
    AuditCheckpointMismatch,
    AuditTailRepaired,
    AuthCertificate,
    AuthFailed,
    AuthOk,
    AuthThrottled,
    AuthTotp,
    BreakglassOpen,
    BreakglassReview,
    ChannelAllow,
    ChannelDeny,
    DeviceAdd,
    DeviceConnectFailed,
    DeviceHostkeyMismatch,
    DeviceImport,
    DeviceRotate,
    DeviceRotateFailed,
    DeviceRotateCommand,
    DeviceWeb,
    DeviceRotateRecovered,
    EdgeAdd,
    EdgeJoin,
    EdgeJoinRefused,
    EdgeRenew,
    EdgeRevoke,
    EdgeOnline,
    EdgeOffline,
    EdgeRefused,
    EdgeRouteRefused,
    /// An edge holds a new version of its signed policy bundle.
    EdgePolicy,
    /// An edge refused a policy bundle (bad signature, older version, another edge's), or the
    /// central could not make one.
    EdgePolicyRefused,
    /// A session recorded at an edge arrived, was checked and kept.
    EdgeEvidence,
    /// A session shipped from an edge failed its checks; it is kept aside for investigation.
    EdgeEvidenceRefused,
    /// TOTP steps a vendor used at an edge (while it was cut off) are now spent at the central.
    EdgeTotpUsed,
    /// An edge's evidence buffer filled up (new sessions refused) or drained again.
    EdgeBufferFull,
    ScanRun,
    ScanRemove,
    FileTransfer,
    FrontdoorRefused,
    FunctionAdd,
    GrantAdd,
    GrantRevoke,
    KeysCertify,
    KeysPin,
    KeysRevoke,
    KeysRotate,
    NotifyFailed,
    RecordingFailed,
    RequestApprove,
    RequestDeny,
    RequestFiled,
    RequestEscalated,
    RequestExpired,
    RequestDecisionRefused,
    SessionCrashRecovered,
    SessionDenied,
    SessionEnd,
    SessionError,
    SessionKill,
    SessionKillRequested,
    SessionRevoked,
    SessionSeal,
    SessionStart,
    SiteAdd,
    VendorAdd,
    VendorCert,
    VendorDisable,
    VendorEnrol,
    VendorEnrolRefused,
    VendorInvite,
    VendorRevokeCert,
    CaRotate,
    CaRetire,
    WebCsrfRefused,
    WebLogin,
    WebLoginFailed,
    WebLogout,
    WebEntry,
    WebEnter,
    WebRefused,
    WebThrottled,
    // Contract and role changes (issue 13).
    VendorUpdate,
    VendorEnable,
    ApproverUpdate,
    FunctionUpdate,
    SessionContractEnded,
    ChannelRevoked,
    // Secrets at rest (issue 14).
    SecretsSealed,
    KeysRotateMaster,
    // Rotation (issue 14).
    FunctionRotation,
    /// A function was marked offline-ok (or not).
    FunctionOfflineOk,
}

impl AuditEvent {
    /// Every event, for listings and the round-trip test.
    pub const ALL: &[AuditEvent] = &[
        AuditEvent::Init,
        AuditEvent::Verify,
        AuditEvent::ServeStart,
        AuditEvent::ServeStop,
        AuditEvent::DemoSetup,
        AuditEvent::ActionNotCommitted,
        AuditEvent::ApproverAdd,
        AuditEvent::ApproverDisable,
        AuditEvent::ApproverReset,
        AuditEvent::AuditCheckpoint,
        AuditEvent::AuditCheckpointMismatch,
        AuditEvent::AuditTailRepaired,
        AuditEvent::AuthCertificate,
        AuditEvent::AuthFailed,
        AuditEvent::AuthOk,
        AuditEvent::AuthThrottled,
        AuditEvent::AuthTotp,
        AuditEvent::BreakglassOpen,
        AuditEvent::BreakglassReview,
        AuditEvent::ChannelAllow,
        AuditEvent::ChannelDeny,
        AuditEvent::DeviceAdd,
        AuditEvent::DeviceConnectFailed,
        AuditEvent::DeviceHostkeyMismatch,
        AuditEvent::DeviceImport,
        AuditEvent::DeviceRotate,
        AuditEvent::DeviceRotateFailed,
        AuditEvent::DeviceRotateCommand,
        AuditEvent::DeviceWeb,
        AuditEvent::DeviceRotateRecovered,
        AuditEvent::EdgeAdd,
        AuditEvent::EdgeJoin,
        AuditEvent::EdgeJoinRefused,
        AuditEvent::EdgeRenew,
        AuditEvent::EdgeRevoke,
        AuditEvent::EdgeOnline,
        AuditEvent::EdgeOffline,
        AuditEvent::EdgeRefused,
        AuditEvent::EdgeRouteRefused,
        AuditEvent::EdgePolicy,
        AuditEvent::EdgePolicyRefused,
        AuditEvent::EdgeEvidence,
        AuditEvent::EdgeEvidenceRefused,
        AuditEvent::EdgeTotpUsed,
        AuditEvent::EdgeBufferFull,
        AuditEvent::ScanRun,
        AuditEvent::ScanRemove,
        AuditEvent::FileTransfer,
        AuditEvent::FrontdoorRefused,
        AuditEvent::FunctionAdd,
        AuditEvent::GrantAdd,
        AuditEvent::GrantRevoke,
        AuditEvent::KeysCertify,
        AuditEvent::KeysPin,
        AuditEvent::KeysRevoke,
        AuditEvent::KeysRotate,
        AuditEvent::NotifyFailed,
        AuditEvent::RecordingFailed,
        AuditEvent::RequestApprove,
        AuditEvent::RequestDeny,
        AuditEvent::RequestFiled,
        AuditEvent::RequestEscalated,
        AuditEvent::RequestExpired,
        AuditEvent::RequestDecisionRefused,
        AuditEvent::SessionCrashRecovered,
        AuditEvent::SessionDenied,
        AuditEvent::SessionEnd,
        AuditEvent::SessionError,
        AuditEvent::SessionKill,
        AuditEvent::SessionKillRequested,
        AuditEvent::SessionRevoked,
        AuditEvent::SessionSeal,
        AuditEvent::SessionStart,
        AuditEvent::SiteAdd,
        AuditEvent::VendorAdd,
        AuditEvent::VendorCert,
        AuditEvent::VendorDisable,
        AuditEvent::VendorEnrol,
        AuditEvent::VendorEnrolRefused,
        AuditEvent::VendorInvite,
        AuditEvent::VendorRevokeCert,
        AuditEvent::CaRotate,
        AuditEvent::CaRetire,
        AuditEvent::WebCsrfRefused,
        AuditEvent::WebLogin,
        AuditEvent::WebLoginFailed,
        AuditEvent::WebLogout,
        AuditEvent::WebEntry,
        AuditEvent::WebEnter,
        AuditEvent::WebRefused,
        AuditEvent::WebThrottled,
        AuditEvent::VendorUpdate,
        AuditEvent::VendorEnable,
        AuditEvent::ApproverUpdate,
        AuditEvent::FunctionUpdate,
        AuditEvent::SessionContractEnded,
        AuditEvent::ChannelRevoked,
        AuditEvent::SecretsSealed,
        AuditEvent::KeysRotateMaster,
        AuditEvent::FunctionRotation,
        AuditEvent::FunctionOfflineOk,
    ];

    /// The name written in the log's `event` field.
    pub fn name(self) -> &'static str {
        match self {
            AuditEvent::Init => "init",
            AuditEvent::Verify => "verify",
            AuditEvent::ServeStart => "serve.start",
            AuditEvent::ServeStop => "serve.stop",
            AuditEvent::DemoSetup => "demo.setup",
            AuditEvent::ActionNotCommitted => "action.not_committed",
            AuditEvent::ApproverAdd => "approver.add",
            AuditEvent::ApproverDisable => "approver.disable",
            AuditEvent::ApproverReset => "approver.reset",
            AuditEvent::AuditCheckpoint => "audit.checkpoint",
            AuditEvent::AuditCheckpointMismatch => "audit.checkpoint_mismatch",
            AuditEvent::AuditTailRepaired => "audit.tail_repaired",
            AuditEvent::AuthCertificate => "auth.certificate",
            AuditEvent::AuthFailed => "auth.failed",
            AuditEvent::AuthOk => "auth.ok",
            AuditEvent::AuthThrottled => "auth.throttled",
            AuditEvent::AuthTotp => "auth.totp",
            AuditEvent::BreakglassOpen => "breakglass.open",
            AuditEvent::BreakglassReview => "breakglass.review",
            AuditEvent::ChannelAllow => "channel.allow",
            AuditEvent::ChannelDeny => "channel.deny",
            AuditEvent::DeviceAdd => "device.add",
            AuditEvent::DeviceConnectFailed => "device.connect_failed",
            AuditEvent::DeviceHostkeyMismatch => "device.hostkey_mismatch",
            AuditEvent::DeviceImport => "device.import",
            AuditEvent::DeviceRotate => "device.rotate",
            AuditEvent::DeviceRotateFailed => "device.rotate_failed",
            AuditEvent::DeviceRotateCommand => "device.rotate_command",
            AuditEvent::DeviceWeb => "device.web",
            AuditEvent::DeviceRotateRecovered => "device.rotate_recovered",
            AuditEvent::EdgeAdd => "edge.add",
            AuditEvent::EdgeJoin => "edge.join",
            AuditEvent::EdgeJoinRefused => "edge.join_refused",
            AuditEvent::EdgeRenew => "edge.renew",
            AuditEvent::EdgeRevoke => "edge.revoke",
            AuditEvent::EdgeOnline => "edge.online",
            AuditEvent::EdgeOffline => "edge.offline",
            AuditEvent::EdgeRefused => "edge.refused",
            AuditEvent::EdgeRouteRefused => "edge.route_refused",
            AuditEvent::EdgePolicy => "edge.policy",
            AuditEvent::EdgePolicyRefused => "edge.policy_refused",
            AuditEvent::EdgeEvidence => "edge.evidence",
            AuditEvent::EdgeEvidenceRefused => "edge.evidence_refused",
            AuditEvent::EdgeTotpUsed => "edge.totp_used",
            AuditEvent::EdgeBufferFull => "edge.buffer_full",
            AuditEvent::ScanRun => "scan.run",
            AuditEvent::ScanRemove => "scan.remove",
            AuditEvent::FileTransfer => "file.transfer",
            AuditEvent::FrontdoorRefused => "frontdoor.refused",
            AuditEvent::FunctionAdd => "function.add",
            AuditEvent::GrantAdd => "grant.add",
            AuditEvent::GrantRevoke => "grant.revoke",
            AuditEvent::KeysCertify => "keys.certify",
            AuditEvent::KeysPin => "keys.pin",
            AuditEvent::KeysRevoke => "keys.revoke",
            AuditEvent::KeysRotate => "keys.rotate",
            AuditEvent::NotifyFailed => "notify.failed",
            AuditEvent::RecordingFailed => "recording.failed",
            AuditEvent::RequestApprove => "request.approve",
            AuditEvent::RequestDeny => "request.deny",
            AuditEvent::RequestFiled => "request.filed",
            AuditEvent::RequestEscalated => "request.escalated",
            AuditEvent::RequestExpired => "request.expired",
            AuditEvent::RequestDecisionRefused => "request.decision_refused",
            AuditEvent::SessionCrashRecovered => "session.crash_recovered",
            AuditEvent::SessionDenied => "session.denied",
            AuditEvent::SessionEnd => "session.end",
            AuditEvent::SessionError => "session.error",
            AuditEvent::SessionKill => "session.kill",
            AuditEvent::SessionKillRequested => "session.kill_requested",
            AuditEvent::SessionRevoked => "session.revoked",
            AuditEvent::SessionSeal => "session.seal",
            AuditEvent::SessionStart => "session.start",
            AuditEvent::SiteAdd => "site.add",
            AuditEvent::VendorAdd => "vendor.add",
            AuditEvent::VendorCert => "vendor.cert",
            AuditEvent::VendorDisable => "vendor.disable",
            AuditEvent::VendorEnrol => "vendor.enrol",
            AuditEvent::VendorEnrolRefused => "vendor.enrol_refused",
            AuditEvent::VendorInvite => "vendor.invite",
            AuditEvent::VendorRevokeCert => "vendor.revoke_cert",
            AuditEvent::CaRotate => "ca.rotate",
            AuditEvent::CaRetire => "ca.retire",
            AuditEvent::WebCsrfRefused => "web.csrf_refused",
            AuditEvent::WebLogin => "web.login",
            AuditEvent::WebLoginFailed => "web.login_failed",
            AuditEvent::WebLogout => "web.logout",
            AuditEvent::WebEntry => "web.entry",
            AuditEvent::WebEnter => "web.enter",
            AuditEvent::WebRefused => "web.refused",
            AuditEvent::WebThrottled => "web.throttled",
            AuditEvent::VendorUpdate => "vendor.update",
            AuditEvent::VendorEnable => "vendor.enable",
            AuditEvent::ApproverUpdate => "approver.update",
            AuditEvent::FunctionUpdate => "function.update",
            AuditEvent::FunctionRotation => "function.rotation",
            AuditEvent::FunctionOfflineOk => "function.offline_ok",
            AuditEvent::SessionContractEnded => "session.contract_ended",
            AuditEvent::ChannelRevoked => "channel.revoked",
            AuditEvent::SecretsSealed => "secrets.sealed",
            AuditEvent::KeysRotateMaster => "keys.rotate_master",
        }
    }

    /// The event of a name found in a log (`None`: written by a newer version, or not ours).
    pub fn from_name(name: &str) -> Option<AuditEvent> {
        AuditEvent::ALL.iter().copied().find(|e| e.name() == name)
    }

    /// The event of one audit entry as read back from the log (its `event` field).
    pub fn of_entry(entry: &Value) -> Option<AuditEvent> {
        entry["event"].as_str().and_then(AuditEvent::from_name)
    }
}

/// Written as its name, as in the log.
impl serde::Serialize for AuditEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_async_appends_are_group_committed_in_one_unbroken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::of_installation(&path, "node-a", Some("inst"));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let log = log.clone();
            tasks.spawn(async move {
                log.record_async(AuditEvent::AuthCertificate, json!({"i": i}))
                    .await
                    .unwrap()
            });
        }
        // A synchronous writer (the CLI) takes the same lock meanwhile.
        log.record(AuditEvent::AuthTotp, json!({"cli": true}))
            .unwrap();
        let mut seqs = Vec::new();
        while let Some(seq) = tasks.join_next().await {
            seqs.push(seq.unwrap());
        }
        seqs.sort();
        seqs.dedup();
        assert_eq!(seqs.len(), 200, "every caller got its own sequence number");
        let report = recorder::verify_file(&path).unwrap();
        assert!(report.problem.is_none(), "{:?}", report.problem);
        assert_eq!(report.records, 201);
        // Each caller's number is its own record.
        let records: Vec<recorder::Record> = recorder::Reader::open(&path)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for seq in seqs {
            let v: Value = serde_json::from_slice(&records[seq as usize].payload).unwrap();
            assert_eq!(v["event"], "auth.certificate", "{v}");
        }
        assert_eq!(log.failures(), 0);
    }

    #[tokio::test]
    async fn a_failed_group_commit_fails_every_caller_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the log should be: nothing can be appended.
        let path = dir.path().join("audit.log");
        std::fs::create_dir(&path).unwrap();
        let log = AuditLog::new(&path, "node-a");
        let (a, b) = tokio::join!(
            log.record_async(AuditEvent::AuthCertificate, json!({})),
            log.record_async(AuditEvent::AuthTotp, json!({})),
        );
        assert!(a.is_err() && b.is_err());
        assert_eq!(log.failures(), 2);
    }

    #[test]
    fn bounds_client_text() {
        assert_eq!(bounded("alice", 64), "alice");
        assert_eq!(bounded("a\u{1b}[2J", 64), "a\\u{1b}[2J");
        let long = "x".repeat(100 * 1024);
        let b = bounded(&long, 64);
        assert!(b.len() < 100, "{b}");
        assert!(b.ends_with("…[102400 bytes]"));
    }

    #[test]
    fn tally_is_bounded_and_resets() {
        let t = Tally::default();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.count("rate limited", ip);
        }
        let v = t.take().unwrap();
        assert_eq!(v["count"], 10_000);
        assert_eq!(v["distinct_sources"], SUMMARY_MAX_SOURCES);
        assert_eq!(v["top_sources"].as_array().unwrap().len(), SUMMARY_SOURCES);
        assert!(t.take().is_none());
    }

    #[test]
    fn audit_event_names_are_unique_and_read_back() {
        let mut names = std::collections::HashSet::new();
        for e in AuditEvent::ALL {
            assert!(names.insert(e.name()), "{e} twice");
            assert_eq!(AuditEvent::from_name(e.name()), Some(*e));
        }
        assert_eq!(AuditEvent::from_name("no.such_event"), None);
        let entry = json!({"event": "session.seal", "session": "s"});
        assert_eq!(AuditEvent::of_entry(&entry), Some(AuditEvent::SessionSeal));
        assert_eq!(AuditEvent::of_entry(&json!({"event": 7})), None);
        assert_eq!(AuditEvent::of_entry(&json!("session.seal")), None);
    }
}
