//! The SSH front door: a russh server that authenticates vendors by certificate then TOTP, asks the
//! policy decision, and hands channels to the proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::time::now;
use approvals::{AccessRequest, Decision, Deny};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Certificate, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::login::{self, Target};
use crate::proxy;
use crate::session::{Ctx, LiveSession, connection_ended};

/// State shared between a connection's handler and the task that waits for it to end.
#[derive(Default)]
struct ConnShared {
    live: Mutex<Option<Arc<LiveSession>>>,
    authenticated: Mutex<Option<String>>,
    /// What went wrong so far, for the audit event of a connection that never authenticates.
    failures: Mutex<Vec<String>>,
    last_user: Mutex<String>,
}

impl ConnShared {
    fn fail(&self, reason: String) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reason);
    }
    fn set_user(&self, user: &str) {
        *self.last_user.lock().unwrap_or_else(|p| p.into_inner()) = user.to_owned();
    }
}

/// The certificate step passed: for whom and for what.
struct CertPassed {
    user: String,
    target: Target,
    key_id: String,
    serial: u64,
}

pub struct Conn {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    cert: Option<CertPassed>,
    denied: Option<Deny>,
    /// Why an allowed session could not start (recording, database): for the vendor's message.
    start_error: Option<String>,
    /// The target, once both factors passed.
    target: Option<Target>,
    shared: Arc<ConnShared>,
}

fn totp_prompt() -> Auth {
    Auth::Partial {
        name: "".into(),
        instructions: "".into(),
        prompts: vec![("TOTP code: ".into(), false)].into(),
    }
}

/// Ends this keyboard-interactive exchange but lets the vendor try another code on the same
/// connection. Not a partial success: OpenSSH then counts the try against its prompt limit
/// (with partial success, or a re-prompt inside one exchange, it loops until russh's attempt limit).
fn retry_totp() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(ki_only()),
        partial_success: false,
    }
}

/// How long a failed authentication step waits before it is answered.
const FAILURE_DELAY: Duration = Duration::from_millis(300);

fn ki_only() -> MethodSet {
    MethodSet::from(&[MethodKind::KeyboardInteractive][..])
}

impl Conn {
    fn source(&self) -> String {
        self.peer.ip().to_string()
    }

    /// Audits a failed step and remembers it; returns a plain rejection.
    async fn reject(&mut self, event: &str, user: &str, reason: String) -> Auth {
        warn!(peer = %self.peer, user, reason, "{event}");
        self.ctx
            .audit(event, json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason}))
            .await;
        if let Ok(t) = login::parse(user) {
            self.ctx.limiter.failed(&t.vendor, &self.source());
        }
        self.shared.fail(reason);
        // Slows guessing (a TOTP code above all) on top of the rate limit.
        tokio::time::sleep(FAILURE_DELAY).await;
        Auth::reject()
    }

    /// The checks russh leaves to us: CA, type, principal, critical options, vendor state.
    async fn check_certificate(&self, target: &Target, cert: &Certificate) -> Result<(), String> {
        cert.validate([&self.ctx.ca]).map_err(|e| match e {
            russh::keys::ssh_key::Error::CertificateValidation => {
                "certificate is not signed by a trusted vendor CA (or is outside its validity)"
                    .to_string()
            }
            other => format!("certificate rejected: {other}"),
        })?;
        if cert.cert_type() != CertType::User {
            return Err("certificate is not a user certificate".into());
        }
        if cert.valid_principals().is_empty() {
            return Err("certificate has no principals".into());
        }
        if !cert.valid_principals().iter().any(|p| p == &target.vendor) {
            return Err(format!(
                "certificate principals {:?} do not include vendor {}",
                cert.valid_principals(),
                target.vendor
            ));
        }
        for (name, value) in cert.critical_options().iter() {
            match name.as_str() {
                "source-address" => {
                    let ok = value.split(',').any(|net| {
                        let net = net.trim();
                        net.parse::<ipnet::IpNet>()
                            .map(|n| n.contains(&self.peer.ip()))
                            .unwrap_or(false)
                            || net
                                .parse::<std::net::IpAddr>()
                                .map(|a| a == self.peer.ip())
                                .unwrap_or(false)
                    });
                    if !ok {
                        return Err(format!(
                            "source address {} is not allowed by the certificate ({value})",
                            self.peer.ip()
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "certificate has unsupported critical option {other}"
                    ));
                }
            }
        }
        match self.ctx.store.vendor(&target.vendor).await {
            Err(e) => Err(format!("control plane unavailable: {e}")),
            Ok(None) => Err(format!("unknown vendor {}", target.vendor)),
            Ok(Some(v)) if v.is_disabled() => Err(format!("vendor {} is disabled", target.vendor)),
            Ok(Some(v)) if v.contract_end.is_some_and(|end| now() >= end) => Err(format!(
                "the contract of vendor {} has ended",
                target.vendor
            )),
            Ok(Some(_)) => Ok(()),
        }
    }

    /// After both factors: ask the policy and, if allowed, start the live session.
    async fn start(&mut self, target: Target, session: &mut Session) {
        self.target = Some(target.clone());
        if target.is_requests_listing() {
            return;
        }
        let req = AccessRequest {
            vendor: target.vendor.clone(),
            site: target.site.clone(),
            device: target.device.clone(),
            function: target.function.clone(),
            channel: None,
        };
        let decision = match self
            .ctx
            .store
            .facts(&req.vendor, &req.site, &req.device, req.function.as_deref())
            .await
        {
            Ok(facts) => approvals::decide(&req, &facts, now()),
            Err(e) => {
                warn!(error = %e, "policy facts unavailable");
                self.denied = Some(Deny::NoGrant {
                    site: target.site.clone(),
                    function: target.function.clone(),
                });
                self.ctx.audit("session.denied", json!({"login": target.to_string(), "reason": format!("control plane unavailable: {e}")})).await;
                return;
            }
        };
        let source = self.peer.to_string();
        match &decision {
            Decision::Deny { reason } => {
                self.ctx.audit("session.denied", json!({"login": target.to_string(), "source": source, "reason": reason.to_string()})).await;
                self.denied = Some(reason.clone());
            }
            Decision::Allow { .. } => match LiveSession::start(
                &self.ctx,
                target.clone(),
                &decision,
                source,
                session.handle(),
            )
            .await
            {
                Ok(live) => {
                    info!(session = %live.id, login = %target, "session started");
                    *self.shared.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
                }
                Err(e) => {
                    warn!(error = %e, "session could not start");
                    self.ctx
                        .audit(
                            "session.denied",
                            json!({"login": target.to_string(), "reason": e}),
                        )
                        .await;
                    self.denied = None;
                    self.start_error = Some(e);
                }
            },
        }
    }

    fn live(&self) -> Option<Arc<LiveSession>> {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn refusal(&self) -> String {
        match (&self.denied, &self.start_error) {
            (Some(d), _) => d.to_string(),
            (None, Some(e)) if e.contains("recording") => {
                "access denied: the broker cannot record sessions right now (storage full or failing); the operator has been told".into()
            }
            (None, _) => "access denied: the session could not be started (see the broker's log)".into(),
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        // Plain keys are never enough; note why for the connection's failure summary. OpenSSH
        // offers the bare key after russh silently refused its expired certificate, so the
        // registry of issued certificates can name that reason.
        let fp = crate::keys::fingerprint(key.public_key);
        self.shared.set_user(user);
        let reason = match self.ctx.store.certificates_for_key(&fp).await {
            Ok(certs) if !certs.is_empty() => {
                let t = now();
                if certs
                    .iter()
                    .any(|c| c.valid_after <= t && t < c.valid_before && c.revoked == 0)
                {
                    format!("key {fp} was offered without its certificate")
                } else if let Some(c) = certs
                    .iter()
                    .filter(|c| c.valid_before <= t)
                    .max_by_key(|c| c.valid_before)
                {
                    format!(
                        "certificate {} for key {fp} expired at {}",
                        c.key_id,
                        approvals::time::fmt_time(c.valid_before)
                    )
                } else {
                    format!("certificate for key {fp} is not yet valid")
                }
            }
            _ => format!("plain public key {fp} offered: a vendor certificate is required"),
        };
        self.shared.fail(reason);
        Ok(Auth::reject())
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        self.cert = None;
        self.shared.set_user(user);
        let target = match login::parse(user) {
            Ok(t) => t,
            Err(e) => return Ok(self.reject("auth.certificate", user, e).await),
        };
        if !self.ctx.limiter.allowed(&target.vendor, &self.source()) {
            return Ok(self
                .reject(
                    "auth.certificate",
                    user,
                    "too many failed attempts: try again later".into(),
                )
                .await);
        }
        if let Err(reason) = self.check_certificate(&target, cert).await {
            return Ok(self.reject("auth.certificate", user, reason).await);
        }
        let (key_id, serial) = (cert.key_id().to_owned(), cert.serial());
        if !self
            .ctx
            .audit("auth.certificate", json!({"user": user, "source": self.peer.to_string(), "outcome": "accepted", "key_id": key_id, "serial": serial}))
            .await
        {
            return Ok(Auth::reject());
        }
        self.cert = Some(CertPassed {
            user: user.to_owned(),
            target,
            key_id,
            serial,
        });
        Ok(Auth::Reject {
            proceed_with_methods: Some(ki_only()),
            partial_success: true,
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        // russh does not enforce the method order: only a connection whose certificate passed for
        // this very user name may answer the TOTP prompt.
        let Some(passed) = self.cert.as_ref().filter(|c| c.user == user) else {
            self.cert = None;
            return Ok(self
                .reject(
                    "auth.totp",
                    user,
                    "keyboard-interactive without a valid certificate first".into(),
                )
                .await);
        };
        let Some(mut response) = response else {
            return Ok(totp_prompt());
        };
        let code = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let (vendor, target) = (passed.target.vendor.clone(), passed.target.clone());
        let key_id = passed.key_id.clone();
        let serial = passed.serial;
        if !self.ctx.limiter.allowed(&vendor, &self.source()) {
            self.cert = None;
            return Ok(self
                .reject(
                    "auth.totp",
                    user,
                    "too many failed attempts: try again later".into(),
                )
                .await);
        }
        let secret = match self.ctx.store.vendor(&vendor).await {
            Ok(Some(v)) => v.totp_secret,
            Ok(None) => {
                return Ok(self
                    .reject("auth.totp", user, format!("unknown vendor {vendor}"))
                    .await);
            }
            Err(e) => {
                return Ok(self
                    .reject("auth.totp", user, format!("control plane unavailable: {e}"))
                    .await);
            }
        };
        let step = match approvals::totp::check(&secret, &code, now() as u64) {
            Ok(Some(step)) => step,
            Ok(None) => {
                self.reject("auth.totp", user, "wrong TOTP code".into())
                    .await;
                return Ok(retry_totp());
            }
            Err(e) => return Ok(self.reject("auth.totp", user, e).await),
        };
        match self.ctx.store.consume_totp_step(&vendor, step as i64).await {
            Ok(true) => {}
            Ok(false) => {
                self.reject("auth.totp", user, "TOTP code already used (replay)".into())
                    .await;
                return Ok(retry_totp());
            }
            Err(e) => {
                return Ok(self
                    .reject("auth.totp", user, format!("control plane unavailable: {e}"))
                    .await);
            }
        }
        let ok = self
            .ctx
            .audit("auth.totp", json!({"user": user, "source": self.peer.to_string(), "outcome": "accepted", "key_id": key_id, "serial": serial}))
            .await;
        if !ok {
            return Ok(Auth::reject());
        }
        *self
            .shared
            .authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(target.to_string());
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(passed) = self.cert.take() {
            self.start(passed.target, session).await;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let handle = session.handle();
        if let Some(vendor) = self
            .target
            .as_ref()
            .filter(|t| t.is_requests_listing())
            .map(|t| t.vendor.clone())
        {
            reply.accept().await;
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                let id = channel.id();
                let text = requests_listing(&ctx, &vendor).await;
                let _ = handle.data(id, text.into_bytes()).await;
                let _ = handle.exit_status_request(id, 0).await;
                let _ = handle.eof(id).await;
                let _ = handle.close(id).await;
                drop(channel);
            });
            return Ok(());
        }
        let offer = self
            .target
            .as_ref()
            .filter(|t| t.function.is_some())
            .is_some()
            && matches!(
                self.denied,
                Some(
                    Deny::NoGrant { .. }
                        | Deny::WindowEnded { .. }
                        | Deny::Revoked { .. }
                        | Deny::DeviceNotCovered { .. }
                )
            );
        if offer
            && self.live().is_none()
            && let Some(target) = self.target.clone()
        {
            // No grant for a named function: offer to file a request from this terminal.
            reply.accept().await;
            let (ctx, shared, refusal, source) = (
                self.ctx.clone(),
                self.shared.clone(),
                self.refusal(),
                self.peer.to_string(),
            );
            tokio::spawn(crate::request_flow::offer(
                ctx,
                target,
                refusal,
                channel,
                handle,
                source,
                move |live| {
                    *shared.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
                },
            ));
            return Ok(());
        }
        let Some(live) = self.live().filter(|l| !l.is_closed()) else {
            // Accept only to say why, then close: the vendor sees one plain line.
            reply.accept().await;
            let msg = self.refusal();
            tokio::spawn(async move {
                proxy::refuse_when_asked(&handle, channel, &msg).await;
            });
            return Ok(());
        };
        let upstream = match live.upstream(&self.ctx).await {
            Ok(u) => u,
            Err(e) => {
                reply.accept().await;
                tokio::spawn(async move {
                    proxy::refuse_when_asked(&handle, channel, &e).await;
                });
                return Ok(());
            }
        };
        match upstream.channel_open_session().await {
            Ok(uch) => {
                reply.accept().await;
                let task = tokio::spawn(proxy::session_channel(
                    self.ctx.clone(),
                    live.clone(),
                    channel,
                    uch,
                    Vec::new(),
                ));
                live.add_task(task.abort_handle());
            }
            Err(e) => {
                warn!(error = %e, "device refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.live().filter(|l| !l.is_closed()) else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let kind = format!("forward:{port}");
        // Forwards reach services on the device itself, never a third host.
        let local = matches!(host, "localhost" | "127.0.0.1" | "::1") || host == live.target.device;
        let verdict = match (local, u16::try_from(port)) {
            (false, _) => {
                let refusal =
                    format!("forward target {host} is not the device: use localhost:{port}");
                proxy::audited_answer(&self.ctx, &live, &kind, Some(refusal)).await
            }
            (true, Ok(p)) => proxy::allowed(&self.ctx, &live, approvals::Channel::Forward(p)).await,
            (true, Err(_)) => {
                proxy::audited_answer(
                    &self.ctx,
                    &live,
                    &kind,
                    Some(format!("port {port} is out of range")),
                )
                .await
            }
        };
        if verdict.is_err() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let upstream = match live.upstream(&self.ctx).await {
            Ok(u) => u,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let _ = live.recording.json(
            recorder::Kind::ChannelOpen,
            u32::from(channel.id()),
            &json!({"type": "direct-tcpip", "port": port}),
        );
        match upstream
            .channel_open_direct_tcpip("127.0.0.1", port, originator_address, originator_port)
            .await
        {
            Ok(uch) => {
                reply.accept().await;
                let task = tokio::spawn(proxy::forward_channel(live.clone(), channel, uch, port));
                live.add_task(task.abort_handle());
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwards (ssh -R) would open a path into the vendor's network: never.
        Ok(false)
    }
}

/// A vendor's own access requests, newest first, as text for their terminal.
async fn requests_listing(ctx: &Ctx, vendor: &str) -> String {
    let rows = match ctx.store.requests_of_vendor(vendor).await {
        Ok(r) => r,
        Err(e) => return format!("postern: control plane unavailable: {e}\r\n"),
    };
    if rows.is_empty() {
        return "postern: you have filed no access requests\r\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let decision = match (r.status.as_str(), &r.decided_by, &r.decision_reason) {
            ("approved", Some(by), _) => format!(
                "approved by {by} (grant {})",
                r.grant_id.clone().unwrap_or_default()
            ),
            ("denied", Some(by), reason) => {
                format!("denied by {by}: {}", reason.clone().unwrap_or_default())
            }
            (status, _, _) => status.to_owned(),
        };
        out.push_str(&format!(
            "{}  {}  {}/{}:{}  {}  \"{}\"  {}\r\n",
            r.id,
            approvals::time::fmt_time(r.created),
            r.site,
            r.device,
            r.function,
            humantime::format_duration(Duration::from_secs(r.duration.max(0) as u64)),
            r.reason,
            decision
        ));
    }
    out
}

/// Server configuration for the vendor side.
pub fn server_config(host_key: PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Postern".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        // No blanket delay: OpenSSH's normal path here includes two refusals (the bare key it
        // offers before the certificate, and the certificate's partial success), which a delay
        // would add to every login. Genuine failures wait in `Conn::reject`.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 10,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        // russh sends its keepalive even while the client is still authenticating, and OpenSSH
        // then drops the connection ("bad message during authentication"): a vendor who takes
        // more than the interval to type the TOTP code would be cut off. Dead connections are
        // found by TCP keepalive instead (see `serve`).
        keepalive_interval: None,
        nodelay: true,
        ..Default::default()
    })
}

/// Accepts vendor connections until the listener fails.
pub async fn serve(
    ctx: Arc<Ctx>,
    config: Arc<russh::server::Config>,
    listener: TcpListener,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        // A vanished vendor (laptop closed, network gone) is noticed within about two minutes.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10))
            .with_retries(6);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            warn!(peer = %peer, error = %e, "could not set TCP keepalive");
        }
        let ctx = ctx.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let shared = Arc::new(ConnShared::default());
            let conn = Conn {
                ctx: ctx.clone(),
                peer,
                cert: None,
                denied: None,
                start_error: None,
                target: None,
                shared: shared.clone(),
            };
            let result = match russh::server::run_stream(config, stream, conn).await {
                Ok(running) => running.await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                info!(peer = %peer, error = %e, "connection ended with an error");
            }
            let live = shared.live.lock().unwrap_or_else(|p| p.into_inner()).take();
            let authenticated = shared
                .authenticated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !authenticated {
                let reasons =
                    std::mem::take(&mut *shared.failures.lock().unwrap_or_else(|p| p.into_inner()));
                let user = shared
                    .last_user
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let reasons = if reasons.is_empty() {
                    vec!["closed before authenticating".to_string()]
                } else {
                    reasons
                };
                ctx.audit(
                    "auth.failed",
                    json!({"user": user, "source": peer.to_string(), "reasons": reasons}),
                )
                .await;
            }
            connection_ended(live).await;
        });
    }
}
