//! Requests nobody decides: the ones past their deadlines, their escalation and their expiry.
//! Each change is a conditional update, so of several nodes sweeping at once exactly one wins.

use super::{Result, Store, Tx};
use crate::model::AccessRequestRow;

impl Store {
    /// Pending requests due for a step, oldest first, at most `limit`: those filed at or before
    /// `escalate_before` and not yet escalated, and those filed at or before `expire_before`.
    pub async fn requests_past_deadline(
        &self,
        escalate_before: i64,
        expire_before: i64,
        limit: i64,
    ) -> Result<Vec<AccessRequestRow>> {
        Ok(sqlx::query_as::<_, AccessRequestRow>(
            "SELECT * FROM requests WHERE status = 'pending' AND ((escalated_at IS NULL AND created <= $1) OR created <= $2) ORDER BY created, id LIMIT $3",
        )
        .bind(escalate_before)
        .bind(expire_before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks a pending request escalated; `None` if it is no longer pending or another node
    /// escalated it first.
    pub async fn escalate_request_in(
        &self,
        tx: &mut Tx,
        id: &str,
        now: i64,
    ) -> Result<Option<AccessRequestRow>> {
        let n = sqlx::query("UPDATE requests SET escalated_at = $1 WHERE id = $2 AND status = 'pending' AND escalated_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        request_in(tx, id).await
    }

    /// Closes a pending request undecided (`expired`) with the reason the vendor sees; `None` if
    /// it was decided or expired meanwhile.
    pub async fn expire_request_in(
        &self,
        tx: &mut Tx,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<AccessRequestRow>> {
        let n = sqlx::query("UPDATE requests SET status = 'expired', decided_at = $1, decision_reason = $2 WHERE id = $3 AND status = 'pending'")
            .bind(now)
            .bind(reason)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        request_in(tx, id).await
    }

    /// Who an overdue request at `site` is escalated to: the enabled approvers of the site's
    /// region, then the enabled approvers named in `escalate_to`; the site's own approvers when
    /// that names nobody. Each once, in that order.
    pub async fn escalation_approvers(
        &self,
        site: &str,
        escalate_to: &[String],
    ) -> Result<Vec<String>> {
        let region: Option<String> =
            sqlx::query_scalar::<_, Option<String>>("SELECT region FROM sites WHERE name = $1")
                .bind(site)
                .fetch_optional(self.pool())
                .await?
                .flatten();
        let all = self.approvers().await?;
        let enabled = || all.iter().filter(|a| !a.disabled);
        let mut names: Vec<String> = match &region {
            Some(r) => enabled()
                .filter(|a| a.covers("", Some(r)))
                .map(|a| a.name.clone())
                .collect(),
            None => Vec::new(),
        };
        for n in escalate_to {
            if !names.contains(n) && enabled().any(|a| &a.name == n) {
                names.push(n.clone());
            }
        }
        if names.is_empty() {
            names = enabled()
                .filter(|a| a.covers(site, region.as_deref()))
                .map(|a| a.name.clone())
                .collect();
        }
        Ok(names)
    }
}

/// One request, as the transaction sees it.
pub(crate) async fn request_in(tx: &mut Tx, id: &str) -> Result<Option<AccessRequestRow>> {
    Ok(
        sqlx::query_as::<_, AccessRequestRow>("SELECT * FROM requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}
