//! The database: sqlx with runtime queries through the Any driver, so one set of queries serves
//! the embedded SQLite default and a shared PostgreSQL. Migrations are embedded in the binary.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::model::{
    ChannelSet, CommandRow, Device, Function, Grant, IssuedCertificate, Session, Site, Vendor,
};
use crate::policy::Facts;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The database did not answer in time: a hung or unreachable control plane.
    #[error("the database did not answer within {} seconds", DEADLINE.as_secs())]
    Timeout,
}

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
/// its audit record inside one (see [`crate::actions`]). The `*_in` functions write before they
/// read: on SQLite a transaction that reads first cannot take the write lock once another
/// connection has written meanwhile (the broker writes all the time), so it would fail at random.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
}

/// A device as enrolled by the operator.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub site: String,
    pub name: String,
    pub addr: String,
    pub login: String,
    pub credential_kind: String,
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

/// An insert's error: a duplicate is `duplicate`, a reference to nothing is `missing`.
fn insert_error(e: sqlx::Error, duplicate: String, missing: String) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(duplicate),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound(missing),
        _ => StoreError::Db(e),
    }
}

pub(crate) fn conflict_on_unique(e: sqlx::Error, what: String) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound(format!(
            "{what}: it refers to something that does not exist"
        )),
        _ => StoreError::Db(e),
    }
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
            return Err(StoreError::Invalid(format!(
                "database_url must start with sqlite:// or postgres:// (got '{}')",
                url.split(':').next().unwrap_or("")
            )));
        }
        if sqlite {
            private_sqlite_files(url)?;
        }
        let pool = AnyPoolOptions::new()
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
        Ok(Store { pool, postgres })
    }

    /// Starts a transaction.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
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
        sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
            .execute(exec)
            .await?;
        Ok(())
    }

    // ---- vendors ----

    pub async fn add_vendor(
        &self,
        name: &str,
        org: &str,
        contract_end: Option<i64>,
        totp_secret: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.add_vendor_in(&mut tx, name, org, contract_end, totp_secret, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_vendor`] inside the caller's transaction.
    pub async fn add_vendor_in(
        &self,
        tx: &mut Tx,
        name: &str,
        org: &str,
        contract_end: Option<i64>,
        totp_secret: &str,
        now: i64,
    ) -> Result<()> {
        check_name("vendor", name)?;
        sqlx::query("INSERT INTO vendors (name, org, contract_end, disabled, totp_secret, totp_last_step, created) VALUES ($1, $2, $3, 0, $4, -1, $5)")
            .bind(name)
            .bind(org)
            .bind(contract_end)
            .bind(totp_secret)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, format!("vendor {name} already exists")))?;
        Ok(())
    }

    /// One vendor, as the caller's transaction sees it.
    pub async fn vendor_in(&self, tx: &mut Tx, name: &str) -> Result<Option<Vendor>> {
        Ok(
            sqlx::query_as::<_, Vendor>("SELECT * FROM vendors WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?,
        )
    }

    pub async fn vendor(&self, name: &str) -> Result<Option<Vendor>> {
        Ok(
            sqlx::query_as::<_, Vendor>("SELECT * FROM vendors WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn vendors(&self) -> Result<Vec<Vendor>> {
        Ok(
            sqlx::query_as::<_, Vendor>("SELECT * FROM vendors ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Disables a vendor and revokes all their grants; returns the ids of the grants revoked.
    pub async fn disable_vendor(&self, name: &str, by: &str, now: i64) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let ids = self.disable_vendor_in(&mut tx, name, by, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// [`Store::disable_vendor`] inside the caller's transaction.
    pub async fn disable_vendor_in(
        &self,
        tx: &mut Tx,
        name: &str,
        by: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        let n = sqlx::query("UPDATE vendors SET disabled = 1 WHERE name = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("no vendor named {name}")));
        }
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM grants WHERE vendor = $1 AND revoked_at IS NULL AND valid_until > $2",
        )
        .bind(name)
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE vendor = $3 AND revoked_at IS NULL AND valid_until > $1")
            .bind(now)
            .bind(by)
            .bind(name)
            .execute(&mut **tx)
            .await?;
        self.bump_revision(&mut **tx).await?;
        Ok(ids)
    }

    /// Marks a TOTP step as used if it is later than the last one used: each code works once.
    /// Returns false for a replayed (or older) code. Atomic across broker nodes.
    pub async fn consume_totp_step(&self, vendor: &str, step: i64) -> Result<bool> {
        self.consume_step(
            "UPDATE vendors SET totp_last_step = $1 WHERE name = $2 AND totp_last_step < $1",
            vendor,
            step,
        )
        .await
    }

    /// The single-use rule for vendors' and approvers' TOTP codes alike: `update` sets the last
    /// used step of `name` to `step` only if it is later.
    pub(crate) async fn consume_step(
        &self,
        update: &'static str,
        name: &str,
        step: i64,
    ) -> Result<bool> {
        let n = sqlx::query(update)
            .bind(step)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn record_certificate(&self, c: &IssuedCertificate) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.record_certificate_in(&mut tx, c).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::record_certificate`] inside the caller's transaction.
    pub async fn record_certificate_in(&self, tx: &mut Tx, c: &IssuedCertificate) -> Result<()> {
        sqlx::query("INSERT INTO certificates (serial, vendor, key_id, key_fingerprint, valid_after, valid_before, revoked, created) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)")
            .bind(&c.serial)
            .bind(&c.vendor)
            .bind(&c.key_id)
            .bind(&c.key_fingerprint)
            .bind(c.valid_after)
            .bind(c.valid_before)
            .bind(c.created)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                insert_error(
                    e,
                    format!("certificate serial {} already recorded", c.serial),
                    format!("no vendor named {}", c.vendor),
                )
            })?;
        Ok(())
    }

    pub async fn certificates_for_key(&self, fingerprint: &str) -> Result<Vec<IssuedCertificate>> {
        Ok(sqlx::query_as::<_, IssuedCertificate>(
            "SELECT * FROM certificates WHERE key_fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Registers a node's seal public key (idempotent).
    pub async fn register_seal_key(&self, public_key: &str, node: &str, now: i64) -> Result<()> {
        let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seal_keys WHERE public_key = $1")
            .bind(public_key)
            .fetch_one(&self.pool)
            .await?;
        if known == 0 {
            sqlx::query("INSERT INTO seal_keys (public_key, node, created) VALUES ($1, $2, $3)")
                .bind(public_key)
                .bind(node)
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn seal_keys(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT public_key FROM seal_keys ORDER BY created")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Registers a node's vendor CA public key (OpenSSH format) so every node trusts the
    /// certificates it issues. A new key bumps the revision so running nodes reload the set.
    pub async fn register_vendor_ca(&self, public_key: &str, node: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let known: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM vendor_cas WHERE public_key = $1")
                .bind(public_key)
                .fetch_one(&mut *tx)
                .await?;
        if known == 0 {
            sqlx::query("INSERT INTO vendor_cas (public_key, node, created) VALUES ($1, $2, $3)")
                .bind(public_key)
                .bind(node)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            self.bump_revision(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every registered vendor CA public key (OpenSSH format).
    pub async fn vendor_cas(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT public_key FROM vendor_cas ORDER BY created")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // ---- sites, devices, functions ----

    pub async fn add_site(&self, name: &str, region: Option<&str>, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.add_site_in(&mut tx, name, region, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_site`] inside the caller's transaction.
    pub async fn add_site_in(
        &self,
        tx: &mut Tx,
        name: &str,
        region: Option<&str>,
        now: i64,
    ) -> Result<()> {
        check_name("site", name)?;
        sqlx::query("INSERT INTO sites (name, region, created) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(region)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, format!("site {name} already exists")))?;
        Ok(())
    }

    pub async fn sites(&self) -> Result<Vec<Site>> {
        Ok(
            sqlx::query_as::<_, Site>("SELECT * FROM sites ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn add_device(&self, d: &NewDevice, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.add_device_in(&mut tx, d, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_device`] inside the caller's transaction (which sees sites it added itself).
    pub async fn add_device_in(&self, tx: &mut Tx, d: &NewDevice, now: i64) -> Result<()> {
        check_name("device", &d.name)?;
        // The site is checked by its foreign key (see [`Tx`] for why not by a look-up first).
        sqlx::query("INSERT INTO devices (site, name, addr, login, credential_kind, credential, host_key, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&d.site)
            .bind(&d.name)
            .bind(&d.addr)
            .bind(&d.login)
            .bind(&d.credential_kind)
            .bind(&d.credential)
            .bind(&d.host_key)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                insert_error(
                    e,
                    format!("device {}/{} already exists", d.site, d.name),
                    format!(
                        "no site named {}: add it with `postern site add {}`",
                        d.site, d.site
                    ),
                )
            })?;
        Ok(())
    }

    pub async fn device(&self, site: &str, name: &str) -> Result<Option<Device>> {
        Ok(
            sqlx::query_as::<_, Device>("SELECT * FROM devices WHERE site = $1 AND name = $2")
                .bind(site)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn devices(&self) -> Result<Vec<Device>> {
        Ok(
            sqlx::query_as::<_, Device>("SELECT * FROM devices ORDER BY site, name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub(crate) async fn site_exists(&self, site: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
            .bind(site)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Adds a site unless it exists (in any region); true if it was added.
    pub async fn add_site_if_new_in(
        &self,
        tx: &mut Tx,
        name: &str,
        region: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        check_name("site", name)?;
        let n = sqlx::query("INSERT INTO sites (name, region, created) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(region)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn add_function(
        &self,
        name: &str,
        allow: &ChannelSet,
        login: Option<&str>,
        max_window: i64,
        emergency_orgs: Option<&[String]>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.add_function_in(&mut tx, name, allow, login, max_window, emergency_orgs, now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_function`] inside the caller's transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_function_in(
        &self,
        tx: &mut Tx,
        name: &str,
        allow: &ChannelSet,
        login: Option<&str>,
        max_window: i64,
        emergency_orgs: Option<&[String]>,
        now: i64,
    ) -> Result<()> {
        check_name("function", name)?;
        if max_window <= 0 {
            return Err(StoreError::Invalid("--max-window must be positive".into()));
        }
        if max_window > MAX_WINDOW {
            return Err(StoreError::Invalid(format!(
                "--max-window is at most 366 days ({MAX_WINDOW}s); longer access is standing access, not a window"
            )));
        }
        if emergency_orgs.is_some_and(|o| o.is_empty()) {
            return Err(StoreError::Invalid(
                "an emergency function needs the vendor organisations pre-approved to open it (--orgs)".into(),
            ));
        }
        let orgs = emergency_orgs.unwrap_or_default();
        sqlx::query("INSERT INTO functions (name, allow, login, max_window, emergency, emergency_orgs, created) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(name)
            .bind(allow.to_string())
            .bind(login)
            .bind(max_window)
            .bind(emergency_orgs.is_some() as i64)
            .bind(orgs.join(","))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, format!("function {name} already exists")))?;
        Ok(())
    }

    pub async fn function(&self, name: &str) -> Result<Option<Function>> {
        Ok(
            sqlx::query_as::<_, Function>("SELECT * FROM functions WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn functions(&self) -> Result<Vec<Function>> {
        Ok(
            sqlx::query_as::<_, Function>("SELECT * FROM functions ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // ---- grants ----

    /// Adds a grant after checking that everything it names exists and that the window is
    /// well-formed and no longer than the function allows.
    pub async fn add_grant(&self, g: &NewGrant, now: i64) -> Result<Grant> {
        let mut tx = self.pool.begin().await?;
        let grant = self.add_grant_in(&mut tx, g, now).await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// [`Store::add_grant`] inside the caller's transaction.
    pub async fn add_grant_in(&self, tx: &mut Tx, g: &NewGrant, now: i64) -> Result<Grant> {
        let vendor = self
            .vendor(&g.vendor)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no vendor named {}", g.vendor)))?;
        if vendor.is_disabled() {
            return Err(StoreError::Invalid(format!(
                "vendor {} is disabled",
                g.vendor
            )));
        }
        if !self.site_exists(&g.site).await? {
            return Err(StoreError::NotFound(format!("no site named {}", g.site)));
        }
        let func = self
            .function(&g.function)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no function named {}", g.function)))?;
        if g.valid_until <= g.valid_from {
            return Err(StoreError::Invalid(
                "the window must end after it starts".into(),
            ));
        }
        if g.valid_until <= now {
            return Err(StoreError::Invalid("the window is already over".into()));
        }
        if g.valid_until - g.valid_from > func.max_window {
            return Err(StoreError::Invalid(format!(
                "the window is longer than function {} allows ({}s > {}s)",
                func.name,
                g.valid_until - g.valid_from,
                func.max_window
            )));
        }
        let devices = self.check_grant_devices(&g.site, &g.devices).await?;
        let grant = Grant {
            id: new_id("g"),
            vendor: g.vendor.clone(),
            site: g.site.clone(),
            function: g.function.clone(),
            valid_from: g.valid_from,
            valid_until: g.valid_until,
            granted_by: g.granted_by.clone(),
            reason: g.reason.clone(),
            created: now,
            revoked_at: None,
            revoked_by: None,
            devices,
        };
        sqlx::query("INSERT INTO grants (id, vendor, site, function, valid_from, valid_until, granted_by, reason, created, devices) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&grant.id)
            .bind(&grant.vendor)
            .bind(&grant.site)
            .bind(&grant.function)
            .bind(grant.valid_from)
            .bind(grant.valid_until)
            .bind(&grant.granted_by)
            .bind(&grant.reason)
            .bind(now)
            .bind(&grant.devices)
            .execute(&mut **tx)
            .await?;
        Ok(grant)
    }

    /// A grant's device list as stored (sorted, comma-separated; empty for the whole site), after
    /// checking that every device named exists at the site.
    async fn check_grant_devices(&self, site: &str, devices: &[String]) -> Result<String> {
        let mut names: Vec<&str> = devices.iter().map(|d| d.trim()).collect();
        // A blank name must not quietly widen the grant to the whole site.
        if names.iter().any(|d| d.is_empty()) {
            return Err(StoreError::Invalid(
                "an empty device name: name each device, or none for the whole site".into(),
            ));
        }
        names.sort_unstable();
        names.dedup();
        for d in &names {
            check_name("device", d)?;
            if self.device(site, d).await?.is_none() {
                return Err(StoreError::NotFound(format!("no device {d} at {site}")));
            }
        }
        Ok(names.join(","))
    }

    pub async fn grants(&self) -> Result<Vec<Grant>> {
        Ok(
            sqlx::query_as::<_, Grant>("SELECT * FROM grants ORDER BY created, id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        Ok(
            sqlx::query_as::<_, Grant>("SELECT * FROM grants WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn revoke_grant(&self, id: &str, by: &str, now: i64) -> Result<Grant> {
        let mut tx = self.pool.begin().await?;
        let grant = self.revoke_grant_in(&mut tx, id, by, now).await?;
        tx.commit().await?;
        Ok(grant)
    }

    /// [`Store::revoke_grant`] inside the caller's transaction.
    pub async fn revoke_grant_in(
        &self,
        tx: &mut Tx,
        id: &str,
        by: &str,
        now: i64,
    ) -> Result<Grant> {
        let n = sqlx::query("UPDATE grants SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(by)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let grant = sqlx::query_as::<_, Grant>("SELECT * FROM grants WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no grant with id {id}")))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "grant {id} was already revoked"
            )));
        }
        self.bump_revision(&mut **tx).await?;
        Ok(grant)
    }

    /// Loads what the policy decision needs for one vendor and target.
    pub async fn facts(
        &self,
        vendor: &str,
        site: &str,
        device: &str,
        function: Option<&str>,
    ) -> Result<Facts> {
        // Independent lookups, in parallel: on PostgreSQL each is a network round trip.
        let grants =
            sqlx::query_as::<_, Grant>("SELECT * FROM grants WHERE vendor = $1 AND site = $2")
                .bind(vendor)
                .bind(site)
                .fetch_all(&self.pool);
        let functions = sqlx::query_as::<_, Function>(
            "SELECT * FROM functions WHERE name = $3 OR name IN (SELECT function FROM grants WHERE vendor = $1 AND site = $2)",
        )
        .bind(vendor)
        .bind(site)
        .bind(function.unwrap_or(""))
        .fetch_all(&self.pool);
        let (grants, functions, vendor, site_exists, device) = tokio::try_join!(
            async { grants.await.map_err(StoreError::from) },
            async { functions.await.map_err(StoreError::from) },
            self.vendor(vendor),
            self.site_exists(site),
            self.device(site, device),
        )?;
        Ok(Facts {
            vendor,
            site_exists,
            device,
            grants,
            functions: functions.into_iter().map(|f| (f.name.clone(), f)).collect(),
        })
    }

    // ---- sessions ----

    pub async fn start_session(&self, s: &Session) -> Result<()> {
        sqlx::query("INSERT INTO sessions (id, vendor, site, device, function, grant_id, node, source, recording, started, kill_requested) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)")
            .bind(&s.id)
            .bind(&s.vendor)
            .bind(&s.site)
            .bind(&s.device)
            .bind(&s.function)
            .bind(&s.grant_id)
            .bind(&s.node)
            .bind(&s.source)
            .bind(&s.recording)
            .bind(s.started)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a session's end and its seal (record count and final hash of the recording).
    /// `seal` is `None` when the recording could not be sealed (a write error): the session is then
    /// stored like one cut by a crash, with an unsealed recording.
    pub async fn end_session(
        &self,
        id: &str,
        reason: &str,
        seal: Option<(i64, &str)>,
        now: i64,
    ) -> Result<()> {
        let (records, final_hash) = match seal {
            Some((n, h)) => (Some(n), Some(h)),
            None => (None, None),
        };
        sqlx::query("UPDATE sessions SET ended = $1, end_reason = $2, records = $3, final_hash = $4 WHERE id = $5 AND ended IS NULL")
            .bind(now)
            .bind(reason)
            .bind(records)
            .bind(final_hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        Ok(
            sqlx::query_as::<_, Session>("SELECT * FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn sessions(&self, live_only: bool) -> Result<Vec<Session>> {
        let sql = if live_only {
            "SELECT * FROM sessions WHERE ended IS NULL ORDER BY started, id"
        } else {
            "SELECT * FROM sessions ORDER BY started, id"
        };
        Ok(sqlx::query_as::<_, Session>(sql)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Asks whichever node runs a live session to close it.
    pub async fn request_kill(&self, id: &str) -> Result<Session> {
        let mut tx = self.pool.begin().await?;
        let s = self.request_kill_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(s)
    }

    /// [`Store::request_kill`] inside the caller's transaction.
    pub async fn request_kill_in(&self, tx: &mut Tx, id: &str) -> Result<Session> {
        let n =
            sqlx::query("UPDATE sessions SET kill_requested = 1 WHERE id = $1 AND ended IS NULL")
                .bind(id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        let s = sqlx::query_as::<_, Session>("SELECT * FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no session with id {id}")))?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "session {id} has already ended"
            )));
        }
        self.bump_revision(&mut **tx).await?;
        Ok(s)
    }

    /// Ids of this node's live sessions whose kill was requested.
    pub async fn kill_requests(&self, node: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sessions WHERE node = $1 AND ended IS NULL AND kill_requested = 1",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sessions a node left open when it stopped without closing them (a crash): marked ended.
    pub async fn end_orphaned_sessions(&self, node: &str, now: i64) -> Result<Vec<String>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM sessions WHERE node = $1 AND ended IS NULL")
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
        sqlx::query("UPDATE sessions SET ended = $1, end_reason = 'broker stopped unexpectedly' WHERE node = $2 AND ended IS NULL")
            .bind(now)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(ids)
    }

    /// Stores a session's command log (replacing any earlier extraction of it).
    pub async fn set_commands(&self, session: &str, rows: &[CommandRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM commands WHERE session = $1")
            .bind(session)
            .execute(&mut *tx)
            .await?;
        for r in rows {
            sqlx::query("INSERT INTO commands (session, seq, vendor, site, device, time_us, offset_ms, channel, kind, command) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .bind(&r.session)
                .bind(r.seq)
                .bind(&r.vendor)
                .bind(&r.site)
                .bind(&r.device)
                .bind(r.time_us)
                .bind(r.offset_ms)
                .bind(r.channel)
                .bind(&r.kind)
                .bind(&r.command)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commands across sessions, oldest first, filtered by vendor, site, device and start time.
    pub async fn commands(
        &self,
        vendor: Option<&str>,
        site: Option<&str>,
        device: Option<&str>,
        since_us: Option<i64>,
    ) -> Result<Vec<CommandRow>> {
        Ok(sqlx::query_as::<_, CommandRow>(
            "SELECT * FROM commands WHERE ($1 = '' OR vendor = $1) AND ($2 = '' OR site = $2) AND ($3 = '' OR device = $3) AND time_us >= $4 ORDER BY time_us, session, seq",
        )
        .bind(vendor.unwrap_or(""))
        .bind(site.unwrap_or(""))
        .bind(device.unwrap_or(""))
        .bind(since_us.unwrap_or(i64::MIN))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One session's command log, in order.
    pub async fn commands_of_session(&self, session: &str) -> Result<Vec<CommandRow>> {
        Ok(sqlx::query_as::<_, CommandRow>(
            "SELECT * FROM commands WHERE session = $1 ORDER BY seq",
        )
        .bind(session)
        .fetch_all(&self.pool)
        .await?)
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
        let io = |e: std::io::Error| StoreError::Invalid(format!("database file {path}: {e}"));
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
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{name}' is not a valid {what} name: use letters, digits, '-', '_' and '.' (at most 64)"
        )))
    }
}
