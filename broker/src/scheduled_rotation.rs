//! Scheduled rotation (`rotate_every`): every node sweeps the devices now and then and rotates
//! those whose credential is older than `rotate_every`, a few at a time. Several nodes share the
//! database, so a node claims a device there before rotating it and, once it holds the claim,
//! checks again that the device is still due: of several nodes exactly one rotates it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use approvals::store::DeviceRotation;
use approvals::time::now;
use approvals::{CredentialKind, Device, Store, StoreError};
use tokio::sync::Semaphore;

use crate::rotation::Rotator;

/// A failed rotation is tried again after this long (or `rotate_every`, if that is shorter), so
/// that a device that cannot be rotated does not fill the audit log.
const RETRY_AFTER: i64 = 3600;

/// A claim older than this belongs to a node that died mid-rotation (one rotation is six steps
/// of at most `STEP_TIMEOUT` each) and may be taken over.
const CLAIM_LEASE: i64 = 600;

/// What a node needs to rotate on schedule.
#[derive(Clone)]
pub struct Schedule {
    pub store: Store,
    pub rotator: Rotator,
    /// This node's name, on its claims.
    pub node: String,
    /// `rotate_every`, in seconds.
    pub every: i64,
    pub concurrency: usize,
}

/// Whether `device` is due: its credential is older than `every`, and a last failure (if any) is
/// older than the retry delay. Keys are rotated on schedule, and passwords that have a rotate
/// command (`has_command`).
pub fn due(
    device: &Device,
    has_command: bool,
    last: Option<&DeviceRotation>,
    every: i64,
    now: i64,
) -> bool {
    if device.credential_kind != CredentialKind::Key && !has_command {
        return false;
    }
    let set = last
        .and_then(|r| r.credential_set)
        .unwrap_or(device.created);
    if now - set < every {
        return false;
    }
    match last {
        Some(r) if r.last_result != "ok" => now - r.last_at >= RETRY_AFTER.min(every),
        _ => true,
    }
}

/// How often a node looks for due devices: a quarter of `rotate_every`, between 1 s and a minute.
fn sweep_interval(every: i64) -> Duration {
    Duration::from_secs((every / 4).clamp(1, 60) as u64)
}

/// Runs for as long as the node does.
pub async fn run(schedule: Schedule) {
    let mut tick = tokio::time::interval(sweep_interval(schedule.every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match schedule.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(devices = n, "scheduled rotation: sweep done"),
            // Tried again on the next tick; nothing is half-done (each rotation stands alone).
            Err(e) => tracing::warn!(error = %e, "scheduled rotation: devices not read"),
        }
    }
}

impl Schedule {
    /// Rotates the devices due now, `concurrency` at a time; returns how many were attempted.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let t = now();
        let last: HashMap<(String, String), DeviceRotation> = self
            .store
            .device_rotations()
            .await?
            .into_iter()
            .map(|r| ((r.site.clone(), r.device.clone()), r))
            .collect();
        let commands = self.store.devices_with_rotate_command().await?;
        let devices: Vec<Device> = self
            .store
            .devices()
            .await?
            .into_iter()
            .filter(|d| {
                due(
                    d,
                    commands.contains(&(d.site.clone(), d.name.clone())),
                    last.get(&(d.site.clone(), d.name.clone())),
                    self.every,
                    t,
                )
            })
            .collect();
        let gate = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for device in devices {
            let (gate, this) = (gate.clone(), self.clone());
            tasks.spawn(async move {
                let _slot = gate.acquire_owned().await;
                this.rotate_claimed(&device).await
            });
        }
        let mut attempted = 0;
        while let Some(joined) = tasks.join_next().await {
            attempted += usize::from(matches!(joined, Ok(true)));
        }
        Ok(attempted)
    }

    /// Claims the device, checks it is still due (another node may just have rotated it), rotates
    /// it and gives the claim up. True if a rotation was attempted.
    async fn rotate_claimed(&self, device: &Device) -> bool {
        let (site, name) = (&device.site, &device.name);
        let t = now();
        match self
            .store
            .claim_rotation(site, name, &self.node, t, t - CLAIM_LEASE)
            .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(device = %format!("{site}/{name}"), error = %e, "scheduled rotation: not claimed");
                return false;
            }
        }
        let attempted = match self.fresh_if_due(device).await {
            Ok(Some(fresh)) => {
                let target = format!("{site}/{name}");
                match self.rotator.rotate(&fresh, now()).await {
                    Ok(_) => tracing::info!(device = %target, "scheduled rotation: rotated"),
                    Err(e) => tracing::warn!(device = %target, error = %e, "scheduled rotation"),
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(device = %format!("{site}/{name}"), error = %e, "scheduled rotation: not read");
                false
            }
        };
        if let Err(e) = self.store.release_rotation(site, name, &self.node).await {
            // The claim goes stale after CLAIM_LEASE and is taken over then.
            tracing::warn!(device = %format!("{site}/{name}"), error = %e, "scheduled rotation: claim not released");
        }
        attempted
    }

    /// The device as stored now, if it is still due.
    async fn fresh_if_due(&self, device: &Device) -> Result<Option<Device>, StoreError> {
        let Some(fresh) = self.store.device(&device.site, &device.name).await? else {
            return Ok(None);
        };
        let last = self
            .store
            .device_rotation(&device.site, &device.name)
            .await?;
        // Only a password needs a rotate command to be rotatable.
        let has_command = fresh.credential_kind == CredentialKind::Password
            && self
                .store
                .rotate_command(&device.site, &device.name)
                .await?
                .is_some();
        Ok(due(&fresh, has_command, last.as_ref(), self.every, now()).then_some(fresh))
    }
}

/// How long a rotation after a session waits for another rotation of the same device to finish.
const AFTER_SESSION_WAIT: Duration = Duration::from_secs(CLAIM_LEASE as u64);

/// Starts [`after_session`] for a session that just ended (device sessions only).
pub fn spawn_after_session(ctx: &crate::session::Ctx, live: &crate::session::LiveSession) {
    if live.target.service.is_some() || live.target.device.is_empty() {
        return;
    }
    let rotator = Rotator {
        actions: approvals::Actions::new(
            ctx.store.clone(),
            ctx.audit.clone(),
            ctx.notifier.clone(),
        ),
        actor: approvals::Actor::broker(&ctx.node),
        step: crate::device_admin::STEP_TIMEOUT,
        dry_run: false,
    };
    tokio::spawn(after_session(
        ctx.store.clone(),
        rotator,
        ctx.node.clone(),
        live.function.clone(),
        live.target.site.clone(),
        live.target.device.clone(),
    ));
}

/// After a session of a function with `--rotate-after-session` ends, rotates the device's
/// credential (waiting for a rotation of it already under way, whoever runs it, to finish first).
pub async fn after_session(
    store: Store,
    rotator: Rotator,
    node: String,
    function: String,
    site: String,
    device: String,
) {
    let target = format!("{site}/{device}");
    match store.function_rotates_after_session(&function).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            // The credential keeps working; the operator sees why it was not replaced.
            tracing::error!(device = %target, function, error = %e, "rotation after the session not started");
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + AFTER_SESSION_WAIT;
    loop {
        let t = now();
        match store
            .claim_rotation(&site, &device, &node, t, t - CLAIM_LEASE)
            .await
        {
            Ok(true) => break,
            Ok(false) if tokio::time::Instant::now() < deadline => {}
            Ok(false) => {
                tracing::error!(device = %target, "rotation after the session: another rotation holds the device too long");
                return;
            }
            Err(e) => {
                tracing::warn!(device = %target, error = %e, "rotation after the session: not claimed yet")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match store.device(&site, &device).await {
        Ok(Some(d)) => match rotator.rotate(&d, now()).await {
            Ok(_) => tracing::info!(device = %target, function, "rotated after the session"),
            Err(e) => {
                tracing::error!(device = %target, function, error = %e, "rotation after the session")
            }
        },
        Ok(None) => {}
        Err(e) => {
            tracing::error!(device = %target, error = %e, "rotation after the session: device not read")
        }
    }
    if let Err(e) = store.release_rotation(&site, &device, &node).await {
        tracing::warn!(device = %target, error = %e, "rotation after the session: claim not released");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(kind: CredentialKind, created: i64) -> Device {
        Device {
            site: "s".into(),
            name: "d".into(),
            addr: "127.0.0.1:22".into(),
            login: "root".into(),
            credential_kind: kind,
            credential: String::new(),
            host_key: String::new(),
            created,
        }
    }

    fn rotation(set: Option<i64>, at: i64, result: &str) -> DeviceRotation {
        DeviceRotation {
            site: "s".into(),
            device: "d".into(),
            credential_set: set,
            last_at: at,
            last_result: result.into(),
            last_error: None,
        }
    }

    #[test]
    fn due_counts_from_enrolment_or_the_last_rotation() {
        let key = device(CredentialKind::Key, 0);
        assert!(!due(&key, false, None, 100, 99));
        assert!(due(&key, false, None, 100, 100));
        let ok = rotation(Some(50), 50, "ok");
        assert!(!due(&key, false, Some(&ok), 100, 149));
        assert!(due(&key, false, Some(&ok), 100, 150));
        assert!(!due(
            &device(CredentialKind::Password, 0),
            false,
            None,
            100,
            1000
        ));
        assert!(due(
            &device(CredentialKind::Password, 0),
            true,
            None,
            100,
            1000
        ));
    }

    #[test]
    fn a_failure_is_retried_after_a_delay() {
        let key = device(CredentialKind::Key, 0);
        let failed = rotation(None, 10_000, "verify");
        assert!(!due(&key, false, Some(&failed), 100, 10_050));
        assert!(due(&key, false, Some(&failed), 100, 10_100));
        let failed = rotation(None, 89_000, "connect");
        assert!(!due(&key, false, Some(&failed), 86_400, 90_000));
        assert!(due(
            &key,
            false,
            Some(&failed),
            86_400,
            89_000 + RETRY_AFTER
        ));
    }
}
