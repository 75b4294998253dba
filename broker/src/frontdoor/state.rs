//! Where a connection stands, and what the policy made of it once both factors passed.

use approvals::audit::AuditEvent;
use std::sync::Arc;

use approvals::audit::bounded;
use approvals::{AccessRequest, Allowed, Deny, PolicyGate, Refusal, StoreError};
use russh::server::Handle;
use serde_json::json;
use tracing::{info, warn};

use super::{Conn, LOGGED};
use crate::login::{Service, Target};
use crate::session::{LiveSession, OUTAGE, Permits, StartError};
use russh::keys::PublicKey;

/// Where a connection stands. russh does not enforce the order of the methods, so each
/// authentication step checks the state it expects.
pub(super) enum ConnState {
    /// No certificate has passed (yet, or any more).
    Unauthenticated,
    /// The certificate passed for this user name; the TOTP code is next.
    CertificateAccepted(CertPassed),
    /// Both factors passed and the policy was asked.
    Ready(Ready),
    /// `enroll:CODE` with a key the client proved to hold; the code is checked on the channel.
    Enrolling(Enrolling),
    /// A self-service answer (enrolment, renewal, config block) was given: one per connection,
    /// so that a kept-open (multiplexed) connection cannot ask again without logging in again.
    Spent,
}

/// An enrolment login: the code, and the key to certify.
pub(super) struct Enrolling {
    pub code: String,
    pub key: PublicKey,
}

/// The certificate step passed: for whom and for what.
pub(super) struct CertPassed {
    pub user: String,
    pub target: Target,
    pub key_id: String,
    pub serial: u64,
    pub permits: Permits,
    /// The certified key (what `VENDOR:renew` certifies again).
    pub key: PublicKey,
}

/// A connection past both factors.
pub(super) struct Ready {
    pub target: Target,
    pub permits: Permits,
    pub outcome: Outcome,
}

/// What the policy made of an authenticated connection.
pub(super) enum Outcome {
    /// The session runs; its channels go to the device.
    Live(Arc<LiveSession>),
    /// The policy said no; for a named function the vendor may be offered a request.
    Denied(Deny),
    /// The policy's facts could not be loaded: an outage, not a denial.
    Unavailable(StoreError),
    /// Allowed, but the session could not start (recording, database, audit log).
    StartFailed(StartError),
    /// `VENDOR:requests`: the vendor's own requests are listed.
    Listing,
    /// `VENDOR:renew`: a fresh certificate for this key, renewing the certificate (serial in the
    /// permits) that logged in.
    Renew(PublicKey),
    /// `VENDOR:config`: the `~/.ssh/config` block for the vendor's grants.
    ConfigBlock,
    /// `VENDOR:web`: a one-time sign-in link to the device web front door.
    WebLink,
}

impl Ready {
    /// No grant for a named function: the vendor may file a request (or open break-glass) from
    /// the terminal.
    pub fn offers_request(&self) -> bool {
        self.target.function.is_some()
            && matches!(
                self.outcome,
                Outcome::Denied(
                    Deny::NoGrant { .. }
                        | Deny::WindowEnded { .. }
                        | Deny::Revoked { .. }
                        | Deny::DeviceNotCovered { .. }
                )
            )
    }
}

impl ConnState {
    /// The one line a vendor without a working session is shown.
    pub fn refusal(&self) -> String {
        let outcome = match self {
            ConnState::Ready(ready) => &ready.outcome,
            ConnState::Spent => {
                return "one self-service request per connection: connect again".into();
            }
            _ => return could_not_start(),
        };
        match outcome {
            Outcome::Unavailable(_) | Outcome::StartFailed(StartError::Register(_)) => {
                OUTAGE.into()
            }
            Outcome::Denied(d) => d.to_string(),
            Outcome::StartFailed(StartError::Recording(_)) => {
                "access denied: the broker cannot record sessions right now (storage full or failing); the operator has been told".into()
            }
            Outcome::StartFailed(StartError::Audit)
            | Outcome::Live(_)
            | Outcome::Listing
            | Outcome::Renew(_)
            | Outcome::ConfigBlock
            | Outcome::WebLink => {
                could_not_start()
            }
        }
    }
}

fn could_not_start() -> String {
    "access denied: the session could not be started (see the broker's log)".into()
}

impl Conn {
    /// After both factors: ask the policy and, if allowed, start the live session.
    pub(super) async fn both_factors_passed(&mut self, handle: Handle) {
        let passed = match std::mem::replace(&mut self.state, ConnState::Unauthenticated) {
            ConnState::CertificateAccepted(passed) => passed,
            other => {
                self.state = other;
                return;
            }
        };
        let outcome = match passed.target.service {
            Some(Service::Renew) => Outcome::Renew(passed.key),
            Some(Service::Config) => Outcome::ConfigBlock,
            Some(Service::Web) => Outcome::WebLink,
            _ => self.decide(&passed.target, passed.permits, handle).await,
        };
        self.state = ConnState::Ready(Ready {
            target: passed.target,
            permits: passed.permits,
            outcome,
        });
    }

    async fn decide(&self, target: &Target, permits: Permits, handle: Handle) -> Outcome {
        if target.is_requests_listing() {
            return Outcome::Listing;
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
                self.ctx.audit(AuditEvent::SessionError, json!({"login": target.to_string(), "source": source, "reason": format!("control plane unavailable: {}", bounded(&e.to_string(), LOGGED))})).await;
                Outcome::Unavailable(e)
            }
            Err(Refusal::Deny(reason)) => {
                self.ctx.metrics.denied(reason.code());
                self.ctx.audit(AuditEvent::SessionDenied, json!({"login": target.to_string(), "source": source, "reason": reason.to_string()})).await;
                Outcome::Denied(reason)
            }
            Ok(allowed) => self.start(target, &allowed, permits, source, handle).await,
        }
    }

    async fn start(
        &self,
        target: &Target,
        allowed: &Allowed,
        permits: Permits,
        source: String,
        handle: Handle,
    ) -> Outcome {
        match LiveSession::start(&self.ctx, target.clone(), allowed, source, Some(handle)).await {
            Ok(live) => {
                info!(session = %live.id, login = %target, "session started");
                live.set_permits(permits);
                self.shared.set_live(live.clone());
                Outcome::Live(live)
            }
            Err(e) => {
                warn!(error = %e, "session could not start");
                self.ctx
                    .audit(
                        AuditEvent::SessionDenied,
                        json!({"login": target.to_string(), "reason": e.to_string()}),
                    )
                    .await;
                Outcome::StartFailed(e)
            }
        }
    }

    /// The connection's live session: the one started at login, or one the request dialogue
    /// started later.
    pub(super) fn live(&self) -> Option<Arc<LiveSession>> {
        match &self.state {
            ConnState::Ready(Ready {
                outcome: Outcome::Live(live),
                ..
            }) => Some(live.clone()),
            _ => self.shared.live(),
        }
    }
}
