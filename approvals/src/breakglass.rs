//! Break-glass: a pre-approved vendor organisation opens an emergency function at once, with a
//! mandatory reason, for at most the function's longest window. Every opening is flagged and waits
//! in a review queue until an approver of the site marks it reviewed.

use serde::{Deserialize, Serialize};

use crate::model::{Function, Grant};
use crate::store::{Conflict, Invalid, Missing, NewGrant, Store, StoreError, Thing, Tx, new_id};

type Result<T> = std::result::Result<T, StoreError>;

/// One break-glass opening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct BreakGlass {
    pub id: String,
    pub vendor: String,
    pub org: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub reason: String,
    pub grant_id: String,
    pub opened: i64,
    pub valid_until: i64,
    pub reviewed_at: Option<i64>,
    pub reviewed_by: Option<String>,
    pub review_note: Option<String>,
}

impl Function {
    /// Whether vendors of `org` may open this function at once, without an approver.
    pub fn emergency_open_to(&self, org: &str) -> bool {
        self.emergency
            && self
                .emergency_orgs
                .split(',')
                .map(str::trim)
                .any(|o| !o.is_empty() && o == org)
    }
}

/// What a vendor opens.
#[derive(Debug, Clone)]
pub struct NewBreakGlass {
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub reason: String,
    /// Seconds.
    pub duration: i64,
}

impl Store {
    /// Opens break-glass access: checks the pre-approval, then creates the grant and the flagged
    /// record (withdrawing the grant if the record cannot be written).
    pub async fn open_breakglass(
        &self,
        b: &NewBreakGlass,
        now: i64,
    ) -> Result<(BreakGlass, Grant)> {
        let vendor = self
            .vendor(&b.vendor)
            .await?
            .ok_or_else(|| Missing::named(Thing::Vendor, &b.vendor))?;
        let func = self
            .function(&b.function)
            .await?
            .ok_or_else(|| Missing::named(Thing::Function, &b.function))?;
        if !func.emergency_open_to(&vendor.org) {
            return Err(Invalid::NotPreApproved {
                function: b.function.clone(),
                org: vendor.org.clone(),
            }
            .into());
        }
        if b.reason.trim().is_empty() {
            return Err(Invalid::BreakGlassWithoutReason.into());
        }
        if b.duration <= 0 || b.duration > func.max_window {
            return Err(Invalid::Duration {
                function: b.function.clone(),
                max: func.max_window,
            }
            .into());
        }
        let id = new_id("bg");
        let grant = self
            .add_grant(
                &NewGrant {
                    vendor: b.vendor.clone(),
                    site: b.site.clone(),
                    function: b.function.clone(),
                    valid_from: now,
                    valid_until: now + b.duration,
                    granted_by: "break-glass".into(),
                    reason: format!("break-glass {id}: {}", b.reason.trim()),
                    // Emergency access opens the device asked for, not the whole site.
                    devices: vec![b.device.clone()],
                },
                now,
            )
            .await?;
        if let Err(e) = sqlx::query("INSERT INTO breakglass (id, vendor, org, site, device, function, reason, grant_id, opened, valid_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&id)
            .bind(&b.vendor)
            .bind(&vendor.org)
            .bind(&b.site)
            .bind(&b.device)
            .bind(&b.function)
            .bind(b.reason.trim())
            .bind(&grant.id)
            .bind(now)
            .bind(grant.valid_until)
            .execute(self.pool())
            .await
        {
            // No unflagged emergency access: withdraw the grant just made.
            let _ = self.revoke_grant(&grant.id, "break-glass", now).await;
            return Err(e.into());
        }
        let bg = self
            .breakglass(&id)
            .await?
            .ok_or_else(|| Missing::id(Thing::BreakGlass, &id))?;
        Ok((bg, grant))
    }

    pub async fn breakglass(&self, id: &str) -> Result<Option<BreakGlass>> {
        Ok(
            sqlx::query_as::<_, BreakGlass>("SELECT * FROM breakglass WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Break-glass openings, newest first; only those not yet reviewed when `unreviewed`.
    pub async fn breakglass_list(&self, unreviewed: bool) -> Result<Vec<BreakGlass>> {
        let sql = if unreviewed {
            "SELECT * FROM breakglass WHERE reviewed_at IS NULL ORDER BY opened DESC, id"
        } else {
            "SELECT * FROM breakglass ORDER BY opened DESC, id"
        };
        Ok(sqlx::query_as::<_, BreakGlass>(sql)
            .fetch_all(self.pool())
            .await?)
    }

    /// Sessions opened by break-glass, oldest first.
    pub async fn breakglass_sessions(&self) -> Result<Vec<crate::Session>> {
        Ok(sqlx::query_as::<_, crate::Session>(
            "SELECT * FROM sessions WHERE breakglass IS NOT NULL ORDER BY started, id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks the session as opened by break-glass, so every listing flags it.
    pub async fn flag_session_breakglass(&self, session: &str, breakglass: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET breakglass = $1 WHERE id = $2")
            .bind(breakglass)
            .bind(session)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// An approver's review closes the item in the queue. Exactly one review counts.
    pub async fn review_breakglass(
        &self,
        id: &str,
        by: &str,
        note: &str,
        now: i64,
    ) -> Result<BreakGlass> {
        let mut tx = self.begin().await?;
        let bg = self
            .review_breakglass_in(&mut tx, id, by, note, now)
            .await?;
        tx.commit().await?;
        Ok(bg)
    }

    /// [`Store::review_breakglass`] inside the caller's transaction.
    pub async fn review_breakglass_in(
        &self,
        tx: &mut Tx,
        id: &str,
        by: &str,
        note: &str,
        now: i64,
    ) -> Result<BreakGlass> {
        let n = sqlx::query("UPDATE breakglass SET reviewed_at = $1, reviewed_by = $2, review_note = $3 WHERE id = $4 AND reviewed_at IS NULL")
            .bind(now)
            .bind(by)
            .bind(note.trim())
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let bg = sqlx::query_as::<_, BreakGlass>("SELECT * FROM breakglass WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Missing::id(Thing::BreakGlass, id))?;
        if n == 0 {
            return Err(Conflict::BreakGlassReviewed {
                id: id.to_owned(),
                by: bg.reviewed_by.clone().unwrap_or_default(),
            }
            .into());
        }
        Ok(bg)
    }
}
