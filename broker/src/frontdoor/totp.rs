//! The second factor: the TOTP code at the keyboard-interactive prompt, after the certificate.

use crate::metrics::AuthFailure;
use approvals::audit::AuditEvent;
use approvals::lockout::{Attempt, Subject};
use approvals::time::{fmt_time, now};
use russh::server::Auth;
use serde_json::json;
use tracing::warn;

use super::auth::{FAILURE_DELAY, ki_only};
use super::state::ConnState;
use super::{Conn, OUTAGE};
use crate::admission::Outcome;

/// Why a TOTP code was not accepted.
#[derive(Debug, thiserror::Error)]
enum TotpFailure {
    /// The vendor vanished between the certificate and the code: a first-factor failure.
    #[error("unknown vendor {0}")]
    UnknownVendor(String),
    /// Too many wrong codes: the code is not even looked at.
    #[error("too many wrong TOTP codes: locked until {}", fmt_time(*.0))]
    Locked(i64),
    #[error("wrong TOTP code")]
    Wrong,
    #[error("TOTP code already used (replay)")]
    Replay,
    /// Nothing is counted against anyone.
    #[error("{0}")]
    Outage(#[from] approvals::StoreError),
    #[error("{0}")]
    SecretUnreadable(approvals::totp::TotpError),
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

impl Conn {
    /// A keyboard-interactive step: the prompt, or the vendor's `answer` to it.
    pub(super) async fn keyboard_interactive(
        &mut self,
        user: &str,
        answer: Option<String>,
    ) -> Auth {
        // russh does not enforce the method order: only a connection whose certificate passed
        // for this very user name may answer the TOTP prompt.
        let vendor = match &self.state {
            ConnState::CertificateAccepted(passed) if passed.user == user => {
                passed.target.vendor.clone()
            }
            _ => {
                return self
                    .keyboard_without_certificate(user, answer.is_some())
                    .await;
            }
        };
        let Some(code) = answer else {
            return totp_prompt();
        };
        match self.verify_totp(&vendor, &code).await {
            Ok(()) => self.second_factor_passed(user).await,
            Err(e @ TotpFailure::UnknownVendor(_)) => {
                self.refuse_first_factor(AuditEvent::AuthTotp, user, e.to_string())
                    .await
            }
            Err(e @ TotpFailure::Locked(_)) => {
                self.state = ConnState::Unauthenticated;
                self.totp_locked(user, e.to_string()).await
            }
            Err(e @ (TotpFailure::Wrong | TotpFailure::Replay)) => {
                self.refuse_second_factor(user, &vendor, e.to_string())
                    .await;
                retry_totp()
            }
            Err(e @ TotpFailure::Outage(_)) => {
                self.outage_during_auth(AuditEvent::AuthTotp, user, e.to_string())
                    .await
            }
            Err(TotpFailure::SecretUnreadable(e)) => {
                warn!(vendor, error = %e, "TOTP secret unreadable");
                self.outage_during_auth(AuditEvent::AuthTotp, user, e.to_string())
                    .await
            }
        }
    }

    /// Keyboard-interactive without a certificate that passed for this user name.
    async fn keyboard_without_certificate(&mut self, user: &str, answered: bool) -> Auth {
        self.state = ConnState::Unauthenticated;
        self.shared.set_user(user);
        if self.tries.control_plane_down {
            // The certificate could not be checked because the control plane is down: say
            // so in the one place OpenSSH shows a server's words before authentication (the
            // keyboard-interactive instructions), then refuse. Nothing is counted.
            if answered {
                return Auth::reject();
            }
            return Auth::Partial {
                name: "".into(),
                instructions: format!("postern: {OUTAGE}").into(),
                prompts: Vec::new().into(),
            };
        }
        if !self.ctx.source_limiter.allowed(&self.source()) {
            return self.throttled().await;
        }
        self.refuse_first_factor(
            AuditEvent::AuthTotp,
            user,
            "keyboard-interactive without a valid certificate first".into(),
        )
        .await
    }

    /// Checks a code against the vendor's secret. The vendor's backoff after wrong codes is
    /// shared by every node: the attempt is counted before the code is looked at, so parallel
    /// guesses cannot slip past a lock; while locked, no code is even looked at.
    async fn verify_totp(&self, vendor: &str, code: &str) -> Result<(), TotpFailure> {
        let store = &self.ctx.store;
        let t = now();
        let secret = approvals::store::deadline(store.vendor(vendor))
            .await?
            .ok_or_else(|| TotpFailure::UnknownVendor(vendor.to_owned()))?
            .totp_secret;
        let attempt = store.second_factor_attempt(Subject::Vendor(vendor), t);
        if let Attempt::Locked(until) = approvals::store::deadline(attempt).await? {
            return Err(TotpFailure::Locked(until));
        }
        let step = approvals::totp::check(&secret, code, t as u64)
            .map_err(TotpFailure::SecretUnreadable)?
            .ok_or(TotpFailure::Wrong)?;
        if !approvals::store::deadline(store.consume_totp_step(vendor, step as i64)).await? {
            return Err(TotpFailure::Replay);
        }
        approvals::store::deadline(store.second_factor_passed(Subject::Vendor(vendor))).await?;
        Ok(())
    }

    /// Both factors passed: audited (failing closed), then the grace cut and the admission cap
    /// are lifted. The state stays `CertificateAccepted` until russh reports the success.
    async fn second_factor_passed(&mut self, user: &str) -> Auth {
        let ConnState::CertificateAccepted(passed) = &self.state else {
            return Auth::reject();
        };
        let fields = json!({"user": user, "source": self.peer.to_string(), "outcome": "accepted", "key_id": passed.key_id, "serial": passed.serial});
        if !self.ctx.audit(AuditEvent::AuthTotp, fields).await {
            return Auth::reject();
        }
        self.shared.authenticated();
        Auth::Accept
    }

    /// A wrong or replayed code after a verified certificate: already counted against the
    /// vendor in the database when the attempt was granted (shared by every node, exponential
    /// backoff); audited with the lock it brought.
    async fn refuse_second_factor(&mut self, user: &str, vendor: &str, reason: String) {
        let locked = self
            .ctx
            .store
            .second_factor_locked_until(Subject::Vendor(vendor), now());
        let locked_until = match approvals::store::deadline(locked).await {
            Ok(l) => l.map(fmt_time),
            Err(e) => {
                warn!(error = %e, "could not read the TOTP lock");
                None
            }
        };
        warn!(peer = %self.peer, user, reason, "auth.totp");
        self.ctx.metrics.auth_failed(AuthFailure::Totp);
        self.ctx
            .audit(AuditEvent::AuthTotp, json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason, "locked_until": locked_until}))
            .await;
        self.second_factor_failed(reason).await;
    }

    /// The vendor is locked out after wrong codes: this code was not looked at.
    async fn totp_locked(&mut self, user: &str, reason: String) -> Auth {
        warn!(peer = %self.peer, user, reason, "auth.totp");
        self.ctx.metrics.auth_failed(AuthFailure::RateLimited);
        self.ctx
            .audit(AuditEvent::AuthTotp, json!({"user": user, "source": self.peer.to_string(), "outcome": "denied", "reason": reason}))
            .await;
        self.second_factor_failed(reason).await;
        Auth::reject()
    }

    async fn second_factor_failed(&mut self, reason: String) {
        self.shared.outcome(Outcome::SecondFactorFail);
        self.shared.fail(reason);
        tokio::time::sleep(FAILURE_DELAY).await;
    }
}
