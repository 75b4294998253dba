//! Makes signed checkpoints of this node's audit log head and ships them off the host.
//!
//! Every `checkpoint_every_events` audit events or `checkpoint_interval`, whichever comes first,
//! and only when the head moved: sign (with the node's seal key), append to the audit log as
//! `audit.checkpoint` (a checkpoint that is not in the audit log is not made), then ship to the
//! shared database together with the webhook outbox (one transaction) and to `checkpoint_file`.
//! A sink that fails is retried on the next tick; nothing in a session's path waits on any of it.

use approvals::audit::AuditEvent;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Why the checkpoint settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("checkpoint_interval: {0}")]
    Interval(approvals::time::TimeError),
    #[error("checkpoint_interval must be at least 1s")]
    IntervalTooShort,
    #[error("checkpoint_every_events must be at least 1")]
    NoEvents,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Result<Settings, SettingsError> {
        let secs = approvals::time::parse_duration(&cfg.checkpoint_interval)
            .map_err(SettingsError::Interval)?;
        if secs < 1 {
            return Err(SettingsError::IntervalTooShort);
        }
        if cfg.checkpoint_every_events == 0 {
            return Err(SettingsError::NoEvents);
        }
        Ok(Settings {
            every_events: cfg.checkpoint_every_events,
            interval: Duration::from_secs(secs as u64),
            file: cfg.checkpoint_file.clone(),
        })
    }
}

/// Why the checkpointer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// Starts the checkpointer for `serve`: reads the settings and the seal key (failing the start
/// when they are wrong), then runs in the background.
pub fn spawn(env: &crate::Node) -> Result<(), StartError> {
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

/// Why a checkpoint is not yet in the checkpoint file.
#[derive(Debug, thiserror::Error)]
enum FileSinkError {
    #[error("opening {path}")]
    Open {
        path: String,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

/// Appends one checkpoint as a JSON line and syncs it.
fn append_line(path: &Path, cp: &Checkpoint) -> Result<(), FileSinkError> {
    let mut line = serde_json::to_vec(cp)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| FileSinkError::Open {
            path: path.display().to_string(),
            error,
        })?;
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

/// Makes and ships checkpoints until the audit log can no longer be read.
pub async fn run(
    store: Store,
    audit: AuditLog,
    notifier: Notifier,
    key: recorder::SealKey,
    settings: Settings,
) {
    let Some(mut tracker) = open_tracker(&store, &audit).await else {
        return;
    };
    info!(every_events = settings.every_events, interval = ?settings.interval, "checkpointing the audit log");
    let mut maker = Maker {
        audit,
        key,
        settings,
        pending: Pending::default(),
        since: tokio::time::Instant::now(),
        broken: false,
    };
    loop {
        tokio::time::sleep(POLL).await;
        tracker = match maker.read_new(tracker).await {
            Some(t) => t,
            None => return,
        };
        maker.make_if_due(&mut tracker).await;
        let file = maker.settings.file.as_deref();
        ship(&store, &notifier, file, &mut maker.pending).await;
    }
}

/// The installation's id, read from the audit log's stream id.
async fn installation(path: &Path) -> Option<String> {
    let p = path.to_owned();
    match tokio::task::spawn_blocking(move || approvals::checkpoint::installation_of_log(&p)).await
    {
        Ok(Ok(i)) => Some(i),
        Ok(Err(e)) => {
            error!(error = %e, "no checkpoints: the audit log cannot be read");
            None
        }
        Err(e) => {
            error!(error = %e, "no checkpoints");
            None
        }
    }
}

/// Follows the audit log from the node's latest shipped checkpoint (the chain continues from
/// it), waiting for the database as long as it takes. `None` if the log cannot be followed.
async fn open_tracker(store: &Store, audit: &AuditLog) -> Option<Tracker> {
    let path = audit.path().to_owned();
    let node = audit.node().to_owned();
    let installation = installation(&path).await?;
    let last = loop {
        match store.latest_checkpoint(&installation, &node).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(error = %e, "checkpoints wait for the database");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    let opened = tokio::task::spawn_blocking(move || Tracker::open(&path, &node, last)).await;
    match opened {
        Ok(Ok((t, mismatch))) => {
            if let Some(m) = mismatch {
                // Said loudly and kept in the audit log; `verify` reports it against the shipped
                // checkpoints too.
                error!(problem = %m, "the audit log no longer matches its last shipped checkpoint");
                let _ = audit
                    .record_async(AuditEvent::AuditCheckpointMismatch, json!({"problem": m}))
                    .await;
            }
            Some(t)
        }
        Ok(Err(e)) => {
            error!(error = %e, "no checkpoints: the audit log does not verify");
            None
        }
        Err(e) => {
            error!(error = %e, "no checkpoints");
            None
        }
    }
}

/// What the checkpointer carries from one tick to the next.
struct Maker {
    audit: AuditLog,
    key: recorder::SealKey,
    settings: Settings,
    pending: Pending,
    /// When the last checkpoint was made (or the checkpointer started).
    since: tokio::time::Instant,
    /// The log stopped verifying: no checkpoint until it verifies again (said once).
    broken: bool,
}

impl Maker {
    /// Reads what was appended to the audit log since the last tick. `None` if the reading task
    /// failed (the checkpointer stops).
    async fn read_new(&mut self, mut tracker: Tracker) -> Option<Tracker> {
        let read = tokio::task::spawn_blocking(move || {
            let r = tracker.read_new();
            (tracker, r)
        })
        .await;
        match read {
            Ok((t, Ok(()))) => {
                self.broken = false;
                Some(t)
            }
            Ok((t, Err(e))) => {
                if !self.broken {
                    error!(error = %e, "checkpoints stopped: the audit log does not verify past this point");
                    self.broken = true;
                }
                Some(t)
            }
            Err(e) => {
                error!(error = %e, "checkpointer stopped");
                None
            }
        }
    }

    /// Makes a checkpoint when enough events or time have passed, and queues it for the sinks.
    async fn make_if_due(&mut self, tracker: &mut Tracker) {
        let due = tracker.pending_events() >= self.settings.every_events
            || (tracker.pending_events() > 0 && self.since.elapsed() >= self.settings.interval);
        if !due || self.broken {
            return;
        }
        let Some(cp) = tracker.make(&self.key, approvals::time::now()) else {
            return;
        };
        // Not in the audit log, not made: tried again next tick.
        match (self.audit)
            .record_async(AUDIT_EVENT, json!({"checkpoint": cp}))
            .await
        {
            Ok(_) => {
                tracker.committed(cp.clone());
                self.since = tokio::time::Instant::now();
                push_bounded(&mut self.pending.database, cp.clone(), "database");
                if self.settings.file.is_some() {
                    push_bounded(&mut self.pending.file, cp, "file");
                }
            }
            Err(e) => {
                error!(error = %e, "checkpoint not made: the audit log cannot be written")
            }
        }
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
            .map_err(FileSinkError::from)
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
