//! Makes signed checkpoints of this node's audit log head and ships them off the host.
//!
//! Every `checkpoint_every_events` audit events or `checkpoint_interval`, whichever comes first,
//! and only when the head moved: sign (with the node's seal key), append to the audit log as
//! `audit.checkpoint` (a checkpoint that is not in the audit log is not made), then ship to the
//! shared database together with the webhook outbox (one transaction) and to `checkpoint_file`.
//! A sink that fails is retried on the next tick; nothing in a session's path waits on any of it.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use approvals::checkpoint::{AUDIT_EVENT, Checkpoint, Tracker};
use approvals::{AuditLog, Notifier, Store};
use serde_json::json;
use tracing::{error, info, warn};

/// How often the audit log's end is looked at.
const POLL: Duration = Duration::from_millis(250);
/// Checkpoints held for a sink that keeps failing (oldest dropped first, with an error).
const MAX_PENDING: usize = 10_000;

/// What the config says.
#[derive(Debug, Clone)]
pub struct Settings {
    pub every_events: u64,
    pub interval: Duration,
    pub file: Option<PathBuf>,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Result<Settings> {
        let secs = approvals::time::parse_duration(&cfg.checkpoint_interval)
            .map_err(|e| anyhow!("checkpoint_interval: {e}"))?;
        if secs < 1 {
            bail!("checkpoint_interval must be at least 1s");
        }
        if cfg.checkpoint_every_events == 0 {
            bail!("checkpoint_every_events must be at least 1");
        }
        Ok(Settings {
            every_events: cfg.checkpoint_every_events,
            interval: Duration::from_secs(secs as u64),
            file: cfg.checkpoint_file.clone(),
        })
    }
}

/// Starts the checkpointer for `serve`: reads the settings and the seal key (failing the start
/// when they are wrong), then runs in the background.
pub fn spawn(env: &crate::Node) -> Result<()> {
    let settings = Settings::from_config(&env.cfg)?;
    let key = crate::keys::seal_key(&env.data.seal_key())?;
    tokio::spawn(run(
        env.store.clone(),
        env.audit.clone(),
        env.notifier.clone(),
        key,
        settings,
    ));
    Ok(())
}

/// Appends one checkpoint as a JSON line and syncs it.
fn append_line(path: &Path, cp: &Checkpoint) -> Result<()> {
    let mut line = serde_json::to_vec(cp)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&line)?;
    f.sync_data()?;
    Ok(())
}

/// Checkpoints made but not yet in one sink.
#[derive(Default)]
struct Pending {
    database: VecDeque<Checkpoint>,
    file: VecDeque<Checkpoint>,
}

fn push_bounded(q: &mut VecDeque<Checkpoint>, cp: Checkpoint, sink: &str) {
    if q.len() >= MAX_PENDING
        && let Some(dropped) = q.pop_front()
    {
        error!(
            sink,
            seq = dropped.seq,
            "checkpoint sink keeps failing; oldest checkpoint dropped"
        );
    }
    q.push_back(cp);
}

pub async fn run(
    store: Store,
    audit: AuditLog,
    notifier: Notifier,
    key: recorder::SealKey,
    settings: Settings,
) {
    let path = audit.path().to_owned();
    let node = audit.node().to_owned();
    // The chain continues from the node's latest shipped checkpoint.
    let installation = {
        let p = path.clone();
        match tokio::task::spawn_blocking(move || approvals::checkpoint::installation_of_log(&p))
            .await
        {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                error!(error = %e, "no checkpoints: the audit log cannot be read");
                return;
            }
            Err(e) => {
                error!(error = %e, "no checkpoints");
                return;
            }
        }
    };
    let last = loop {
        match store.latest_checkpoint(&installation, &node).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(error = %e, "checkpoints wait for the database");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let opened = {
        let (p, n) = (path.clone(), node.clone());
        tokio::task::spawn_blocking(move || Tracker::open(&p, &n, last)).await
    };
    let mut tracker = match opened {
        Ok(Ok((t, mismatch))) => {
            if let Some(m) = mismatch {
                // Said loudly and kept in the audit log; `verify` reports it against the shipped
                // checkpoints too.
                error!(problem = %m, "the audit log no longer matches its last shipped checkpoint");
                let _ = audit
                    .record_async("audit.checkpoint_mismatch", json!({"problem": m}))
                    .await;
            }
            t
        }
        Ok(Err(e)) => {
            error!(error = %e, "no checkpoints: the audit log does not verify");
            return;
        }
        Err(e) => {
            error!(error = %e, "no checkpoints");
            return;
        }
    };
    info!(every_events = settings.every_events, interval = ?settings.interval, "checkpointing the audit log");
    let mut pending = Pending::default();
    let mut since = tokio::time::Instant::now();
    let mut broken = false;
    loop {
        tokio::time::sleep(POLL).await;
        let read = tokio::task::spawn_blocking(move || {
            let r = tracker.read_new();
            (tracker, r)
        })
        .await;
        tracker = match read {
            Ok((t, Ok(()))) => {
                broken = false;
                t
            }
            Ok((t, Err(e))) => {
                if !broken {
                    error!(error = %e, "checkpoints stopped: the audit log does not verify past this point");
                    broken = true;
                }
                t
            }
            Err(e) => {
                error!(error = %e, "checkpointer stopped");
                return;
            }
        };
        let due = tracker.pending_events() >= settings.every_events
            || (tracker.pending_events() > 0 && since.elapsed() >= settings.interval);
        if due
            && !broken
            && let Some(cp) = tracker.make(&key, approvals::time::now())
        {
            // Not in the audit log, not made: tried again next tick.
            match audit
                .record_async(AUDIT_EVENT, json!({"checkpoint": cp}))
                .await
            {
                Ok(_) => {
                    tracker.committed(cp.clone());
                    since = tokio::time::Instant::now();
                    push_bounded(&mut pending.database, cp.clone(), "database");
                    if settings.file.is_some() {
                        push_bounded(&mut pending.file, cp, "file");
                    }
                }
                Err(e) => {
                    error!(error = %e, "checkpoint not made: the audit log cannot be written")
                }
            }
        }
        ship(&store, &notifier, settings.file.as_deref(), &mut pending).await;
    }
}

/// Ships what is pending, in order; a sink stops at its first failure and is retried next time.
async fn ship(store: &Store, notifier: &Notifier, file: Option<&Path>, p: &mut Pending) {
    while let Some(cp) = p.database.front() {
        match store.ship_checkpoint(cp, notifier).await {
            Ok(()) => {
                p.database.pop_front();
            }
            Err(e) => {
                warn!(error = %e, seq = cp.seq, "checkpoint not yet in the database; retrying");
                break;
            }
        }
    }
    let Some(file) = file else { return };
    while let Some(cp) = p.file.front().cloned() {
        let f = file.to_owned();
        let written = tokio::task::spawn_blocking(move || append_line(&f, &cp))
            .await
            .map_err(|e| anyhow!("{e}"))
            .and_then(|r| r);
        match written {
            Ok(()) => {
                p.file.pop_front();
            }
            Err(e) => {
                warn!(error = %e, file = %file.display(), "checkpoint not yet in the checkpoint file; retrying");
                break;
            }
        }
    }
}
