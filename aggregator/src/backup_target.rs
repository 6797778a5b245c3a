//! Opening a `[[backup.target]]` as a `backup::Store`: a directory, or an
//! S3 bucket (under its prefix) with the credentials named in head.toml,
//! read from the backup secrets file (`[credentials.NAME]`: `access_key`,
//! `secret_key`) each time, so a fixed secret takes effect without a
//! restart. The secret is never logged.

use std::collections::BTreeMap;

use backup::{RetryPolicy, S3Credentials, Store, StoreConfig};

use crate::backup_config::{BackupConfig, TargetConfig, TargetPlace};
use crate::backup_error::BackupOpError;

/// The target `name` (the first one when `None`) of `cfg`.
pub fn find<'a>(
    cfg: &'a BackupConfig,
    name: Option<&str>,
) -> Result<&'a TargetConfig, BackupOpError> {
    cfg.target(name)
        .ok_or_else(|| BackupOpError::NoTarget(name.unwrap_or("(none configured)").to_string()))
}

/// Opens `target`'s store.
pub fn open(cfg: &BackupConfig, target: &TargetConfig) -> Result<Store, BackupOpError> {
    let store_cfg = match &target.place {
        TargetPlace::Dir(d) => StoreConfig::Dir(d.clone()),
        TargetPlace::S3 {
            endpoint,
            bucket,
            region,
            credentials,
            ..
        } => StoreConfig::S3 {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            region: region.clone(),
            credentials: credentials_named(cfg, credentials)?,
        },
    };
    let store = Store::open(&store_cfg, RetryPolicy::default())?;
    Ok(match &target.place {
        TargetPlace::S3 { prefix, .. } if !prefix.is_empty() => store.with_prefix(prefix),
        _ => store,
    })
}

/// The credentials `name` from the backup secrets file.
fn credentials_named(cfg: &BackupConfig, name: &str) -> Result<S3Credentials, BackupOpError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        credentials: BTreeMap<String, S3Credentials>,
    }
    let path = cfg
        .secrets
        .as_ref()
        .expect("the config requires backup.secrets for an S3 target");
    let err = |message: String| BackupOpError::Secrets {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut file: File = toml::from_str(&text).map_err(|e| err(e.message().to_string()))?;
    file.credentials
        .remove(name)
        .ok_or_else(|| err(format!("no [credentials.{name}] table")))
}
