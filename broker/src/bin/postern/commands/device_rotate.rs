//! `postern device rotate (SITE/DEVICE | --site SITE | --all) [--dry-run]`: key credentials
//! rotated through `broker::rotation`, several devices at once, with progress on stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use approvals::time::now;
use approvals::{CredentialKind, Device};
use broker::device_admin::STEP_TIMEOUT;
use broker::rotation::Rotator;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{Env, operator};

/// Which devices to rotate (clap makes sure exactly one is given).
pub enum Which<'a> {
    One(&'a str),
    Site(&'a str),
    All,
}

impl<'a> Which<'a> {
    pub fn of(d: &'a crate::args::Devices) -> Which<'a> {
        match (d.target.as_deref(), d.site.as_deref()) {
            (Some(t), _) => Which::One(t),
            (None, Some(s)) => Which::Site(s),
            _ => Which::All,
        }
    }
}

/// One device's outcome, as printed (and as `--json` lists it).
#[derive(Debug, Serialize)]
struct Outcome {
    device: String,
    /// `rotated`, `ready` (dry run) or `failed`.
    result: &'static str,
    /// `key` or `password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<CredentialKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_key: Option<String>,
}

impl Outcome {
    fn line(&self) -> String {
        match (self.result, &self.step, &self.error) {
            ("failed", Some(step), Some(e)) => format!(
                "{}: rotation failed at {step}: {e}; the old credential stays in use",
                self.device
            ),
            ("ready", ..) if self.credential == Some(CredentialKind::Password) => format!(
                "{}: ready to rotate the password (logged in, rotate command set); nothing changed",
                self.device
            ),
            ("ready", ..) => format!(
                "{}: ready to rotate (key {} found in authorized_keys); nothing changed",
                self.device,
                self.old_key.as_deref().unwrap_or("?")
            ),
            _ if self.credential == Some(CredentialKind::Password) => {
                format!("{}: rotated, new password proven and stored", self.device)
            }
            _ => format!(
                "{}: rotated, key {} replaced by {}",
                self.device,
                self.old_key.as_deref().unwrap_or("?"),
                self.new_key.as_deref().unwrap_or("?")
            ),
        }
    }
}

pub async fn run(env: &Env, which: Which<'_>, dry_run: bool, concurrency: usize) -> Result<()> {
    let devices = select(env, &which).await?;
    let rotator = Rotator {
        actions: env.actions(),
        actor: operator(),
        step: STEP_TIMEOUT,
        dry_run,
    };
    let outcomes = rotate_all(rotator, devices, concurrency.max(1), !env.json).await?;
    let failed = outcomes.iter().filter(|o| o.result == "failed").count();
    if env.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else {
        for o in &outcomes {
            println!("{}", o.line());
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} device rotations failed; their old credentials stay in use",
            outcomes.len()
        );
    }
    Ok(())
}

/// The devices `which` names (`device rotate`, `device rotate-command`, `scan`).
pub async fn select(env: &Env, which: &Which<'_>) -> Result<Vec<Device>> {
    let devices = match which {
        Which::One(target) => {
            let (site, name) = target
                .split_once('/')
                .ok_or_else(|| anyhow!("'{target}' is not SITE/DEVICE"))?;
            let d = env.store.device(site, name).await?;
            vec![d.ok_or_else(|| anyhow!("no device {name} at {site}"))?]
        }
        Which::Site(site) => {
            let at = env.store.devices_at(site).await?;
            if at.is_empty() {
                bail!("no devices at site {site}");
            }
            at
        }
        Which::All => env.store.devices().await?,
    };
    Ok(devices)
}

/// Rotates `devices`, `concurrency` at a time, in the order given; progress every second.
async fn rotate_all(
    rotator: Rotator,
    devices: Vec<Device>,
    concurrency: usize,
    progress: bool,
) -> Result<Vec<Outcome>> {
    let total = devices.len();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, device) in devices.into_iter().enumerate() {
        let (gate, rotator) = (gate.clone(), rotator.clone());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await;
            (i, one(&rotator, &device).await)
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..total).map(|_| None).collect();
    let (mut done, mut failed, mut shown) = (0, 0, Instant::now());
    while let Some(joined) = tasks.join_next().await {
        let (i, outcome) = joined.map_err(|e| anyhow!("a rotation task failed: {e}"))?;
        done += 1;
        failed += usize::from(outcome.result == "failed");
        outcomes[i] = Some(outcome);
        if progress && total > 1 && (shown.elapsed() >= Duration::from_secs(1) || done == total) {
            eprintln!("rotation: {done}/{total} devices done, {failed} failed");
            shown = Instant::now();
        }
    }
    Ok(outcomes.into_iter().flatten().collect())
}

async fn one(rotator: &Rotator, device: &Device) -> Outcome {
    let name = format!("{}/{}", device.site, device.name);
    match rotator.rotate(device, now()).await {
        Ok(done) => Outcome {
            device: name,
            result: if done.changed { "rotated" } else { "ready" },
            credential: Some(done.kind),
            step: None,
            error: None,
            old_key: done.old_key,
            new_key: done.new_key,
        },
        Err(e) => Outcome {
            device: name,
            result: "failed",
            credential: Some(device.credential_kind),
            step: Some(e.step.to_string()),
            error: Some(e.error),
            old_key: None,
            new_key: None,
        },
    }
}

/// A row of `postern device list`: the device (as before) and its credential's age and last
/// rotation.
#[derive(Debug, Serialize)]
pub struct ListRow<'a> {
    #[serde(flatten)]
    pub device: &'a Device,
    /// Seconds since the credential in use was set (by enrolment or rotation).
    pub credential_age: i64,
    /// `ok`, or `failed at STEP`; `None`: never rotated.
    pub last_rotation: Option<String>,
    pub last_rotation_at: Option<i64>,
    pub last_rotation_error: Option<String>,
    /// The device's web UI and its pinned certificate's SHA-256, if it has one.
    pub web: Option<String>,
    pub web_cert_sha256: Option<String>,
}

pub fn list_rows(
    devices: &[Device],
    rotations: Vec<approvals::store::DeviceRotation>,
    now: i64,
) -> Vec<ListRow<'_>> {
    let mut by_device: std::collections::HashMap<(String, String), _> = rotations
        .into_iter()
        .map(|r| ((r.site.clone(), r.device.clone()), r))
        .collect();
    devices
        .iter()
        .map(|d| {
            let r = by_device.remove(&(d.site.clone(), d.name.clone()));
            let set = r
                .as_ref()
                .and_then(|r| r.credential_set)
                .unwrap_or(d.created);
            ListRow {
                device: d,
                credential_age: (now - set).max(0),
                last_rotation: r.as_ref().map(|r| match r.last_result.as_str() {
                    "ok" => "ok".to_owned(),
                    step => format!("failed at {step}"),
                }),
                last_rotation_at: r.as_ref().map(|r| r.last_at),
                last_rotation_error: r.and_then(|r| r.last_error),
                web: None,
                web_cert_sha256: None,
            }
        })
        .collect()
}

/// An age for a table: `40s`, `12m`, `5h`, `3d`.
pub fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
