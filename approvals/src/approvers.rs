//! Approvers and access requests: who may grant access where, and vendors' requests for it.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

pub use crate::model::{AccessRequestRow, Approver};
use crate::model::{Grant, RequestStatus};
use crate::secrets::Owner;
use crate::store::{
    Conflict, Invalid, Missing, NewGrant, Store, StoreError, Thing, Tx, check_name,
    conflict_on_unique, insert_error, new_id, request_in,
};

// The row itself is in the model (the store decodes it); its refusal is the store's `Conflict`.
impl AccessRequestRow {
    /// Why another request for the same target is refused while this one is pending.
    pub fn already_waiting(&self) -> String {
        self.waiting().to_string()
    }

    /// [`AccessRequestRow::already_waiting`], as the store's refusal.
    fn waiting(&self) -> Conflict {
        Conflict::RequestWaiting {
            request: self.id.clone(),
            function: self.function.clone(),
            site: self.site.clone(),
            device: self.device.clone(),
        }
    }
}

/// What a vendor asks for.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub reason: String,
    /// Seconds.
    pub duration: i64,
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(Invalid::PasswordSalt)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Invalid::PasswordHash(e).into())
}

/// Checks approvers' passwords on a few dedicated threads fed by a bounded queue. argon2 takes
/// ~19 MiB per check; on threads of their own the memory is reused instead of piling up in the
/// allocator arenas of whichever runtime threads ran checks, and a flood of sign-ins waits in
/// (or is turned away from) the queue instead of using memory.
pub struct PasswordChecker {
    jobs: std::sync::mpsc::SyncSender<PasswordJob>,
}

struct PasswordJob {
    password: String,
    /// `None`: an unknown name, checked against a stand-in hash so timing tells nothing.
    hash: Option<String>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

impl PasswordChecker {
    pub fn new(threads: usize, queue: usize) -> PasswordChecker {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<PasswordJob>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("postern-password-{i}"))
                .spawn(move || {
                    // This thread's argon2 memory, filled anew by each check: allocating it per
                    // check left ~19 MiB resident each time (the allocator keeps such blocks).
                    let mut memory = Vec::new();
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { return };
                        let ok = match &job.hash {
                            Some(h) => verify_with_memory(&mut memory, &job.password, h),
                            None => {
                                let _ =
                                    verify_with_memory(&mut memory, &job.password, stand_in_hash());
                                false
                            }
                        };
                        let _ = job.reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-checking thread");
            }
        }
        PasswordChecker { jobs }
    }

    /// Whether `password` matches `hash`; `None` when too many checks are waiting already.
    pub async fn check(&self, password: String, hash: Option<String>) -> Option<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(PasswordJob {
                password,
                hash,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }
}

/// The most argon2 memory a stored hash may ask for (64 MiB); ours use 19 MiB.
const MAX_ARGON2_BLOCKS: usize = 64 * 1024;

/// [`verify_password`] with caller-owned argon2 memory, reused from check to check.
fn verify_with_memory(memory: &mut Vec<argon2::Block>, password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_ARGON2_BLOCKS {
        return false;
    }
    memory.resize(blocks, argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    let argon = argon2::Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
        .is_err()
    {
        return false;
    }
    // `Output` compares in constant time.
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// A real argon2 hash of nothing anyone knows, so that unknown names cost what known ones do.
fn stand_in_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("postern: no such approver").unwrap_or_default())
}

/// Checks a password against its stored hash, in constant time.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

type Result<T> = std::result::Result<T, StoreError>;

impl Store {
    pub async fn add_approver(
        &self,
        name: &str,
        password_hash: &str,
        totp_secret: &str,
        sites: &[String],
        regions: &[String],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.add_approver_in(
            &mut tx,
            name,
            password_hash,
            totp_secret,
            sites,
            regions,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::add_approver`] inside the caller's transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_approver_in(
        &self,
        tx: &mut Tx,
        name: &str,
        password_hash: &str,
        totp_secret: &str,
        sites: &[String],
        regions: &[String],
        now: i64,
    ) -> Result<()> {
        check_name(Thing::Approver, name)?;
        if sites.is_empty() && regions.is_empty() {
            return Err(Invalid::ApproverWithoutScope.into());
        }
        sqlx::query("INSERT INTO approvers (name, password_hash, totp_secret, totp_last_step, sites, regions, disabled, created) VALUES ($1, $2, $3, -1, $4, $5, 0, $6)")
            .bind(name)
            .bind(password_hash)
            .bind(self.seal(Owner::Approver(name), totp_secret)?)
            .bind(sites.join(","))
            .bind(regions.join(","))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| conflict_on_unique(e, Conflict::exists(Thing::Approver, name)))?;
        // Checked after the insert (write first, see `Tx`); an unknown site fails the
        // transaction, which the caller then rolls back.
        for s in sites {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
                .bind(s)
                .fetch_one(&mut **tx)
                .await?;
            if n == 0 {
                return Err(Missing::named(Thing::Site, s).into());
            }
        }
        Ok(())
    }

    pub async fn approver(&self, name: &str) -> Result<Option<Approver>> {
        sqlx::query_as::<_, Approver>("SELECT * FROM approvers WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .map(|a| self.open_approver(a))
            .transpose()
    }

    pub async fn approvers(&self) -> Result<Vec<Approver>> {
        sqlx::query_as::<_, Approver>("SELECT * FROM approvers ORDER BY name")
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(|a| self.open_approver(a))
            .collect()
    }

    /// The approvers accountable for a site (to notify them).
    pub async fn approvers_of(&self, site: &str) -> Result<Vec<Approver>> {
        let region = self.site_region(site).await?;
        Ok(self
            .approvers()
            .await?
            .into_iter()
            .filter(|a| a.covers(site, region.as_deref()))
            .collect())
    }

    /// Whether `approver` may decide for `site`.
    pub async fn may_approve(&self, approver: &str, site: &str) -> Result<bool> {
        let region = self.site_region(site).await?;
        Ok(self
            .approver(approver)
            .await?
            .is_some_and(|a| a.covers(site, region.as_deref())))
    }

    async fn site_region(&self, site: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, Option<String>>("SELECT region FROM sites WHERE name = $1")
                .bind(site)
                .fetch_optional(self.pool())
                .await?
                .flatten(),
        )
    }

    /// Files a request. The duration is bounded by the function's longest window.
    pub async fn add_request(&self, r: &NewRequest, now: i64) -> Result<AccessRequestRow> {
        let NewRequest {
            vendor,
            site,
            device,
            function,
            reason,
            duration,
        } = r;
        let duration = *duration;
        let func = self
            .function(function)
            .await?
            .ok_or_else(|| Missing::named(Thing::Function, function))?;
        if duration <= 0 || duration > func.max_window {
            return Err(Invalid::Duration {
                function: function.clone(),
                max: func.max_window,
            }
            .into());
        }
        if reason.trim().is_empty() {
            return Err(Invalid::RequestWithoutReason.into());
        }
        // The grant it may become covers this device only: it has to exist.
        if self.device(site, device).await?.is_none() {
            return Err(Missing::Device {
                site: site.clone(),
                device: device.clone(),
            }
            .into());
        }
        let id = new_id("r");
        let inserted = sqlx::query("INSERT INTO requests (id, vendor, site, device, function, reason, duration, status, created) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)")
            .bind(&id)
            .bind(vendor)
            .bind(site)
            .bind(device)
            .bind(function)
            .bind(reason.trim())
            .bind(duration)
            .bind(now)
            .execute(self.pool())
            .await;
        if let Err(e) = inserted {
            // The partial unique index allows one pending request per vendor, site, device and
            // function, also when two nodes file at once: name the one already waiting.
            if let sqlx::Error::Database(d) = &e
                && d.is_unique_violation()
            {
                let pending = self.pending_request(vendor, site, device, function).await?;
                return Err(match pending {
                    Some(p) => p.waiting(),
                    // Decided between the insert and this look-up: filing again will do.
                    None => Conflict::RequestJustDecided {
                        function: function.clone(),
                        site: site.clone(),
                        device: device.clone(),
                    },
                }
                .into());
            }
            let other = Conflict::RequestWaiting {
                request: id.clone(),
                function: function.clone(),
                site: site.clone(),
                device: device.clone(),
            };
            return Err(insert_error(e, other, Missing::RequestTarget));
        }
        self.request(&id)
            .await?
            .ok_or_else(|| Missing::id(Thing::Request, id).into())
    }

    /// The vendor's open request for this device and function, if any (there is at most one).
    pub async fn pending_request(
        &self,
        vendor: &str,
        site: &str,
        device: &str,
        function: &str,
    ) -> Result<Option<AccessRequestRow>> {
        Ok(sqlx::query_as::<_, AccessRequestRow>("SELECT * FROM requests WHERE vendor = $1 AND site = $2 AND device = $3 AND function = $4 AND status = 'pending'")
            .bind(vendor)
            .bind(site)
            .bind(device)
            .bind(function)
            .fetch_optional(self.pool())
            .await?)
    }

    pub async fn request(&self, id: &str) -> Result<Option<AccessRequestRow>> {
        Ok(
            sqlx::query_as::<_, AccessRequestRow>("SELECT * FROM requests WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Requests, newest first; only those with `status` when given.
    pub async fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<AccessRequestRow>> {
        Ok(sqlx::query_as::<_, AccessRequestRow>(
            "SELECT * FROM requests WHERE ($1 = '' OR status = $1) ORDER BY created DESC, id",
        )
        .bind(status.map_or("", RequestStatus::as_str))
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn requests_of_vendor(&self, vendor: &str) -> Result<Vec<AccessRequestRow>> {
        Ok(sqlx::query_as::<_, AccessRequestRow>(
            "SELECT * FROM requests WHERE vendor = $1 ORDER BY created DESC, id",
        )
        .bind(vendor)
        .fetch_all(self.pool())
        .await?)
    }

    /// Approves a pending request: creates its grant (window `from`..`until`, checked against the
    /// function) and records who decided and when. Exactly one decision wins.
    pub async fn approve_request(
        &self,
        id: &str,
        by: &str,
        from: i64,
        until: i64,
        now: i64,
    ) -> Result<(AccessRequestRow, Grant)> {
        let mut tx = self.begin().await?;
        let done = self
            .approve_request_in(&mut tx, id, by, from, until, now)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// [`Store::approve_request`] inside the caller's transaction: the grant and the decision are
    /// one change, undone together by a rollback.
    pub async fn approve_request_in(
        &self,
        tx: &mut Tx,
        id: &str,
        by: &str,
        from: i64,
        until: i64,
        now: i64,
    ) -> Result<(AccessRequestRow, Grant)> {
        let req = self
            .request(id)
            .await?
            .ok_or_else(|| Missing::id(Thing::Request, id))?;
        if req.status != RequestStatus::Pending {
            return Err(Conflict::RequestDecided {
                request: id.to_owned(),
                status: req.status,
            }
            .into());
        }
        let grant = self
            .add_grant_in(
                tx,
                &NewGrant {
                    vendor: req.vendor.clone(),
                    site: req.site.clone(),
                    function: req.function.clone(),
                    valid_from: from,
                    valid_until: until,
                    granted_by: by.to_owned(),
                    reason: format!("request {id}: {}", req.reason),
                    // A request is for one device: its grant covers that device only.
                    devices: vec![req.device.clone()],
                },
                now,
            )
            .await?;
        let n = sqlx::query("UPDATE requests SET status = 'approved', decided_at = $1, decided_by = $2, grant_id = $3 WHERE id = $4 AND status = 'pending'")
            .bind(now)
            .bind(by)
            .bind(&grant.id)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            // Someone decided first: the caller's rollback withdraws the grant just made.
            return Err(Conflict::RequestDecidedFirst(id.to_owned()).into());
        }
        let req = request_in(tx, id)
            .await?
            .ok_or_else(|| Missing::id(Thing::Request, id))?;
        Ok((req, grant))
    }

    pub async fn deny_request(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequestRow> {
        let mut tx = self.begin().await?;
        let req = self.deny_request_in(&mut tx, id, by, reason, now).await?;
        tx.commit().await?;
        Ok(req)
    }

    /// [`Store::deny_request`] inside the caller's transaction.
    pub async fn deny_request_in(
        &self,
        tx: &mut Tx,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequestRow> {
        let n = sqlx::query("UPDATE requests SET status = 'denied', decided_at = $1, decided_by = $2, decision_reason = $3 WHERE id = $4 AND status = 'pending'")
            .bind(now)
            .bind(by)
            .bind(reason)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let req = request_in(tx, id)
            .await?
            .ok_or_else(|| Missing::id(Thing::Request, id))?;
        if n == 0 {
            return Err(Conflict::RequestDecided {
                request: id.to_owned(),
                status: req.status,
            }
            .into());
        }
        Ok(req)
    }
}

/// After an update of one approver's row: not found if no row changed, else every sign-in of
/// theirs ends (in the same transaction, so a rolled-back change keeps them signed in).
async fn sign_out_changed(tx: &mut Tx, name: &str, rows: u64) -> Result<()> {
    if rows == 0 {
        return Err(Missing::named(Thing::Approver, name).into());
    }
    sqlx::query("DELETE FROM web_logins WHERE approver = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A signed-in approver, found by the hash of their cookie's token.
#[derive(Debug, Clone)]
pub struct WebLogin {
    pub approver: Approver,
    /// The token every form of this login carries.
    pub csrf: String,
    pub expires: i64,
}

impl Store {
    /// Takes an approver's TOTP time step; false if it (or a later one) was used already.
    pub async fn consume_approver_totp_step(&self, approver: &str, step: i64) -> Result<bool> {
        self.consume_step(
            "UPDATE approvers SET totp_last_step = $1 WHERE name = $2 AND totp_last_step < $1",
            approver,
            step,
        )
        .await
    }

    pub async fn create_web_login(
        &self,
        token_hash: &str,
        approver: &str,
        csrf: &str,
        now: i64,
        expires: i64,
    ) -> Result<()> {
        // Expired logins are cleared whenever someone signs in.
        sqlx::query("DELETE FROM web_logins WHERE expires < $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        sqlx::query("INSERT INTO web_logins (token_hash, approver, csrf, created, expires) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash)
            .bind(approver)
            .bind(csrf)
            .bind(now)
            .bind(expires)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The live login for a token hash: not expired, approver still enabled.
    pub async fn web_login(&self, token_hash: &str, now: i64) -> Result<Option<WebLogin>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT approver, csrf, expires FROM web_logins WHERE token_hash = $1 AND expires > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let Some((name, csrf, expires)) = row else {
            return Ok(None);
        };
        Ok(self
            .approver(&name)
            .await?
            .filter(|a| !a.disabled)
            .map(|approver| WebLogin {
                approver,
                csrf,
                expires,
            }))
    }

    /// Replaces an approver's password hash and TOTP secret and ends all their sign-ins.
    pub async fn reset_approver(
        &self,
        name: &str,
        password_hash: &str,
        totp_secret: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.reset_approver_in(&mut tx, name, password_hash, totp_secret)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::reset_approver`] inside the caller's transaction.
    pub async fn reset_approver_in(
        &self,
        tx: &mut Tx,
        name: &str,
        password_hash: &str,
        totp_secret: &str,
    ) -> Result<()> {
        let n = sqlx::query("UPDATE approvers SET password_hash = $1, totp_secret = $2, totp_last_step = -1 WHERE name = $3")
            .bind(password_hash)
            .bind(self.seal(Owner::Approver(name), totp_secret)?)
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        sign_out_changed(tx, name, n).await
    }

    /// Disables an approver and ends all their sign-ins.
    pub async fn disable_approver(&self, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        self.disable_approver_in(&mut tx, name).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::disable_approver`] inside the caller's transaction.
    pub async fn disable_approver_in(&self, tx: &mut Tx, name: &str) -> Result<()> {
        let n = sqlx::query("UPDATE approvers SET disabled = 1 WHERE name = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        sign_out_changed(tx, name, n).await
    }

    pub async fn end_web_login(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM web_logins WHERE token_hash = $1")
            .bind(token_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horse!", &h));
        let mut memory = Vec::new();
        assert!(verify_with_memory(&mut memory, "correct horse", &h));
        assert!(!verify_with_memory(&mut memory, "correct horse!", &h));
        assert!(!verify_with_memory(
            &mut memory,
            "correct horse",
            "$argon2id$v=19$bad"
        ));
        assert!(!verify_password("x", "not a hash"));
    }
}
