//! The SSH front door: a russh server that authenticates vendors by certificate then TOTP, asks the
//! policy decision, and hands channels to the proxy.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use approvals::audit::bounded;
use approvals::lockout::{Attempt, Subject};
use approvals::time::now;
use approvals::{AccessRequest, Deny, PolicyGate, Refusal};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Certificate, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Response, Session};
use russh::{Channel, ChannelOpenFailure, MethodKind, MethodSet};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::admission::{Outcome, Ticket, accept_backoff};
use crate::login::{self, Target};
use crate::proxy;
use crate::session::{Ctx, LiveSession, Permits, StartError, connection_ended};

/// The longest SSH user name looked at: `VENDOR:SITE/DEVICE:FUNCTION` with 64-character parts
/// fits easily. Longer names are refused before anything else happens.
pub const MAX_USER: usize = 300;
/// How much of a client-supplied name or reason goes into the audit log.
const LOGGED: usize = 200;
/// Failure reasons kept per connection for its summary event.
const MAX_REASONS: usize = 16;
/// Authentication callbacks one connection may make (each key offered is one) before it is
/// dropped: every offer costs a database lookup.
const MAX_AUTH_CALLS: u32 = 32;
/// Plain keys per connection looked up in the registry to explain a refusal.
const MAX_KEY_LOOKUPS: u32 = 3;
/// What the vendor is told when the control plane cannot be reached.
pub const OUTAGE: &str = "the broker cannot reach its control plane; try again shortly (this is an outage, not a refusal)";

/// State shared between a connection's handler and the task that waits for it to end.
#[derive(Default)]
struct ConnShared {
    live: Mutex<Option<Arc<LiveSession>>>,
    authenticated: Mutex<Option<String>>,
    /// What went wrong so far, for the audit event of a connection that never authenticates.
    failures: Mutex<Vec<String>>,
    last_user: Mutex<String>,
    /// This connection's place among the unauthenticated ones (see [`crate::admission`]).
    ticket: Mutex<Option<Ticket>>,
    /// Opened when both factors passed; the login grace time no longer applies.
    gate: Arc<Gate>,
    /// Authentication callbacks so far.
    auth_calls: AtomicU32,
    /// The control plane failed during authentication: the vendor is told so.
    outage: AtomicBool,
    /// Plain keys looked up in the certificate registry so far.
    key_lookups: AtomicU32,
}

impl ConnShared {
    fn fail(&self, reason: String) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < MAX_REASONS {
            f.push(bounded(&reason, LOGGED));
        }
    }
    fn set_user(&self, user: &str) {
        *self.last_user.lock().unwrap_or_else(|p| p.into_inner()) = bounded(user, LOGGED);
    }
    fn outcome(&self, o: Outcome) {
        if let Some(t) = self
            .ticket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            t.set_outcome(o);
        }
    }
}

/// Whether a connection has authenticated, and whether its login grace time ran out first.
#[derive(Default)]
struct Gate {
    authenticated: AtomicBool,
    expired: AtomicBool,
}

/// The vendor's TCP stream, cut (every read and write fails) once the login grace time has run
/// out before both factors passed. It works at the byte level, so it holds whatever state the
/// SSH session is in: a client that never sends its version line, stalls the key exchange or
/// sits at the TOTP prompt alike.
struct GraceStream {
    inner: TcpStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    gate: Arc<Gate>,
}

impl GraceStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.gate.authenticated.load(Ordering::Acquire) {
            return None;
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.gate.expired.store(true, Ordering::Release);
            return Some(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "login grace time exceeded",
            ));
        }
        None
    }
}

impl AsyncRead for GraceStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GraceStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The certificate step passed: for whom and for what.
struct CertPassed {
    user: String,
    target: Target,
    key_id: String,
    serial: u64,
    permits: Permits,
}

pub struct Conn {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    cert: Option<CertPassed>,
    denied: Option<Deny>,
    /// Why an allowed session could not start (recording, database): for the vendor's message.
    start_error: Option<StartError>,
    /// The control plane could not be reached when deciding: an outage, not a denial.
    outage: bool,
    permits: Permits,
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
    /// The key failures are counted under: the address, or its /64 for IPv6.
    fn source(&self) -> String {
        approvals::audit::source_key(self.peer.ip()).to_string()
    }

    /// A failure before the first factor passed (no certificate, a foreign or unissued one, a
    /// malformed login): audited (bounded), counted against the *source* only, never against the
    /// named vendor, so that a stranger cannot lock anyone out.
    async fn refuse_first_factor(&mut self, event: &str, user: &str, reason: String) -> Auth {
        let user = bounded(user, LOGGED);
        let reason = bounded(&reason, LOGGED);
        warn!(peer = %self.peer, user, reason, "{event}");
        if self.ctx.admission.exempt(self.peer.ip()) || self.ctx.detail_budget.allow(self.peer.ip())
        {
            self.ctx
                .audit(event, json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason}))
                .await;
        } else {
            self.ctx.throttled.count(
                "failed before the first factor (beyond the audit budget)",
                self.peer.ip(),
            );
        }
        self.ctx.source_limiter.failed(&self.source());
        self.shared.outcome(Outcome::AuthFail);
        self.shared.fail(reason);
        tokio::time::sleep(FAILURE_DELAY).await;
        Auth::reject()
    }

    /// The source is over its limit of failures: counted into the periodic summary instead of
    /// one audit event each, so that a flood cannot fill the disk.
    async fn throttled(&mut self) -> Auth {
        self.ctx
            .throttled
            .count("too many failed attempts from this address", self.peer.ip());
        self.shared.outcome(Outcome::AuthFail);
        self.shared
            .fail("too many failed attempts from this address: try again later".into());
        tokio::time::sleep(FAILURE_DELAY).await;
        Auth::reject()
    }

    /// A wrong second factor after a verified certificate: already counted against the vendor
    /// in the database when the attempt was granted (shared by every node, exponential
    /// backoff); audited with the lock it brought.
    async fn refuse_second_factor(&mut self, user: &str, vendor: &str, reason: &str) {
        let locked_until = match approvals::store::deadline(
            self.ctx
                .store
                .second_factor_locked_until(Subject::Vendor(vendor), now()),
        )
        .await
        {
            Ok(l) => l.map(approvals::time::fmt_time),
            Err(e) => {
                warn!(error = %e, "could not read the TOTP lock");
                None
            }
        };
        warn!(peer = %self.peer, user, reason, "auth.totp");
        self.ctx
            .audit("auth.totp", json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason, "locked_until": locked_until}))
            .await;
        self.shared.outcome(Outcome::SecondFactorFail);
        self.shared.fail(reason.to_owned());
        tokio::time::sleep(FAILURE_DELAY).await;
    }

    /// The control plane failed during authentication: nothing is counted against anyone.
    async fn outage_during_auth(&mut self, event: &str, user: &str, error: String) -> Auth {
        warn!(peer = %self.peer, error, "{event}: control plane unavailable");
        self.ctx
            .audit(event, json!({"user": bounded(user, LOGGED), "source": self.peer.to_string(), "outcome": "error", "reason": format!("control plane unavailable: {}", bounded(&error, LOGGED))}))
            .await;
        self.shared.fail("control plane unavailable".into());
        self.shared.outage.store(true, Ordering::Relaxed);
        // Keyboard-interactive next, where the vendor is told why (see there).
        Auth::Reject {
            proceed_with_methods: Some(ki_only()),
            partial_success: false,
        }
    }

    /// Counts an authentication callback; `false` once the connection has made too many.
    fn count_call(&self) -> bool {
        self.shared.auth_calls.fetch_add(1, Ordering::Relaxed) < MAX_AUTH_CALLS
    }

    /// The checks russh leaves to us: CA, type, principal, critical options, vendor state.
    async fn check_certificate(
        &self,
        target: &Target,
        cert: &Certificate,
    ) -> Result<(), CertRefusal> {
        // A CA registered by another node a moment ago is looked up before anything is refused.
        let ca = cert
            .signature_key()
            .fingerprint(russh::keys::HashAlg::Sha256);
        let _ = self.ctx.ca.knows(&self.ctx.store, &ca).await;
        self.certificate_fields(target, cert)?;
        let vendor = || target.vendor.clone();
        match approvals::store::deadline(self.ctx.store.vendor(&target.vendor)).await {
            Err(e) => return Err(CertRefusal::Outage(e)),
            Ok(None) => return Err(CertRefusal::UnknownVendor(vendor())),
            Ok(Some(v)) if v.is_disabled() => return Err(CertRefusal::VendorDisabled(vendor())),
            Ok(Some(v)) if v.contract_end.is_some_and(|end| now() >= end) => {
                return Err(CertRefusal::ContractEnded(vendor()));
            }
            Ok(Some(_)) => {}
        }
        // Only certificates the broker issued to this vendor (serial, key id and key as
        // registered, not revoked): a CA key copied elsewhere cannot mint working certificates.
        let fp = cert
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string();
        let issued = approvals::store::deadline(self.ctx.store.certificates_for_key(&fp))
            .await
            .map_err(CertRefusal::Outage)?;
        let serial = cert.serial().to_string();
        match issued
            .iter()
            .find(|c| c.serial == serial && c.vendor == target.vendor && c.key_id == cert.key_id())
        {
            None => Err(CertRefusal::NotIssued {
                serial,
                key_id: bounded(cert.key_id(), 80),
                vendor: vendor(),
            }),
            Some(c) if c.revoked => Err(CertRefusal::Revoked(serial)),
            Some(_) => Ok(()),
        }
    }

    /// What can be checked from the certificate alone: CA, type, principal, critical options.
    fn certificate_fields(
        &self,
        target: &Target,
        cert: &Certificate,
    ) -> Result<(), CertFieldError> {
        cert.validate(&self.ctx.ca.current()).map_err(|e| match e {
            russh::keys::ssh_key::Error::CertificateValidation => CertFieldError::Untrusted,
            other => CertFieldError::Invalid(other),
        })?;
        if cert.cert_type() != CertType::User {
            return Err(CertFieldError::NotUser);
        }
        if cert.valid_principals().is_empty() {
            return Err(CertFieldError::NoPrincipals);
        }
        if !cert.valid_principals().iter().any(|p| p == &target.vendor) {
            return Err(CertFieldError::NotForVendor {
                principals: cert.valid_principals().to_vec(),
                vendor: target.vendor.clone(),
            });
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
                        return Err(CertFieldError::SourceAddress {
                            peer: self.peer.ip(),
                            allowed: value.clone(),
                        });
                    }
                }
                other => {
                    return Err(CertFieldError::CriticalOption(bounded(other, 64)));
                }
            }
        }
        Ok(())
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
        let source = self.peer.to_string();
        match PolicyGate::new(&self.ctx.store).check(&req).await {
            Err(Refusal::Unavailable(e)) => {
                // An outage, not a denial: no request dialogue, and the vendor is told so.
                warn!(error = %e, "policy facts unavailable");
                self.outage = true;
                self.ctx.audit("session.error", json!({"login": target.to_string(), "source": source, "reason": format!("control plane unavailable: {}", bounded(&e.to_string(), LOGGED))})).await;
            }
            Err(Refusal::Deny(reason)) => {
                self.ctx.audit("session.denied", json!({"login": target.to_string(), "source": source, "reason": reason.to_string()})).await;
                self.denied = Some(reason);
            }
            Ok(allowed) => match LiveSession::start(
                &self.ctx,
                target.clone(),
                &allowed,
                source,
                session.handle(),
            )
            .await
            {
                Ok(live) => {
                    info!(session = %live.id, login = %target, "session started");
                    live.set_permits(self.permits);
                    *self.shared.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(live);
                }
                Err(e) => {
                    warn!(error = %e, "session could not start");
                    self.ctx
                        .audit(
                            "session.denied",
                            json!({"login": target.to_string(), "reason": e.to_string()}),
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
        if self.outage {
            return OUTAGE.into();
        }
        match (&self.denied, &self.start_error) {
            (Some(d), _) => d.to_string(),
            (None, Some(StartError::Register(_))) => OUTAGE.into(),
            (None, Some(StartError::Recording(_))) => {
                "access denied: the broker cannot record sessions right now (storage full or failing); the operator has been told".into()
            }
            (None, _) => "access denied: the session could not be started (see the broker's log)".into(),
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if !self.count_call() {
            return Err(russh::Error::Disconnect);
        }
        self.shared.set_user(user);
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
        if !self.count_call() {
            return Err(russh::Error::Disconnect);
        }
        self.shared.set_user(user);
        if user.len() > MAX_USER {
            self.shared
                .fail(format!("user name of {} bytes refused", user.len()));
            self.shared.outcome(Outcome::AuthFail);
            return Ok(Auth::reject());
        }
        // Plain keys are never enough; note why for the connection's failure summary. OpenSSH
        // offers the bare key after russh silently refused its expired certificate, so the
        // registry of issued certificates can name that reason (for the first few keys only:
        // each lookup is a database query). A connection that ends on plain keys alone failed
        // before the first factor.
        self.shared.outcome(Outcome::AuthFail);
        let fp = crate::keys::fingerprint(key.public_key);
        let lookups = self.shared.key_lookups.fetch_add(1, Ordering::Relaxed);
        if lookups >= MAX_KEY_LOOKUPS {
            self.shared.fail(format!(
                "plain public key {fp} offered: a vendor certificate is required"
            ));
            return Ok(Auth::reject());
        }
        let reason =
            match approvals::store::deadline(self.ctx.store.certificates_for_key(&fp)).await {
                Ok(certs) if !certs.is_empty() => {
                    let t = now();
                    if certs
                        .iter()
                        .any(|c| c.valid_after <= t && t < c.valid_before && !c.revoked)
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
        if !self.count_call() {
            return Err(russh::Error::Disconnect);
        }
        self.cert = None;
        self.shared.set_user(user);
        // Refused before anything else: no parsing, no lookup, a bounded audit entry.
        if user.len() > MAX_USER {
            let reason = format!("user name of {} bytes is too long", user.len());
            return Ok(self
                .refuse_first_factor("auth.certificate", user, reason)
                .await);
        }
        if !self.ctx.source_limiter.allowed(&self.source()) {
            return Ok(self.throttled().await);
        }
        let target = match login::parse(user) {
            Ok(t) => t,
            Err(e) => {
                return Ok(self
                    .refuse_first_factor("auth.certificate", user, e.to_string())
                    .await);
            }
        };
        match self.check_certificate(&target, cert).await {
            Ok(()) => {}
            Err(CertRefusal::Outage(e)) => {
                return Ok(self
                    .outage_during_auth("auth.certificate", user, e.to_string())
                    .await);
            }
            Err(refused) => {
                return Ok(self
                    .refuse_first_factor("auth.certificate", user, refused.to_string())
                    .await);
            }
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
            permits: Permits::of(cert),
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
        if !self.count_call() {
            return Err(russh::Error::Disconnect);
        }
        // russh does not enforce the method order: only a connection whose certificate passed for
        // this very user name may answer the TOTP prompt.
        let Some(passed) = self.cert.as_ref().filter(|c| c.user == user) else {
            self.cert = None;
            self.shared.set_user(user);
            if self.shared.outage.load(Ordering::Relaxed) {
                // The certificate could not be checked because the control plane is down: say
                // so in the one place OpenSSH shows a server's words before authentication (the
                // keyboard-interactive instructions), then refuse. Nothing is counted.
                return Ok(match response {
                    None => Auth::Partial {
                        name: "".into(),
                        instructions: format!("postern: {OUTAGE}").into(),
                        prompts: Vec::new().into(),
                    },
                    Some(_) => Auth::reject(),
                });
            }
            if !self.ctx.source_limiter.allowed(&self.source()) {
                return Ok(self.throttled().await);
            }
            return Ok(self
                .refuse_first_factor(
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
        let permits = passed.permits;
        let t = now();
        let secret = match approvals::store::deadline(self.ctx.store.vendor(&vendor)).await {
            Ok(Some(v)) => v.totp_secret,
            Ok(None) => {
                return Ok(self
                    .refuse_first_factor("auth.totp", user, format!("unknown vendor {vendor}"))
                    .await);
            }
            Err(e) => {
                return Ok(self
                    .outage_during_auth("auth.totp", user, e.to_string())
                    .await);
            }
        };
        // The vendor's backoff after wrong codes, shared by every node: the attempt is counted
        // before the code is looked at, so parallel guesses cannot slip past a lock; while
        // locked, no code is even looked at.
        match approvals::store::deadline(
            self.ctx
                .store
                .second_factor_attempt(Subject::Vendor(&vendor), t),
        )
        .await
        {
            Ok(Attempt::Granted) => {}
            Ok(Attempt::Locked(until)) => {
                self.cert = None;
                let reason = format!(
                    "too many wrong TOTP codes: locked until {}",
                    approvals::time::fmt_time(until)
                );
                warn!(peer = %self.peer, user, reason, "auth.totp");
                self.ctx
                    .audit("auth.totp", json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason}))
                    .await;
                self.shared.outcome(Outcome::SecondFactorFail);
                self.shared.fail(reason);
                tokio::time::sleep(FAILURE_DELAY).await;
                return Ok(Auth::reject());
            }
            Err(e) => {
                return Ok(self
                    .outage_during_auth("auth.totp", user, e.to_string())
                    .await);
            }
        }
        let step = match approvals::totp::check(&secret, &code, t as u64) {
            Ok(Some(step)) => step,
            Ok(None) => {
                self.refuse_second_factor(user, &vendor, "wrong TOTP code")
                    .await;
                return Ok(retry_totp());
            }
            Err(e) => {
                warn!(vendor, error = %e, "TOTP secret unreadable");
                return Ok(self
                    .outage_during_auth("auth.totp", user, e.to_string())
                    .await);
            }
        };
        match approvals::store::deadline(self.ctx.store.consume_totp_step(&vendor, step as i64))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                self.refuse_second_factor(user, &vendor, "TOTP code already used (replay)")
                    .await;
                return Ok(retry_totp());
            }
            Err(e) => {
                return Ok(self
                    .outage_during_auth("auth.totp", user, e.to_string())
                    .await);
            }
        }
        if let Err(e) = approvals::store::deadline(
            self.ctx
                .store
                .second_factor_passed(Subject::Vendor(&vendor)),
        )
        .await
        {
            return Ok(self
                .outage_during_auth("auth.totp", user, e.to_string())
                .await);
        }
        let ok = self
            .ctx
            .audit("auth.totp", json!({"user": user, "source": self.peer.to_string(), "outcome": "accepted", "key_id": key_id, "serial": serial}))
            .await;
        if !ok {
            return Ok(Auth::reject());
        }
        self.permits = permits;
        *self
            .shared
            .authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(target.to_string());
        self.shared
            .gate
            .authenticated
            .store(true, Ordering::Release);
        if let Some(t) = self
            .shared
            .ticket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            t.authenticated();
        }
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
            let (ctx, shared, refusal, source, permits) = (
                self.ctx.clone(),
                self.shared.clone(),
                self.refusal(),
                self.peer.to_string(),
                self.permits,
            );
            tokio::spawn(crate::request_flow::offer(
                ctx,
                target,
                refusal,
                channel,
                handle,
                source,
                move |live| {
                    live.set_permits(permits);
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
            // As sshd: a certificate without permit-port-forwarding forwards nothing.
            _ if !live.permits().port_forwarding => {
                let refusal = "port forwarding is not permitted by your certificate (no permit-port-forwarding)".to_string();
                proxy::audited_answer(&self.ctx, &live, &kind, Some(refusal)).await
            }
            (false, _) => {
                let refusal = format!(
                    "forward target {} is not the device: use localhost:{port}",
                    bounded(host, 80)
                );
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
    let rows = match approvals::store::deadline(ctx.store.requests_of_vendor(vendor)).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "requests listing: control plane unavailable");
            return format!("postern: {OUTAGE}\r\n");
        }
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

/// What the certificate alone shows to be wrong; `Display` is the audited reason.
#[derive(Debug, thiserror::Error)]
enum CertFieldError {
    #[error("certificate is not signed by a trusted vendor CA (or is outside its validity)")]
    Untrusted,
    #[error("certificate rejected: {0}")]
    Invalid(russh::keys::ssh_key::Error),
    #[error("certificate is not a user certificate")]
    NotUser,
    #[error("certificate has no principals")]
    NoPrincipals,
    #[error("certificate principals {principals:?} do not include vendor {vendor}")]
    NotForVendor {
        principals: Vec<String>,
        vendor: String,
    },
    #[error("source address {peer} is not allowed by the certificate ({allowed})")]
    SourceAddress {
        peer: std::net::IpAddr,
        allowed: String,
    },
    /// The option's name, bounded: it comes from the vendor.
    #[error("certificate has unsupported critical option {0}")]
    CriticalOption(String),
}

/// Why a certificate was not accepted. Every variant but `Outage` is a refusal counted against
/// the source; `Display` is the audited reason.
#[derive(Debug, thiserror::Error)]
enum CertRefusal {
    #[error(transparent)]
    Fields(#[from] CertFieldError),
    #[error("unknown vendor {0}")]
    UnknownVendor(String),
    #[error("vendor {0} is disabled")]
    VendorDisabled(String),
    #[error("the contract of vendor {0} has ended")]
    ContractEnded(String),
    #[error(
        "certificate serial {serial} (key id {key_id}) was not issued by this broker to vendor {vendor}"
    )]
    NotIssued {
        serial: String,
        key_id: String,
        vendor: String,
    },
    #[error("certificate serial {0} has been revoked")]
    Revoked(String),
    /// The control plane could not be asked: nothing is counted against anyone.
    #[error("{0}")]
    Outage(approvals::StoreError),
}

/// Accepts vendor connections for as long as the broker runs. A failing `accept` (descriptors
/// exhausted, the kernel short of memory) is retried with backoff, never the end of the loop:
/// live sessions must not die because a flood used up the descriptors for a moment.
pub async fn serve(
    ctx: Arc<Ctx>,
    config: Arc<russh::server::Config>,
    listener: TcpListener,
) -> std::io::Result<()> {
    let mut failures: u32 = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => {
                failures = 0;
                s
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = accept_backoff(failures);
                if failures == 1 || failures.is_power_of_two() {
                    warn!(error = %e, failures, "accepting a vendor connection failed; retrying");
                }
                ctx.throttled.count(
                    "accept failed (descriptors or memory exhausted)",
                    std::net::IpAddr::from([0, 0, 0, 0]),
                );
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let ticket = match ctx.admission.admit(peer.ip()) {
            Ok(t) => t,
            // Refused at the door: closed at once, counted into the periodic summary.
            Err(_) => continue,
        };
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
            let gate = Arc::new(Gate::default());
            let shared = Arc::new(ConnShared {
                ticket: Mutex::new(Some(ticket)),
                gate: gate.clone(),
                ..Default::default()
            });
            let stream = GraceStream {
                inner: stream,
                deadline: Box::pin(tokio::time::sleep(ctx.login_grace)),
                gate: gate.clone(),
            };
            let conn = Conn {
                ctx: ctx.clone(),
                peer,
                cert: None,
                denied: None,
                start_error: None,
                outage: false,
                permits: Permits::NONE,
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
            let authenticated = gate.authenticated.load(Ordering::Acquire);
            let expired = gate.expired.load(Ordering::Acquire);
            if expired {
                shared.outcome(Outcome::GraceExceeded);
            }
            // Settles the source's penalty and frees its place.
            drop(
                shared
                    .ticket
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
            if !authenticated {
                let reasons =
                    std::mem::take(&mut *shared.failures.lock().unwrap_or_else(|p| p.into_inner()));
                let user = shared
                    .last_user
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if reasons.is_empty() && user.is_empty() {
                    // Never named anyone (a scanner, a flood of idle connections): counted, not
                    // logged one by one.
                    let why = if expired {
                        "login grace time exceeded before authenticating"
                    } else {
                        "closed before authenticating"
                    };
                    ctx.throttled.count(why, peer.ip());
                } else {
                    let mut reasons = reasons;
                    if expired {
                        reasons.push("login grace time exceeded".into());
                    } else if reasons.is_empty() {
                        reasons.push("closed before authenticating".into());
                    }
                    if ctx.admission.exempt(peer.ip()) || ctx.detail_budget.allow(peer.ip()) {
                        ctx.audit(
                            "auth.failed",
                            json!({"user": user, "source": peer.to_string(), "reasons": reasons}),
                        )
                        .await;
                    } else {
                        ctx.throttled
                            .count("failed connection (beyond the audit budget)", peer.ip());
                    }
                }
            }
            connection_ended(live).await;
        });
    }
}
