//! Device credential rotation. For key credentials the order keeps the device reachable at every
//! step: a new ed25519 key is installed next to the old one (through the current credential),
//! proven with a fresh login, the old key is removed, and only then is the stored credential
//! replaced (one audited action). Passwords are rotated by the operator's command (see
//! [`password`]). Any failure keeps a working credential, names the step, and is recorded as
//! `device.rotate_failed`.

pub mod password;

use std::time::Duration;

use approvals::actions::Rotated;
use approvals::{Actions, Actor, CredentialKind, Device};
use russh::keys::PublicKey;
use russh::keys::ssh_key::LineEnding;

use crate::device_admin::{Admin, AdminError, AuthorizedKeys};
use crate::keys::{fingerprint, generate_ed25519, parse_private};

/// The step of a rotation, as reported and stored (`device list`'s last result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Logging in with the current credential.
    Connect,
    /// Reading the login's authorized_keys.
    Read,
    /// Writing the new key into authorized_keys.
    Install,
    /// Running the rotate command that changes the password.
    Apply,
    /// Logging in afresh with the new key.
    Verify,
    /// Removing the old key from authorized_keys.
    RemoveOld,
    /// Replacing the stored credential.
    Store,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Read => "read",
            Step::Install => "install",
            Step::Apply => "apply",
            Step::Verify => "verify",
            Step::RemoveOld => "remove-old",
            Step::Store => "store",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rotation that did not happen; the old credential stays in use.
#[derive(Debug, thiserror::Error)]
#[error("rotation failed at {step}: {error}")]
pub struct RotateError {
    pub step: Step,
    pub error: String,
}

fn at<E: std::fmt::Display>(step: Step) -> impl Fn(E) -> RotateError {
    move |e| RotateError {
        step,
        error: e.to_string(),
    }
}

/// What a finished rotation (or a dry run) found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Done {
    pub kind: CredentialKind,
    /// False in a dry run.
    pub changed: bool,
    /// The key fingerprints before and after (key credentials; `new_key` is `None` in a dry run).
    pub old_key: Option<String>,
    pub new_key: Option<String>,
}

/// Who rotates, how long each step may take, and whether to change anything.
#[derive(Clone)]
pub struct Rotator {
    pub actions: Actions,
    pub actor: Actor,
    pub step: Duration,
    pub dry_run: bool,
}

impl Rotator {
    /// Rotates one device's key credential; a failure is recorded (unless in a dry run).
    pub async fn rotate(&self, device: &Device, now: i64) -> Result<Done, RotateError> {
        let result = match crate::device_admin::behind_edge(self.actions.store(), device).await {
            Err(e) => Err(at(Step::Connect)(e)),
            Ok(Some(edge)) => Err(RotateError {
                step: Step::Connect,
                error: crate::device_admin::behind_edge_error(&edge),
            }),
            Ok(None) => match device.credential_kind {
                CredentialKind::Key => self.rotate_key(device, now).await,
                CredentialKind::Password => self.rotate_password(device, now).await,
            },
        };
        if let (Err(e), false) = (&result, self.dry_run) {
            let recorded = self
                .actions
                .device_rotation_failed(
                    &self.actor,
                    &device.site,
                    &device.name,
                    e.step.as_str(),
                    &e.error,
                    now,
                )
                .await;
            if let Err(r) = recorded {
                return Err(RotateError {
                    step: e.step,
                    error: format!("{}; and the failure could not be recorded: {r}", e.error),
                });
            }
        }
        result
    }

    async fn rotate_key(&self, device: &Device, now: i64) -> Result<Done, RotateError> {
        let old = parse_private(&device.credential).map_err(at(Step::Connect))?;
        let old_pub = old.public_key().clone();
        let admin = Admin::connect(device, self.step)
            .await
            .map_err(at(Step::Connect))?;
        let result = self.with_admin(&admin, device, &old_pub, now).await;
        admin.close().await;
        result
    }

    async fn with_admin(
        &self,
        admin: &Admin,
        device: &Device,
        old_pub: &PublicKey,
        now: i64,
    ) -> Result<Done, RotateError> {
        let mut keys = admin.authorized_keys().await.map_err(at(Step::Read))?;
        if !keys.contains(old_pub) {
            // The current key is honoured from somewhere else: removing it is not in our hands,
            // so a rotation could not take the old key's access away.
            return Err(RotateError {
                step: Step::Read,
                error: "the current key is not in the login's ~/.ssh/authorized_keys".into(),
            });
        }
        let old_key = fingerprint(old_pub);
        if self.dry_run {
            return Ok(Done {
                kind: CredentialKind::Key,
                changed: false,
                old_key: Some(old_key),
                new_key: None,
            });
        }
        let target = format!("{}/{}", device.site, device.name);
        let comment = format!("postern:{target}:{}", approvals::time::fmt_time(now));
        let new = generate_ed25519(&comment).map_err(at(Step::Install))?;
        let new_pub = new.public_key().clone();
        keys.add(&new_pub, &comment).map_err(at(Step::Install))?;
        admin
            .write_authorized_keys(&keys)
            .await
            .map_err(at(Step::Install))?;
        let pem = new
            .to_openssh(LineEnding::LF)
            .map_err(at(Step::Install))?
            .to_string();
        let mut trial = device.clone();
        trial.credential = pem.clone();
        let fresh = match self.prove(&trial, old_pub).await {
            Ok(fresh) => fresh,
            Err(e) => {
                // Best effort: take the unproven key out again over the old login.
                keys.remove(&new_pub);
                let _ = admin.write_authorized_keys(&keys).await;
                return Err(e);
            }
        };
        let stored = self
            .actions
            .rotate_device_credential(
                &self.actor,
                &Rotated {
                    site: &device.site,
                    device: &device.name,
                    kind: CredentialKind::Key,
                    credential: &pem,
                    old_key: &old_key,
                    new_key: &fingerprint(&new_pub),
                },
                now,
            )
            .await;
        if let Err(e) = stored {
            // The old key is gone from the device: put it back, so the stored one works again.
            let restored = restore(&fresh, old_pub).await;
            fresh.close().await;
            let error = match restored {
                Ok(()) => format!("{e} (the old key was put back)"),
                Err(r) => format!("{e}; putting the old key back failed too: {r}"),
            };
            return Err(RotateError {
                step: Step::Store,
                error,
            });
        }
        fresh.close().await;
        Ok(Done {
            kind: CredentialKind::Key,
            changed: true,
            old_key: Some(old_key),
            new_key: Some(fingerprint(&new_pub)),
        })
    }

    /// Logs in with the new key (proving it), then removes the old key over that login.
    async fn prove(&self, trial: &Device, old_pub: &PublicKey) -> Result<Admin, RotateError> {
        let fresh = Admin::connect(trial, self.step)
            .await
            .map_err(at(Step::Verify))?;
        let removed = async {
            let mut now = fresh.authorized_keys().await?;
            now.remove(old_pub);
            fresh.write_authorized_keys(&now).await
        }
        .await;
        if let Err(e) = removed {
            fresh.close().await;
            return Err(at(Step::RemoveOld)(e));
        }
        Ok(fresh)
    }
}

async fn restore(admin: &Admin, old_pub: &PublicKey) -> Result<(), AdminError> {
    let mut keys: AuthorizedKeys = admin.authorized_keys().await?;
    if !keys.contains(old_pub) {
        let comment = old_pub.comment().to_string();
        // A key that cannot be written as a line is impossible here (it was parsed from one).
        let _ = keys.add(old_pub, &comment);
    }
    admin.write_authorized_keys(&keys).await
}
