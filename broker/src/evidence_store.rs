//! One evidence store for every node: each node keeps writing recordings to its own
//! `recordings/` directory (appends must be local and fast), and once a recording is sealed it is
//! copied to the shared store, from which any node replays, exports and verifies it.
//!
//! The store is the local directory alone (the default), or S3-compatible object storage
//! (`evidence_store = "s3://BUCKET[/PREFIX]"`, through the `object_store` crate). Uploads are
//! idempotent (a recording's name is unique and its bytes never change once sealed: an object
//! already there with the same size is left alone) and resumable (the shipper retries until the
//! database says the recording is stored). What is read back is checked like a local file: the
//! hash chain and the seal, never the store's word.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::DataDir;

/// Recordings up to this size go up in one request; larger ones in parts of this size.
const PART: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EvidenceStoreError {
    #[error("evidence_store {0:?}: use s3://BUCKET or s3://BUCKET/PREFIX")]
    Url(String),
    #[error("evidence store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{path}: {error}")]
    File { path: String, error: std::io::Error },
}

type Result<T> = std::result::Result<T, EvidenceStoreError>;

fn file_error(path: &Path) -> impl Fn(std::io::Error) -> EvidenceStoreError + '_ {
    move |error| EvidenceStoreError::File {
        path: path.display().to_string(),
        error,
    }
}

/// Where sealed recordings are shared between nodes.
#[derive(Clone)]
pub struct EvidenceStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// What the operator configured, for messages.
    pub url: String,
}

impl std::fmt::Debug for EvidenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EvidenceStore({})", self.url)
    }
}

impl EvidenceStore {
    /// The shared store `url` names (`s3://BUCKET[/PREFIX]`), at `endpoint` if given (an
    /// S3-compatible server; plain `http://` is allowed for it). Credentials and region come from
    /// the standard `AWS_*` environment variables.
    pub fn open(url: &str, endpoint: Option<&str>) -> Result<EvidenceStore> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| EvidenceStoreError::Url(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(EvidenceStoreError::Url(url.to_owned()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        Ok(EvidenceStore {
            store: Arc::new(builder.build()?),
            prefix: prefix.trim_matches('/').to_owned(),
            url: url.to_owned(),
        })
    }

    fn location(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(format!("recordings/{name}"))
        } else {
            ObjectPath::from(format!("{}/recordings/{name}", self.prefix))
        }
    }

    /// Copies the sealed recording at `file` to the store as `name`. An object already there with
    /// the same size is the same recording (names are unique, sealed bytes never change).
    pub async fn put_recording(&self, name: &str, file: &Path) -> Result<u64> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(file_error(file))?
            .len();
        let at = self.location(name);
        match self.store.head(&at).await {
            Ok(meta) if meta.size == size => return Ok(size),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if size as usize <= PART {
            let bytes = tokio::fs::read(file).await.map_err(file_error(file))?;
            let put = self
                .store
                .put_opts(
                    &at,
                    PutPayload::from(bytes),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match put {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => return Ok(size),
                Err(e) => return Err(e.into()),
            }
        }
        let mut upload = WriteMultipart::new(self.store.put_multipart(&at).await?);
        let sent = async {
            let mut f = tokio::fs::File::open(file)
                .await
                .map_err(file_error(file))?;
            let mut buf = vec![0u8; PART];
            loop {
                let n = f.read(&mut buf).await.map_err(file_error(file))?;
                if n == 0 {
                    break;
                }
                upload.wait_for_capacity(2).await?;
                upload.write(&buf[..n]);
            }
            Ok::<_, EvidenceStoreError>(())
        }
        .await;
        match sent {
            Ok(()) => {
                upload.finish().await?;
                Ok(size)
            }
            Err(e) => {
                // S3 keeps the parts of an unfinished upload until it is aborted.
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Shares this node's seal keyring (root-signed, so the store cannot forge it) as
    /// `keyrings/NODE`: other nodes check this node's seals against it.
    pub async fn put_keyring(&self, node: &str, keyring: &Path) -> Result<()> {
        let bytes = tokio::fs::read(keyring)
            .await
            .map_err(file_error(keyring))?;
        let at = self.keyring_location(node);
        self.store.put(&at, PutPayload::from(bytes)).await?;
        Ok(())
    }

    fn keyring_location(&self, node: &str) -> ObjectPath {
        let name = format!("keyrings/{node}");
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Copies node `node`'s keyring from the store to `dest`; `Ok(false)`: it has none.
    pub async fn fetch_keyring(&self, node: &str, dest: &Path) -> Result<bool> {
        self.fetch(&self.keyring_location(node), dest).await
    }

    /// Copies recording `name` from the store to `dest` (through a temporary file, so a torn
    /// download never looks like a recording). `Ok(false)`: the store does not have it.
    pub async fn fetch_recording(&self, name: &str, dest: &Path) -> Result<bool> {
        self.fetch(&self.location(name), dest).await
    }

    async fn fetch(&self, at: &ObjectPath, dest: &Path) -> Result<bool> {
        let got = match self.store.get(at).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(file_error(dir))?;
        }
        let tmp = dest.with_extension("part");
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(file_error(&tmp))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?).await.map_err(file_error(&tmp))?;
        }
        out.flush().await.map_err(file_error(&tmp))?;
        drop(out);
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(file_error(dest))?;
        Ok(true)
    }
}

/// How often the shipper looks for sealed recordings not in the shared store yet.
const SHIP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Copies this node's sealed recordings to the shared store for as long as the node runs: every
/// few seconds, the ended sessions the database says are not stored yet. A failure is retried on
/// the next round (nothing is marked stored until the store has it).
pub async fn ship(store: EvidenceStore, db: approvals::Store, node: String, data: DataDir) {
    let recordings = data.recordings();
    let keyring = crate::keys::keyring_path(&data);
    let mut shared_keyring = None;
    loop {
        tokio::time::sleep(SHIP_EVERY).await;
        // The keyring only grows (certifications, revocations): shared again when it changed.
        let now_keyring = std::fs::read(&keyring).ok();
        if now_keyring.is_some() && now_keyring != shared_keyring {
            match store.put_keyring(&node, &keyring).await {
                Ok(()) => shared_keyring = now_keyring,
                Err(e) => {
                    tracing::warn!(error = %e, "evidence store: keyring not shared; retrying")
                }
            }
        }
        let batch = match db.recordings_to_store(&node, 50).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(error = %e, "evidence store: sessions to ship unreadable");
                continue;
            }
        };
        for (id, name) in batch {
            match store.put_recording(&name, &recordings.join(&name)).await {
                Ok(bytes) => {
                    if let Err(e) = db.recording_stored(&id, approvals::time::now()).await {
                        tracing::warn!(session = %id, error = %e, "evidence store: copied, not yet marked");
                    }
                    tracing::info!(session = %id, bytes, store = %store.url, "recording copied to the evidence store");
                }
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "evidence store: recording not copied; retrying");
                    break;
                }
            }
        }
    }
}

impl crate::node::Node {
    /// Fetches from the shared store (if there is one) the recordings in `names` this node has
    /// no copy of, into its cache, where `verify`, `replay` and `export` read them. A recording
    /// the store does not have is left to be reported missing; a store that cannot be reached
    /// is an error, never a finding.
    /// The keyrings of the other nodes among `sessions` are fetched again each time (they grow).
    pub async fn fetch_recordings(&self, sessions: &[approvals::Session]) -> Result<usize> {
        let Some(store) = &self.evidence_store else {
            return Ok(0);
        };
        let cache = cache_dir(&self.data);
        let mut fetched = 0;
        let mut nodes = std::collections::BTreeSet::new();
        for s in sessions {
            if s.node != self.cfg.node {
                nodes.insert(s.node.as_str());
            }
            let name = s.recording.as_str();
            if self.data.recordings().join(name).exists() || cache.join(name).exists() {
                continue;
            }
            if store.fetch_recording(name, &cache.join(name)).await? {
                fetched += 1;
            }
        }
        for node in nodes {
            store
                .fetch_keyring(node, &cache.join("keyrings").join(node))
                .await?;
        }
        Ok(fetched)
    }
}

/// Where a node keeps recordings it read from the store: `DATA/evidence-cache/`.
pub fn cache_dir(data: &DataDir) -> PathBuf {
    data.root.join("evidence-cache")
}
