//! `postern scan`: the unbrokered access scan (`broker::scan`) over many devices at once, with
//! progress on stderr; `--list` shows the open paths and their age; `--remove FINGERPRINT` and
//! `--all-at SITE/DEVICE` take foreign keys out of device logins' authorized_keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use approvals::Device;
use approvals::actions::DeviceScan;
use approvals::store::FoundPath;
use approvals::time::now;
use broker::device_admin::STEP_TIMEOUT;
use broker::scan::{LOGIN_KEYS, Remover, ScanConfig, scan_device};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::device_rotate::age;
use super::{Env, operator};

/// What `postern scan` was asked to do (clap keeps them apart).
pub enum Mode<'a> {
    Scan { site: Option<&'a str> },
    List,
    Remove(&'a str),
    AllAt(&'a str),
}

pub async fn run(env: &Env, mode: Mode<'_>, concurrency: usize) -> Result<()> {
    match mode {
        Mode::Scan { site } => scan(env, site, concurrency.max(1)).await,
        Mode::List => list(env).await,
        Mode::Remove(fingerprint) => remove_fingerprint(env, fingerprint).await,
        Mode::AllAt(target) => remove_all_at(env, target).await,
    }
}

/// One device's scan as printed (and as `--json` lists it).
#[derive(Debug, Serialize)]
struct Scanned {
    device: String,
    /// `scanned` or `failed` (not scanned: its paths are unknown, not zero).
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    paths: Vec<FoundPath>,
}

fn describe(p: &FoundPath) -> String {
    match p.kind.as_str() {
        "port" => format!("port {} ({})", p.ident, p.comment),
        _ => {
            let mut s = format!("key {} in {}", p.ident, p.location);
            if !p.comment.is_empty() {
                s.push_str(&format!(" comment {:?}", p.comment));
            }
            if !p.options.is_empty() {
                s.push_str(&format!(" options {}", p.options));
            }
            s
        }
    }
}

async fn scan(env: &Env, site: Option<&str>, concurrency: usize) -> Result<()> {
    let cfg = ScanConfig {
        paths: env.cfg.scan_paths.clone(),
        ports: env.cfg.scan_ports.clone(),
        step: STEP_TIMEOUT,
    };
    cfg.check()?;
    let which = match site {
        Some(site) => super::device_rotate::Which::Site(site),
        None => super::device_rotate::Which::All,
    };
    let devices = super::device_rotate::select(env, &which).await?;
    let behind: HashMap<String, String> = env
        .store
        .edges()
        .await?
        .into_iter()
        .flat_map(|e| e.sites.into_iter().map(move |s| (s, e.name.clone())))
        .collect();
    let scans = scan_all(cfg, devices, &behind, concurrency, !env.json).await?;
    env.actions()
        .record_scan(&operator(), &scans, now())
        .await?;
    let open = env.store.open_unbrokered_count().await?;
    let rows: Vec<Scanned> = scans.into_iter().map(scanned).collect();
    let failed = rows.iter().filter(|r| r.result == "failed").count();
    if env.json {
        let out = json!({ "devices": rows, "open_unbrokered_paths": open });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for r in &rows {
            match &r.error {
                Some(e) => println!("{}: could not be scanned: {e}", r.device),
                None => println!("{}: {} unbrokered path(s)", r.device, r.paths.len()),
            }
            for p in &r.paths {
                println!("  {}", describe(p));
            }
        }
        println!("open unbrokered paths: {open}");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} devices could not be scanned; their paths are unknown",
            rows.len()
        );
    }
    Ok(())
}

fn scanned(s: DeviceScan) -> Scanned {
    let device = format!("{}/{}", s.site, s.device);
    match s.outcome {
        Ok(paths) => Scanned {
            device,
            result: "scanned",
            error: None,
            paths,
        },
        Err(e) => Scanned {
            device,
            result: "failed",
            error: Some(e),
            paths: Vec::new(),
        },
    }
}

/// Scans `devices`, `concurrency` at a time, in the order given; progress every second.
async fn scan_all(
    cfg: ScanConfig,
    devices: Vec<Device>,
    behind: &HashMap<String, String>,
    concurrency: usize,
    progress: bool,
) -> Result<Vec<DeviceScan>> {
    let total = devices.len();
    let (gate, cfg) = (Arc::new(Semaphore::new(concurrency)), Arc::new(cfg));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, device) in devices.into_iter().enumerate() {
        let (gate, cfg) = (gate.clone(), cfg.clone());
        let edge = behind.get(&device.site).cloned();
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await;
            let outcome = match edge {
                // Never dialled from here: its address is on the site's LAN.
                Some(edge) => Err(broker::device_admin::behind_edge_error(&edge)),
                None => scan_device(&device, &cfg).await.map_err(|e| e.to_string()),
            };
            let scan = DeviceScan {
                site: device.site,
                device: device.name,
                outcome,
            };
            (i, scan)
        });
    }
    let mut scans: Vec<Option<DeviceScan>> = (0..total).map(|_| None).collect();
    let (mut done, mut failed, mut shown) = (0, 0, Instant::now());
    while let Some(joined) = tasks.join_next().await {
        let (i, scan) = joined.map_err(|e| anyhow!("a scan task failed: {e}"))?;
        done += 1;
        failed += usize::from(scan.outcome.is_err());
        scans[i] = Some(scan);
        if progress && total > 1 && (shown.elapsed() >= Duration::from_secs(1) || done == total) {
            eprintln!("scan: {done}/{total} devices done, {failed} could not be scanned");
            shown = Instant::now();
        }
    }
    Ok(scans.into_iter().flatten().collect())
}

/// A row of `postern scan --list`.
#[derive(Debug, Serialize)]
struct ListRow {
    #[serde(flatten)]
    path: approvals::store::UnbrokeredPath,
    /// Seconds since first seen.
    age: i64,
}

async fn list(env: &Env) -> Result<()> {
    let t = now();
    let rows: Vec<ListRow> = env
        .store
        .open_unbrokered_paths()
        .await?
        .into_iter()
        .map(|path| ListRow {
            age: (t - path.first_seen).max(0),
            path,
        })
        .collect();
    if env.json {
        let out = json!({ "open_unbrokered_paths": rows.len(), "paths": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let p = &r.path;
            vec![
                format!("{}/{}", p.site, p.device),
                p.path.kind.clone(),
                p.path.location.clone(),
                p.path.ident.clone(),
                p.path.comment.clone(),
                p.path.options.clone(),
                age(r.age),
            ]
        })
        .collect();
    let headers = [
        "SITE/DEVICE",
        "KIND",
        "WHERE",
        "WHAT",
        "COMMENT",
        "OPTIONS",
        "AGE",
    ];
    super::output::print_table(&headers, &body);
    println!("open unbrokered paths: {}", rows.len());
    Ok(())
}

fn remover(env: &Env) -> Remover {
    Remover {
        actions: env.actions(),
        actor: operator(),
        step: STEP_TIMEOUT,
    }
}

/// `--remove FINGERPRINT`: from every device where it is open in the login's authorized_keys.
async fn remove_fingerprint(env: &Env, fingerprint: &str) -> Result<()> {
    let open = env.store.open_unbrokered_paths().await?;
    let mut at: Vec<(String, String)> = open
        .into_iter()
        .filter(|p| p.path.kind == "key" && p.path.ident == fingerprint)
        .filter(|p| p.path.location == LOGIN_KEYS)
        .map(|p| (p.site, p.device))
        .collect();
    at.dedup();
    if at.is_empty() {
        bail!(
            "no open unbrokered key {fingerprint} in a device login's {LOGIN_KEYS} (run `postern scan` first)"
        );
    }
    let only = [fingerprint.to_owned()];
    let mut results = Vec::new();
    for (site, name) in at {
        let device = device(env, &site, &name).await?;
        results.push(remove_one(env, &device, Some(&only)).await);
    }
    report_removals(env, results).await
}

/// `--all-at SITE/DEVICE`: every foreign key in that device login's authorized_keys.
async fn remove_all_at(env: &Env, target: &str) -> Result<()> {
    let (site, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("'{target}' is not SITE/DEVICE"))?;
    let device = device(env, site, name).await?;
    let result = remove_one(env, &device, None).await;
    report_removals(env, vec![result]).await
}

async fn device(env: &Env, site: &str, name: &str) -> Result<Device> {
    env.store
        .device(site, name)
        .await?
        .ok_or_else(|| anyhow!("no device {name} at {site}"))
}

/// One device's removal: its name, and the keys removed or why none could be.
type Removal = (String, std::result::Result<Vec<FoundPath>, String>);

async fn remove_one(env: &Env, device: &Device, only: Option<&[String]>) -> Removal {
    let name = format!("{}/{}", device.site, device.name);
    let result = remover(env).remove(device, only, now()).await;
    (name, result.map_err(|e| e.to_string()))
}

async fn report_removals(env: &Env, results: Vec<Removal>) -> Result<()> {
    let open = env.store.open_unbrokered_count().await?;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if env.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(d, r)| match r {
                Ok(keys) => json!({ "device": d, "removed": keys }),
                Err(e) => json!({ "device": d, "error": e }),
            })
            .collect();
        let out = json!({ "devices": rows, "open_unbrokered_paths": open });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (d, r) in &results {
            match r {
                Ok(keys) if keys.is_empty() => println!("{d}: no foreign key to remove"),
                Ok(keys) => {
                    let fps: Vec<&str> = keys.iter().map(|k| k.ident.as_str()).collect();
                    println!(
                        "{d}: removed {} foreign key(s): {}",
                        keys.len(),
                        fps.join(", ")
                    );
                }
                Err(e) => println!("{d}: nothing removed: {e}"),
            }
        }
        println!("open unbrokered paths: {open}");
    }
    if failed > 0 {
        bail!("{failed} of {} removals failed", results.len());
    }
    Ok(())
}
