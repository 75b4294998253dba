//! An opened data directory: one broker node's configuration, database, audit log and
//! notification outbox. Every subcommand and the server start from one.

use std::path::Path;

use approvals::{Actor, AuditLog, Store};
use serde_json::{Value, json};

use approvals::audit::{AuditError, AuditEvent};

use crate::config::{Config, ConfigError, DataDir};
use crate::keys;

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the database: {0}")]
    Store(#[from] approvals::StoreError),
    #[error(transparent)]
    MasterKey(#[from] crate::master_key::MasterKeyError),
    #[error(transparent)]
    EvidenceStore(#[from] crate::evidence_store::EvidenceStoreError),
    #[error("sealing secrets stored in the clear: {0}")]
    Seal(#[from] approvals::ActionError),
}

/// An opened data directory.
pub struct Node {
    pub data: DataDir,
    pub cfg: Config,
    pub store: Store,
    pub audit: AuditLog,
    pub notifier: approvals::Notifier,
    /// The shared store for sealed recordings, if one is configured.
    pub evidence_store: Option<crate::evidence_store::EvidenceStore>,
}

impl Node {
    /// Opens the data directory at `data`, with `config` instead of `DATA/postern.toml` if given.
    pub async fn open(data: &Path, config: Option<&Path>) -> Result<Node, OpenError> {
        let data = DataDir::new(data);
        let cfg = data.load_config(config)?;
        let url = data.database_url(&cfg);
        let (store, _) = crate::master_key::unlock(Store::open(&url).await?, &data, &cfg).await?;
        let audit = AuditLog::of_installation(
            &data.audit_log(),
            &cfg.node,
            data.installation_id().as_deref(),
        );
        let notifier = approvals::Notifier::new(store.clone(), cfg.webhook_url.is_some());
        let evidence_store = match &cfg.evidence_store {
            Some(url) => Some(crate::evidence_store::EvidenceStore::open(
                url,
                cfg.evidence_s3_endpoint.as_deref(),
            )?),
            None => None,
        };
        let node = Node {
            evidence_store,
            data,
            cfg,
            store,
            audit,
            notifier,
        };
        node.seal_plain_secrets().await?;
        Ok(node)
    }

    /// Seals secrets an older version stored in the clear (once; audited `secrets.sealed`).
    async fn seal_plain_secrets(&self) -> Result<(), OpenError> {
        let actor = Actor::node(&self.cfg.node);
        let sealed = self.actions().seal_plain_secrets(&actor).await?;
        if sealed.total() > 0
            && let Err(e) = self.store.checkpoint_wal().await
        {
            tracing::warn!(error = %e, "could not checkpoint the database after sealing secrets");
        }
        Ok(())
    }

    /// Records what `actor` did; the caller must not go on if this fails.
    pub fn audit_as(
        &self,
        actor: &Actor,
        event: AuditEvent,
        fields: Value,
    ) -> Result<(), AuditError> {
        let mut fields = fields;
        if let Value::Object(m) = &mut fields {
            m.insert("actor".into(), json!(actor.tag()));
        }
        self.audit.record(event, fields)?;
        Ok(())
    }

    /// Where operator actions are taken (the same code the web form uses).
    pub fn actions(&self) -> approvals::Actions {
        approvals::Actions::new(
            self.store.clone(),
            self.audit.clone(),
            self.notifier.clone(),
        )
    }

    /// Where this node's evidence is, for the verifier.
    pub fn evidence(&self) -> approvals::verify::Evidence {
        approvals::verify::Evidence {
            node: self.cfg.node.clone(),
            audit_log: self.data.audit_log(),
            recordings: self.data.recordings(),
            local_seal_key: Some(self.data.seal_key().with_extension("pub")),
            keyring: Some(keys::keyring_path(&self.data)),
            // The node's pinned copy; `verify --root` takes the auditor's own.
            root: keys::load_root_public(&keys::root_pub_path(&self.data)).ok(),
            // Other nodes' recordings and keyrings: from the shared store, or shipped by edges.
            fetched: Some(crate::evidence_store::cache_dir(&self.data)),
        }
    }
}
