//! Requests nobody decides: past `approval_slo` a pending request is escalated once (audited,
//! and a notification naming the escalation approvers); past `request_ttl` it is closed as
//! `expired` (audited and notified; a vendor still waiting in ssh is told). Each step is one
//! transaction around a conditional update, so several nodes sweeping at once take it once.

use serde_json::json;

use super::{ActionRecord, Actions, Actor, Result};
use crate::approvers::AccessRequestRow;
use crate::notify::{Event, Message};
use crate::time::fmt_time;

/// How long requests may wait, and who hears of the overdue ones besides the region's approvers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlines {
    /// Seconds after filing a pending request expires.
    pub request_ttl: i64,
    /// Seconds after filing a pending request is escalated.
    pub approval_slo: i64,
    /// Approvers every escalation names.
    pub escalate_to: Vec<String>,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            request_ttl: 24 * 3600,
            approval_slo: 15 * 60,
            escalate_to: Vec::new(),
        }
    }
}

/// What one sweep did: the ids of the requests it escalated and expired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub escalated: Vec<String>,
    pub expired: Vec<String>,
}

/// Requests looked at per sweep; the rest wait for the next one.
const SWEEP_LIMIT: i64 = 200;

impl Actor {
    /// A broker node acting on its own (deadlines), named in the audit log as `broker:NODE`.
    pub fn broker(node: &str) -> Actor {
        Actor {
            name: "postern".to_owned(),
            tag: format!("broker:{node}"),
            approver: None,
        }
    }
}

impl Actions {
    /// Escalates and expires the pending requests past their deadlines at `now`. A request
    /// another node took first is skipped; an error stops the sweep (the next one retries).
    pub async fn enforce_deadlines(&self, actor: &Actor, d: &Deadlines, now: i64) -> Result<Swept> {
        let due = self
            .store
            .requests_past_deadline(now - d.approval_slo, now - d.request_ttl, SWEEP_LIMIT)
            .await?;
        let mut swept = Swept::default();
        for r in &due {
            if r.created <= now - d.request_ttl {
                if self.expire_request(actor, r, d, now).await? {
                    swept.expired.push(r.id.clone());
                }
            } else if self.escalate_request(actor, r, d, now).await? {
                swept.escalated.push(r.id.clone());
            }
        }
        Ok(swept)
    }

    /// Escalates one request; false if it was decided or escalated meanwhile.
    async fn escalate_request(
        &self,
        actor: &Actor,
        r: &AccessRequestRow,
        d: &Deadlines,
        now: i64,
    ) -> Result<bool> {
        // Read before the transaction (see `Tx`: write first inside it).
        let approvers = self
            .store
            .escalation_approvers(&r.site, &d.escalate_to)
            .await?;
        let mut tx = self.store.begin().await?;
        let Some(req) = self.store.escalate_request_in(&mut tx, &r.id, now).await? else {
            return Ok(false);
        };
        let waited = now - req.created;
        let text = format!(
            "OVERDUE: {}'s request {} for {} at {}/{} has waited {} for an approver (over the {} approval SLO); escalated to {}",
            req.vendor,
            req.id,
            req.function,
            req.site,
            req.device,
            span(waited),
            span(d.approval_slo),
            if approvers.is_empty() {
                "nobody (no approver covers the site)".to_owned()
            } else {
                approvers.join(", ")
            }
        );
        let fields = json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device,
                            "function": req.function, "reason": req.reason, "filed": req.created, "waited": waited,
                            "approval_slo": d.approval_slo, "approvers": approvers});
        (self.notifier)
            .file_in(
                &mut tx,
                &Message::new(Event::RequestEscalated, text, fields),
            )
            .await?;
        let record = ActionRecord::RequestEscalated {
            request: req.id.clone(),
            vendor: req.vendor.clone(),
            site: req.site.clone(),
            device: req.device.clone(),
            function: req.function.clone(),
            filed: fmt_time(req.created),
            waited,
            approvers,
        };
        self.finish(tx, actor, record).await?;
        Ok(true)
    }

    /// Closes one request as expired; false if it was decided meanwhile.
    async fn expire_request(
        &self,
        actor: &Actor,
        r: &AccessRequestRow,
        d: &Deadlines,
        now: i64,
    ) -> Result<bool> {
        let reason = format!("no approver decided within {}", span(d.request_ttl));
        let mut tx = self.store.begin().await?;
        let Some(req) = self
            .store
            .expire_request_in(&mut tx, &r.id, &reason, now)
            .await?
        else {
            return Ok(false);
        };
        let waited = now - req.created;
        let text = format!(
            "{}'s request {} for {} at {}/{} expired: {reason}",
            req.vendor, req.id, req.function, req.site, req.device
        );
        let fields = json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device,
                            "function": req.function, "filed": req.created, "waited": waited, "reason": reason});
        (self.notifier)
            .file_in(&mut tx, &Message::new(Event::RequestExpired, text, fields))
            .await?;
        let record = ActionRecord::RequestExpired {
            request: req.id.clone(),
            vendor: req.vendor.clone(),
            site: req.site.clone(),
            device: req.device.clone(),
            function: req.function.clone(),
            filed: fmt_time(req.created),
            waited,
            escalated: req.escalated_at.is_some(),
        };
        self.finish(tx, actor, record).await?;
        Ok(true)
    }
}

/// Seconds as people say them (`15m`, `1h 30m`).
fn span(seconds: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0) as u64)).to_string()
}
