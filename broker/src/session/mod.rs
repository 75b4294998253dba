//! Live sessions and their supervision: window end, warnings, revocation and kills.
//!
//! Every path that ends a session goes through [`LiveSession::request_close`]; one supervisor task
//! per session performs the close exactly once: tell the vendor why, disconnect, stop the proxy
//! tasks, seal the recording and record the end in the database and the audit log.
//!
//! `start` opens a session (recording, database row, `session.start`); `supervise` holds the
//! supervisor, the close (`finish`) and the revocation watch.

mod start;
mod supervise;

use approvals::audit::AuditEvent;
use recorder::events;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::{AccessRequest, AuditLog, Store};
use russh::ChannelId;
use russh::server::Handle;
use serde_json::json;
use tokio::sync::{OnceCell, mpsc};
use tokio::task::AbortHandle;
use tracing::warn;

use approvals::time::fmt_time;

use crate::login::Target;
use crate::recording::Recording;
use crate::upstream::{self, Upstream, UpstreamError};

pub use supervise::{connection_ended, watch_revocations};

/// What the vendor is told when the control plane cannot be reached.
pub const OUTAGE: &str = "the broker cannot reach its control plane; try again shortly (this is an outage, not a refusal)";

/// What every connection and session shares.
pub struct Ctx {
    pub store: Store,
    pub audit: AuditLog,
    pub node: String,
    pub recordings: std::path::PathBuf,
    pub ca: Arc<crate::vendor_ca::VendorCas>,
    pub warn_before: i64,
    pub seal: recorder::SealKey,
    /// How long a vendor's connection waits for an approver's decision on a request.
    pub request_wait: Duration,
    pub env_allow: Vec<String>,
    /// Failed attempts before the first factor, per source address (this node).
    pub source_limiter: approvals::ratelimit::RateLimiter,
    /// Unauthenticated connections: caps and penalties (see [`crate::admission`]).
    pub admission: Arc<crate::admission::Admission>,
    /// How long a connection may take to authenticate.
    pub login_grace: Duration,
    /// Throttled and silent connections, summarised into the audit log per interval.
    pub throttled: approvals::audit::Tally,
    /// Detailed audit events about unauthenticated clients, per source and in all.
    pub detail_budget: approvals::ratelimit::EventBudget,
    /// Session ends the database has not recorded yet.
    pub journal: crate::journal::Journal,
    pub upstream_config: Arc<russh::client::Config>,
    pub notifier: approvals::Notifier,
    pub live: Mutex<HashMap<String, Arc<LiveSession>>>,
    /// Enrolment, renewal and the `~/.ssh/config` block (`crate::self_service`).
    pub self_service: Arc<crate::self_service::SelfService>,
    /// Connected site edges: upstream connections to their sites' devices go through them.
    pub edges: Arc<crate::edge::hub::EdgeHub>,
    /// The node's published figures (counted here whether or not `metrics_listen` serves them).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Ctx {
    pub fn live_sessions(&self) -> Vec<Arc<LiveSession>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Writes an audit event; a failure is logged and returned so callers can fail closed.
    pub async fn audit(&self, event: AuditEvent, fields: serde_json::Value) -> bool {
        match self.audit.record_async(event, fields).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, event = %event, "audit log write failed");
                false
            }
        }
    }
}

/// Why a session ended: what the database, the audit log and the recording say (`reason`), and
/// what the vendor is told (`vendor_line`). A fault names itself: a vendor whose device went away
/// is not told, and the auditor does not read, "vendor disconnected".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    VendorDisconnected,
    DeviceDisconnected,
    DeviceStoppedAnswering,
    /// The device could not be reached or logged in to (the detail is for the vendor).
    DeviceUnreachable(String),
    ControlPlaneUnreachable,
    ShuttingDown,
    /// The vendor's contract ended at `at` (Unix seconds).
    ContractEnded {
        vendor: String,
        at: i64,
    },
    /// The access window ended at `at` (Unix seconds).
    WindowEnded {
        at: i64,
    },
    /// The control plane no longer allows it (a revoked grant or certificate, a disabled
    /// vendor): the text says which.
    Revoked(String),
    /// An operator terminated it.
    Killed,
    /// The recording cannot be written (the detail says why).
    RecordingFailed(String),
    /// Anything else: the text says it all.
    Said(String),
}

impl EndReason {
    pub fn reason(&self) -> std::borrow::Cow<'_, str> {
        match self {
            EndReason::VendorDisconnected => "vendor disconnected".into(),
            EndReason::DeviceDisconnected => "device disconnected".into(),
            EndReason::DeviceStoppedAnswering => "device stopped answering".into(),
            EndReason::DeviceUnreachable(_) => "device unreachable".into(),
            EndReason::ControlPlaneUnreachable => "control plane unreachable".into(),
            EndReason::ShuttingDown => "broker shutting down".into(),
            EndReason::ContractEnded { .. } | EndReason::WindowEnded { .. } => {
                self.vendor_line().into()
            }
            EndReason::Killed | EndReason::RecordingFailed(_) => self.vendor_line().into(),
            EndReason::Revoked(s) | EndReason::Said(s) => s.as_str().into(),
        }
    }

    /// The outcome's name for metrics: a fixed set of values.
    pub fn outcome(&self) -> &'static str {
        match self {
            EndReason::VendorDisconnected => "closed",
            EndReason::DeviceDisconnected
            | EndReason::DeviceStoppedAnswering
            | EndReason::DeviceUnreachable(_) => "device_failed",
            EndReason::ControlPlaneUnreachable => "control_plane_unreachable",
            EndReason::ShuttingDown => "shutting_down",
            EndReason::ContractEnded { .. } => "contract_ended",
            EndReason::WindowEnded { .. } => "window_ended",
            EndReason::Revoked(_) => "revoked",
            EndReason::Killed => "killed",
            EndReason::RecordingFailed(_) => "recording_failed",
            EndReason::Said(_) => "other",
        }
    }

    /// The one line the vendor sees (nothing for a vendor who is gone).
    pub fn vendor_line(&self) -> String {
        match self {
            EndReason::VendorDisconnected => String::new(),
            EndReason::DeviceDisconnected => {
                "the device closed the connection (device disconnected); this session is over".into()
            }
            EndReason::DeviceStoppedAnswering => {
                "the device stopped answering (device stopped answering); this session is over"
                    .into()
            }
            EndReason::DeviceUnreachable(detail) => {
                format!("the device could not be reached ({detail}); this session is over")
            }
            EndReason::ControlPlaneUnreachable => "the broker cannot reach its control plane, so it cannot keep checking this session's access; closing (control plane unreachable: an outage, not a revocation)".into(),
            EndReason::ShuttingDown => {
                "the broker is shutting down (broker shutting down); reconnect in a moment".into()
            }
            EndReason::ContractEnded { vendor, at } => {
                format!("the contract of {vendor} ended at {}", fmt_time(*at))
            }
            EndReason::WindowEnded { at } => {
                format!("the access window ended at {}", fmt_time(*at))
            }
            EndReason::Killed => "this session was terminated by an operator".into(),
            EndReason::RecordingFailed(e) => {
                format!("the recording cannot be written ({e}); closing")
            }
            EndReason::Revoked(s) | EndReason::Said(s) => s.clone(),
        }
    }
}

/// When a live session must end: at its window's end or its vendor's contract end, whichever
/// comes first. Both can move while it runs (a grant cut, a contract changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window_end: i64,
    pub contract_end: Option<i64>,
}

impl Limits {
    pub fn ends_at(&self) -> i64 {
        self.contract_end
            .map_or(self.window_end, |c| c.min(self.window_end))
    }

    /// Whether the contract ends the session (rather than the window).
    pub fn contract_first(&self) -> bool {
        self.contract_end.is_some_and(|c| c <= self.window_end)
    }

    /// Why the session ends at [`Limits::ends_at`].
    pub fn end_reason(&self, vendor: &str) -> EndReason {
        match self.contract_end {
            Some(at) if self.contract_first() => EndReason::ContractEnded {
                vendor: vendor.to_owned(),
                at,
            },
            _ => EndReason::WindowEnded {
                at: self.window_end,
            },
        }
    }
}

impl From<String> for EndReason {
    fn from(s: String) -> EndReason {
        EndReason::Said(s)
    }
}

impl From<&str> for EndReason {
    fn from(s: &str) -> EndReason {
        EndReason::Said(s.to_owned())
    }
}

/// What the vendor's certificate permits, as OpenSSH's extensions say (`permit-pty`,
/// `permit-port-forwarding`); sshd's rules: without the extension, no terminal or no forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permits {
    pub pty: bool,
    pub port_forwarding: bool,
    /// The serial of the certificate these come from: revoking it ends the session.
    pub serial: Option<u64>,
}

impl Permits {
    /// Nothing beyond exec, shell without a terminal, and sftp.
    pub const NONE: Permits = Permits {
        pty: false,
        port_forwarding: false,
        serial: None,
    };

    pub fn of(cert: &russh::keys::Certificate) -> Permits {
        let ext = cert.extensions();
        Permits {
            pty: ext.contains_key("permit-pty"),
            port_forwarding: ext.contains_key("permit-port-forwarding"),
            serial: Some(cert.serial()),
        }
    }
}

/// Why a session the policy allowed could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the recording: {0}")]
    Recording(recorder::WriteError),
    /// The database did not take the session: the control plane is failing.
    #[error("cannot register the session: {0}")]
    Register(approvals::StoreError),
    #[error("the audit log cannot be written")]
    Audit,
}

/// Why a session has no connection to its device; `Display` is what the vendor is told (and, for
/// a device that could not be reached, the detail of the session's end).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceUnavailable {
    #[error("device {site}/{device} no longer exists")]
    Gone { site: String, device: String },
    /// The device could not be looked up: an outage, not a refusal.
    #[error("{}", OUTAGE)]
    ControlPlane,
    /// Shared: every channel that asks later gets the same answer.
    #[error(transparent)]
    Connect(Arc<UpstreamError>),
}

impl From<DeviceUnavailable> for EndReason {
    fn from(e: DeviceUnavailable) -> EndReason {
        EndReason::Said(e.to_string())
    }
}

pub struct LiveSession {
    pub id: String,
    /// Unix seconds, as registered.
    pub started: i64,
    pub target: Target,
    pub function: String,
    pub grant: String,
    /// Window and contract end, as the control plane says now (see [`Limits`]).
    limits: tokio::sync::watch::Sender<Limits>,
    /// The channel kinds the session's function allows, once a re-check has read them; channel
    /// tasks close themselves when theirs is no longer among them.
    channels: tokio::sync::watch::Sender<Option<approvals::ChannelSet>>,
    pub login: String,
    pub recording: Recording,
    /// The vendor's SSH connection; `None` for a device web UI session (browser requests).
    pub handle: Option<Handle>,
    upstream: OnceCell<Result<Arc<Upstream>, DeviceUnavailable>>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Channels with a terminal, where notices (warnings, the reason for closing) are written.
    interactive: Mutex<Vec<ChannelId>>,
    close_tx: mpsc::UnboundedSender<EndReason>,
    closed: AtomicBool,
    /// Tells channel tasks to stop forwarding while keeping their channels open (dropping a
    /// channel closes it, and the vendor's client would exit before hearing why).
    stop: tokio::sync::watch::Sender<bool>,
    /// Set once by the front door from the vendor's certificate; unset means nothing permitted.
    permits: std::sync::OnceLock<Permits>,
    /// When the session's start began (its setup is measured to the device logged in).
    began: std::time::Instant,
    /// When the revoking change that is closing it was committed (Unix ms; 0: none): its
    /// propagation is measured to the session closed.
    revoked_ms: std::sync::atomic::AtomicI64,
}

impl LiveSession {
    /// The policy question for this session (and a channel, if one is being opened).
    pub fn request(&self, channel: Option<approvals::Channel>) -> AccessRequest {
        AccessRequest {
            vendor: self.target.vendor.clone(),
            site: self.target.site.clone(),
            device: self.target.device.clone(),
            function: Some(self.function.clone()),
            channel,
        }
    }

    pub fn limits(&self) -> Limits {
        *self.limits.borrow()
    }

    /// The window's end (the contract may end the session earlier: see [`LiveSession::ends_at`]).
    pub fn window_end(&self) -> i64 {
        self.limits().window_end
    }

    /// When the session ends, unless something ends it sooner.
    pub fn ends_at(&self) -> i64 {
        self.limits().ends_at()
    }

    pub(crate) fn watch_limits(&self) -> tokio::sync::watch::Receiver<Limits> {
        self.limits.subscribe()
    }

    /// Takes the control plane's current answer: the window only ever shortens (a grant cut);
    /// the contract end is whatever the vendor's record says now.
    pub(crate) fn update_limits(&self, window_end: i64, contract_end: Option<i64>) {
        self.limits.send_if_modified(|l| {
            let new = Limits {
                window_end: l.window_end.min(window_end),
                contract_end,
            };
            std::mem::replace(l, new) != new
        });
    }

    /// The channel kinds the session's function allows now (`None` until a re-check read them).
    pub fn watch_channels(&self) -> tokio::sync::watch::Receiver<Option<approvals::ChannelSet>> {
        self.channels.subscribe()
    }

    pub(crate) fn update_channels(&self, set: approvals::ChannelSet) {
        self.channels.send_if_modified(|c| {
            let changed = c.as_ref() != Some(&set);
            *c = Some(set);
            changed
        });
    }

    /// Records what the vendor's certificate permits (once; later calls change nothing).
    pub fn set_permits(&self, p: Permits) {
        let _ = self.permits.set(p);
    }

    /// What the vendor's certificate permits; nothing if the front door never said.
    pub fn permits(&self) -> Permits {
        self.permits.get().copied().unwrap_or(Permits::NONE)
    }

    /// Closes the session for a revoking change committed at `changed_ms` (Unix ms, as the
    /// revision stamp says; 0 if unknown), so its propagation is measured.
    pub(crate) fn revoke(&self, reason: EndReason, changed_ms: i64) {
        let _ = self
            .revoked_ms
            .compare_exchange(0, changed_ms, Ordering::SeqCst, Ordering::SeqCst);
        self.request_close(reason);
    }

    /// Asks the supervisor to close the session; safe to call from anywhere, any number of times.
    pub fn request_close(&self, reason: impl Into<EndReason>) {
        let _ = self.close_tx.send(reason.into());
    }

    /// Becomes true when the broker is closing the session.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn add_task(&self, h: AbortHandle) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    }

    pub fn mark_interactive(&self, ch: ChannelId) {
        self.interactive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ch);
    }

    /// The upstream connection, made on first use and shared by all channels of the session.
    pub async fn upstream(&self, ctx: &Ctx) -> Result<Arc<Upstream>, DeviceUnavailable> {
        self.upstream
            .get_or_init(|| self.connect_upstream(ctx))
            .await
            .clone()
    }

    async fn connect_upstream(&self, ctx: &Ctx) -> Result<Arc<Upstream>, DeviceUnavailable> {
        let (site, name) = (&self.target.site, &self.target.device);
        let device = match approvals::store::deadline(ctx.store.device(site, name)).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(DeviceUnavailable::Gone {
                    site: site.clone(),
                    device: name.clone(),
                });
            }
            Err(e) => {
                warn!(session = %self.id, error = %e, "device lookup: control plane unavailable");
                return Err(DeviceUnavailable::ControlPlane);
            }
        };
        match self.connect_device(ctx, device.clone()).await {
            Ok((h, ended)) => {
                ctx.metrics.session_setup(self.began.elapsed());
                self.close_when_device_ends(ended);
                Ok(Arc::new(h))
            }
            Err(e) => {
                let event = if matches!(e, UpstreamError::HostKeyMismatch { .. }) {
                    AuditEvent::DeviceHostkeyMismatch
                } else {
                    AuditEvent::DeviceConnectFailed
                };
                ctx.audit(event, json!({"session": self.id, "site": device.site, "device": device.name, "error": e.to_string()})).await;
                let error = e.to_string();
                let noted = if matches!(e, UpstreamError::HostKeyMismatch { .. }) {
                    events::Event::DeviceHostKeyMismatch { error }
                } else {
                    events::Event::DeviceConnectFailed { error }
                };
                let _ = self.recording.write(0, &noted);
                // No channel of this session can work: end it, saying why. The channel
                // that asked is refused with the same words first.
                let _ = self
                    .close_tx
                    .send(EndReason::DeviceUnreachable(e.to_string()));
                Err(DeviceUnavailable::Connect(Arc::new(e)))
            }
        }
    }

    /// Logs in to the device; a refused password is retried with the one an interrupted rotation
    /// set aside (adopted if it works, see [`crate::rotation::password`]).
    async fn connect_device(
        &self,
        ctx: &Ctx,
        device: approvals::Device,
    ) -> Result<
        (
            Upstream,
            tokio::sync::watch::Receiver<Option<upstream::DeviceEnd>>,
        ),
        UpstreamError,
    > {
        let via = self.via_edge(ctx).await?;
        let first =
            upstream::connect_via(ctx.upstream_config.clone(), &device, &self.login, via).await;
        if !matches!(first, Err(UpstreamError::AuthFailed(_))) {
            return first;
        }
        let actions =
            approvals::Actions::new(ctx.store.clone(), ctx.audit.clone(), ctx.notifier.clone());
        let actor = approvals::Actor::broker(&ctx.node);
        let recovered = crate::rotation::password::recover_pending(
            &actions,
            &actor,
            &device,
            approvals::time::now(),
        )
        .await;
        match recovered {
            Ok(Some(device)) => {
                let via = self.via_edge(ctx).await?;
                upstream::connect_via(ctx.upstream_config.clone(), &device, &self.login, via).await
            }
            Ok(None) => first,
            Err(e) => {
                warn!(session = %self.id, error = %e, "adopting a set-aside device password failed");
                first
            }
        }
    }

    /// A stream through the edge serving the device's site; `None`: the site is reached directly.
    async fn via_edge(&self, ctx: &Ctx) -> Result<Option<tokio::io::DuplexStream>, UpstreamError> {
        ctx.edges
            .route(&self.target.site, &self.target.device)
            .await
            .map_err(UpstreamError::Edge)
    }

    /// The device going away ends the session, named for what happened.
    fn close_when_device_ends(
        &self,
        mut ended: tokio::sync::watch::Receiver<Option<upstream::DeviceEnd>>,
    ) {
        let close = self.close_tx.clone();
        tokio::spawn(async move {
            let end = ended.wait_for(Option::is_some).await.ok().and_then(|e| *e);
            let reason = match end {
                Some(upstream::DeviceEnd::StoppedAnswering) => EndReason::DeviceStoppedAnswering,
                _ => EndReason::DeviceDisconnected,
            };
            let _ = close.send(reason);
        });
    }

    /// Writes a line to the vendor's terminal(s) on stderr.
    pub async fn notice(&self, text: &str) {
        let channels = self
            .interactive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let line = format!("\r\npostern: {text}\r\n");
        if let Some(handle) = &self.handle {
            for ch in channels {
                let send = handle.extended_data(ch, 1, line.clone().into_bytes());
                let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            }
        }
        let _ = self.recording.write(
            0,
            &events::Event::Notice {
                text: text.to_owned(),
            },
        );
    }
}
