//! A live session's supervisor and its one close, and the watch that re-checks live sessions
//! against the control plane.

use approvals::audit::AuditEvent;
use recorder::events;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use approvals::time::{fmt_time, now};
use approvals::{Deny, PolicyGate, Refusal};
use serde_json::json;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::{Ctx, EndReason, Limits, LiveSession};

fn instant_at(unix: i64) -> tokio::time::Instant {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let delta = (unix * 1000 - now_ms).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(delta)
}

pub(super) async fn supervise(
    ctx: Arc<Ctx>,
    live: Arc<LiveSession>,
    mut close_rx: mpsc::UnboundedReceiver<EndReason>,
) {
    let mut limits = live.watch_limits();
    // A session that starts inside the warning period is not warned (its banner says when it
    // ends); one whose end moves is warned again about the new end.
    let first_end = live.ends_at();
    let mut warned_for = (first_end - ctx.warn_before <= now()).then_some(first_end);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        let l = *limits.borrow_and_update();
        let end_at = l.ends_at();
        tokio::select! {
            _ = flush.tick() => {
                if let Err(e) = live.recording.flush() {
                    break EndReason::RecordingFailed(e.to_string());
                }
            }
            _ = tokio::time::sleep_until(instant_at(end_at - ctx.warn_before)), if warned_for != Some(end_at) => {
                warned_for = Some(end_at);
                Box::pin(warn_of_end(&live, &l)).await;
            }
            _ = tokio::time::sleep_until(instant_at(end_at)) => break l.end_reason(&live.target.vendor),
            _ = limits.changed() => {}
            r = close_rx.recv() => break r.unwrap_or_else(|| EndReason::Said("session closed".into())),
        }
    };
    if let EndReason::ContractEnded { at, .. } = &reason {
        let fields = json!({"session": live.id, "vendor": live.target.vendor, "contract_end": fmt_time(*at)});
        ctx.audit(AuditEvent::SessionContractEnded, fields).await;
    }
    // Boxed, like the warning: a waiting supervisor holds only its loop (BENCHMARKS.md §12).
    Box::pin(finish(&ctx, &live, &reason)).await;
    // `--rotate-after-session`: one session, one device credential.
    crate::scheduled_rotation::spawn_after_session(&ctx, &live);
}

/// Tells the vendor when the session closes, and why then.
async fn warn_of_end(live: &LiveSession, limits: &Limits) {
    let end = limits.ends_at();
    let mins = ((end - now()) as f64 / 60.0).ceil().max(0.0) as i64;
    let plural = if mins == 1 { "" } else { "s" };
    let why = if limits.contract_first() {
        format!(": the contract of {} ends then", live.target.vendor)
    } else {
        String::new()
    };
    live.notice(&format!(
        "this session closes at {} (in {mins} minute{plural}){why}",
        fmt_time(end)
    ))
    .await;
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
    info!(session = %live.id, reason = %why.reason(), "closing session");
    stop_channels(live, why).await;
    ctx.metrics.session_ended(why.outcome());
    let propagation = match live.revoked_ms.load(Ordering::SeqCst) {
        0 => None,
        changed_ms => {
            let now_ms = chrono::Utc::now().timestamp_millis();
            Some((now_ms, now_ms - changed_ms))
        }
    };
    if let Some(Ok(up)) = live.upstream.get() {
        let up = up.clone();
        tokio::spawn(async move {
            let _ = up
                .disconnect(russh::Disconnect::ByApplication, "session closed", "")
                .await;
        });
    }
    let ended = now();
    let sealed = seal(ctx, live, &why.reason(), ended).await;
    audit_end(ctx, live, &why.reason(), ended, &sealed).await;
    let end = crate::journal::SessionEnd {
        session: live.id.clone(),
        reason: why.reason().into_owned(),
        ended,
        records: sealed.seal.as_ref().map(|_| sealed.records),
        final_hash: sealed.seal.as_ref().map(|_| sealed.hash.clone()),
    };
    record_end(ctx, live, end).await;
    if let Some((at_ms, millis)) = propagation {
        let kind = approvals::store::SloKind::RevocationPropagation;
        let sampled = ctx.store.record_sample(kind, at_ms, millis, &live.id);
        if let Err(e) = approvals::store::deadline(sampled).await {
            warn!(session = %live.id, error = %e, "revocation propagation not recorded");
        }
    }
}

/// Stops the session's channel tasks; when the broker ends the session, the vendor is told why
/// and disconnected first.
async fn stop_channels(live: &LiveSession, why: &EndReason) {
    let tasks: Vec<AbortHandle> = live
        .tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    if matches!(why, EndReason::VendorDisconnected) {
        // Channel tasks end by themselves once the vendor's connection is gone, writing their
        // closing records (byte counts, transfers); give them a moment, then stop what remains.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while tasks.iter().any(|t| !t.is_finished()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What still moves (a device web answer streaming) stops before the seal.
        live.stop.send_replace(true);
    } else {
        // The broker ends it: stop the device's output first, so the reason is not stuck behind
        // queued data, then tell the vendor and disconnect; the channels close last.
        live.stop.send_replace(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stopped = events::Event::ChannelsStopped {
            reason: why.reason().to_string(),
        };
        let _ = live.recording.write(0, &stopped);
        let line = why.vendor_line();
        live.notice(&line).await;
        if let Some(handle) = &live.handle {
            let bye = handle.disconnect(
                russh::Disconnect::ByApplication,
                format!("postern: {line}"),
                String::new(),
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// The sealed recording: records and final hash as the database keeps them (`-1` and empty
/// when it could not be sealed), and the seal.
struct Sealed {
    records: i64,
    hash: String,
    seal: Option<recorder::Seal>,
}

/// Seals the recording; the seal binds the session's metadata and where the audit log stood
/// (seal v2).
async fn seal(ctx: &Ctx, live: &LiveSession, reason: &str, ended: i64) -> Sealed {
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
        &events::SessionEnd {
            reason: reason.to_string(),
            ended: fmt_time(ended),
        },
        &ctx.seal,
        meta,
    );
    match sealed {
        Ok((seal, n, h)) => Sealed {
            records: n as i64,
            hash: hex::encode(h),
            seal: Some(seal),
        },
        Err(e) => {
            // Fail loudly to the operator; the recording keeps what was flushed before.
            tracing::error!(session = %live.id, error = %e, "recording could not be sealed");
            ctx.audit(
                AuditEvent::RecordingFailed,
                json!({"session": live.id, "error": e.to_string()}),
            )
            .await;
            Sealed {
                records: -1,
                hash: String::new(),
                seal: None,
            }
        }
    }
}

/// Writes `session.end` and, if sealed, `session.seal` to the audit log.
async fn audit_end(ctx: &Ctx, live: &LiveSession, reason: &str, ended: i64, sealed: &Sealed) {
    ctx.audit(
        AuditEvent::SessionEnd,
        json!({"session": live.id, "vendor": live.target.vendor, "site": live.target.site, "device": live.target.device,
               "reason": reason, "ended": fmt_time(ended), "records": sealed.records, "final_hash": sealed.hash}),
    )
    .await;
    // The seal also goes into the chained audit log, so deleting or swapping a whole recording
    // cannot make it disappear.
    if let Some(seal) = &sealed.seal {
        let fields = json!({"session": live.id, "sealed_records": seal.records, "sealed_hash": seal.final_hash, "key": seal.key, "signature": seal.signature});
        ctx.audit(AuditEvent::SessionSeal, fields).await;
    }
}

/// Journals the end, takes the session out of the live set, then tells the database (the
/// journal's drain task retries if it cannot be told now).
async fn record_end(ctx: &Ctx, live: &LiveSession, end: crate::journal::SessionEnd) {
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
        let checked =
            tokio::time::timeout(Duration::from_secs(1), ctx.store.revision_stamp()).await;
        match checked {
            Ok(Ok((rev, changed_ms))) => {
                last_ok = tokio::time::Instant::now();
                if last != Some(rev) {
                    last = Some(rev);
                    recheck(&ctx, changed_ms).await;
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

/// Re-checks the live sessions after the change committed at `changed_ms` (Unix ms).
async fn recheck(ctx: &Ctx, changed_ms: i64) {
    let live = ctx.live_sessions();
    if live.is_empty() {
        return;
    }
    match approvals::store::deadline(ctx.store.kill_requests(&ctx.node)).await {
        Ok(ids) => {
            for s in live.iter().filter(|s| ids.contains(&s.id)) {
                ctx.audit(
                    AuditEvent::SessionKill,
                    json!({"session": s.id, "vendor": s.target.vendor}),
                )
                .await;
                s.revoke(EndReason::Killed, changed_ms);
            }
        }
        Err(e) => warn!(error = %e, "could not read kill requests"),
    }
    let channels = function_channels(ctx).await;
    let mut still = Vec::with_capacity(live.len());
    for s in live {
        if recheck_one(ctx, &s, channels.as_ref(), changed_ms).await {
            still.push(s);
        }
    }
    close_revoked_certificates(ctx, &still, changed_ms).await;
}

/// The channel kinds each function allows now (`None` if they could not be read).
async fn function_channels(ctx: &Ctx) -> Option<HashMap<String, approvals::ChannelSet>> {
    match approvals::store::deadline(ctx.store.functions()).await {
        Ok(fs) => Some(
            fs.into_iter()
                .map(|f| (f.name.clone(), f.channels()))
                .collect(),
        ),
        Err(e) => {
            warn!(error = %e, "could not read functions");
            None
        }
    }
}

/// Closes the sessions whose certificate was revoked (or retired with its CA), on whichever node
/// the revocation was made.
async fn close_revoked_certificates(ctx: &Ctx, live: &[Arc<LiveSession>], changed_ms: i64) {
    let serials: Vec<String> = live
        .iter()
        .filter_map(|s| s.permits().serial.map(|n| n.to_string()))
        .collect();
    if serials.is_empty() {
        return;
    }
    let revoked = match approvals::store::deadline(ctx.store.revoked_among(&serials)).await {
        Ok(r) => r,
        Err(e) => return warn!(error = %e, "could not re-check certificates"),
    };
    for s in live {
        let Some(serial) = s.permits().serial.map(|n| n.to_string()) else {
            continue;
        };
        if revoked.contains(&serial) {
            let reason = format!("certificate serial {serial} has been revoked");
            ctx.audit(AuditEvent::SessionRevoked, json!({"session": s.id, "vendor": s.target.vendor, "reason": reason, "serial": serial})).await;
            s.revoke(EndReason::Revoked(reason), changed_ms);
        }
    }
}

/// Asks the policy again for one live session: a refusal ends it (`false`); otherwise its
/// window, contract end and allowed channels follow the control plane.
async fn recheck_one(
    ctx: &Ctx,
    s: &LiveSession,
    channels: Option<&HashMap<String, approvals::ChannelSet>>,
    changed_ms: i64,
) -> bool {
    let req = s.request(None);
    match PolicyGate::new(&ctx.store).check(&req).await {
        Ok(allowed) => {
            s.update_limits(allowed.window_end, allowed.contract_end);
            if let Some(set) = channels.and_then(|c| c.get(&s.function)) {
                s.update_channels(set.clone());
            }
            true
        }
        Err(Refusal::Deny(Deny::ContractEnded { at })) => {
            // Said as at the contract's end in time (and audited there, once).
            s.request_close(EndReason::ContractEnded {
                vendor: s.target.vendor.clone(),
                at,
            });
            false
        }
        Err(Refusal::Deny(reason)) => {
            ctx.audit(
                AuditEvent::SessionRevoked,
                json!({"session": s.id, "vendor": s.target.vendor, "reason": reason.to_string()}),
            )
            .await;
            s.revoke(EndReason::Revoked(reason.to_string()), changed_ms);
            false
        }
        Err(Refusal::Unavailable(e)) => {
            warn!(error = %e, "could not re-check session");
            true
        }
    }
}

/// Called when the vendor's connection ends, whatever the reason.
pub async fn connection_ended(live: Option<Arc<LiveSession>>) {
    if let Some(live) = live {
        live.request_close(EndReason::VendorDisconnected);
    }
}
