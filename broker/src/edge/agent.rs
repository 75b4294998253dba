//! The edge side: `postern edge join` (token and CSR in, certificate and CA out, kept in
//! `DATA/edge/`) and `postern edge run` (the link to the central, kept up with jittered backoff;
//! device streams connected to the devices of the edge's own sites only; the certificate renewed
//! before it ends). The edge keeps its own hash-chained audit log, `DATA/edge/audit.log`: its
//! links coming up and going down, and every stream it refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::AuditLog;
use approvals::audit::AuditEvent;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_yamux::{Session, StreamHandle};

use super::join::{csr, not_after, tcp};
use super::scope::Scope;
use super::wire::{self, EdgeDevice, Message};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Token(#[from] super::token::NotAToken),
    #[error("{path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("connecting to {central}: {error}")]
    Connect { central: String, error: String },
    #[error("the central refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("{0}")]
    State(String),
}

/// What `edge join` leaves in `DATA/edge/edge.json` (beside `edge.key`, `edge.crt`, `ca.crt`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub edge: String,
    pub central: String,
    /// Unix seconds the current certificate ends.
    pub not_after: i64,
    /// Seconds a certificate is valid for (from the central), for renewing at two thirds.
    pub ttl: i64,
}

#[derive(Clone)]
pub struct EdgeFiles {
    pub dir: PathBuf,
}

impl EdgeFiles {
    pub fn new(data: &Path) -> EdgeFiles {
        EdgeFiles {
            dir: data.join("edge"),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub(super) fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }
    pub(super) fn read(&self, name: &str) -> Result<String, AgentError> {
        let p = self.path(name);
        std::fs::read_to_string(&p).map_err(|error| AgentError::File {
            path: p.display().to_string(),
            error,
        })
    }
    pub(super) fn write(&self, name: &str, text: &str, private: bool) -> Result<(), AgentError> {
        let p = self.path(name);
        let file = |error| AgentError::File {
            path: p.display().to_string(),
            error,
        };
        std::fs::create_dir_all(&self.dir).map_err(file)?;
        if private {
            // Made 0600 from the start under a new name, then moved over the old key.
            let fresh = p.with_extension("new");
            let _ = std::fs::remove_file(&fresh);
            crate::config::write_private(&fresh, text.as_bytes())
                .map_err(|e| AgentError::State(e.to_string()))?;
            std::fs::rename(&fresh, &p).map_err(file)
        } else {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, text).map_err(file)?;
            std::fs::rename(&tmp, &p).map_err(file)
        }
    }
    /// The edge's own audit log.
    pub fn audit(&self, edge: &str) -> AuditLog {
        AuditLog::new(&self.path("audit.log"), &format!("edge:{edge}"))
    }

    pub fn state(&self) -> Result<Joined, AgentError> {
        serde_json::from_str(&self.read("edge.json")?)
            .map_err(|e| AgentError::State(format!("edge.json: {e}")))
    }
    pub(super) fn save(&self, state: &Joined, cert: &str, key: &str) -> Result<(), AgentError> {
        // Key and certificate first, the state that points at them last.
        self.write("edge.key", key, true)?;
        self.write("edge.crt", cert, false)?;
        let json =
            serde_json::to_string_pretty(state).map_err(|e| AgentError::State(e.to_string()))?;
        self.write("edge.json", &json, false)
    }
}

/// `postern edge run`: keeps the link up until the process is stopped. Each connection that ends
/// is retried after a jittered, growing delay (1 s up to 30 s; back to 1 s after a link that was
/// up).
pub async fn run(data: &Path) -> Result<(), AgentError> {
    let files = EdgeFiles::new(data);
    files.state()?;
    keep_linked(&files, None).await;
    Ok(())
}

/// `postern edge run --ssh-listen ADDR`: [`run`], and vendors served at the site on `addr`
/// ([`super::site`]) from the bundle the edge holds, whether or not the link is up. Ends if that
/// front door stops.
pub async fn run_at_site(data: &Path, addr: &str, buffer_max: i64) -> Result<(), AgentError> {
    let files = EdgeFiles::new(data);
    let state = files.state()?;
    let site_error = |e: super::site::SiteError| AgentError::State(e.to_string());
    super::site::prepare(data, &state.edge)
        .await
        .map_err(site_error)?;
    let site = Site {
        store: super::site::store(data).await.map_err(site_error)?,
        data: super::site::site_dir(data),
        node: format!("edge-{}", state.edge),
        key: Arc::new(super::policy::box_key(&files)?),
        applying: Arc::default(),
        grace: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        audit_shipped: Arc::default(),
    };
    // What the edge last held is what it serves until the central says more.
    if let Ok(Some(held)) = super::policy::held(&files, &state.edge) {
        // Not applied again: that would make an old bundle look fresh after a restart.
        (site.grace).store(held.offline_grace, std::sync::atomic::Ordering::Relaxed);
    }
    let audit = files.audit(&state.edge);
    tokio::spawn(super::shipper::bound_buffer(
        site.clone(),
        buffer_max,
        audit,
    ));
    tokio::select! {
        served = super::site::serve(data, addr) => served.map_err(site_error),
        () = keep_linked(&files, Some(site)) => Ok(()),
    }
}

/// The site node: its store, data directory and name, and the key that opens the bundle's
/// secrets for it.
#[derive(Clone)]
pub(super) struct Site {
    pub(super) store: approvals::Store,
    pub(super) data: crate::config::DataDir,
    pub(super) node: String,
    pub(super) key: Arc<approvals::bundle::EdgeBoxKey>,
    /// Bundles are checked and applied one at a time, so an older one still in flight can never
    /// be applied over a newer one.
    pub(super) applying: Arc<tokio::sync::Mutex<()>>,
    /// The offline grace of the bundle held (seconds).
    pub(super) grace: Arc<std::sync::atomic::AtomicI64>,
    /// How much of the site node's audit log the central holds, as it last said.
    pub(super) audit_shipped: Arc<std::sync::atomic::AtomicU64>,
}

/// Keeps the link up, for as long as the process runs.
async fn keep_linked(files: &EdgeFiles, site: Option<Site>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match link(files, site.clone()).await {
            Ok(()) => delay = Duration::from_secs(1),
            Err(e) => tracing::warn!(error = %e, "edge link"),
        }
        let jitter = rand::random_range(0.5..1.5);
        let wait = delay.mul_f64(jitter);
        println!(
            "postern edge: link down; reconnecting in {:.1}s",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// One link: connect, welcome, then serve streams until it ends. `Ok` once it was up.
async fn link(files: &EdgeFiles, site: Option<Site>) -> Result<(), AgentError> {
    let state = files.state()?;
    let config = super::tls::edge(
        &files.read("ca.crt")?,
        &files.read("edge.crt")?,
        &files.read("edge.key")?,
    )?;
    let connector = TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(super::tls::central_name(), tcp(&state.central).await?)
        .await
        .map_err(|e| AgentError::Connect {
            central: state.central.clone(),
            error: e.to_string(),
        })?;
    let mut scope = Scope::default();
    match wire::read(&mut tls).await? {
        Message::Welcome { sites, devices, .. } => {
            scope.sites = sites;
            scope.set_devices(devices);
        }
        Message::Refused { reason } => return Err(AgentError::Refused(reason)),
        other => return Err(wire::WireError::Unexpected(other.kind()).into()),
    }
    println!(
        "postern edge: connected to {} as {} (sites {})",
        state.central,
        state.edge,
        scope.sites.join(",")
    );
    let audit = files.audit(&state.edge);
    record(
        &audit,
        AuditEvent::EdgeOnline,
        json!({"central": state.central}),
    );
    let served = Served {
        files: files.clone(),
        edge: state.edge.clone(),
        scope: Arc::new(Mutex::new(scope)),
        audit: audit.clone(),
        site,
    };
    let why = serve_link(tls, served).await;
    println!("postern edge: link lost: {why}");
    record(
        &audit,
        AuditEvent::EdgeOffline,
        json!({"central": state.central, "reason": why}),
    );
    Ok(())
}

pub(super) fn record(audit: &AuditLog, event: AuditEvent, fields: serde_json::Value) {
    if let Err(e) = audit.record(event, fields) {
        tracing::warn!(error = %e, event = %event, "edge audit log write failed");
    }
}

/// Stops a task when dropped (a task that lives as long as one link).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What serving the central's streams needs.
#[derive(Clone)]
struct Served {
    files: EdgeFiles,
    edge: String,
    scope: Arc<Mutex<Scope>>,
    audit: AuditLog,
    /// The site node, when the edge serves vendors itself.
    site: Option<Site>,
}

/// Serves the central's streams until the link ends; says why it ended.
async fn serve_link(tls: tokio_rustls::client::TlsStream<TcpStream>, served: Served) -> String {
    let files = &served.files;
    let mut session = Session::new_client(tls, super::hub::yamux_config());
    // The box key and the central's signing key are exchanged beside the loop, which must keep
    // driving the session their stream is on.
    let (control, s) = (session.control(), served.clone());
    tokio::spawn(async move { announce(control, &s).await });
    // Evidence recorded at the site goes to the central while this link is up.
    let _shipping = served.site.clone().map(|site| {
        let shipping = super::shipper::ship(session.control(), site, served.audit.clone());
        AbortOnDrop(tokio::spawn(shipping))
    });
    // The first tick is at once: a certificate already due is renewed as the link comes up.
    let mut renewal = tokio::time::interval(Duration::from_secs(60));
    let mut confirm = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = confirm.tick(), if served.site.is_some() => {
                // While the link is up the edge holds what the central says: its offline grace
                // counts from the last of these.
                if let Some(site) = &served.site {
                    let grace = site.grace.load(std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = site.store.policy_confirmed(approvals::time::now(), grace).await {
                        tracing::warn!(error = %e, "edge: policy freshness not recorded");
                    }
                }
            }
            inbound = session.next() => match inbound {
                Some(Ok(stream)) => {
                    tokio::spawn(serve_stream(stream, served.clone()));
                }
                Some(Err(e)) => return format!("link error: {e}"),
                None => return "the central closed the link".into(),
            },
            _ = renewal.tick() => {
                // A renewed certificate is used from the next connection on. The renewal runs
                // beside this loop, which must keep driving the session its stream is on.
                if let Ok(s) = files.state()
                    && renew_due(&s)
                {
                    let (mut control, files) = (session.control(), files.clone());
                    tokio::spawn(async move {
                        let renewed = match control.open_stream().await {
                            Ok(stream) => renew_over(&files, &s, stream).await,
                            Err(e) => Err(AgentError::State(e.to_string())),
                        };
                        if let Err(e) = renewed {
                            tracing::warn!(error = %e, "certificate renewal failed; trying again later");
                        }
                    });
                }
            }
        }
    }
}

fn renew_due(state: &Joined) -> bool {
    state.not_after - approvals::time::now() < state.ttl / 3
}

async fn renew_over(
    files: &EdgeFiles,
    state: &Joined,
    mut stream: StreamHandle,
) -> Result<(), AgentError> {
    let (csr, key) = csr()?;
    wire::write(&mut stream, &Message::Renew { csr }).await?;
    let reply = wire::read(&mut stream).await;
    wire::finish(&mut stream).await;
    match reply? {
        Message::Renewed { certificate } => {
            let next = Joined {
                not_after: not_after(&certificate)?,
                ..state.clone()
            };
            files.save(&next, &certificate, &key)?;
            println!(
                "postern edge: certificate renewed until {}",
                approvals::time::fmt_time(next.not_after)
            );
            Ok(())
        }
        Message::Refused { reason } => Err(AgentError::Refused(reason)),
        other => Err(wire::WireError::Unexpected(other.kind()).into()),
    }
}

/// Tells the central the edge's box key and pins the key its bundles are signed with.
async fn announce(mut control: tokio_yamux::Control, served: &Served) {
    let exchanged = async {
        let box_key = super::policy::box_key(&served.files)?.public();
        let mut stream = (control.open_stream().await)
            .map_err(|e| AgentError::State(format!("announce: {e}")))?;
        wire::write(&mut stream, &Message::Announce { box_key }).await?;
        let reply = wire::read(&mut stream).await;
        wire::finish(&mut stream).await;
        match reply? {
            Message::Announced { signer } => super::policy::pin_signer(&served.files, &signer)
                .map_err(|e| AgentError::State(e.to_string())),
            other => Err(wire::WireError::Unexpected(other.kind()).into()),
        }
    };
    if let Err(e) = exchanged.await {
        tracing::warn!(error = %e, "edge: policy keys not exchanged");
        record(
            &served.audit,
            AuditEvent::EdgePolicyRefused,
            json!({"reason": e.to_string()}),
        );
    }
}

/// A signed policy bundle from the central: checked, kept, and its devices become the ones this
/// edge may connect to.
async fn take_policy<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    served: &Served,
    signed: &approvals::bundle::SignedBundle,
) {
    let _one_at_a_time = match &served.site {
        Some(site) => Some(site.applying.clone().lock_owned().await),
        None => None,
    };
    let accepted = match super::policy::accept(&served.files, &served.edge, signed) {
        Ok(bundle) => match &served.site {
            Some(site) => {
                let grace = std::sync::atomic::Ordering::Relaxed;
                site.grace.store(bundle.offline_grace, grace);
                (super::site::apply(&site.store, &site.key, &bundle).await)
                    .map(|()| bundle)
                    .map_err(|e| format!("not applied at the site: {e}"))
            }
            None => Ok(bundle),
        },
        Err(e) => Err(e.to_string()),
    };
    let reply = match accepted {
        Ok(bundle) => {
            let devices = (bundle.devices.iter())
                .map(|d| EdgeDevice {
                    site: d.site.clone(),
                    device: d.name.clone(),
                    addr: d.addr.clone(),
                    web: None,
                })
                .collect();
            (served.scope.lock().unwrap_or_else(|p| p.into_inner())).set_ssh_addrs(devices);
            let fields = json!({"version": bundle.version, "issued": bundle.issued,
                "vendors": bundle.vendors.len(), "grants": bundle.grants.len(), "devices": bundle.devices.len()});
            record(&served.audit, AuditEvent::EdgePolicy, fields);
            Message::PolicyHeld {
                version: bundle.version,
            }
        }
        Err(reason) => {
            tracing::warn!(%reason, "edge: policy bundle refused");
            record(
                &served.audit,
                AuditEvent::EdgePolicyRefused,
                json!({"reason": reason}),
            );
            Message::PolicyRefused { reason }
        }
    };
    let _ = wire::write(stream, &reply).await;
    wire::finish(stream).await;
}

/// A stream the central opened: a policy bundle, a new device list, or a device to connect.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, served: Served) {
    let scope = &served.scope;
    let msg = match tokio::time::timeout(Duration::from_secs(10), wire::read(&mut stream)).await {
        Ok(Ok(m)) => m,
        _ => return,
    };
    match msg {
        Message::Policy { bundle } => take_policy(&mut stream, &served, &bundle).await,
        Message::Devices { devices } => {
            scope
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_devices(devices);
            let _ = wire::write(&mut stream, &Message::Opened).await;
        }
        Message::Open { .. } | Message::OpenWeb { .. } => {
            super::scope::open_device(stream, &served.scope, &served.audit, msg).await
        }
        other => tracing::warn!(kind = %other.kind(), "edge: unexpected message on a stream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_device_of_another_site_is_refused_and_audited_at_the_edge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = AuditLog::new(&dir.path().join("audit.log"), "edge:t");
        let (mut central, edge) = tokio::io::duplex(4096);
        let served = Served {
            files: EdgeFiles::new(dir.path()),
            edge: "t".into(),
            scope: super::super::scope::tests::scope(),
            audit,
            site: None,
        };
        let served = tokio::spawn(serve_stream(edge, served));
        let open = Message::Open {
            site: "theirs".into(),
            device: "d".into(),
        };
        wire::write(&mut central, &open).await.expect("write");
        match wire::read(&mut central).await.expect("read") {
            Message::OpenRefused { reason } => assert!(reason.contains("theirs/d"), "{reason}"),
            other => panic!("not refused: {other:?}"),
        }
        served.await.expect("served");
        // The log is a framed, hash-chained file: look for the event's JSON in its bytes.
        let log = std::fs::read(dir.path().join("audit.log")).expect("audit log");
        let log = String::from_utf8_lossy(&log);
        assert!(
            log.contains("edge.route_refused") && log.contains("theirs"),
            "{log}"
        );
    }
}
