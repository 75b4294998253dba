//! Password rotation through the operator's rotate command (`{login}`, `{password}`), e.g.
//! `echo '{login}:{password}' | sudo chpasswd`.
//!
//! A device has one password, so the new one cannot sit next to the old one as a key can. Instead
//! the new password is set aside in the store (sealed) before the command runs. The command runs
//! over a login with the old password; the new one is proven by a fresh login; then it is stored
//! (one audited action, which also forgets the set-aside copy). A failure after the command ran
//! puts the old password back over the still-open login. If that is impossible too (the device
//! went away between the change and the proof), the set-aside password stays: the next login to
//! the device that is refused with the stored password tries it, and adopts it if it works
//! (`device.rotate_recovered`). So the device never ends up with a password Postern does not have.

use approvals::actions::template;
use approvals::actions::{Actions, Rotated};
use approvals::{Actor, CredentialKind, Device};
use rand::distr::{Alphanumeric, SampleString};

use super::{Done, RotateError, Rotator, Step, at};
use crate::device_admin::{Admin, AdminError};
use crate::upstream::UpstreamError;

/// Length of a generated password: 32 letters and digits, about 190 bits.
const PASSWORD_LEN: usize = 32;

/// A new password from the thread's CSPRNG (alphanumeric, so it can go into a command as is).
pub fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN)
}

impl Rotator {
    pub(super) async fn rotate_password(
        &self,
        device: &Device,
        now: i64,
    ) -> Result<Done, RotateError> {
        let store = self.actions.store();
        let command = store
            .rotate_command(&device.site, &device.name)
            .await
            .map_err(at(Step::Connect))?
            .ok_or_else(|| RotateError {
                step: Step::Connect,
                error: "no rotate command for this password (set one with `postern device \
                        rotate-command SITE/DEVICE --set '... {password} ...'`)"
                    .into(),
            })?;
        // The template must fill for this login before anything changes.
        template::fill(&command, &device.login, "x").map_err(at(Step::Apply))?;
        let (admin, device) = self.connect_password(device, now).await?;
        if self.dry_run {
            admin.close().await;
            return Ok(Done {
                kind: CredentialKind::Password,
                changed: false,
                old_key: None,
                new_key: None,
            });
        }
        let result = self.change(&admin, &device, &command, now).await;
        admin.close().await;
        result
    }

    /// Logs in with the stored password, or with one an interrupted rotation left (adopting it).
    async fn connect_password(
        &self,
        device: &Device,
        now: i64,
    ) -> Result<(Admin, Device), RotateError> {
        match Admin::connect(device, self.step).await {
            Ok(admin) => Ok((admin, device.clone())),
            Err(AdminError::Upstream(UpstreamError::AuthFailed(_))) => {
                let recovered = recover_pending(&self.actions, &self.actor, device, now)
                    .await
                    .map_err(at(Step::Connect))?;
                let Some(device) = recovered else {
                    return Err(RotateError {
                        step: Step::Connect,
                        error: format!(
                            "device {}/{}: the stored password was refused",
                            device.site, device.name
                        ),
                    });
                };
                let admin = Admin::connect(&device, self.step)
                    .await
                    .map_err(at(Step::Connect))?;
                Ok((admin, device))
            }
            Err(e) => Err(at(Step::Connect)(e)),
        }
    }

    async fn change(
        &self,
        admin: &Admin,
        device: &Device,
        command: &str,
        now: i64,
    ) -> Result<Done, RotateError> {
        let store = self.actions.store();
        let new = new_password();
        let apply = template::fill(command, &device.login, &new).map_err(at(Step::Apply))?;
        store
            .set_pending_credential(&device.site, &device.name, &new, now)
            .await
            .map_err(at(Step::Store))?;
        if let Err(e) = admin.run_ok("the rotate command", &apply, &[]).await {
            // It may or may not have changed the password: put the old one back either way.
            let error = self.undo(admin, device, command, e.to_string()).await;
            return Err(RotateError {
                step: Step::Apply,
                error,
            });
        }
        let mut trial = device.clone();
        trial.credential = new.clone();
        match Admin::connect(&trial, self.step).await {
            Ok(fresh) => fresh.close().await,
            Err(e) => {
                let error = self.undo(admin, device, command, e.to_string()).await;
                return Err(RotateError {
                    step: Step::Verify,
                    error,
                });
            }
        }
        let rotated = Rotated {
            site: &device.site,
            device: &device.name,
            kind: CredentialKind::Password,
            credential: &new,
            old_key: "",
            new_key: "",
        };
        let stored = self
            .actions
            .rotate_device_credential(&self.actor, &rotated, now)
            .await;
        if let Err(e) = stored {
            let error = self.undo(admin, device, command, e.to_string()).await;
            return Err(RotateError {
                step: Step::Store,
                error,
            });
        }
        Ok(Done {
            kind: CredentialKind::Password,
            changed: true,
            old_key: None,
            new_key: None,
        })
    }

    /// Puts the old password back over the login that is still open; says what happened.
    async fn undo(&self, admin: &Admin, device: &Device, command: &str, error: String) -> String {
        let old = device.credential.trim_end_matches(['\n', '\r']);
        let back = match template::fill(command, &device.login, old) {
            Ok(back) => admin
                .run_ok("putting the old password back", &back, &[])
                .await
                .map_err(|e| e.to_string()),
            // A stored password Postern did not generate may hold characters a command cannot.
            Err(e) => Err(e.to_string()),
        };
        match back {
            Ok(_) => {
                let forgot = self
                    .actions
                    .store()
                    .clear_pending_credential(&device.site, &device.name)
                    .await;
                match forgot {
                    Ok(()) => format!("{error} (the old password was put back)"),
                    Err(e) => format!("{error} (the old password was put back; {e})"),
                }
            }
            Err(r) => format!(
                "{error}; putting the old password back failed too ({r}): the new password is \
                 kept aside and tried when the stored one is refused"
            ),
        }
    }
}

/// When the stored password is refused: tries the password an interrupted rotation set aside
/// and, if a login with it works, makes it the stored credential (audited). `None`: there is
/// none, or it does not work either.
pub async fn recover_pending(
    actions: &Actions,
    actor: &Actor,
    device: &Device,
    now: i64,
) -> Result<Option<Device>, approvals::ActionError> {
    if device.credential_kind != CredentialKind::Password
        || crate::device_admin::behind_edge(actions.store(), device)
            .await?
            .is_some()
    {
        return Ok(None);
    }
    let pending = actions
        .store()
        .pending_credential(&device.site, &device.name)
        .await?;
    let Some(pending) = pending else {
        return Ok(None);
    };
    let mut trial = device.clone();
    trial.credential = pending;
    match Admin::connect(&trial, crate::device_admin::STEP_TIMEOUT).await {
        Ok(admin) => admin.close().await,
        Err(e) => {
            tracing::warn!(device = %format!("{}/{}", device.site, device.name), error = %e,
                "the stored password and the one an interrupted rotation left were both refused");
            return Ok(None);
        }
    }
    actions
        .adopt_pending_credential(actor, &device.site, &device.name, &trial.credential, now)
        .await?;
    Ok(Some(trial))
}
