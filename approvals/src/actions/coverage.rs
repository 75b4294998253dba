//! Who may decide a request: an approver only for the sites they cover, wherever they decide
//! from (the web form, or the CLI with `--as`). An operator deciding as themselves is not an
//! approver and is not limited (they run the installation).

use super::{ActionError, ActionRecord, Actions, Actor, Result};
use crate::approvers::AccessRequestRow;

impl Actor {
    /// An operator at the CLI deciding as the approver `approver` (`--as`): the decision is the
    /// approver's (their coverage is checked, they are the decider shown to the vendor) and the
    /// audit log names the Unix user who typed it as well.
    pub fn operator_as(user: &str, approver: &str) -> Actor {
        Actor {
            name: approver.to_owned(),
            tag: format!("operator:{user} as {approver}"),
            approver: Some(approver.to_owned()),
        }
    }

    /// The approver whose coverage this actor's decisions are checked against, if any.
    pub fn approver(&self) -> Option<&str> {
        self.approver.as_deref()
    }
}

impl Actions {
    /// Refuses (with one audit record) a decision by an approver who does not cover the
    /// request's site, or who is unknown or disabled. Nothing is changed either way.
    pub(super) async fn check_coverage(
        &self,
        actor: &Actor,
        req: &AccessRequestRow,
        decision: &str,
    ) -> Result<()> {
        let Some(approver) = actor.approver() else {
            return Ok(());
        };
        let reason = match self.store.approver(approver).await? {
            None => format!("no approver is named {approver}"),
            Some(a) if a.disabled => format!("approver {approver} is disabled"),
            Some(_) if self.store.may_approve(approver, &req.site).await? => return Ok(()),
            Some(_) => format!("approver {approver} does not cover site {}", req.site),
        };
        let record = ActionRecord::RequestDecisionRefused {
            request: req.id.clone(),
            site: req.site.clone(),
            approver: approver.to_owned(),
            decision: decision.to_owned(),
            reason: reason.clone(),
        };
        self.audit
            .record_async(record.event(), record.fields(actor))
            .await
            .map_err(ActionError::AuditUnwritable)?;
        Err(ActionError::NotCovered(format!(
            "{reason}: request {} not decided",
            req.id
        )))
    }
}
