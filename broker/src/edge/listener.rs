//! The central's edge listener: TLS accept, a join for a connection without a certificate, and
//! for one with a certificate the registration check, the welcome, and the link's driver (inbound
//! renewal streams) until it ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::audit::AuditEvent;
use approvals::store::Edge;
use approvals::{Actions, Actor};
use futures::StreamExt;
use serde_json::json;
use tokio::io::DuplexStream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_yamux::{Session, StreamHandle};

use super::ca::EdgeCa;
use super::hub::{EdgeHub, Link, yamux_config};
use super::token::JoinToken;
use super::wire::{self, Message};

/// How long a TLS handshake and the first exchange may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

impl EdgeHub {
    /// Serves the edge listener until it fails.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        let acceptor = TlsAcceptor::from(tls);
        // Links this node held before it last stopped (or crashed) are gone.
        if let Err(e) = self
            .store
            .edges_lost_by(&self.node, approvals::time::now())
            .await
        {
            tracing::warn!(error = %e, "edge link state from the last run not cleared");
        }
        tokio::spawn(self.clone().keep_watch());
        tokio::spawn(self.clone().keep_publishing());
        loop {
            let (tcp, peer) = listener.accept().await?;
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(10))
                    .with_interval(Duration::from_secs(5)),
            );
            let (hub, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move { hub.connection(acceptor, tcp, peer).await });
        }
    }

    async fn connection(self: Arc<Self>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
        let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.refused(peer, &format!("TLS handshake: {e}"));
                return;
            }
            Err(_) => return,
        };
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        match cert {
            None => self.join(tls, peer).await,
            Some(der) => self.link_up(tls, peer, &der).await,
        }
    }

    /// An edge without a certificate may only join: token, CSR, certificate.
    async fn join(&self, mut tls: TlsStream<TcpStream>, peer: SocketAddr) {
        let msg = match tokio::time::timeout(HANDSHAKE, wire::read(&mut tls)).await {
            Ok(Ok(m)) => m,
            _ => return,
        };
        let Message::Join { edge, secret, csr } = msg else {
            let _ = wire::write(
                &mut tls,
                &Message::Refused {
                    reason: "join first".into(),
                },
            )
            .await;
            return;
        };
        let ttl = match self.store.edge(&edge).await {
            Ok(Some(e)) => e.ttl,
            Ok(None) => {
                // Not an action on anything registered: a stranger's guess, audited within budget.
                let reason = format!(
                    "join: no edge {} is registered",
                    approvals::text::printable(&edge)
                );
                self.refused(peer, &reason);
                let _ = wire::write(&mut tls, &Message::Refused { reason }).await;
                return;
            }
            Err(e) => {
                let reason = format!("control plane unavailable: {e}");
                let _ = wire::write(&mut tls, &Message::Refused { reason }).await;
                return;
            }
        };
        let actor = Actor::broker(&format!("{}:edge-join:{peer}", self.node));
        let hash = JoinToken::secret_hash(&secret);
        let joined = self
            .actions
            .join_edge(&actor, &edge, &hash, approvals::time::now(), || {
                self.ca
                    .issue_edge(&csr, &edge, ttl)
                    .map_err(|e| e.to_string())
            })
            .await;
        let reply = match joined {
            Ok(Ok(cert)) => Message::Joined {
                certificate: cert.pem,
                ca: self.ca.pem().to_owned(),
            },
            Ok(Err(refused)) => Message::Refused {
                reason: refused.to_string(),
            },
            Err(e) => Message::Refused {
                reason: format!("not joined, the audit record could not be written: {e}"),
            },
        };
        let _ = wire::write(&mut tls, &reply).await;
    }

    /// Checks the certificate against the registration; the edge's identity is the certificate's.
    async fn admit(&self, der: &[u8]) -> Result<Edge, String> {
        let (name, serial) =
            super::tls::edge_identity(der).ok_or("the certificate names no edge")?;
        let edge = self
            .store
            .edge(&name)
            .await
            .map_err(|e| format!("control plane unavailable: {e}"))?
            .ok_or_else(|| format!("edge {name} is not registered"))?;
        if edge.revoked.is_some() {
            return Err(format!("edge {name} is revoked"));
        }
        if edge.cert_serial.as_deref() != Some(serial.as_str()) {
            return Err(format!(
                "edge {name}: certificate {serial} is not its current one"
            ));
        }
        Ok(edge)
    }

    async fn link_up(self: Arc<Self>, mut tls: TlsStream<TcpStream>, peer: SocketAddr, der: &[u8]) {
        let edge = match self.admit(der).await {
            Ok(edge) => edge,
            Err(reason) => {
                self.refused(peer, &reason);
                let _ = wire::write(&mut tls, &Message::Refused { reason }).await;
                return;
            }
        };
        let devices = match self.devices_of(&edge).await {
            Ok(d) => d,
            Err(e) => {
                let reason = e.to_string();
                let _ = wire::write(&mut tls, &Message::Refused { reason }).await;
                return;
            }
        };
        let welcome = Message::Welcome {
            edge: edge.name.clone(),
            sites: edge.sites.clone(),
            devices: devices.clone(),
        };
        if wire::write(&mut tls, &welcome).await.is_err() {
            return;
        }
        let session = Session::new_server(tls, yamux_config());
        let link = Arc::new(Link {
            control: session.control(),
            devices: Mutex::new(devices.into_iter().collect()),
            cut: tokio::sync::Notify::new(),
            why: Mutex::new(String::new()),
            policy_held: std::sync::atomic::AtomicI64::new(0),
            change_unheld_ms: std::sync::atomic::AtomicI64::new(0),
            publishing: tokio::sync::Mutex::new(()),
        });
        let old = self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(edge.name.clone(), link.clone());
        if let Some(old) = old {
            old.cut("replaced by a newer link");
        }
        let now = approvals::time::now();
        if let Err(e) = self
            .store
            .edge_connected(&edge.name, &self.node, &peer.to_string(), now)
            .await
        {
            tracing::warn!(edge = %edge.name, error = %e, "edge link state not recorded");
        }
        self.audit(
            AuditEvent::EdgeOnline,
            json!({"edge": edge.name, "remote": peer.to_string(), "node": self.node}),
        );
        tracing::info!(edge = %edge.name, remote = %peer, "edge connected");
        let why = self.drive(&edge.name, session, &link).await;
        let current = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            let current = links.get(&edge.name).is_some_and(|l| Arc::ptr_eq(l, &link));
            if current {
                links.remove(&edge.name);
            }
            current
        };
        if current {
            let now = approvals::time::now();
            if let Err(e) = self
                .store
                .edge_disconnected(&edge.name, &self.node, now)
                .await
            {
                tracing::warn!(edge = %edge.name, error = %e, "edge link state not recorded");
            }
        }
        self.audit(
            AuditEvent::EdgeOffline,
            json!({"edge": edge.name, "remote": peer.to_string(), "node": self.node, "reason": why}),
        );
        tracing::info!(edge = %edge.name, reason = %why, "edge link down");
    }

    /// Runs the link: inbound streams (renewals, announcements), the liveness writes, revocation.
    async fn drive(
        self: &Arc<Self>,
        edge: &str,
        mut session: Session<TlsStream<TcpStream>>,
        link: &Link,
    ) -> String {
        loop {
            tokio::select! {
                inbound = session.next() => match inbound {
                    Some(Ok(stream)) => {
                        tokio::spawn(self.clone().inbound(edge.to_owned(), stream));
                    }
                    Some(Err(e)) => return format!("link error: {e}"),
                    None => return "the link closed".into(),
                },
                _ = link.cut.notified() => {
                    return link.why.lock().unwrap_or_else(|p| p.into_inner()).clone();
                }
            }
        }
    }
}

impl EdgeHub {
    /// A stream the edge opened: a renewal or an announcement of its box key.
    async fn inbound(self: Arc<Self>, edge: String, stream: StreamHandle) {
        // Pumped by a task of its own, as every stream here: one read or written directly by
        // the handler stalls once more than a window's worth is in flight (a shipment is MiB).
        let mut stream = super::hub::pumped(stream);
        let msg = match tokio::time::timeout(HANDSHAKE, wire::read(&mut stream)).await {
            Ok(Ok(msg)) => msg,
            _ => return,
        };
        match msg {
            Message::Renew { csr } => {
                let hub = (
                    self.actions.clone(),
                    self.ca.clone(),
                    edge,
                    self.node.clone(),
                );
                renew(hub, csr, stream).await;
            }
            Message::Announce { box_key } => self.announced(&edge, &box_key, stream).await,
            Message::Ship {
                session,
                breakglass,
                keyring,
                size,
            } => {
                let shipment = super::evidence::Shipment {
                    session: *session,
                    breakglass: breakglass.map(|b| *b),
                    keyring,
                    size,
                };
                self.receive(&edge, shipment, stream).await
            }
            Message::AuditShip { offset, size } => {
                self.receive_audit(&edge, offset, size, stream).await
            }
            Message::TotpSteps { steps } => match self.store.spend_totp_steps(&steps).await {
                Ok(moved) => {
                    for (vendor, step) in moved {
                        self.audit(
                            AuditEvent::EdgeTotpUsed,
                            json!({"edge": edge, "vendor": vendor, "step": step}),
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(%edge, error = %e, "TOTP steps used at the edge not recorded")
                }
            },
            Message::Backlog { sessions, bytes } => {
                if let Err(e) = self.store.set_edge_backlog(&edge, sessions, bytes).await {
                    tracing::warn!(%edge, error = %e, "edge backlog not recorded");
                }
            }
            other => {
                let reason = format!("unexpected message {}", other.kind());
                let _ = wire::write(&mut stream, &Message::Refused { reason }).await;
                wire::finish(&mut stream).await;
            }
        }
    }

    /// The edge's box key: kept, answered with the key its bundles are signed with, then its
    /// bundle is sent.
    async fn announced(&self, edge: &str, box_key: &str, mut stream: DuplexStream) {
        let kept = match approvals::bundle::check_box_key(box_key) {
            Ok(()) => (self.store.set_edge_box_key(edge, box_key).await).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let reply = match kept {
            Ok(_) => Message::Announced {
                signer: self.ca.signer().public(),
            },
            Err(reason) => Message::Refused { reason },
        };
        let _ = wire::write(&mut stream, &reply).await;
        wire::finish(&mut stream).await;
        if matches!(reply, Message::Announced { .. }) {
            self.publish_round(Some(edge), None).await;
        }
    }
}

/// An edge's renewal request on a stream of its own: a new certificate for a fresh key.
async fn renew(hub: (Actions, Arc<EdgeCa>, String, String), csr: String, mut stream: DuplexStream) {
    let (actions, ca, edge, node) = hub;
    let ttl = match actions.store().edge(&edge).await {
        Ok(Some(e)) => e.ttl,
        _ => return,
    };
    let reply = match ca.issue_edge(&csr, &edge, ttl) {
        Ok(cert) => {
            let actor = Actor::broker(&node);
            match actions
                .renew_edge(&actor, &edge, &cert, approvals::time::now())
                .await
            {
                Ok(()) => Message::Renewed {
                    certificate: cert.pem,
                },
                Err(e) => Message::Refused {
                    reason: format!("not renewed, the audit record could not be written: {e}"),
                },
            }
        }
        Err(e) => Message::Refused {
            reason: e.to_string(),
        },
    };
    let _ = wire::write(&mut stream, &reply).await;
    wire::finish(&mut stream).await;
}
