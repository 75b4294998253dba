//! What an edge's signed policy bundle is made of, its version, and what the edge confirmed
//! holding (see migration 0022 and [`crate::bundle`]).

use std::collections::BTreeSet;

use super::{Result, Store};
use crate::bundle::BundleSource;
use crate::model::{Function, Grant, Vendor};

/// Where an edge's policy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyState {
    pub version: i64,
    pub issued: Option<i64>,
}

/// What every edge's bundle is cut from, read once per round of publishing (secrets opened).
pub struct PolicyInputs {
    pub now: i64,
    /// What bundles say of deciding offline (`edge_offline_grace`).
    pub offline_grace: i64,
    pub grants: Vec<Grant>,
    pub functions: Vec<Function>,
    pub vendor_cas: Vec<String>,
    pub vendors: Vec<Vendor>,
}

impl Store {
    /// The live grants, functions, trusted vendor CAs and vendors at `now`.
    pub async fn policy_inputs(&self, now: i64, offline_grace: i64) -> Result<PolicyInputs> {
        let grants = sqlx::query_as::<_, Grant>(
            "SELECT * FROM grants WHERE revoked_at IS NULL AND valid_until > $1 ORDER BY created, id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(PolicyInputs {
            now,
            offline_grace,
            grants,
            functions: self.functions().await?,
            vendor_cas: self.vendor_cas().await?,
            vendors: self.vendors().await?,
        })
    }

    /// Everything the bundle of an edge serving `sites` says: the live grants there, the vendors
    /// holding them or pre-approved for an emergency function, their revoked certificates, the
    /// trusted vendor CAs, the functions and the sites' devices.
    pub async fn bundle_source(
        &self,
        inputs: &PolicyInputs,
        sites: &[String],
    ) -> Result<BundleSource> {
        let grants: Vec<Grant> = (inputs.grants.iter())
            .filter(|g| sites.contains(&g.site))
            .cloned()
            .collect();
        let emergency_orgs: BTreeSet<&str> = (inputs.functions.iter())
            .filter(|f| f.emergency)
            .flat_map(|f| f.emergency_orgs.split(','))
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        let mut vendors = Vec::new();
        let mut certificates = Vec::new();
        for v in &inputs.vendors {
            let granted = grants.iter().any(|g| g.vendor == v.name);
            if !granted && !emergency_orgs.contains(v.org.as_str()) {
                continue;
            }
            certificates.extend(
                (self.certificates_of(&v.name).await?)
                    .into_iter()
                    .filter(|c| c.valid_before > inputs.now),
            );
            vendors.push(v.clone());
        }
        let mut devices = Vec::new();
        for site in sites {
            devices.extend(self.devices_at(site).await?);
        }
        Ok(BundleSource {
            sites: sites.to_vec(),
            vendors,
            vendor_cas: inputs.vendor_cas.clone(),
            certificates,
            grants,
            functions: inputs.functions.clone(),
            devices,
            offline_grace: inputs.offline_grace,
        })
    }

    /// The box key `edge` announced; true if it is new (its next bundle must be sealed to it).
    pub async fn set_edge_box_key(&self, edge: &str, key: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE edges SET box_key = $1 WHERE name = $2 AND (box_key IS NULL OR box_key <> $1)",
        )
        .bind(key)
        .bind(edge)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn edge_box_key(&self, edge: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT box_key FROM edges WHERE name = $1")
                .bind(edge)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// The version for contents with `digest`: the current one if they did not change, else the
    /// next (made at `now`). One conditional write, so nodes racing agree on one number.
    pub async fn advance_edge_policy(
        &self,
        edge: &str,
        digest: &str,
        now: i64,
    ) -> Result<PolicyState> {
        sqlx::query(
            "UPDATE edges SET policy_version = policy_version + 1, policy_digest = $1, \
             policy_issued = $2 WHERE name = $3 AND (policy_digest IS NULL OR policy_digest <> $1)",
        )
        .bind(digest)
        .bind(now)
        .bind(edge)
        .execute(&self.pool)
        .await?;
        let (version, issued): (i64, Option<i64>) =
            sqlx::query_as("SELECT policy_version, policy_issued FROM edges WHERE name = $1")
                .bind(edge)
                .fetch_one(&self.pool)
                .await?;
        Ok(PolicyState { version, issued })
    }

    /// The edge confirmed holding `version` at `now`.
    pub async fn edge_policy_acked(&self, edge: &str, version: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE edges SET policy_acked = $1, policy_acked_at = $2 WHERE name = $3")
            .bind(version)
            .bind(now)
            .bind(edge)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
