//! The audit log: every authentication attempt, decision, grant and directory change and session
//! event, as JSON records in a hash-chained file (see the `recorder` crate).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// Appends audit events. Cheap to clone; every append takes the file lock, so the server and CLI
/// commands can write to the same log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    node: String,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    path: String,
    #[source]
    source: recorder::WriteError,
}

impl AuditLog {
    pub fn new(path: &Path, node: &str) -> AuditLog {
        AuditLog {
            path: path.to_owned(),
            node: node.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event synchronously (the write is fsynced). `fields` must be a JSON object.
    pub fn record(&self, event: &str, fields: Value) -> Result<u64, AuditError> {
        let mut obj = Map::new();
        obj.insert(
            "time".into(),
            json!(crate::time::fmt_time(crate::time::now())),
        );
        obj.insert("node".into(), json!(self.node));
        obj.insert("event".into(), json!(event));
        if let Value::Object(extra) = fields {
            obj.extend(extra);
        }
        let payload = Value::Object(obj).to_string();
        recorder::append_locked(
            &self.path,
            "audit",
            recorder::Kind::Audit,
            payload.as_bytes(),
        )
        .map(|(seq, _)| seq)
        .map_err(|source| AuditError {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// [`AuditLog::record`] off the async runtime's threads.
    pub async fn record_async(&self, event: &str, fields: Value) -> Result<u64, AuditError> {
        let me = self.clone();
        let event = event.to_owned();
        match tokio::task::spawn_blocking(move || me.record(&event, fields)).await {
            Ok(r) => r,
            Err(e) => Err(AuditError {
                path: self.path.display().to_string(),
                source: recorder::WriteError::Io(std::io::Error::other(e.to_string())),
            }),
        }
    }
}
