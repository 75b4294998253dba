//! Backoff after wrong second-factor codes, in the database so that every broker node shares it
//! and a restart does not forget it.
//!
//! Only failures *after* the first factor count (a vendor's certificate verified, an approver's
//! password right): whoever reaches the TOTP prompt already holds the vendor's key and
//! certificate or the approver's password. Failures before that are counted per source by the
//! in-memory `ratelimit` module, never against the named account, so a stranger cannot lock
//! anyone out.
//!
//! The first [`FREE_FAILURES`] wrong codes cost nothing (typing mistakes); each one after that
//! locks the account for twice as long as the last, from [`FIRST_LOCK`] up to [`MAX_LOCK`]. A
//! right code clears the count; so does a day without failures. At the cap, a thief with a stolen
//! key and certificate gets about 24 guesses a day at a six-digit code, instead of thousands.

use crate::store::{Store, StoreError};

/// Wrong codes allowed before the first lock.
pub const FREE_FAILURES: i64 = 4;
/// The first lock, in seconds.
pub const FIRST_LOCK: i64 = 30;
/// The longest lock, in seconds.
pub const MAX_LOCK: i64 = 3600;
/// A day without failures starts the count afresh.
pub const RESET_AFTER: i64 = 86_400;

/// Whose second factor: a vendor's or an approver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Vendor(&'a str),
    Approver(&'a str),
}

impl Subject<'_> {
    fn key(&self) -> String {
        match self {
            Subject::Vendor(n) => format!("vendor:{n}"),
            Subject::Approver(n) => format!("approver:{n}"),
        }
    }
}

/// How long an account is locked after `failures` wrong codes in a row.
pub fn lock_for(failures: i64) -> i64 {
    if failures <= FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(20) as u32;
    FIRST_LOCK.saturating_mul(1 << doublings).min(MAX_LOCK)
}

/// The answer to asking for a second-factor attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Go ahead and check the code. The attempt is already counted as a failure (and the lock
    /// that failure would bring is already set): call [`Store::second_factor_passed`] if the
    /// code is right.
    Granted,
    /// Locked until this time: the code must not even be looked at.
    Locked(i64),
}

impl Store {
    /// Reserves one second-factor attempt for `who`, atomically across connections and nodes: the
    /// attempt is counted as a failure *before* the code is checked, and the lock it would earn
    /// is set at once. So guesses sent in parallel cannot all slip in before the first one is
    /// counted: while a lock holds, every other attempt is refused.
    pub async fn second_factor_attempt(
        &self,
        who: Subject<'_>,
        now: i64,
    ) -> Result<Attempt, StoreError> {
        let key = who.key();
        let mut tx = self.begin().await?;
        // The row lock (PostgreSQL) or the write lock (SQLite) taken here is held until commit,
        // so a concurrent attempt waits and then sees the lock this one sets.
        let failures: Option<i64> = sqlx::query_scalar(
            "INSERT INTO second_factor_failures (subject, failures, last_failure, locked_until) \
             VALUES ($1, 1, $2, 0) \
             ON CONFLICT (subject) DO UPDATE SET \
               failures = CASE WHEN second_factor_failures.last_failure < $3 THEN 1 \
                               ELSE second_factor_failures.failures + 1 END, \
               last_failure = $2 \
             WHERE second_factor_failures.locked_until <= $2 \
             RETURNING failures",
        )
        .bind(&key)
        .bind(now)
        .bind(now - RESET_AFTER)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(failures) = failures else {
            let until: i64 = sqlx::query_scalar(
                "SELECT locked_until FROM second_factor_failures WHERE subject = $1",
            )
            .bind(&key)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Attempt::Locked(until));
        };
        let lock = lock_for(failures);
        if lock > 0 {
            sqlx::query("UPDATE second_factor_failures SET locked_until = $1 WHERE subject = $2")
                .bind(now + lock)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Attempt::Granted)
    }

    /// Until when the subject's second factor is locked, if it is (for messages; the lock itself
    /// is enforced by [`Store::second_factor_attempt`]).
    pub async fn second_factor_locked_until(
        &self,
        who: Subject<'_>,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let until: Option<i64> = sqlx::query_scalar(
            "SELECT locked_until FROM second_factor_failures WHERE subject = $1",
        )
        .bind(who.key())
        .fetch_optional(self.pool())
        .await?;
        Ok(until.filter(|u| *u > now))
    }

    /// A right code: the count starts afresh and the lock this attempt set is lifted.
    pub async fn second_factor_passed(&self, who: Subject<'_>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM second_factor_failures WHERE subject = $1")
            .bind(who.key())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(lock_for(1), 0);
        assert_eq!(lock_for(FREE_FAILURES), 0);
        assert_eq!(lock_for(FREE_FAILURES + 1), 30);
        assert_eq!(lock_for(FREE_FAILURES + 2), 60);
        assert_eq!(lock_for(FREE_FAILURES + 3), 120);
        assert_eq!(lock_for(FREE_FAILURES + 8), MAX_LOCK);
        assert_eq!(lock_for(i64::MAX), MAX_LOCK);
    }
}
