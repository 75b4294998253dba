//! The central side of edges: one link per connected edge (a TLS connection carrying yamux
//! streams; the listener that makes them is in [`super::listener`]), their liveness and
//! revocation, and [`EdgeHub::route`], which gives a session an upstream stream to a device
//! through the edge serving its site.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::audit::AuditEvent;
use approvals::store::{EDGE_SEEN_EVERY, Edge};
use approvals::{Actions, AuditLog, Store};

use serde_json::json;
use tokio_yamux::{Control, StreamHandle};

use super::ca::EdgeCa;
use super::wire::{self, EdgeDevice, Message};

/// How long the edge may take to connect a device stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The yamux settings of a link: pings every 5 s, so a link that went silent is noticed; a
/// stream's window may grow to 4 MiB (the 256 KiB default caps a stream at 5 MiB/s over a 50 ms
/// link).
pub fn yamux_config() -> tokio_yamux::Config {
    tokio_yamux::Config {
        keepalive_interval: Duration::from_secs(5),
        max_stream_window_size: STREAM_WINDOW,
        ..Default::default()
    }
}

const STREAM_WINDOW: u32 = 4 << 20;
/// Copy buffers for a device stream: large enough that a bulk transfer is not cut into many
/// small frames.
pub const COPY_BUFFER: usize = 64 * 1024;

/// A yamux stream behind a pipe that one task pumps both ways. `tokio-yamux` handles a window
/// update for a stream only when the stream is read (or written again): a task that only writes
/// (as an SSH client uploading does) would wait for window forever. The pump always has a read
/// pending, so window updates wake it and the writes go on.
pub fn pumped(mut stream: StreamHandle) -> tokio::io::DuplexStream {
    let (near, mut far) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut stream,
            &mut far,
            COPY_BUFFER,
            COPY_BUFFER,
        )
        .await;
    });
    near
}

/// Why a device behind an edge cannot be reached now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("site {site} is offline since {since} (its edge lost contact)")]
    Offline { site: String, since: String },
    #[error("site {site} is offline: its edge {edge} is revoked")]
    Revoked { site: String, edge: String },
    #[error("site {site}'s edge {edge} is connected to node {node}, not this one")]
    Elsewhere {
        site: String,
        edge: String,
        node: String,
    },
    #[error("the edge of site {site} refused: {reason}")]
    Refused { site: String, reason: String },
    #[error("the edge of site {site} did not answer: {error}")]
    Link { site: String, error: String },
    #[error("edge lookup: control plane unavailable ({0})")]
    Store(String),
}

pub(super) struct Link {
    pub(super) control: Control,
    /// The devices last sent to the edge.
    pub(super) devices: Mutex<HashSet<EdgeDevice>>,
    pub(super) cut: tokio::sync::Notify,
    /// Why the link was cut, for the audit record.
    pub(super) why: Mutex<String>,
    /// The policy bundle version the edge confirmed holding on this link (0: none yet).
    pub(super) policy_held: std::sync::atomic::AtomicI64,
    /// When the oldest policy change the edge does not hold yet was committed (Unix ms; 0:
    /// none): its propagation is measured when the edge confirms a bundle made after it, however
    /// many tries that takes.
    pub(super) change_unheld_ms: std::sync::atomic::AtomicI64,
    /// One bundle at a time on a link, in version order.
    pub(super) publishing: tokio::sync::Mutex<()>,
}

impl Link {
    pub(super) fn cut(&self, why: &str) {
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why.to_owned();
        self.cut.notify_one();
    }
}

/// Connected edges on this node.
pub struct EdgeHub {
    pub(super) store: Store,
    pub(super) audit: AuditLog,
    pub(super) actions: Actions,
    pub(super) node: String,
    pub(super) ca: Arc<EdgeCa>,
    /// This node's data directory: shipped evidence lands in it.
    pub(super) data: crate::config::DataDir,
    /// Seconds edges go on deciding alone (`edge_offline_grace`), told in their bundles.
    pub(super) offline_grace: i64,
    pub(super) links: Mutex<HashMap<String, Arc<Link>>>,
    /// Refused connections are audited in detail up to a budget per source and in all (a
    /// stranger's flood must not flood the log); the rest are counted into the next detailed one.
    pub(super) refusals: approvals::ratelimit::EventBudget,
    pub(super) suppressed: std::sync::atomic::AtomicU64,
}

fn hhmm(t: Option<i64>) -> String {
    match t {
        Some(t) => chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%H:%M UTC").to_string())
            .unwrap_or_else(|| t.to_string()),
        None => "it joined (never connected)".into(),
    }
}

impl EdgeHub {
    pub fn new(
        store: Store,
        audit: AuditLog,
        actions: Actions,
        node: &str,
        ca: Arc<EdgeCa>,
        data: crate::config::DataDir,
        offline_grace: i64,
    ) -> EdgeHub {
        EdgeHub {
            store,
            audit,
            actions,
            node: node.to_owned(),
            ca,
            data,
            offline_grace,
            links: Mutex::new(HashMap::new()),
            refusals: approvals::ratelimit::EventBudget::new(10, 120),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Audits a refused connection from `peer` (within the budget, see `refusals`).
    pub(super) fn refused(&self, peer: SocketAddr, reason: &str) {
        use std::sync::atomic::Ordering;
        if !self.refusals.allow(peer.ip()) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(remote = %peer, %reason, "edge connection refused (not audited in detail)");
            return;
        }
        let earlier = self.suppressed.swap(0, Ordering::Relaxed);
        self.audit(
            AuditEvent::EdgeRefused,
            json!({"remote": peer.to_string(), "reason": reason, "refused_unrecorded_before": earlier}),
        );
    }

    pub(super) fn audit(&self, event: AuditEvent, fields: serde_json::Value) {
        if let Err(e) = self.audit.record(event, fields) {
            tracing::warn!(error = %e, event = %event, "audit log write failed");
        }
    }

    pub(super) fn link(&self, edge: &str) -> Option<Arc<Link>> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(edge)
            .cloned()
    }

    /// A stream to the device through its site's edge; `Ok(None)`: the site has no edge (connect
    /// directly).
    pub async fn route(
        &self,
        site: &str,
        device: &str,
    ) -> Result<Option<tokio::io::DuplexStream>, RouteError> {
        self.route_to(site, device, None).await
    }

    /// A stream to the device's web UI, served at `addr` (`HOST:PORT`), through its site's edge;
    /// `Ok(None)`: connect directly.
    pub async fn route_web(
        &self,
        site: &str,
        device: &str,
        addr: &str,
    ) -> Result<Option<tokio::io::DuplexStream>, RouteError> {
        self.route_to(site, device, Some(addr)).await
    }

    async fn route_to(
        &self,
        site: &str,
        device: &str,
        web: Option<&str>,
    ) -> Result<Option<tokio::io::DuplexStream>, RouteError> {
        let edge = approvals::store::deadline(self.store.edge_of_site(site))
            .await
            .map_err(|e| RouteError::Store(e.to_string()))?;
        let Some(edge) = edge else {
            return Ok(None);
        };
        if edge.revoked.is_some() {
            return Err(RouteError::Revoked {
                site: site.to_owned(),
                edge: edge.name,
            });
        }
        let Some(link) = self.link(&edge.name) else {
            let now = approvals::time::now();
            return Err(match edge.node.clone() {
                Some(node) if edge.online(now) && node != self.node => RouteError::Elsewhere {
                    site: site.to_owned(),
                    edge: edge.name,
                    node,
                },
                _ => RouteError::Offline {
                    site: site.to_owned(),
                    since: hhmm(edge.last_seen),
                },
            });
        };
        let link_error = |error: String| RouteError::Link {
            site: site.to_owned(),
            error,
        };
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.open(&edge, &link, site, device, web))
            .await
            .map_err(|_| link_error("timed out".into()))?;
        match opened {
            Ok(Ok(stream)) => Ok(Some(pumped(stream))),
            Ok(Err(reason)) => {
                self.audit(
                    AuditEvent::EdgeRouteRefused,
                    json!({"edge": edge.name, "site": site, "device": device, "reason": reason, "by": "edge"}),
                );
                Err(RouteError::Refused {
                    site: site.to_owned(),
                    reason,
                })
            }
            Err(e) => Err(link_error(e.to_string())),
        }
    }

    /// Sends the edge its devices if this one is new to it, then opens the device stream.
    async fn open(
        &self,
        edge: &Edge,
        link: &Link,
        site: &str,
        device: &str,
        web: Option<&str>,
    ) -> Result<Result<StreamHandle, String>, wire::WireError> {
        // A device the edge was not told of yet, or whose web UI it knows at another address:
        // tell it the site's devices now.
        let known = link
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|d| {
                d.site == site && d.device == device && (web.is_none() || d.web.as_deref() == web)
            });
        if !known {
            let devices = self.devices_of(edge).await?;
            let mut s = self.stream(link).await?;
            wire::write(
                &mut s,
                &Message::Devices {
                    devices: devices.clone(),
                },
            )
            .await?;
            wire::read(&mut s).await?;
            wire::finish(&mut s).await;
            *link.devices.lock().unwrap_or_else(|p| p.into_inner()) = devices.into_iter().collect();
        }
        let mut s = self.stream(link).await?;
        wire::write(
            &mut s,
            &match web {
                None => Message::Open {
                    site: site.to_owned(),
                    device: device.to_owned(),
                },
                Some(addr) => Message::OpenWeb {
                    site: site.to_owned(),
                    device: device.to_owned(),
                    addr: addr.to_owned(),
                },
            },
        )
        .await?;
        match wire::read(&mut s).await? {
            Message::Opened => Ok(Ok(s)),
            Message::OpenRefused { reason } => Ok(Err(reason)),
            other => Err(wire::WireError::Unexpected(other.kind())),
        }
    }

    pub(super) async fn stream(&self, link: &Link) -> Result<StreamHandle, wire::WireError> {
        let mut control = link.control.clone();
        control
            .open_stream()
            .await
            .map_err(|e| wire::WireError::Io(std::io::Error::other(e.to_string())))
    }

    pub(super) async fn devices_of(&self, edge: &Edge) -> Result<Vec<EdgeDevice>, wire::WireError> {
        let devices = self
            .store
            .device_addrs_of_edge(&edge.name)
            .await
            .map_err(|e| wire::WireError::Io(std::io::Error::other(e.to_string())))?;
        Ok(devices
            .into_iter()
            .map(|(site, device, addr, url)| EdgeDevice {
                site,
                device,
                addr,
                web: url
                    .and_then(|u| crate::device_web::WebEndpoint::parse(&u).ok())
                    .map(|e| e.authority()),
            })
            .collect())
    }

    /// Every few seconds, one write says all this node's links are up, and one read finds the
    /// revoked edges among them, whose links are cut.
    pub(super) async fn keep_watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(EDGE_SEEN_EVERY as u64));
        loop {
            tick.tick().await;
            let now = approvals::time::now();
            if let Err(e) = self.store.edges_seen_by(&self.node, now).await {
                tracing::warn!(error = %e, "edge liveness not recorded");
            }
            match self.store.revoked_edges_held_by(&self.node).await {
                Ok(revoked) => {
                    for edge in revoked {
                        if let Some(link) = self.link(&edge) {
                            link.cut("the edge was revoked");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "edge revocations not read"),
            }
        }
    }

    /// Closes every link (shutting down) and records them down, so `edge list` does not show
    /// them online until they come back.
    pub async fn close_all(&self) {
        let links: Vec<(String, Arc<Link>)> = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let now = approvals::time::now();
        for (edge, link) in links {
            link.cut("the central is shutting down");
            let _ = self.store.edge_disconnected(&edge, &self.node, now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_yamux::Session;

    /// Bulk data the central writes into a stream reaches the edge whole, with each side's
    /// session driven as the hub and the agent drive theirs.
    #[tokio::test]
    async fn a_stream_carries_bulk_data_from_the_central() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut central = Session::new_server(a, yamux_config());
        let mut edge = Session::new_client(b, yamux_config());
        let mut control = central.control();
        tokio::spawn(async move { while central.next().await.is_some() {} });
        let reader = tokio::spawn(async move {
            let mut stream = edge.next().await.expect("a stream").expect("no error");
            tokio::spawn(async move { while edge.next().await.is_some() {} });
            let mut total = 0usize;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let mut stream = pumped(control.open_stream().await.expect("open"));
        let chunk = vec![7u8; 64 * 1024];
        let sent = async {
            for _ in 0..128 {
                stream.write_all(&chunk).await.expect("write");
            }
            stream.shutdown().await.expect("shutdown");
        };
        tokio::time::timeout(Duration::from_secs(20), sent)
            .await
            .expect("8 MiB written within 20 s");
        let got = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("read within 20 s")
            .expect("reader");
        assert_eq!(got, 128 * 64 * 1024);
    }
}
