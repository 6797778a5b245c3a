//! The backup store: one code path over `object_store`, for a local
//! directory ([`LocalFileSystem`]) or an S3-compatible endpoint
//! (`object_store::aws::AmazonS3`), with typed errors and retries with back-off.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::error::{BackupError, Result};
use crate::format::ChunkDigest;

/// S3 credentials, from the secrets file. `Debug` never shows the secret.
#[derive(Clone, serde::Deserialize)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl S3Credentials {
    /// Reads the `[s3]` table (`access_key`, `secret_key`) of a TOML secrets file's text.
    pub fn from_secrets_toml(text: &str) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct File {
            s3: Option<S3Credentials>,
        }
        let f: File = toml::from_str(text)
            .map_err(|e| BackupError::Invalid(format!("secrets file: {}", e.message())))?;
        f.s3.ok_or_else(|| BackupError::Invalid("secrets file has no [s3] table".into()))
    }
}

/// Where backups are kept.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A local directory (created if missing).
    Dir(PathBuf),
    /// An S3-compatible endpoint, path-style requests.
    S3 {
        /// Endpoint URL, e.g. `http://127.0.0.1:26000` (plain http only for loopback).
        endpoint: String,
        /// Bucket name.
        bucket: String,
        /// Region (any string for most S3-compatible servers).
        region: String,
        /// Credentials.
        credentials: S3Credentials,
    },
}

/// How often and how patiently store operations are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per operation (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub first_backoff: Duration,
    /// Upper bound of one wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One object in the store, as listed.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Its path.
    pub path: String,
    /// When it was last written.
    pub modified: SystemTime,
    /// Its size in bytes.
    pub size: u64,
}

/// A backup store: the chunk and backup objects of one directory or bucket.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
}

/// How one failed attempt is classified.
enum Failure {
    Transient(String),
    Fatal(BackupError),
}

fn classify(e: object_store::Error) -> Failure {
    use object_store::Error as E;
    match e {
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => {
            Failure::Fatal(BackupError::AuthRefused(short(&e)))
        }
        E::NotSupported { .. } | E::NotImplemented { .. } | E::InvalidPath { .. } => {
            Failure::Fatal(BackupError::Invalid(short(&e)))
        }
        other => {
            let text = short(&other);
            if text.contains("SignatureDoesNotMatch")
                || text.contains("InvalidAccessKeyId")
                || text.contains("AccessDenied")
            {
                Failure::Fatal(BackupError::AuthRefused(text))
            } else {
                Failure::Transient(text)
            }
        }
    }
}

/// The error's text, bounded so a long server body does not flood a log.
fn short(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    if s.chars().count() > 300 {
        format!("{}...", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

impl Store {
    /// Opens the store described by `cfg`.
    pub fn open(cfg: &StoreConfig, retry: RetryPolicy) -> Result<Self> {
        let inner: Arc<dyn ObjectStore> = match cfg {
            StoreConfig::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    BackupError::Invalid(format!("cannot create {}: {e}", dir.display()))
                })?;
                Arc::new(
                    LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| BackupError::Invalid(short(&e)))?,
                )
            }
            StoreConfig::S3 {
                endpoint,
                bucket,
                region,
                credentials,
            } => {
                let loopback = endpoint.starts_with("http://127.")
                    || endpoint.starts_with("http://localhost")
                    || endpoint.starts_with("http://[::1]");
                if endpoint.starts_with("http://") && !loopback {
                    return Err(BackupError::Invalid(format!(
                        "plain http to {endpoint} is refused: only loopback endpoints may skip TLS"
                    )));
                }
                // object_store's own retries are turned off: ours below classify and count them.
                let no_retry = RetryConfig {
                    max_retries: 0,
                    retry_timeout: Duration::from_secs(30),
                    ..RetryConfig::default()
                };
                Arc::new(
                    AmazonS3Builder::new()
                        .with_endpoint(endpoint)
                        .with_bucket_name(bucket)
                        .with_region(region)
                        .with_access_key_id(&credentials.access_key)
                        .with_secret_access_key(&credentials.secret_key)
                        .with_allow_http(loopback)
                        .with_virtual_hosted_style_request(false)
                        .with_conditional_put(S3ConditionalPut::ETagMatch)
                        .with_retry(no_retry)
                        .build()
                        .map_err(|e| BackupError::Invalid(short(&e)))?,
                )
            }
        };
        Ok(Store {
            inner,
            retry: RetryPolicy {
                attempts: retry.attempts.max(1),
                ..retry
            },
        })
    }

    /// The same store with every path under `prefix` (a bucket shared by
    /// several heads or uses).
    pub fn with_prefix(self, prefix: &str) -> Store {
        Store {
            inner: Arc::new(object_store::prefix::PrefixStore::new(
                self.inner,
                Path::from(prefix),
            )),
            retry: self.retry,
        }
    }

    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, object_store::Error>>,
    {
        let mut wait = self.retry.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match classify(e) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient(detail) => {
                        if attempt >= self.retry.attempts {
                            return Err(BackupError::StoreUnreachable {
                                attempts: attempt,
                                detail,
                            });
                        }
                        tracing::debug!(attempt, %detail, "store operation failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(self.retry.max_backoff);
                    }
                },
            }
        }
    }

    /// Creates a chunk object unless it exists. Returns whether this call created it.
    pub async fn put_chunk(&self, digest: &ChunkDigest, blob: Bytes) -> Result<bool> {
        let path = Path::from(digest.path());
        let opts = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.retrying(|| {
            let inner = self.inner.clone();
            let path = path.clone();
            let payload = PutPayload::from(blob.clone());
            let opts = opts();
            async move {
                match inner.put_opts(&path, payload, opts).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Writes (or replaces) an object.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        let path = Path::from(path);
        self.retrying(|| {
            let inner = self.inner.clone();
            let path = path.clone();
            let payload = PutPayload::from(data.clone());
            async move { inner.put(&path, payload).await.map(|_| ()) }
        })
        .await
    }

    /// Reads an object; `None` if it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        let path = Path::from(path);
        self.retrying(|| {
            let inner = self.inner.clone();
            let path = path.clone();
            async move {
                match inner.get(&path).await {
                    Ok(r) => r.bytes().await.map(Some),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Deletes an object; deleting a missing one succeeds.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let path = Path::from(path);
        self.retrying(|| {
            let inner = self.inner.clone();
            let path = path.clone();
            async move {
                match inner.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Lists every object under `prefix` (recursively).
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let prefix = Path::from(prefix);
        self.retrying(|| {
            let inner = self.inner.clone();
            let prefix = prefix.clone();
            async move {
                let metas: Vec<_> = inner.list(Some(&prefix)).try_collect().await?;
                Ok(metas
                    .into_iter()
                    .map(|m| StoredObject {
                        path: m.location.to_string(),
                        modified: m.last_modified.into(),
                        size: m.size,
                    })
                    .collect())
            }
        })
        .await
    }
}
