//! Live sessions and their supervision: window end, warnings, revocation and kills.
//!
//! Every path that ends a session goes through [`LiveSession::request_close`]; one supervisor task
//! per session performs the close exactly once: tell the vendor why, disconnect, stop the proxy
//! tasks, seal the recording and record the end in the database and the audit log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::time::{fmt_time, now};
use approvals::{AccessRequest, Allowed, AuditLog, PolicyGate, Refusal, Store};
use recorder::Kind;
use russh::ChannelId;
use russh::server::Handle;
use serde_json::json;
use tokio::sync::{OnceCell, mpsc};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::login::Target;
use crate::recording::Recording;
use crate::upstream::{self, Upstream, UpstreamError};

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
    pub async fn audit(&self, event: &str, fields: serde_json::Value) -> bool {
        match self.audit.record_async(event, fields).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, event, "audit log write failed");
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
    /// Window end, revocation, termination, recording failure: the text says it all.
    Said(String),
}

impl EndReason {
    pub fn reason(&self) -> &str {
        match self {
            EndReason::VendorDisconnected => "vendor disconnected",
            EndReason::DeviceDisconnected => "device disconnected",
            EndReason::DeviceStoppedAnswering => "device stopped answering",
            EndReason::DeviceUnreachable(_) => "device unreachable",
            EndReason::ControlPlaneUnreachable => "control plane unreachable",
            EndReason::ShuttingDown => "broker shutting down",
            EndReason::Said(s) => s,
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
            EndReason::Said(s) => s.clone(),
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
}

impl Permits {
    /// Nothing beyond exec, shell without a terminal, and sftp.
    pub const NONE: Permits = Permits {
        pty: false,
        port_forwarding: false,
    };

    pub fn of(cert: &russh::keys::Certificate) -> Permits {
        let ext = cert.extensions();
        Permits {
            pty: ext.contains_key("permit-pty"),
            port_forwarding: ext.contains_key("permit-port-forwarding"),
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

pub struct LiveSession {
    pub id: String,
    /// Unix seconds, as registered.
    pub started: i64,
    pub target: Target,
    pub function: String,
    pub grant: String,
    pub window_end: i64,
    pub login: String,
    pub recording: Recording,
    pub handle: Handle,
    upstream: OnceCell<Result<Arc<Upstream>, String>>,
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
}

impl LiveSession {
    /// Opens the recording, registers the session in the database and starts its supervisor.
    pub async fn start(
        ctx: &Arc<Ctx>,
        target: Target,
        allowed: &Allowed,
        source: String,
        handle: Handle,
    ) -> Result<Arc<LiveSession>, StartError> {
        let Allowed {
            grant,
            function,
            window_end,
            login,
        } = allowed;
        let id = approvals::store::new_evidence_id("s");
        let file = format!("{id}.rec");
        let path = ctx.recordings.join(&file);
        let recording = Recording::create(&path, &id).map_err(StartError::Recording)?;
        // A session that never got registered leaves no recording behind: `verify` reports a
        // recording without a session as planted or orphaned.
        let abandon = |why: StartError| {
            let _ = std::fs::remove_file(&path);
            why
        };
        let started = now();
        let row = approvals::Session {
            id: id.clone(),
            vendor: target.vendor.clone(),
            site: target.site.clone(),
            device: target.device.clone(),
            function: function.clone(),
            grant_id: grant.clone(),
            node: ctx.node.clone(),
            source: source.clone(),
            recording: file,
            started,
            ended: None,
            end_reason: None,
            kill_requested: false,
            records: None,
            final_hash: None,
            breakglass: None,
        };
        let meta = json!({
            "session": id, "vendor": target.vendor, "site": target.site, "device": target.device,
            "function": function, "grant": grant, "window_end": fmt_time(*window_end),
            "device_login": login, "source": source, "node": ctx.node,
        });
        recording
            .json(Kind::SessionStart, 0, &meta)
            .map_err(|e| abandon(StartError::Recording(e)))?;
        recording
            .flush()
            .map_err(|e| abandon(StartError::Recording(e)))?;
        approvals::store::deadline(ctx.store.start_session(&row))
            .await
            .map_err(|e| abandon(StartError::Register(e)))?;
        if !ctx.audit("session.start", meta).await {
            return Err(StartError::Audit);
        }
        let (close_tx, close_rx) = mpsc::unbounded_channel();
        let live = Arc::new(LiveSession {
            id: id.clone(),
            started,
            target,
            function: function.clone(),
            grant: grant.clone(),
            window_end: *window_end,
            login: login.clone(),
            recording,
            handle,
            upstream: OnceCell::new(),
            tasks: Mutex::new(Vec::new()),
            interactive: Mutex::new(Vec::new()),
            close_tx,
            closed: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            permits: std::sync::OnceLock::new(),
        });
        ctx.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live.clone());
        tokio::spawn(supervise(ctx.clone(), live.clone(), close_rx));
        Ok(live)
    }

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

    /// Records what the vendor's certificate permits (once; later calls change nothing).
    pub fn set_permits(&self, p: Permits) {
        let _ = self.permits.set(p);
    }

    /// What the vendor's certificate permits; nothing if the front door never said.
    pub fn permits(&self) -> Permits {
        self.permits.get().copied().unwrap_or(Permits::NONE)
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
    pub async fn upstream(&self, ctx: &Ctx) -> Result<Arc<Upstream>, String> {
        self.upstream
            .get_or_init(|| async {
                let device = match approvals::store::deadline(ctx.store.device(&self.target.site, &self.target.device)).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return Err(format!("device {}/{} no longer exists", self.target.site, self.target.device)),
                    Err(e) => {
                        warn!(session = %self.id, error = %e, "device lookup: control plane unavailable");
                        return Err(crate::frontdoor::OUTAGE.to_owned());
                    }
                };
                match upstream::connect(ctx.upstream_config.clone(), &device, &self.login).await {
                    Ok((h, mut ended)) => {
                        // The device going away ends the session, named for what happened.
                        let close = self.close_tx.clone();
                        tokio::spawn(async move {
                            let end = ended.wait_for(Option::is_some).await.ok().and_then(|e| *e);
                            let reason = match end {
                                Some(upstream::DeviceEnd::StoppedAnswering) => EndReason::DeviceStoppedAnswering,
                                _ => EndReason::DeviceDisconnected,
                            };
                            let _ = close.send(reason);
                        });
                        Ok(Arc::new(h))
                    }
                    Err(e) => {
                        let event = if matches!(e, UpstreamError::HostKeyMismatch { .. }) { "device.hostkey_mismatch" } else { "device.connect_failed" };
                        ctx.audit(event, json!({"session": self.id, "site": device.site, "device": device.name, "error": e.to_string()})).await;
                        let _ = self.recording.json(Kind::Event, 0, &json!({"event": event, "error": e.to_string()}));
                        // No channel of this session can work: end it, saying why. The channel
                        // that asked is refused with the same words first.
                        let _ = self.close_tx.send(EndReason::DeviceUnreachable(e.to_string()));
                        Err(e.to_string())
                    }
                }
            })
            .await
            .clone()
    }

    /// Writes a line to the vendor's terminal(s) on stderr.
    pub async fn notice(&self, text: &str) {
        let channels = self
            .interactive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let line = format!("\r\npostern: {text}\r\n");
        for ch in channels {
            let send = self.handle.extended_data(ch, 1, line.clone().into_bytes());
            let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        }
        let _ = self
            .recording
            .json(Kind::Event, 0, &json!({"event": "notice", "text": text}));
    }
}

fn instant_at(unix: i64) -> tokio::time::Instant {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let delta = (unix * 1000 - now_ms).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(delta)
}

async fn supervise(
    ctx: Arc<Ctx>,
    live: Arc<LiveSession>,
    mut close_rx: mpsc::UnboundedReceiver<EndReason>,
) {
    let end = instant_at(live.window_end);
    let warn_at = instant_at(live.window_end - ctx.warn_before);
    let mut warned = live.window_end - ctx.warn_before <= now();
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        tokio::select! {
            _ = flush.tick() => {
                if let Err(e) = live.recording.flush() {
                    break EndReason::Said(format!("the recording cannot be written ({e}); closing"));
                }
            }
            _ = tokio::time::sleep_until(warn_at), if !warned => {
                warned = true;
                let mins = ((live.window_end - now()) as f64 / 60.0).ceil() as i64;
                live.notice(&format!("this session closes at {} (in {mins} minute{})", fmt_time(live.window_end), if mins == 1 { "" } else { "s" })).await;
            }
            _ = tokio::time::sleep_until(end) => break EndReason::Said(format!("the access window ended at {}", fmt_time(live.window_end))),
            r = close_rx.recv() => break r.unwrap_or_else(|| EndReason::Said("session closed".into())),
        }
    };
    finish(&ctx, &live, &reason).await;
}

/// Closes the session for `reason`. Runs once.
///
/// Evidence first, database last: the recording is sealed and `session.end`/`session.seal` are
/// in the audit log before the database is asked anything; then the end is journaled on local
/// disk (see [`crate::journal`]) and the session leaves the live set, so a shutdown waiting for
/// live sessions never waits on the database; the database write comes last, and if it fails the
/// journal's drain task retries it until the database has it.
async fn finish(ctx: &Ctx, live: &LiveSession, why: &EndReason) {
    if live.closed.swap(true, Ordering::SeqCst) {
        return;
    }
    let reason = why.reason().to_owned();
    info!(session = %live.id, reason, "closing session");
    let vendor_gone = *why == EndReason::VendorDisconnected;
    let tasks: Vec<AbortHandle> = live
        .tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    if vendor_gone {
        // Channel tasks end by themselves once the vendor's connection is gone, writing their
        // closing records (byte counts, transfers); give them a moment, then stop what remains.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while tasks.iter().any(|t| !t.is_finished()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        // The broker ends it: stop the device's output first, so the reason is not stuck behind
        // queued data, then tell the vendor and disconnect; the channels close last.
        live.stop.send_replace(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = live.recording.json(
            Kind::Event,
            0,
            &json!({"event": "channels_stopped", "reason": reason}),
        );
        let line = why.vendor_line();
        live.notice(&line).await;
        let bye = live.handle.disconnect(
            russh::Disconnect::ByApplication,
            format!("postern: {line}"),
            String::new(),
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
    }
    for t in tasks {
        t.abort();
    }
    if let Some(Ok(up)) = live.upstream.get() {
        let up = up.clone();
        tokio::spawn(async move {
            let _ = up
                .disconnect(russh::Disconnect::ByApplication, "session closed", "")
                .await;
        });
    }
    let ended = now();
    // The seal binds the session's metadata and where the audit log stood (seal v2).
    let head = recorder::last_record(ctx.audit.path()).ok().flatten();
    let meta = recorder::SealMeta {
        node: ctx.node.clone(),
        vendor: live.target.vendor.clone(),
        site: live.target.site.clone(),
        device: live.target.device.clone(),
        function: live.function.clone(),
        grant: live.grant.clone(),
        started: live.started,
        ended,
        key_id: ctx.seal.public().id(),
        sealed_at: now(),
        audit_head_seq: head.as_ref().map(|r| r.seq),
        audit_head_hash: head.as_ref().map(|r| hex::encode(r.hash)),
    };
    let sealed = live.recording.finish(
        &json!({"reason": reason, "ended": fmt_time(ended)}),
        &ctx.seal,
        meta,
    );
    let (records, hash, seal) = match sealed {
        Ok((seal, n, h)) => (n as i64, hex::encode(h), Some(seal)),
        Err(e) => {
            // Fail loudly to the operator; the recording keeps what was flushed before.
            tracing::error!(session = %live.id, error = %e, "recording could not be sealed");
            ctx.audit(
                "recording.failed",
                json!({"session": live.id, "error": e.to_string()}),
            )
            .await;
            (-1, String::new(), None)
        }
    };
    ctx.audit(
        "session.end",
        json!({"session": live.id, "vendor": live.target.vendor, "site": live.target.site, "device": live.target.device,
               "reason": reason, "ended": fmt_time(ended), "records": records, "final_hash": hash}),
    )
    .await;
    // The seal also goes into the chained audit log, so deleting or swapping a whole recording
    // cannot make it disappear.
    if let Some(seal) = &seal {
        let fields = json!({"session": live.id, "sealed_records": seal.records, "sealed_hash": seal.final_hash, "key": seal.key, "signature": seal.signature});
        ctx.audit("session.seal", fields).await;
    }
    let end = crate::journal::SessionEnd {
        session: live.id.clone(),
        reason: reason.clone(),
        ended,
        records: seal.as_ref().map(|_| records),
        final_hash: seal.as_ref().map(|_| hash.clone()),
    };
    // fsync off the runtime's threads, as the audit log's appends are.
    let written = {
        let (journal, end) = (ctx.journal.clone(), end.clone());
        tokio::task::spawn_blocking(move || journal.write(&end)).await
    };
    let journaled = match written {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(session = %live.id, error = %e, "could not journal the session end");
            false
        }
        Err(e) => {
            tracing::error!(session = %live.id, error = %e, "could not journal the session end");
            false
        }
    };
    ctx.live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&live.id);
    if !crate::journal::apply(&ctx.store, &ctx.recordings, &ctx.journal, &end).await {
        if journaled {
            ctx.journal.wake();
        } else {
            // Neither the journal nor the database has it: the audit log does, and the next
            // start marks the session as cut short.
            warn!(session = %live.id, "session end is only in the audit log");
        }
    }
}

/// Polls the database's change counter and re-checks live sessions when it moves, so that a
/// revocation, disable or kill made by any process on any node closes sessions within a second.
/// If the control plane has not answered for [`CONTROL_PLANE_GRACE`] (each check gives up after
/// a second, so a hung database counts like a dead one), sessions close: no control plane, no
/// access.
pub async fn watch_revocations(ctx: Arc<Ctx>) {
    let mut last = None;
    let mut last_ok = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checked = tokio::time::timeout(Duration::from_secs(1), ctx.store.revision()).await;
        match checked {
            Ok(Ok(rev)) => {
                last_ok = tokio::time::Instant::now();
                if last != Some(rev) {
                    last = Some(rev);
                    recheck(&ctx).await;
                }
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within a second".to_owned(),
                };
                if last_ok.elapsed() > CONTROL_PLANE_GRACE {
                    let live = ctx.live_sessions();
                    if !live.is_empty() {
                        warn!(error = %why, sessions = live.len(), "control plane unreachable; closing live sessions");
                    }
                    for s in live {
                        s.request_close(EndReason::ControlPlaneUnreachable);
                    }
                }
            }
        }
    }
}

/// How long live sessions outlast an unreachable control plane.
pub const CONTROL_PLANE_GRACE: Duration = Duration::from_secs(5);

async fn recheck(ctx: &Ctx) {
    let live = ctx.live_sessions();
    if live.is_empty() {
        return;
    }
    match approvals::store::deadline(ctx.store.kill_requests(&ctx.node)).await {
        Ok(ids) => {
            for s in live.iter().filter(|s| ids.contains(&s.id)) {
                ctx.audit(
                    "session.kill",
                    json!({"session": s.id, "vendor": s.target.vendor}),
                )
                .await;
                s.request_close("this session was terminated by an operator");
            }
        }
        Err(e) => warn!(error = %e, "could not read kill requests"),
    }
    for s in live {
        let req = s.request(None);
        match PolicyGate::new(&ctx.store).check(&req).await {
            Ok(_) => {}
            Err(Refusal::Deny(reason)) => {
                ctx.audit("session.revoked", json!({"session": s.id, "vendor": s.target.vendor, "reason": reason.to_string()})).await;
                s.request_close(reason.to_string());
            }
            Err(Refusal::Unavailable(e)) => warn!(error = %e, "could not re-check session"),
        }
    }
}

/// Called when the vendor's connection ends, whatever the reason.
pub async fn connection_ended(live: Option<Arc<LiveSession>>) {
    if let Some(live) = live {
        live.request_close(EndReason::VendorDisconnected);
    }
}
