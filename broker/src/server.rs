//! One broker node, assembled from its data directory: [`Server::build`] checks the keys,
//! recovers what a crash left, binds the listeners and makes the shared session context;
//! [`Server::run`] serves until a signal or a listener failure; [`Server::drain`] closes live
//! sessions so that their recordings are sealed before the process ends.

use approvals::audit::AuditEvent;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use approvals::Actor;
use approvals::time::{fmt_time, now, parse_duration};
use serde_json::{Value, json};

use crate::Node;
use crate::admission::Admission;
use crate::config::Limits;
use crate::journal::Journal;
use crate::keys;
use crate::session::{Ctx, EndReason};

/// Why a node did not start, or stopped serving. `Display` says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Limits(#[from] crate::config::LimitsError),
    #[error("request_wait: {0}")]
    RequestWait(approvals::time::TimeError),
    #[error("cert_validity: {0}")]
    CertValidity(approvals::time::TimeError),
    #[error("forwarded_header: {0}")]
    ForwardedHeader(#[from] approvals::web::BadHeaderName),
    #[error("opening the journal {path}: {error}")]
    Journal { path: String, error: std::io::Error },
    #[error("the journal holds the end of session {0} but the database does not take it")]
    JournalRefused(String),
    #[error(transparent)]
    Store(#[from] approvals::StoreError),
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    #[error("listening on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error(transparent)]
    Audit(#[from] approvals::audit::AuditError),
    #[error(transparent)]
    Checkpointer(#[from] crate::checkpointer::StartError),
    #[error("the server is already running")]
    Running,
    #[error(transparent)]
    EdgeCa(#[from] crate::edge::ca::CaError),
    #[error(transparent)]
    WebDoor(#[from] crate::webdoor::WebDoorError),
    #[error(transparent)]
    EdgeTls(#[from] crate::edge::tls::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = ServeError> = std::result::Result<T, E>;

/// Where a node listens: SSH for vendors, HTTP(S) for approvers (`off` serves SSH only).
pub struct Listen<'a> {
    pub ssh: &'a str,
    pub web: &'a str,
    /// Site edges' listener, or `off`.
    pub edge: &'a str,
    /// Prometheus' `GET /metrics`, or `off`.
    pub metrics: &'a str,
}

/// Where a built server is listening, for the operator and the scripts that wait on it.
pub struct Listening {
    pub ssh: SocketAddr,
    /// `http://ADDR`, `https://ADDR`, or `off`.
    pub web: String,
    /// Where edges connect, if they may.
    pub edge: Option<SocketAddr>,
    /// Where Prometheus scrapes, if it may.
    pub metrics: Option<SocketAddr>,
    /// The device web front door, if there is one.
    pub web_devices: Option<SocketAddr>,
}

/// The edge listener and its TLS configuration (a server certificate from the edge CA, made at
/// each start), unless `edge_listen` is `off`.
async fn bind_edges(
    ca: &crate::edge::ca::EdgeCa,
    addr: &str,
) -> Result<Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>> {
    if addr == "off" {
        return Ok(None);
    }
    let (cert, key) = ca.server_certificate()?;
    let tls = crate::edge::tls::central(ca.pem(), &cert, &key)?;
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| ServeError::Listen {
                addr: addr.to_owned(),
                error,
            })?;
    Ok(Some((listener, Arc::new(tls))))
}

/// Why a server stopped.
pub struct Stopped {
    pub reason: String,
    /// A listener failed (the service manager should restart the node), rather than a signal.
    pub failed: bool,
}

/// A node ready to serve.
pub struct Server {
    node: Node,
    operator: Actor,
    ctx: Arc<Ctx>,
    ssh: Option<tokio::net::TcpListener>,
    edge: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
    metrics: Option<tokio::net::TcpListener>,
    exception_limits: approvals::exceptions::ExceptionLimits,
    ssh_config: Arc<russh::server::Config>,
    web: Option<crate::web::Serving>,
    /// The device web front door (`web_devices_listen`).
    webdoor: Option<crate::web::Serving>,
    web_state: Arc<approvals::web::WebState>,
    web_admission: Arc<Admission>,
    summary_interval: Duration,
    deadlines: approvals::actions::Deadlines,
    rotate_every: Option<i64>,
    listening: Listening,
}

impl Server {
    /// Checks the keys (a seal key no root certified is refused), applies the journal and marks
    /// crashed sessions, makes the session context and binds both listeners. `operator` is who
    /// started the node, for the audit log.
    pub async fn build(node: Node, operator: Actor, listen: &Listen<'_>) -> Result<Server> {
        crate::sys::raise_open_files_limit();
        let host_key = keys::load_private(&node.data.host_key())?;
        let limits = node.cfg.limits()?;
        let journal = Journal::open(&node.data.journal()).map_err(|error| ServeError::Journal {
            path: node.data.journal().display().to_string(),
            error,
        })?;
        recover(&node, &operator, &journal).await?;
        // Loaded once: the session context's edge hub issues with it, the edge listener serves it.
        let edge_ca = Arc::new(crate::edge::ca::EdgeCa::load_or_create(&node.data.keys())?);
        let ctx = Arc::new(context(&node, &limits, journal, edge_ca.clone()).await?);
        let https = node.cfg.web_tls_cert.is_some() && node.cfg.web_tls_key.is_some();
        let web_state = Arc::new(web_state(&node, &limits, https)?);
        let web_limits = web_limits(&node, &limits);
        // `off` serves SSH only (a node whose approvers use another node's web UI).
        let (web, web_url) = if listen.web == "off" {
            (None, "off".to_owned())
        } else {
            let tls = node
                .cfg
                .web_tls_cert
                .clone()
                .zip(node.cfg.web_tls_key.clone());
            let (addr, serving) =
                crate::web::bind(web_state.clone(), listen.web, tls, web_limits.clone()).await?;
            let scheme = if https { "https" } else { "http" };
            (Some(serving), format!("{scheme}://{addr}"))
        };
        let ssh = tokio::net::TcpListener::bind(listen.ssh)
            .await
            .map_err(|error| ServeError::Listen {
                addr: listen.ssh.to_owned(),
                error,
            })?;
        let edge = bind_edges(&edge_ca, listen.edge).await?;
        let metrics = match listen.metrics {
            "off" => None,
            addr => Some(tokio::net::TcpListener::bind(addr).await.map_err(|error| {
                ServeError::Listen {
                    addr: addr.to_owned(),
                    error,
                }
            })?),
        };
        let (web_devices, webdoor) = match node.cfg.web_devices_listen.as_str() {
            "off" => (None, None),
            addr => {
                // Limits of its own: a flood here does not take the approvers' places.
                let limits = self::web_limits(&node, &limits);
                let (at, serving) = crate::webdoor::bind(&node, addr, limits, ctx.clone()).await?;
                (Some(at), Some(serving))
            }
        };
        let listening = Listening {
            ssh: ssh.local_addr()?,
            web: web_url,
            edge: edge.as_ref().map(|(l, _)| l.local_addr()).transpose()?,
            metrics: metrics.as_ref().map(|l| l.local_addr()).transpose()?,
            web_devices,
        };
        Ok(Server {
            node,
            operator,
            ctx,
            ssh: Some(ssh),
            edge,
            metrics,
            exception_limits: limits.exceptions(),
            ssh_config: crate::frontdoor::server_config(host_key),
            web,
            webdoor,
            web_state,
            web_admission: web_limits.admission,
            summary_interval: limits.audit_summary_interval,
            deadlines: limits.deadlines.clone(),
            rotate_every: limits.rotate_every,
            listening,
        })
    }

    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    /// Serves until SIGINT/SIGTERM or a listener fails, then drains. `ready` is called once the
    /// start is in the audit log, before the first connection is taken.
    pub async fn run(mut self, ready: impl FnOnce(&Listening)) -> Result<Stopped> {
        self.audit(
            AuditEvent::ServeStart,
            json!({"ssh": self.listening.ssh.to_string(), "web": self.listening.web}),
        )?;
        tracing::info!(ssh = %self.listening.ssh, web = %self.listening.web, node = %self.node.cfg.node, "postern serving");
        ready(&self.listening);
        std::io::stdout().flush()?;
        self.spawn_background()?;
        let stopped = self.serve().await?;
        if stopped.failed {
            tracing::error!(reason = stopped.reason, "a listener stopped; shutting down");
        }
        tracing::info!(reason = stopped.reason, "shutting down");
        self.drain().await;
        let _ = self.audit(AuditEvent::ServeStop, json!({"reason": stopped.reason}));
        Ok(stopped)
    }

    /// Asks every live session to close, and gives their supervisors a moment to seal the
    /// recordings and write their ends to the audit log and the journal (they do not wait for
    /// the database; the next start applies the journal).
    pub async fn drain(&self) {
        for live in self.ctx.live_sessions() {
            live.request_close(EndReason::ShuttingDown);
        }
        for _ in 0..100 {
            if self.ctx.live_sessions().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Then the edges' links, which the sessions above may have been using.
        self.ctx.edges.close_all().await;
    }

    /// The tasks that run beside the listeners for as long as the node does.
    fn spawn_background(&mut self) -> Result<()> {
        let node = &self.node;
        tokio::spawn(crate::session::watch_revocations(self.ctx.clone()));
        tokio::spawn(self.ctx.ca.clone().watch(node.store.clone()));
        crate::checkpointer::spawn(node)?;
        tokio::spawn(crate::journal::drain(
            node.store.clone(),
            node.data.recordings(),
            self.ctx.journal.clone(),
        ));
        tokio::spawn(write_summaries(
            self.ctx.clone(),
            self.web_state.clone(),
            self.web_admission.clone(),
            self.summary_interval,
        ));
        tokio::spawn(enforce_deadlines(
            node.actions(),
            Actor::broker(&node.cfg.node),
            self.deadlines.clone(),
        ));
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(crate::metrics::keep_fresh(
                self.ctx.clone(),
                self.exception_limits,
                node.evidence_store.is_some(),
                listener,
            ));
        }
        if let Some(store) = node.evidence_store.clone() {
            tokio::spawn(crate::evidence_store::ship(
                store,
                node.store.clone(),
                node.cfg.node.clone(),
                node.data.clone(),
            ));
        }
        if let Some(url) = node.cfg.webhook_url.clone() {
            tokio::spawn(crate::webhook::deliver(
                node.store.clone(),
                node.audit.clone(),
                url,
                self.ctx.metrics.clone(),
            ));
        }
        if let Some(every) = self.rotate_every {
            tokio::spawn(crate::scheduled_rotation::run(
                self.rotation_schedule(every),
            ));
        }
        Ok(())
    }

    /// Until the first of: the SSH listener fails, the web listener fails, a signal.
    async fn serve(&mut self) -> Result<Stopped> {
        let web: crate::web::Serving = match self.web.take() {
            Some(serving) => serving,
            None => Box::pin(std::future::pending()),
        };
        let webdoor: crate::web::Serving = match self.webdoor.take() {
            Some(serving) => serving,
            None => Box::pin(std::future::pending()),
        };
        let ssh = self.ssh.take().ok_or(ServeError::Running)?;
        let frontdoor = crate::frontdoor::serve(self.ctx.clone(), self.ssh_config.clone(), ssh);
        let edges: std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
        > = match self.edge.take() {
            Some((listener, tls)) => Box::pin(self.ctx.edges.clone().serve(listener, tls)),
            None => Box::pin(std::future::pending()),
        };
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let failed = |what: &str, r: &dyn std::fmt::Debug| Stopped {
            reason: format!("{what} listener failed: {r:?}"),
            failed: true,
        };
        let signal = |reason: &str| Stopped {
            reason: reason.to_owned(),
            failed: false,
        };
        Ok(tokio::select! {
            r = frontdoor => failed("SSH", &r),
            r = web => failed("web", &r),
            r = webdoor => failed("device web", &r),
            r = edges => failed("edge", &r),
            _ = tokio::signal::ctrl_c() => signal("interrupted"),
            _ = sigterm.recv() => signal("terminated"),
        })
    }

    /// Scheduled rotations are done by the broker of this node, in its name.
    fn rotation_schedule(&self, every: i64) -> crate::scheduled_rotation::Schedule {
        let node = &self.node;
        crate::scheduled_rotation::Schedule {
            store: node.store.clone(),
            rotator: crate::rotation::Rotator {
                actions: node.actions(),
                actor: Actor::broker(&node.cfg.node),
                step: crate::device_admin::STEP_TIMEOUT,
                dry_run: false,
            },
            node: node.cfg.node.clone(),
            every,
            concurrency: node.cfg.rotate_concurrency,
        }
    }

    fn audit(&self, event: AuditEvent, fields: Value) -> Result<()> {
        Ok(self.node.audit_as(&self.operator, event, fields)?)
    }
}

/// Session ends the database missed (an outage, a crash) go in first, with their true end times;
/// only sessions with no end anywhere are then marked as cut short.
async fn recover(node: &Node, operator: &Actor, journal: &Journal) -> Result<()> {
    for end in journal.pending() {
        if crate::journal::apply(&node.store, &node.data.recordings(), journal, &end).await {
            tracing::info!(session = %end.session, reason = %end.reason, "session end recorded from the journal");
        } else {
            return Err(ServeError::JournalRefused(end.session.clone()));
        }
    }
    let orphans = node
        .store
        .end_orphaned_sessions(&node.cfg.node, now())
        .await?;
    for id in &orphans {
        crate::recording::index_commands(&node.store, &node.data.recordings(), id).await;
    }
    if !orphans.is_empty() {
        node.audit_as(
            operator,
            AuditEvent::SessionCrashRecovered,
            json!({"sessions": orphans}),
        )?;
    }
    Ok(())
}

/// What every session on this node shares: the store and audit log, the trusted vendor CAs, the
/// certified seal key, limits and the live-session table.
async fn context(
    node: &Node,
    limits: &Limits,
    journal: Journal,
    edge_ca: Arc<crate::edge::ca::EdgeCa>,
) -> Result<Ctx> {
    // The CA private key is needed only where certificates are issued; a node trusts every vendor
    // CA registered in the database, its own (if it has one) registered here.
    let ca_pub = node.data.ca_key().with_extension("pub");
    let own_ca = if ca_pub.exists() {
        let ca = keys::load_public(&ca_pub)?;
        node.store
            .register_vendor_ca(&keys::openssh_line(&ca)?, &node.cfg.node, now())
            .await?;
        Some(ca.fingerprint(russh::keys::HashAlg::Sha256))
    } else {
        None
    };
    let ca = Arc::new(crate::vendor_ca::VendorCas::load(&node.store, own_ca).await?);
    let seal = keys::seal_key(&node.data.seal_key())?;
    // Sealing with a key no root vouches for would make evidence nobody can trust: refuse.
    let seal_id = keys::require_certified(&node.data, &seal.public(), now())?;
    tracing::info!(key_id = %seal_id, "seal key certified by the pinned root");
    // A hint for listings; verifiers trust the keyring, not this row.
    node.store
        .register_seal_key(&seal.public().export(), &node.cfg.node, now())
        .await?;
    Ok(Ctx {
        store: node.store.clone(),
        audit: node.audit.clone(),
        node: node.cfg.node.clone(),
        recordings: node.data.recordings(),
        ca,
        warn_before: limits.warn_before,
        seal,
        request_wait: Duration::from_secs(
            parse_duration(&node.cfg.request_wait).map_err(ServeError::RequestWait)? as u64,
        ),
        env_allow: node.cfg.env_allow.clone(),
        // 30 failures before the first factor per address in 5 minutes.
        source_limiter: approvals::ratelimit::RateLimiter::new(
            Duration::from_secs(300),
            30,
            100_000,
        ),
        admission: Admission::new(limits.startups, limits.penalty_exempt.clone()),
        login_grace: limits.login_grace,
        throttled: approvals::audit::Tally::default(),
        detail_budget: approvals::ratelimit::EventBudget::default(),
        journal,
        upstream_config: crate::upstream::client_config(limits.device_keepalive),
        notifier: node.notifier.clone(),
        live: Default::default(),
        self_service: Arc::new(
            crate::self_service::SelfService::new(node).map_err(ServeError::CertValidity)?,
        ),
        edges: Arc::new(crate::edge::hub::EdgeHub::new(
            node.store.clone(),
            node.audit.clone(),
            node.actions(),
            &node.cfg.node,
            edge_ca,
            node.data.clone(),
            limits.edge_offline_grace,
        )),
        metrics: Arc::default(),
    })
}

/// The approvers' web UI over this node's store, audit log and evidence.
fn web_state(node: &Node, limits: &Limits, https: bool) -> Result<approvals::web::WebState> {
    let client_address = approvals::web::ClientAddress::new(
        limits.trusted_proxies.clone(),
        &node.cfg.forwarded_header,
    )?;
    Ok(approvals::web::WebState::new(
        node.store.clone(),
        node.audit.clone(),
        node.notifier.clone(),
        node.data.recordings(),
        https,
    )
    .with_client_address(client_address)
    .with_local_seal_key(node.data.seal_key().with_extension("pub"))
    .with_exception_limits(limits.exceptions())
    .with_keyring(
        keys::keyring_path(&node.data),
        keys::load_root_public(&keys::root_pub_path(&node.data)).ok(),
    ))
}

/// The web listener's own caps: connections in all and per client, idle and header timeouts.
fn web_limits(node: &Node, limits: &Limits) -> crate::web::Limits {
    crate::web::Limits {
        admission: Admission::new(
            crate::admission::Limits {
                start: node.cfg.web_max_connections,
                rate: 100,
                full: node.cfg.web_max_connections,
                per_source: node.cfg.web_per_source_connections,
                penalties: false,
            },
            // A trusted proxy carries every approver's connections.
            limits.trusted_proxies.clone(),
        ),
        idle: limits.web_idle_timeout,
        header: limits.web_header_timeout,
    }
}

/// Once a second, escalates the requests pending past `approval_slo` and expires those past
/// `request_ttl`. Every node does; the store lets exactly one take each step.
async fn enforce_deadlines(
    actions: approvals::Actions,
    actor: Actor,
    deadlines: approvals::actions::Deadlines,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match actions.enforce_deadlines(&actor, &deadlines, now()).await {
            Ok(swept) => {
                for id in &swept.escalated {
                    tracing::info!(request = %id, "request overdue: escalated");
                }
                for id in &swept.expired {
                    tracing::info!(request = %id, "request expired undecided");
                }
            }
            // Retried on the next tick; a request is never half-escalated (one transaction).
            Err(e) => tracing::warn!(error = %e, "request deadlines: not enforced this time"),
        }
    }
}

/// Writes what the front doors refused or throttled since the last time as one audit event per
/// kind and interval: a flood is visible to the auditor without being able to fill the disk.
async fn write_summaries(
    ctx: Arc<Ctx>,
    web: Arc<approvals::web::WebState>,
    web_admission: Arc<Admission>,
    every: Duration,
) {
    // Summaries the audit log could not take (descriptors or disk exhausted: exactly when floods
    // happen) wait for the next interval instead of being lost; at most a few hundred are kept.
    const MAX_PENDING: usize = 256;
    let mut pending: std::collections::VecDeque<(AuditEvent, Value)> = Default::default();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (event, tally) in [
            (AuditEvent::FrontdoorRefused, &ctx.admission.tally),
            (AuditEvent::AuthThrottled, &ctx.throttled),
            (AuditEvent::WebRefused, &web_admission.tally),
            (AuditEvent::WebThrottled, &web.throttled),
        ] {
            if let Some(mut fields) = tally.take() {
                fields["interval_seconds"] = json!(every.as_secs());
                fields["counted_until"] = json!(fmt_time(now()));
                pending.push_back((event, fields));
            }
        }
        while pending.len() > MAX_PENDING {
            pending.pop_front();
        }
        while let Some((event, fields)) = pending.pop_front() {
            if !ctx.audit(event, fields.clone()).await {
                pending.push_front((event, fields));
                break;
            }
        }
    }
}
