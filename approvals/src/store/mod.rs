//! The database: sqlx with runtime queries through the Any driver, so one set of queries serves
//! the embedded SQLite default and a shared PostgreSQL. Migrations are embedded in the binary.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::model::CredentialKind;

mod certificates;
mod deadlines;
pub(crate) mod device_web;
mod directory;
mod edge_policy;
mod edges;
mod error;
mod evidence;
mod grants;
mod invites;
mod lifecycle;
mod measurements;
mod mirror;
mod password_rotation;
mod rotation;
mod rows;
mod scan;
mod secrets;
mod sessions;
mod vendors;
mod web_access;

pub(crate) use deadlines::request_in;
pub use device_web::DeviceWeb;
pub use edge_policy::{PolicyInputs, PolicyState};
pub use edges::{EDGE_SEEN_EVERY, Edge, NewEdge, TokenState};
pub use error::{Conflict, Invalid, Missing, StoreError, Thing};
pub(crate) use error::{conflict_on_unique, insert_error};
pub use invites::{InviteClaim, invite_hash};
pub use lifecycle::{CutGrant, FunctionChange, VendorChange};
pub use measurements::{SAMPLES_PER_READ, SloKind, SloSample};
pub use rotation::{DeviceRotation, RotationOutcome};
pub use scan::{FoundPath, UnbrokeredPath};
pub use secrets::PlainSealed;
pub use web_access::WebTarget;

/// How long the broker waits for one database operation on a vendor's path (authentication, the
/// policy decision, a session's start and end, the revocation check) before it counts the control
/// plane as unreachable. A database that accepts connections and never answers is an outage
/// found within seconds, never a hang.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Runs a database operation within [`DEADLINE`].
pub async fn deadline<T>(operation: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(DEADLINE, operation)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

type Result<T> = std::result::Result<T, StoreError>;

/// The longest window a function may allow.
pub const MAX_WINDOW: i64 = 366 * 86_400;

/// A database transaction: operator actions make their change, queue its notification and write
/// its audit record inside one (see the `actions` module). The `*_in` functions write before they
/// read: on SQLite a transaction that reads first cannot take the write lock once another
/// connection has written meanwhile (the broker writes all the time), so it would fail at random.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
    /// The unwrapped data keys, once [`Store::unlock`] was given the master key.
    secrets: Option<std::sync::Arc<crate::secrets::Secrets>>,
}

/// A device as enrolled by the operator.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub site: String,
    pub name: String,
    pub addr: String,
    pub login: String,
    pub credential_kind: CredentialKind,
    pub credential: String,
    pub host_key: String,
}

#[derive(Debug, Clone)]
pub struct NewGrant {
    pub vendor: String,
    pub site: String,
    pub function: String,
    pub valid_from: i64,
    pub valid_until: i64,
    pub granted_by: String,
    pub reason: String,
    /// The devices at the site the grant covers; empty for every device there.
    pub devices: Vec<String>,
}

/// A short random id with a readable prefix, unique across broker nodes.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 6] = rand::random();
    format!("{prefix}-{}", hex::encode(bytes))
}

/// A 128-bit random id with a readable prefix, for ids that name evidence (sessions, whose
/// recordings and seals are bound to them): not guessable, never reused.
pub fn new_evidence_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{prefix}-{}", hex::encode(bytes))
}

impl Store {
    /// Connects and applies migrations. `url` is `sqlite://PATH` or `postgres://...`.
    pub async fn open(url: &str) -> Result<Store> {
        install_default_drivers();
        let postgres = url.starts_with("postgres:") || url.starts_with("postgresql:");
        let sqlite = url.starts_with("sqlite:");
        if !postgres && !sqlite {
            return Err(Invalid::DatabaseUrl {
                scheme: url.split(':').next().unwrap_or("").to_owned(),
            }
            .into());
        }
        if sqlite {
            private_sqlite_files(url)?;
        }
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // Freed space is zeroed, so a secret sealed in place leaves no clear copy
                    // in the file (see `secrets`).
                    if sqlite {
                        sqlx::Executor::execute(conn, "PRAGMA secure_delete=ON").await?;
                    }
                    Ok(())
                })
            })
            .max_connections(if sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        if sqlite {
            // WAL lets the CLI write while the server reads; busy waits instead of failing.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        // The schema is written in the SQL both dialects share; should they ever diverge, split
        // the folder per dialect and choose here.
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            postgres,
            secrets: None,
        })
    }

    /// Starts a transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// that it waits for another writer instead of failing when its first read would later have
    /// to be upgraded; the `*_in` functions still write first, for PostgreSQL's row locks.
    pub async fn begin(&self) -> Result<Tx> {
        if self.postgres {
            Ok(self.pool.begin().await?)
        } else {
            Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
        }
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A counter bumped by every change that can end live sessions (revocations, disables, kills).
    /// Broker nodes poll it to notice such changes within a second.
    pub async fn revision(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'revision'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn bump_revision<'c, E>(&self, exec: E) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        // One statement, so that it stays the transaction's first write (see [`Tx`]).
        sqlx::query(
            "UPDATE meta SET value = CASE key WHEN 'revision' THEN value + 1 ELSE $1 END \
             WHERE key IN ('revision', 'revision_ms')",
        )
        .bind(chrono::Utc::now().timestamp_millis())
        .execute(exec)
        .await?;
        Ok(())
    }

    /// The revision and when it last moved (Unix milliseconds; 0 before the first move).
    pub async fn revision_stamp(&self) -> Result<(i64, i64)> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, value FROM meta WHERE key IN ('revision', 'revision_ms')")
                .fetch_all(&self.pool)
                .await?;
        let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        Ok((
            get("revision").unwrap_or(0),
            get("revision_ms").unwrap_or(0),
        ))
    }

    /// A quick round-trip to tell whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        let row = sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        let _: i32 = row
            .try_get(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v as i32))?;
        Ok(())
    }
}

/// The SQLite database holds TOTP secrets and device credentials: its file is created readable by
/// its owner only, before SQLite opens it (SQLite gives its `-wal` and `-shm` files the database
/// file's mode), and files left more open by an older version are tightened.
fn private_sqlite_files(url: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
        let path = rest.split('?').next().unwrap_or("");
        if path.is_empty() || path.starts_with(':') || url.contains("mode=memory") {
            return Ok(());
        }
        let io = |source| Invalid::DatabaseFile {
            path: path.to_owned(),
            source,
        };
        // Only where the URL lets SQLite create the file; otherwise a missing file stays an error.
        if url.contains("mode=rwc") {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
        }
        for file in [
            path.to_owned(),
            format!("{path}-wal"),
            format!("{path}-shm"),
        ] {
            match std::fs::metadata(&file) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = url;
    Ok(())
}

/// Names appear in login strings (`VENDOR:SITE/DEVICE:FUNCTION`), file names and URLs.
pub(crate) fn check_name(thing: Thing, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Invalid::Name {
            thing,
            name: name.to_owned(),
        }
        .into())
    }
}
