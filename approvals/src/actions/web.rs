//! Vendors' browser access to device web UIs: the one-time sign-in link `ssh VENDOR:web` prints,
//! and the browser session it opens. Each is one transaction with its audit record.

use super::{ActionError, ActionRecord, Actions, Actor, Result};
use crate::time::fmt_time;

/// How long a sign-in link may wait to be opened.
pub const WEB_ENTRY_TTL: i64 = 60;

/// The longest a browser session lasts, whatever the grants: a working day.
pub const WEB_SESSION_MAX: i64 = 12 * 3600;

/// What a sign-in link used twice, or too late, says (the front door says it too, for a link it
/// refuses before asking the database).
pub const LINK_USED_OR_EXPIRED: &str =
    "this sign-in link was used already or has expired: run ssh VENDOR:web@BROKER for a new one";

/// Why a vendor gets no link, or no browser session.
fn no_web_grant(vendor: &str) -> ActionError {
    ActionError::Conflict(format!(
        "access denied: {vendor} holds no grant with web access now"
    ))
}

/// Where a sign-in link was used from, for the record.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    pub source: String,
    /// The User-Agent, bounded.
    pub agent: String,
}

impl Actions {
    /// Files a one-time sign-in link (its token's hash) for `vendor`, who must hold a grant with
    /// web access now. Returns when the link expires.
    pub async fn open_web_entry(&self, vendor: &str, token_hash: &str, now: i64) -> Result<i64> {
        let expires = now + WEB_ENTRY_TTL;
        let mut tx = self.store.begin().await?;
        self.store
            .add_web_entry_in(&mut tx, token_hash, vendor, now, expires)
            .await?;
        // Here, where links are made (at most one per TOTP code), so the tables stay bounded.
        self.store.prune_web_in(&mut tx, now).await?;
        if self
            .store
            .web_grants_in(&mut tx, vendor, now)
            .await?
            .is_empty()
        {
            return Err(no_web_grant(vendor));
        }
        let record = ActionRecord::WebEntry {
            vendor: vendor.to_owned(),
            entry: token_hash.chars().take(12).collect(),
            expires: fmt_time(expires),
        };
        self.finish(tx, &Actor::vendor(vendor), record).await?;
        Ok(expires)
    }

    /// Uses a sign-in link (once, within its minute) and opens a browser session (its cookie's
    /// hash) for the link's vendor, until the end of the web grants the vendor holds now.
    /// Returns the vendor and the session's end.
    pub async fn enter_web(
        &self,
        token_hash: &str,
        session_hash: &str,
        now: i64,
        browser: &Browser,
    ) -> Result<(String, i64)> {
        let mut tx = self.store.begin().await?;
        let Some(vendor) = self
            .store
            .claim_web_entry_in(&mut tx, token_hash, now)
            .await?
        else {
            return Err(ActionError::Conflict(LINK_USED_OR_EXPIRED.into()));
        };
        let grants_end = (self.store.web_grants_in(&mut tx, &vendor, now).await?)
            .iter()
            .map(|(g, _)| g.valid_until)
            .max()
            .ok_or_else(|| no_web_grant(&vendor))?;
        let v = (self.store.vendor_in(&mut tx, &vendor).await?)
            .ok_or_else(|| ActionError::NotFound(format!("no vendor named {vendor}")))?;
        if v.is_disabled() || v.contract_end.is_some_and(|end| end <= now) {
            return Err(ActionError::Conflict(format!(
                "access denied: {vendor} may not sign in (disabled or contract ended)"
            )));
        }
        let until = (grants_end.min(now + WEB_SESSION_MAX)).min(v.contract_end.unwrap_or(i64::MAX));
        self.store
            .add_web_session_in(&mut tx, session_hash, &vendor, now, until)
            .await?;
        let record = ActionRecord::WebEnter {
            vendor: vendor.clone(),
            entry: token_hash.chars().take(12).collect(),
            session: session_hash.chars().take(12).collect(),
            until: fmt_time(until),
            source: browser.source.clone(),
            agent: browser.agent.clone(),
        };
        self.finish(tx, &Actor::vendor(&vendor), record).await?;
        Ok((vendor, until))
    }
}
