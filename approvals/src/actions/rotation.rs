//! Device credential rotation, as actions: the new credential replaces the old one in one
//! transaction with its `device.rotate` record; a failed rotation is recorded
//! (`device.rotate_failed`, with the step) and changes no credential.

use super::{ActionRecord, Actions, Actor, Result};
use crate::model::CredentialKind;
use crate::store::RotationOutcome;

/// A rotation that proved its new credential on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated<'a> {
    pub site: &'a str,
    pub device: &'a str,
    pub kind: CredentialKind,
    pub credential: &'a str,
    /// Fingerprints for the record (key credentials; empty for passwords).
    pub old_key: &'a str,
    pub new_key: &'a str,
}

impl Actions {
    /// Stores a device's new, proven credential.
    pub async fn rotate_device_credential(
        &self,
        actor: &Actor,
        r: &Rotated<'_>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .set_device_credential_in(&mut tx, r.site, r.device, r.kind, r.credential)
            .await?;
        self.store
            .record_rotation_in(&mut tx, r.site, r.device, now, RotationOutcome::Ok)
            .await?;
        let record = ActionRecord::DeviceRotate {
            site: r.site.to_owned(),
            device: r.device.to_owned(),
            credential: r.kind.to_string(),
            old_key: r.old_key.to_owned(),
            new_key: r.new_key.to_owned(),
        };
        self.finish(tx, actor, record).await
    }

    /// Records a rotation that failed at `step`; the stored credential is not touched.
    pub async fn device_rotation_failed(
        &self,
        actor: &Actor,
        site: &str,
        device: &str,
        step: &str,
        error: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .record_rotation_in(
                &mut tx,
                site,
                device,
                now,
                RotationOutcome::Failed { step, error },
            )
            .await?;
        let record = ActionRecord::DeviceRotateFailed {
            site: site.to_owned(),
            device: device.to_owned(),
            step: step.to_owned(),
            error: error.to_owned(),
        };
        self.finish(tx, actor, record).await
    }
}

/// What a password rotate command must hold, and how it is filled in.
pub mod template {
    /// The placeholders: the device login and the new password.
    pub const LOGIN: &str = "{login}";
    pub const PASSWORD: &str = "{password}";

    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum TemplateError {
        #[error("a rotate command must contain {{password}} (it is replaced by the new password)")]
        NoPassword,
        #[error("a rotate command must be one line")]
        Multiline,
        #[error(
            "login '{0}' cannot be put into a command (letters, digits, '.', '_' and '-' only)"
        )]
        UnsafeLogin(String),
        #[error("a password for a command must be letters and digits only")]
        UnsafePassword,
    }

    /// Checks a template as the operator gives it.
    pub fn check(command: &str) -> Result<(), TemplateError> {
        if !command.contains(PASSWORD) {
            return Err(TemplateError::NoPassword);
        }
        if command.contains(['\n', '\r']) {
            return Err(TemplateError::Multiline);
        }
        Ok(())
    }

    /// The command to run. The login and the password are put in as they are, so both are
    /// limited to characters no shell treats specially (Postern's passwords are alphanumeric).
    pub fn fill(command: &str, login: &str, password: &str) -> Result<String, TemplateError> {
        check(command)?;
        let plain = |s: &str, extra: &[char]| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
        };
        if !plain(login, &['.', '_', '-']) || login.starts_with('-') {
            return Err(TemplateError::UnsafeLogin(login.to_owned()));
        }
        if !plain(password, &[]) {
            return Err(TemplateError::UnsafePassword);
        }
        Ok(command.replace(LOGIN, login).replace(PASSWORD, password))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fills_and_refuses_what_a_shell_would_read() {
            let t = "echo '{login}:{password}' | sudo chpasswd";
            assert_eq!(
                fill(t, "maint", "Abc123").as_deref(),
                Ok("echo 'maint:Abc123' | sudo chpasswd")
            );
            assert_eq!(check("chpasswd"), Err(TemplateError::NoPassword));
            assert_eq!(check("a {password}\nb"), Err(TemplateError::Multiline));
            assert!(matches!(
                fill(t, "x'; rm -rf /", "Abc"),
                Err(TemplateError::UnsafeLogin(_))
            ));
            assert_eq!(fill(t, "m", "a'b"), Err(TemplateError::UnsafePassword));
        }
    }
}

impl Actions {
    /// Sets (or with `None` removes) the command that changes a device login's password.
    pub async fn set_device_rotate_command(
        &self,
        actor: &Actor,
        site: &str,
        device: &str,
        command: Option<&str>,
    ) -> Result<()> {
        if let Some(c) = command {
            template::check(c)
                .map_err(|e| crate::store::StoreError::from(crate::store::Invalid::from(e)))?;
        }
        let mut tx = self.store.begin().await?;
        self.store
            .set_rotate_command_in(&mut tx, site, device, command)
            .await?;
        let record = ActionRecord::DeviceRotateCommand {
            site: site.to_owned(),
            device: device.to_owned(),
            command: command.map(str::to_owned),
        };
        self.finish(tx, actor, record).await
    }

    /// Makes the password an interrupted rotation set aside the stored credential, once a login
    /// with it has worked (and the stored one was refused).
    pub async fn adopt_pending_credential(
        &self,
        actor: &Actor,
        site: &str,
        device: &str,
        credential: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .set_device_credential_in(&mut tx, site, device, CredentialKind::Password, credential)
            .await?;
        self.store
            .record_rotation_in(&mut tx, site, device, now, RotationOutcome::Ok)
            .await?;
        let record = ActionRecord::DeviceRotateRecovered {
            site: site.to_owned(),
            device: device.to_owned(),
        };
        self.finish(tx, actor, record).await
    }
}

impl Actions {
    /// Sets whether every session of `function` ends with a rotation of the device's credential
    /// (`--rotate-after-session`).
    /// Whether edges past their offline grace still open this emergency function (as
    /// break-glass, reviewed later).
    pub async fn set_function_offline_ok(
        &self,
        actor: &Actor,
        function: &str,
        on: bool,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .set_function_offline_ok_in(&mut tx, function, on)
            .await?;
        let record = ActionRecord::FunctionOfflineOk {
            function: function.to_owned(),
            offline_ok: on,
        };
        self.finish(tx, actor, record).await
    }

    pub async fn set_function_rotate_after_session(
        &self,
        actor: &Actor,
        function: &str,
        on: bool,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .set_function_rotate_after_session_in(&mut tx, function, on)
            .await?;
        let record = ActionRecord::FunctionRotation {
            function: function.to_owned(),
            rotate_after_session: on,
        };
        self.finish(tx, actor, record).await
    }
}
