//! The central's side of buffered evidence: a session recorded at an edge's site node arrives on
//! a stream of its own (its row, the site node's keyring, then the recording's bytes). It is taken
//! only after the same checks `postern verify` makes (the hash chain; the seal against the site
//! node's keyring under the central's pinned root; the row against the seal), then listed,
//! searchable, replayable and verifiable like a session recorded here, with its origin
//! (`node = edge-NAME`). A shipment that fails is refused, audited, and kept aside in
//! `DATA/edge-evidence/quarantine/EDGE/` for investigation. Shipping the same session again is
//! harmless (idempotent).

use std::path::{Path, PathBuf};

use approvals::audit::AuditEvent;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::DuplexStream as StreamHandle;

use super::hub::EdgeHub;
use super::wire::{self, Message, ShippedSession};

#[derive(Debug, thiserror::Error)]
enum ShipError {
    /// The stream broke: the edge ships it again on its next link.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// What an edge sends for one session (the recording's bytes follow on the stream).
pub(super) struct Shipment {
    pub(super) session: ShippedSession,
    pub(super) breakglass: Option<approvals::BreakGlass>,
    pub(super) keyring: String,
    pub(super) size: u64,
}

/// Where shipments wait while they are checked, and where refused ones are kept.
fn evidence_dir(data: &crate::config::DataDir) -> PathBuf {
    data.root.join("edge-evidence")
}

impl EdgeHub {
    /// A shipment from `edge`: checked, then kept or refused; the edge is told which.
    pub(super) async fn receive(&self, edge: &str, shipment: Shipment, mut stream: StreamHandle) {
        let id = shipment.session.id.clone();
        let reply = match self.take(edge, &shipment, &mut stream).await {
            Ok(()) => Message::Shipped { id },
            Err(ShipError::Refused(reason)) => Message::ShipRefused { id, reason },
            Err(ShipError::Io(e)) => {
                tracing::warn!(%edge, session = %id, error = %e, "edge evidence: shipment broke off");
                return;
            }
        };
        let _ = wire::write(&mut stream, &reply).await;
        wire::finish(&mut stream).await;
    }

    async fn take(
        &self,
        edge: &str,
        shipment: &Shipment,
        stream: &mut StreamHandle,
    ) -> Result<(), ShipError> {
        let refuse = |why: String| ShipError::Refused(why);
        let node = format!("edge-{edge}");
        let session = shipment.session.session(&node);
        let size = shipment.size;
        let name = safe_name(&session.recording).ok_or_else(|| {
            refuse(format!(
                "recording name {:?} is not a file name",
                session.recording
            ))
        })?;
        let incoming = evidence_dir(&self.data).join("incoming");
        tokio::fs::create_dir_all(&incoming).await?;
        let file = incoming.join(format!("{edge}-{name}"));
        let mut out = tokio::fs::File::create(&file).await?;
        let copied = tokio::io::copy(&mut (&mut *stream).take(size), &mut out).await?;
        if copied != size {
            let _ = tokio::fs::remove_file(&file).await;
            return Err(ShipError::Io(std::io::Error::other(
                "the recording was cut short",
            )));
        }
        out.sync_all().await?;
        drop(out);
        let ring = incoming.join(format!("{edge}.keyring"));
        tokio::fs::write(&ring, &shipment.keyring).await?;
        match self.store.session(&session.id).await {
            Ok(Some(held)) if held.node == node && held.final_hash == session.final_hash => {
                // Shipped before (the acknowledgement was lost): nothing more to do.
                let _ = tokio::fs::remove_file(&file).await;
                return Ok(());
            }
            Ok(Some(_)) => {
                return Err(self.quarantine(
                    edge,
                    &session.id,
                    &file,
                    "another session has this id",
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(ShipError::Io(std::io::Error::other(e.to_string()))),
        }
        let root = crate::keys::load_root_public(&crate::keys::root_pub_path(&self.data)).map_err(
            |e| {
                refuse(format!(
                    "no operator root is pinned here to check seals with: {e}"
                ))
            },
        )?;
        let (f, r, s) = (file.clone(), ring.clone(), session.clone());
        let finding = tokio::task::spawn_blocking(move || {
            approvals::verify::verify_shipped(&f, &r, root, &s)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if !finding.ok {
            return Err(self.quarantine(edge, &session.id, &file, &finding.detail));
        }
        let kept = Kept {
            node: &node,
            session: &session,
            breakglass: shipment.breakglass.as_ref(),
            file: &file,
            ring: &ring,
            name,
            size,
        };
        self.keep(edge, kept).await
    }

    /// Takes a checked shipment: the keyring beside other nodes' ones, the recording beside this
    /// node's, the session row, its command log.
    async fn keep(&self, edge: &str, kept: Kept<'_>) -> Result<(), ShipError> {
        let Kept {
            node,
            session,
            breakglass,
            file,
            ring,
            name,
            size,
        } = kept;
        let recordings = self.data.recordings();
        // Linked, not renamed: a rename would replace a recording already kept under this name
        // (the name comes from the edge), where a link fails.
        match tokio::fs::hard_link(file, recordings.join(name)).await {
            Ok(()) => tokio::fs::remove_file(file).await?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let why = format!("a recording named {name} is already kept here");
                return Err(self.quarantine(edge, &session.id, file, &why));
            }
            Err(e) => return Err(e.into()),
        }
        let keyrings = crate::evidence_store::cache_dir(&self.data).join("keyrings");
        tokio::fs::create_dir_all(&keyrings).await?;
        tokio::fs::rename(ring, keyrings.join(node)).await?;
        let now = approvals::time::now();
        let db = |e: approvals::StoreError| std::io::Error::other(e.to_string());
        if let Some(b) = breakglass {
            // Into the review queue, as an opening made here would be.
            self.store.import_breakglass(b).await.map_err(db)?;
        }
        self.store.import_session(session, now).await.map_err(db)?;
        crate::recording::index_commands(&self.store, &recordings, &session.id).await;
        self.audit(
            AuditEvent::EdgeEvidence,
            json!({"edge": edge, "session": session.id, "vendor": session.vendor, "site": session.site,
                   "device": session.device, "bytes": size, "records": session.records}),
        );
        Ok(())
    }

    /// Keeps a refused shipment aside and says so in the audit log.
    fn quarantine(&self, edge: &str, id: &str, file: &Path, why: &str) -> ShipError {
        let dir = evidence_dir(&self.data).join("quarantine").join(edge);
        let kept = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                let to = dir.join(file.file_name().unwrap_or_default());
                std::fs::rename(file, &to).map(|()| to)
            })
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("(not kept: {e})"));
        tracing::warn!(%edge, session = %id, reason = %why, "edge evidence refused");
        self.audit(
            AuditEvent::EdgeEvidenceRefused,
            json!({"edge": edge, "session": id, "reason": why, "kept": kept}),
        );
        ShipError::Refused(why.to_owned())
    }
}

impl EdgeHub {
    /// A piece of an edge's site-node audit log: appended to the copy kept here
    /// (`DATA/edge-evidence/audit/edge-NAME.log`) only if it starts where that copy ends and the
    /// whole chain still checks; a piece that does not start there is answered with where the
    /// copy ends (the edge resumes from it); one that breaks the chain is refused, kept aside and
    /// audited.
    pub(super) async fn receive_audit(
        &self,
        edge: &str,
        offset: u64,
        size: u64,
        mut stream: StreamHandle,
    ) {
        match self.take_audit(edge, offset, size, &mut stream).await {
            Ok(held) => {
                let _ = wire::write(&mut stream, &Message::AuditHeld { size: held }).await;
            }
            Err(ShipError::Refused(reason)) => {
                let id = "audit log".to_owned();
                let _ = wire::write(&mut stream, &Message::ShipRefused { id, reason }).await;
            }
            Err(ShipError::Io(e)) => {
                tracing::warn!(%edge, error = %e, "edge audit log: shipment broke off");
                return;
            }
        }
        wire::finish(&mut stream).await;
    }

    async fn take_audit(
        &self,
        edge: &str,
        offset: u64,
        size: u64,
        stream: &mut StreamHandle,
    ) -> Result<u64, ShipError> {
        let dir = evidence_dir(&self.data).join("audit");
        tokio::fs::create_dir_all(&dir).await?;
        let copy = dir.join(format!("edge-{edge}.log"));
        let held = tokio::fs::metadata(&copy)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if offset != held {
            return Ok(held);
        }
        let part = dir.join(format!("edge-{edge}.log.part"));
        if held > 0 {
            tokio::fs::copy(&copy, &part).await?;
        } else {
            let _ = tokio::fs::remove_file(&part).await;
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await?;
        let copied = tokio::io::copy(&mut (&mut *stream).take(size), &mut out).await?;
        if copied != size {
            return Err(ShipError::Io(std::io::Error::other(
                "the audit log was cut short",
            )));
        }
        out.sync_all().await?;
        drop(out);
        let p = part.clone();
        let report = tokio::task::spawn_blocking(move || recorder::verify_file(&p))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let broken = match &report {
            Ok(r) if r.problem.is_none() && matches!(r.tail, recorder::Tail::Clean) => None,
            Ok(r) => Some(match &r.problem {
                Some(p) => p.to_string(),
                None => "it ends in the middle of a record".to_owned(),
            }),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = broken {
            let why = format!("the audit log from byte {offset} breaks its chain: {why}");
            return Err(self.quarantine(edge, "audit log", &part, &why));
        }
        tokio::fs::rename(&part, &copy).await?;
        Ok(offset + size)
    }
}

/// A checked shipment, ready to be kept.
struct Kept<'a> {
    node: &'a str,
    session: &'a approvals::Session,
    breakglass: Option<&'a approvals::BreakGlass>,
    file: &'a Path,
    ring: &'a Path,
    name: &'a str,
    size: u64,
}

/// `name` if it is a plain file name (no directories, nothing hidden).
fn safe_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(name)
}
