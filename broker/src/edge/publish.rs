//! The central keeps each connected edge holding its current signed policy bundle
//! ([`approvals::bundle`]): after the edge announces its box key on a new link, whenever the
//! database's change counter moves (grants, revocations, disables, kills), and every
//! [`SWEEP_EVERY`] anyway (for changes that do not move it, such as a new device). A bundle's
//! version goes up only when its contents change; an edge already holding the current version is
//! sent nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use approvals::audit::AuditEvent;
use approvals::store::PolicyInputs;
use serde_json::json;

use super::hub::{EdgeHub, Link};
use super::wire::{self, Message};

/// A full round even when the change counter did not move.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often the change counter is read.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("control plane: {0}")]
    Store(#[from] approvals::StoreError),
    #[error("sealing the bundle: {0}")]
    Bundle(#[from] approvals::bundle::BundleError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("the edge refused version {version}: {reason}")]
    Refused { version: i64, reason: String },
}

impl EdgeHub {
    /// Runs publishing rounds for the links this node holds, until the process ends.
    pub(super) async fn keep_publishing(self: Arc<Self>) {
        let mut last = None;
        let mut swept = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            let (rev, changed_ms) = match self.store.revision_stamp().await {
                Ok((rev, changed_ms)) => (Some(rev), changed_ms),
                Err(e) => {
                    tracing::debug!(error = %e, "edge policy: change counter unreadable");
                    continue;
                }
            };
            if rev == last && swept.elapsed() < SWEEP_EVERY {
                continue;
            }
            // A round for a change measures its propagation; a periodic sweep, or the first
            // round after the node starts (the change may be long past), does not.
            let changed = (last.is_some() && rev != last).then_some(changed_ms);
            last = rev;
            swept = tokio::time::Instant::now();
            self.publish_round(None, changed).await;
        }
    }

    /// Publishes to `only` that edge, or to every link this node holds. `changed_ms`: the
    /// committing time of the change this round carries, if it is for one (Unix ms).
    pub(super) async fn publish_round(&self, only: Option<&str>, changed_ms: Option<i64>) {
        let links: Vec<(String, Arc<Link>)> = (self.links.lock())
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, link)| (name.clone(), link.clone()))
            .collect();
        if links.is_empty() {
            return;
        }
        let now = approvals::time::now();
        let inputs = match self.store.policy_inputs(now, self.offline_grace).await {
            Ok(inputs) => inputs,
            Err(e) => {
                tracing::warn!(error = %e, "edge policy: inputs unreadable; trying again");
                return;
            }
        };
        for (edge, link) in links {
            if let Err(e) = self.publish_to(&inputs, &edge, &link, changed_ms).await {
                tracing::warn!(%edge, error = %e, "edge policy not delivered");
                if let PublishError::Refused { version, reason } = &e {
                    self.audit(
                        AuditEvent::EdgePolicyRefused,
                        json!({"edge": edge, "version": version, "reason": reason, "by": "edge"}),
                    );
                }
            }
        }
    }

    /// Sends `edge` its current bundle unless it holds it already.
    async fn publish_to(
        &self,
        inputs: &PolicyInputs,
        edge: &str,
        link: &Link,
        changed_ms: Option<i64>,
    ) -> Result<(), PublishError> {
        // Made and sent under the link's lock: a bundle made later is sent later.
        let _one_at_a_time = link.publishing.lock().await;
        if let Some(ms) = changed_ms.filter(|ms| *ms > 0) {
            // The oldest change not held yet is the one measured.
            let unheld = &link.change_unheld_ms;
            let _ = unheld.compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
        }
        let Some(box_key) = self.store.edge_box_key(edge).await? else {
            // Not announced yet: its first bundle follows the announcement.
            return Ok(());
        };
        let sites = self.store.sites_of_edge(edge).await?;
        let source = self.store.bundle_source(inputs, &sites).await?;
        let state = (self.store)
            .advance_edge_policy(edge, &source.digest(), inputs.now)
            .await?;
        if link.policy_held.load(Ordering::Relaxed) == state.version {
            // The bundle made after the change is one the edge holds: the change was not its.
            link.change_unheld_ms.store(0, Ordering::Relaxed);
            return Ok(());
        }
        let issued = state.issued.unwrap_or(inputs.now);
        let bundle = source.seal(edge, state.version, issued, &box_key)?;
        let signed = self.ca.signer().sign(&bundle);
        let mut s = self.stream(link).await?;
        wire::write(&mut s, &Message::Policy { bundle: signed }).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), wire::read(&mut s))
            .await
            .map_err(|_| {
                wire::WireError::Io(std::io::Error::other("no answer to the policy bundle"))
            })?;
        wire::finish(&mut s).await;
        match reply? {
            Message::PolicyHeld { version } => {
                link.policy_held.store(version, Ordering::Relaxed);
                let now = approvals::time::now();
                self.store.edge_policy_acked(edge, version, now).await?;
                let changed_ms = link.change_unheld_ms.swap(0, Ordering::Relaxed);
                if changed_ms > 0 {
                    let at_ms = chrono::Utc::now().timestamp_millis();
                    let kind = approvals::store::SloKind::EdgePropagation;
                    let sampled = (self.store).record_sample(kind, at_ms, at_ms - changed_ms, edge);
                    if let Err(e) = approvals::store::deadline(sampled).await {
                        tracing::warn!(%edge, error = %e, "edge propagation not recorded");
                    }
                }
                self.audit(
                    AuditEvent::EdgePolicy,
                    json!({"edge": edge, "version": version, "issued": issued, "node": self.node,
                           "vendors": bundle.vendors.len(), "grants": bundle.grants.len(),
                           "devices": bundle.devices.len()}),
                );
                Ok(())
            }
            Message::PolicyRefused { reason } => Err(PublishError::Refused {
                version: state.version,
                reason,
            }),
            other => Err(wire::WireError::Unexpected(other.kind()).into()),
        }
    }
}
