//! Opening a live session: the recording, the database row, `session.start`, the supervisor.

use approvals::audit::AuditEvent;
use recorder::events;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use approvals::Allowed;
use approvals::time::{fmt_time, now};
use russh::server::Handle;
use tokio::sync::{OnceCell, mpsc};

use super::{Ctx, LiveSession, StartError, supervise::supervise};
use crate::login::Target;
use crate::recording::Recording;

impl LiveSession {
    /// Opens the recording, registers the session in the database and starts its supervisor.
    pub async fn start(
        ctx: &Arc<Ctx>,
        target: Target,
        allowed: &Allowed,
        source: String,
        handle: Option<Handle>,
    ) -> Result<Arc<LiveSession>, StartError> {
        let began = std::time::Instant::now();
        let id = approvals::store::new_evidence_id("s");
        let file = format!("{id}.rec");
        let path = ctx.recordings.join(&file);
        let recording = Recording::create(&path, &id, ctx.metrics.recorded_bytes())
            .map_err(StartError::Recording)?;
        let started = now();
        let row = session_row(ctx, &target, allowed, &id, file, &source, started);
        let meta = events::SessionStart {
            session: id.clone(),
            vendor: target.vendor.clone(),
            site: target.site.clone(),
            device: target.device.clone(),
            function: allowed.function.clone(),
            grant: allowed.grant.clone(),
            window_end: fmt_time(allowed.window_end),
            device_login: allowed.login.clone(),
            source: source.clone(),
            node: ctx.node.clone(),
        };
        register(ctx, &recording, &path, &row, &meta).await?;
        // The audit entry carries the same fields as the recording's first record.
        let fields = serde_json::to_value(&meta).unwrap_or_default();
        if !ctx.audit(AuditEvent::SessionStart, fields).await {
            return Err(StartError::Audit);
        }
        let (close_tx, close_rx) = mpsc::unbounded_channel();
        let live = Arc::new(LiveSession {
            id: id.clone(),
            started,
            target,
            function: allowed.function.clone(),
            grant: allowed.grant.clone(),
            limits: tokio::sync::watch::Sender::new(super::Limits {
                window_end: allowed.window_end,
                contract_end: allowed.contract_end,
            }),
            channels: tokio::sync::watch::Sender::new(None),
            login: allowed.login.clone(),
            recording,
            handle,
            upstream: OnceCell::new(),
            tasks: Mutex::new(Vec::new()),
            interactive: Mutex::new(Vec::new()),
            close_tx,
            closed: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            permits: std::sync::OnceLock::new(),
            began,
            revoked_ms: Default::default(),
        });
        ctx.metrics.session_started();
        ctx.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, live.clone());
        tokio::spawn(supervise(ctx.clone(), live.clone(), close_rx));
        Ok(live)
    }
}

/// The session's row as the database registers it at the start.
fn session_row(
    ctx: &Ctx,
    target: &Target,
    allowed: &Allowed,
    id: &str,
    file: String,
    source: &str,
    started: i64,
) -> approvals::Session {
    approvals::Session {
        id: id.to_owned(),
        vendor: target.vendor.clone(),
        site: target.site.clone(),
        device: target.device.clone(),
        function: allowed.function.clone(),
        grant_id: allowed.grant.clone(),
        node: ctx.node.clone(),
        source: source.to_owned(),
        recording: file,
        started,
        ended: None,
        end_reason: None,
        kill_requested: false,
        records: None,
        final_hash: None,
        breakglass: None,
    }
}

/// Writes the recording's first record and registers the session in the database.
///
/// A session that never got registered leaves no recording behind: `verify` reports a recording
/// without a session as planted or orphaned.
async fn register(
    ctx: &Ctx,
    recording: &Recording,
    path: &Path,
    row: &approvals::Session,
    meta: &events::SessionStart,
) -> Result<(), StartError> {
    let registered = write_and_register(ctx, recording, row, meta).await;
    if registered.is_err() {
        let _ = std::fs::remove_file(path);
    }
    registered
}

async fn write_and_register(
    ctx: &Ctx,
    recording: &Recording,
    row: &approvals::Session,
    meta: &events::SessionStart,
) -> Result<(), StartError> {
    recording.write(0, meta).map_err(StartError::Recording)?;
    recording.flush().map_err(StartError::Recording)?;
    approvals::store::deadline(ctx.store.start_session(row))
        .await
        .map_err(StartError::Register)
}
