//! Vendor self-service at the front door: `enroll:CODE` (any key that proves possession; the code
//! decides), `VENDOR:renew` and `VENDOR:config` (certificate and TOTP, as any login). The answer
//! goes down the session channel: the certificate or config block on stdout, everything for the
//! person (TOTP enrolment, refusals) on stderr.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use approvals::audit::{AuditEvent, bounded};
use russh::ChannelMsg;
use russh::keys::PublicKey;
use russh::server::{Auth, Handle, Msg};
use russh::{Channel, ChannelId};
use serde_json::json;
use tracing::{info, warn};

use super::listener::ConnShared;
use super::state::{ConnState, Enrolling, Outcome, Ready};
use super::{Conn, LOGGED, MAX_USER, OUTAGE};
use crate::keys::Restrictions;
use crate::self_service::SelfServiceError;
use crate::session::{Ctx, Permits};

/// How long a self-service channel waits for the client's shell or exec request.
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// The one line for an enrolment code that does not work (whichever way it does not).
const BAD_CODE: &str = "enrolment refused: the code is unknown, already used or expired; ask your operator for a new invite";

/// What a self-service channel does.
pub(super) enum Job {
    Enrol {
        code: String,
        key: PublicKey,
        peer: SocketAddr,
        shared: Arc<ConnShared>,
    },
    Renew {
        vendor: String,
        key: PublicKey,
        permits: Permits,
    },
    Config {
        vendor: String,
        reached: SocketAddr,
    },
    WebLink {
        vendor: String,
    },
}

impl Conn {
    /// A key offered for `enroll:CODE`: the signature proved possession, so the key is accepted
    /// if the code is well formed; the code itself is burnt (or refused) on the channel, where
    /// the vendor can be told why. Throttled sources are refused here.
    pub(super) async fn enrolment_key(&mut self, user: &str, code: &str, key: &PublicKey) -> Auth {
        self.state = ConnState::Unauthenticated;
        let user = &redacted(user);
        self.shared.set_user(user);
        if !self.ctx.source_limiter.allowed(&self.source()) {
            return self.throttled().await;
        }
        let well_formed = !code.is_empty()
            && user.len() <= MAX_USER
            && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !well_formed {
            return self
                .refuse_first_factor(AuditEvent::VendorEnrolRefused, user, BAD_CODE.into())
                .await;
        }
        self.state = ConnState::Enrolling(Enrolling {
            code: code.to_owned(),
            key: key.clone(),
        });
        Auth::Accept
    }

    /// The self-service job for a session channel on this connection, if it is one. It is
    /// taken: a second channel on the connection gets nothing.
    pub(super) fn self_service_job(&mut self) -> Option<Job> {
        let job = self.peek_job();
        if job.is_some() {
            self.state = ConnState::Spent;
        }
        job
    }

    fn peek_job(&self) -> Option<Job> {
        match &self.state {
            ConnState::Enrolling(e) => Some(Job::Enrol {
                code: e.code.clone(),
                key: e.key.clone(),
                peer: self.peer,
                shared: self.shared.clone(),
            }),
            ConnState::Ready(Ready {
                target,
                permits,
                outcome: Outcome::Renew(key),
            }) => Some(Job::Renew {
                vendor: target.vendor.clone(),
                key: key.clone(),
                permits: *permits,
            }),
            ConnState::Ready(Ready {
                target,
                outcome: Outcome::ConfigBlock,
                ..
            }) => Some(Job::Config {
                vendor: target.vendor.clone(),
                reached: self.local,
            }),
            ConnState::Ready(Ready {
                target,
                outcome: Outcome::WebLink,
                ..
            }) => Some(Job::WebLink {
                vendor: target.vendor.clone(),
            }),
            _ => None,
        }
    }
}

impl Job {
    /// Waits for the shell or exec request, then answers it and closes the channel.
    pub(super) async fn run(self, ctx: Arc<Ctx>, mut channel: Channel<Msg>, handle: Handle) {
        let id = channel.id();
        let Some(command) = wait_request(&mut channel).await else {
            return;
        };
        let _ = handle.channel_success(id).await;
        let reply = match self {
            Job::Enrol {
                code,
                key,
                peer,
                shared,
            } => enrol(&ctx, &code, &key, peer, &shared).await,
            Job::Renew {
                vendor,
                key,
                permits,
            } => renew(&ctx, &vendor, &key, permits).await,
            Job::WebLink { vendor } => web_link(&ctx, &vendor).await,
            Job::Config { vendor, reached } => {
                let identity = command.as_deref().map(str::trim).filter(|c| !c.is_empty());
                config(&ctx, &vendor, reached, identity).await
            }
        };
        answer(&handle, id, reply).await;
        drop(channel);
    }
}

/// A login name as it may be logged: an enrolment code is a secret until it is burnt, so only a
/// prefix of its hash is shown (`enroll:3f9a1c2b4d5e`).
pub(super) fn redacted(user: &str) -> std::borrow::Cow<'_, str> {
    match user.strip_prefix("enroll:") {
        Some(code) => {
            let hash = approvals::store::invite_hash(code);
            format!("enroll:{}", &hash[..12]).into()
        }
        None => user.into(),
    }
}

/// What goes back: stdout, stderr, exit status.
struct Reply {
    stdout: String,
    stderr: String,
    status: u32,
}

impl Reply {
    fn refused(line: &str) -> Reply {
        Reply {
            stdout: String::new(),
            stderr: format!("postern: {line}\r\n"),
            status: 1,
        }
    }
}

async fn answer(handle: &Handle, id: ChannelId, reply: Reply) {
    if !reply.stdout.is_empty() {
        let _ = handle.data(id, reply.stdout.into_bytes()).await;
    }
    if !reply.stderr.is_empty() {
        let _ = handle.extended_data(id, 1, reply.stderr.into_bytes()).await;
    }
    let _ = handle.exit_status_request(id, reply.status).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}

/// The client's shell or exec request (`Some(None)` for a shell); `None` if it closed or never
/// asked in time.
async fn wait_request(channel: &mut Channel<Msg>) -> Option<Option<String>> {
    tokio::time::timeout(REQUEST_WAIT, async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::RequestShell { .. }) => return Some(None),
                Some(ChannelMsg::Exec { command, .. }) => {
                    return Some(Some(String::from_utf8_lossy(&command).into_owned()));
                }
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return None,
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or(None)
}

/// Burns the code and certifies the key; a refusal is audited, counted against the source and
/// told in one line.
async fn enrol(
    ctx: &Ctx,
    code: &str,
    key: &PublicKey,
    peer: SocketAddr,
    shared: &ConnShared,
) -> Reply {
    match ctx.self_service.enrol(code, key).await {
        Ok(done) => {
            info!(vendor = %done.vendor, peer = %peer, "vendor enrolled");
            shared.authenticated();
            let stderr = format!(
                "postern: certificate issued for {} (key {}).\r\nTOTP enrolment (shown once; scan it in an authenticator app):\r\n{}\r\n{}\r\n",
                done.vendor,
                crate::keys::fingerprint(key),
                done.otpauth,
                done.qr.replace('\n', "\r\n")
            );
            Reply {
                stdout: format!("{}\n", done.certificate),
                stderr,
                status: 0,
            }
        }
        Err(e) if e.is_refusal() => {
            let reason = bounded(&e.to_string(), LOGGED);
            warn!(peer = %peer, reason, "enrolment refused");
            // A stranger's refusals are audited within the per-source budget, as any failure
            // before the first factor: they cannot fill the disk.
            if ctx.admission.exempt(peer.ip()) || ctx.detail_budget.allow(peer.ip()) {
                ctx.audit(
                    AuditEvent::VendorEnrolRefused,
                    json!({"source": peer.to_string(), "key": crate::keys::fingerprint(key), "reason": reason}),
                )
                .await;
            } else {
                ctx.throttled
                    .count("enrolment refused (beyond the audit budget)", peer.ip());
            }
            ctx.source_limiter
                .failed(&approvals::audit::source_key(peer.ip()).to_string());
            shared.fail(reason);
            tokio::time::sleep(super::auth::FAILURE_DELAY).await;
            Reply::refused(BAD_CODE)
        }
        Err(e) => outage(ctx, "enrol", &e, Some(peer)).await,
    }
}

/// A fresh certificate for the same key, with the same permissions as the one that logged in.
async fn renew(ctx: &Ctx, vendor: &str, key: &PublicKey, permits: Permits) -> Reply {
    let restrict = Restrictions {
        no_pty: !permits.pty,
        no_port_forwarding: !permits.port_forwarding,
    };
    match ctx
        .self_service
        .renew(vendor, key, restrict, permits.serial)
        .await
    {
        Ok(cert) => Reply {
            stdout: format!("{cert}\n"),
            stderr: format!("postern: certificate renewed for {vendor}\r\n"),
            status: 0,
        },
        Err(e) if e.is_refusal() => {
            ctx.audit(
                AuditEvent::SessionDenied,
                json!({"login": format!("{vendor}:renew"), "reason": bounded(&e.to_string(), LOGGED)}),
            )
            .await;
            Reply::refused(&format!("renewal refused: {e}"))
        }
        Err(e) => outage(ctx, "renew", &e, None).await,
    }
}

async fn web_link(ctx: &Ctx, vendor: &str) -> Reply {
    use approvals::ActionError;
    match ctx.self_service.web_link(vendor).await {
        Ok((link, expires)) => Reply {
            stdout: format!("{link}\n"),
            stderr: format!(
                "postern: open this link in your browser before {} (once): it signs you in to the device web UIs your grants reach\r\n",
                approvals::time::fmt_time(expires)
            ),
            status: 0,
        },
        Err(
            e @ (ActionError::NotFound(_) | ActionError::Conflict(_) | ActionError::Invalid(_)),
        ) => {
            ctx.audit(
                AuditEvent::SessionDenied,
                json!({"login": format!("{vendor}:web"), "reason": bounded(&e.to_string(), LOGGED)}),
            )
            .await;
            Reply::refused(&e.to_string())
        }
        Err(e) => {
            warn!(error = %e, "web sign-in link not made");
            Reply::refused(&format!("{e}; try again shortly"))
        }
    }
}

async fn config(ctx: &Ctx, vendor: &str, reached: SocketAddr, identity: Option<&str>) -> Reply {
    if identity.is_some_and(|i| !crate::ssh_config::safe_identity(i)) {
        return Reply::refused(
            "the key file must be one path without spaces, quotes or control characters",
        );
    }
    match ctx
        .self_service
        .config_block(vendor, reached, identity)
        .await
    {
        Ok(block) => Reply {
            stdout: block,
            stderr: String::new(),
            status: 0,
        },
        Err(e) => outage(ctx, "config", &SelfServiceError::Outage(e), None).await,
    }
}

/// An outage is reported as one: audited, and the vendor told to retry later.
async fn outage(ctx: &Ctx, what: &str, e: &SelfServiceError, peer: Option<SocketAddr>) -> Reply {
    warn!(error = %e, what, "self-service failed");
    ctx.audit(
        AuditEvent::SessionError,
        json!({"login": what, "source": peer.map(|p| p.to_string()), "reason": bounded(&e.to_string(), LOGGED)}),
    )
    .await;
    Reply::refused(OUTAGE)
}
