//! Secrets at rest: sealing what an older version stored in the clear, and re-wrapping the data
//! keys under a new master key. Each in one transaction with its audit record; neither record
//! carries a secret or a key, only counts and key ids.

use super::{ActionRecord, Actions, Actor, Result};
use crate::secrets::MasterKey;
use crate::store::PlainSealed;

impl Actor {
    /// A broker node acting on its own at start (`node:NAME`).
    pub fn node(node: &str) -> Actor {
        let name = format!("node:{node}");
        Actor {
            tag: name.clone(),
            name,
            approver: None,
        }
    }
}

impl Actions {
    /// Seals every secret still stored in the clear (a data directory upgraded from a version
    /// without encryption). Audited once: a run that finds nothing to seal changes nothing and
    /// writes no record.
    pub async fn seal_plain_secrets(&self, actor: &Actor) -> Result<PlainSealed> {
        if !self.store.has_plain_secrets().await? {
            return Ok(PlainSealed::default());
        }
        let mut tx = self.store.begin().await?;
        let done = self.store.seal_plain_rows_in(&mut tx).await?;
        if done.total() == 0 {
            tx.rollback()
                .await
                .map_err(crate::store::StoreError::from)?;
            return Ok(done);
        }
        let record = ActionRecord::SecretsSealed {
            devices: done.devices,
            vendors: done.vendors,
            approvers: done.approvers,
        };
        self.finish(tx, actor, record).await?;
        Ok(done)
    }

    /// Re-wraps the data keys under `new`; `old` must open them. The caller has already saved
    /// `new` where nodes will find it, so a committed rotation never strands the data keys.
    pub async fn rotate_master(
        &self,
        actor: &Actor,
        old: &MasterKey,
        new: &MasterKey,
    ) -> Result<u64> {
        let mut tx = self.store.begin().await?;
        let n = self.store.rewrap_data_keys_in(&mut tx, old, new).await?;
        let record = ActionRecord::KeysRotateMaster {
            from: old.id(),
            to: new.id(),
            data_keys: n,
        };
        self.finish(tx, actor, record).await?;
        Ok(n)
    }
}
