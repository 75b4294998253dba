//! Contract and role changes: update or re-enable a vendor, change an approver's coverage, change
//! a function. Each is one transaction with its audit record, as every action (see the parent
//! module); the store bumps the revision so live sessions on every node follow within a second.

use serde::Serialize;

use super::{ActionError, ActionRecord, Actions, Actor, Result};
use crate::model::{Approver, ChannelSet, Function, Vendor};
use crate::store::{FunctionChange, VendorChange};
use crate::time::fmt_time;

/// A grant cut to a function's new longest window, as the `function.update` record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantCut {
    pub grant: String,
    pub vendor: String,
    pub site: String,
    /// When the grant ends now.
    pub until: String,
    /// When it ended before.
    pub was: String,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Actions {
    /// Changes a vendor's organisation and/or contract end (`Some(None)` removes the end). A
    /// contract end moved earlier ends live sessions at the new end, on every node.
    pub async fn update_vendor(
        &self,
        actor: &Actor,
        name: &str,
        org: Option<&str>,
        contract_end: Option<Option<i64>>,
    ) -> Result<VendorChange> {
        let mut tx = self.store.begin().await?;
        let change = self
            .store
            .update_vendor_in(&mut tx, name, org, contract_end)
            .await?;
        let record = ActionRecord::VendorUpdate {
            vendor: name.to_owned(),
            org: change.after.org.clone(),
            contract_end: change.after.contract_end.map(fmt_time),
            contract_end_was: change.before.contract_end.map(fmt_time),
        };
        self.finish(tx, actor, record).await?;
        Ok(change)
    }

    /// Enables a disabled vendor; the grants the disable revoked stay revoked.
    pub async fn enable_vendor(&self, actor: &Actor, name: &str) -> Result<Vendor> {
        let mut tx = self.store.begin().await?;
        self.store.enable_vendor_in(&mut tx, name).await?;
        let vendor = self
            .store
            .vendor_in(&mut tx, name)
            .await?
            .ok_or_else(|| ActionError::NotFound(format!("no vendor named {name}")))?;
        let record = ActionRecord::VendorEnable {
            vendor: name.to_owned(),
        };
        self.finish(tx, actor, record).await?;
        Ok(vendor)
    }

    /// Replaces an approver's sites and/or regions; their open web pages follow at the next
    /// request (coverage is read per request).
    pub async fn update_approver(
        &self,
        actor: &Actor,
        name: &str,
        sites: Option<&[String]>,
        regions: Option<&[String]>,
    ) -> Result<Approver> {
        let mut tx = self.store.begin().await?;
        let a = self
            .store
            .update_approver_in(&mut tx, name, sites, regions)
            .await?;
        let record = ActionRecord::ApproverUpdate {
            approver: name.to_owned(),
            sites: list(&a.sites),
            regions: list(&a.regions),
        };
        self.finish(tx, actor, record).await?;
        Ok(a)
    }

    /// Changes a function's channels and/or longest window. Live sessions lose channels it no
    /// longer allows; active grants longer than a new longest window are cut to it.
    pub async fn update_function(
        &self,
        actor: &Actor,
        name: &str,
        allow: Option<&ChannelSet>,
        max_window: Option<i64>,
        now: i64,
    ) -> Result<FunctionChange> {
        let mut tx = self.store.begin().await?;
        let change = self
            .store
            .update_function_in(&mut tx, name, allow, max_window, now)
            .await?;
        let Function {
            allow, max_window, ..
        } = &change.function;
        let record = ActionRecord::FunctionUpdate {
            function: name.to_owned(),
            allow: allow.clone(),
            max_window: *max_window,
            grants_cut: change
                .cut
                .iter()
                .map(|c| GrantCut {
                    grant: c.grant.id.clone(),
                    vendor: c.grant.vendor.clone(),
                    site: c.grant.site.clone(),
                    until: fmt_time(c.grant.valid_until),
                    was: fmt_time(c.was),
                })
                .collect(),
        };
        self.finish(tx, actor, record).await?;
        Ok(change)
    }
}
