//! The edge's side of buffered evidence: sessions its site node recorded wait on the edge's disk
//! (the site node's `recordings/` and store) and are shipped, oldest first, whenever the link is
//! up: one stream per session with its row, the site node's keyring and the recording's bytes. A
//! session counts as shipped only when the central says it checked and kept it; a broken link
//! leaves it for the next one (the central takes a repeated shipment as the same). A shipment the
//! central refused stays here too, marked, and is not sent again.

use std::time::Duration;

use approvals::audit::AuditEvent;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_yamux::Control;

use super::agent::Site;
use super::wire::{self, Message, ShippedSession};

/// How often the backlog is looked at when there is nothing to ship.
const IDLE: Duration = Duration::from_secs(2);

/// Ships until the link ends (the caller aborts this task with it).
pub(super) async fn ship(mut control: Control, site: Site, audit: approvals::AuditLog) {
    let mut totp_reported = Vec::new();
    loop {
        report_totp(&mut control, &site, &mut totp_reported).await;
        if let Err(e) = ship_audit(&mut control, &site).await {
            tracing::warn!(error = %e, "edge audit log: not shipped; next link");
            return;
        }
        report_backlog(&mut control, &site).await;
        let batch = match site.store.recordings_to_store(&site.node, 20).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "edge evidence: the site store is unreadable");
                tokio::time::sleep(IDLE).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        for (id, _) in batch {
            match ship_one(&mut control, &site, &id).await {
                Ok(refused) => {
                    if let Some(reason) = &refused {
                        tracing::warn!(session = %id, %reason, "edge evidence refused by the central");
                        let fields = json!({"session": id, "reason": reason, "by": "central"});
                        if let Err(e) = audit.record(AuditEvent::EdgeEvidenceRefused, fields) {
                            tracing::warn!(error = %e, "edge audit log write failed");
                        }
                    }
                    let now = approvals::time::now();
                    if let Err(e) = site.store.recording_stored(&id, now).await {
                        tracing::warn!(session = %id, error = %e, "edge evidence: shipped, not marked");
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "edge evidence: not shipped; next link");
                    return;
                }
            }
        }
    }
}

/// Ships one session; `Ok(Some(reason))` if the central refused it.
async fn ship_one(
    control: &mut Control,
    site: &Site,
    id: &str,
) -> Result<Option<String>, wire::WireError> {
    let io = |e: String| wire::WireError::Io(std::io::Error::other(e));
    let session = (site.store.session(id).await)
        .map_err(|e| io(e.to_string()))?
        .ok_or_else(|| io(format!("session {id} is gone from the site store")))?;
    let path = site.data.recordings().join(&session.recording);
    let size = tokio::fs::metadata(&path).await?.len();
    let keyring = tokio::fs::read_to_string(crate::keys::keyring_path(&site.data)).await?;
    let stream = control.open_stream().await.map_err(|e| io(e.to_string()))?;
    // Pumped by a task of its own: a recording is MiB, more than one window in flight.
    let mut stream = super::hub::pumped(stream);
    let breakglass = match &session.breakglass {
        Some(b) => (site.store.breakglass(b).await)
            .map_err(|e| io(e.to_string()))?
            .map(Box::new),
        None => None,
    };
    let ship = Message::Ship {
        session: Box::new(ShippedSession::of(&session)),
        breakglass,
        keyring,
        size,
    };
    wire::write(&mut stream, &ship).await?;
    let mut file = tokio::fs::File::open(&path).await?;
    let sent = tokio::io::copy(&mut file, &mut stream).await?;
    if sent != size {
        return Err(io(format!(
            "{} changed while it was shipped",
            path.display()
        )));
    }
    stream.flush().await?;
    let reply = tokio::time::timeout(Duration::from_secs(60), wire::read(&mut stream))
        .await
        .map_err(|_| io("the central did not answer the shipment".into()))?;
    wire::finish(&mut stream).await;
    match reply? {
        Message::Shipped { .. } => Ok(None),
        Message::ShipRefused { reason, .. } => Ok(Some(reason)),
        other => Err(wire::WireError::Unexpected(other.kind())),
    }
}

/// Ships the site node's audit log past what the central holds, up to its last whole record.
async fn ship_audit(control: &mut Control, site: &Site) -> Result<(), wire::WireError> {
    use std::sync::atomic::Ordering;
    let path = site.data.audit_log();
    let p = path.clone();
    let report = tokio::task::spawn_blocking(move || recorder::verify_file(&p))
        .await
        .map_err(|e| wire::WireError::Io(std::io::Error::other(e.to_string())))?;
    let end = match report {
        Ok(r) => match r.tail {
            recorder::Tail::Torn { offset, .. } => offset,
            recorder::Tail::Clean => tokio::fs::metadata(&path).await?.len(),
        },
        Err(_) => return Ok(()),
    };
    let offset = site.audit_shipped.load(Ordering::Relaxed);
    if end <= offset {
        return Ok(());
    }
    let stream = control
        .open_stream()
        .await
        .map_err(|e| wire::WireError::Io(std::io::Error::other(e.to_string())))?;
    let mut stream = super::hub::pumped(stream);
    let size = end - offset;
    wire::write(&mut stream, &Message::AuditShip { offset, size }).await?;
    let mut file = tokio::fs::File::open(&path).await?;
    tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset)).await?;
    tokio::io::copy(&mut tokio::io::AsyncReadExt::take(file, size), &mut stream).await?;
    stream.flush().await?;
    let reply = wire::read(&mut stream).await;
    wire::finish(&mut stream).await;
    match reply? {
        Message::AuditHeld { size } => site.audit_shipped.store(size, Ordering::Relaxed),
        Message::ShipRefused { reason, .. } => {
            // Kept aside and audited at the central: sending it again would only repeat that.
            tracing::warn!(%reason, "edge audit log refused by the central; not sent again");
            site.audit_shipped.store(u64::MAX, Ordering::Relaxed);
        }
        other => return Err(wire::WireError::Unexpected(other.kind())),
    }
    Ok(())
}

/// Bytes of the recordings not shipped yet (live sessions included), and how many.
async fn backlog(site: &Site) -> Option<(i64, i64)> {
    let names = site.store.unstored_recordings(&site.node).await.ok()?;
    let mut bytes = 0i64;
    for name in &names {
        if let Ok(m) = tokio::fs::metadata(site.data.recordings().join(name)).await {
            bytes += m.len() as i64;
        }
    }
    Some((names.len() as i64, bytes))
}

/// Keeps the site node's evidence buffer bounded, link or no link: over `max` bytes waiting to
/// be shipped, new sessions are refused (fail-secure) until shipping drains it. Each change is
/// told on the console and in the edge's audit log (and the central sees the backlog in
/// `edge list` once linked).
pub(super) async fn bound_buffer(site: Site, max: i64, audit: approvals::AuditLog) {
    let mut full = None;
    loop {
        if let Some((sessions, bytes)) = backlog(&site).await {
            let now_full = bytes >= max;
            if full != Some(now_full) {
                match site.store.set_evidence_buffer_full(now_full).await {
                    Ok(()) => {
                        if full.is_some() || now_full {
                            let state = if now_full {
                                "full: new sessions refused"
                            } else {
                                "below its limit again"
                            };
                            println!(
                                "postern edge: evidence buffer {state} ({bytes} of {max} bytes, {sessions} sessions)"
                            );
                            let fields = serde_json::json!({"full": now_full, "bytes": bytes, "max": max, "sessions": sessions});
                            if let Err(e) = audit.record(AuditEvent::EdgeBufferFull, fields) {
                                tracing::warn!(error = %e, "edge audit log write failed");
                            }
                        }
                        full = Some(now_full);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "edge: evidence buffer state not recorded")
                    }
                }
            }
        }
        tokio::time::sleep(IDLE).await;
    }
}

/// Tells the central which TOTP steps vendors used here: a code used at the site, while the link
/// was down too, is spent at the central as soon as the link is up.
async fn report_totp(control: &mut Control, site: &Site, last: &mut Vec<(String, i64)>) {
    let Ok(steps) = site.store.totp_steps().await else {
        return;
    };
    if steps == *last {
        return;
    }
    let Ok(mut stream) = control.open_stream().await else {
        return;
    };
    let sent = wire::write(
        &mut stream,
        &Message::TotpSteps {
            steps: steps.clone(),
        },
    )
    .await;
    wire::finish(&mut stream).await;
    if sent.is_ok() {
        *last = steps;
    }
}

/// Tells the central how much evidence waits here (sessions not shipped, live ones included).
async fn report_backlog(control: &mut Control, site: &Site) {
    let Some((sessions, bytes)) = backlog(site).await else {
        return;
    };
    let Ok(mut stream) = control.open_stream().await else {
        return;
    };
    let report = Message::Backlog { sessions, bytes };
    let _ = wire::write(&mut stream, &report).await;
    wire::finish(&mut stream).await;
}
