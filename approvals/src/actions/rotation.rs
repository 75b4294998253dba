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

impl Actions {
    /// Sets whether every session of `function` ends with a rotation of the device's credential
    /// (`--rotate-after-session`).
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
