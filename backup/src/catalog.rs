//! Listing and pruning the backups in a store.

use std::collections::BTreeSet;

use crate::error::{BackupError, Result};
use crate::format::{self, Manifest};
use crate::retention::{self, Retention};
use crate::store::Store;

/// Every complete backup (one with a manifest), of one volume or all, oldest first.
pub async fn list(store: &Store, volume: Option<&str>) -> Result<Vec<Manifest>> {
    let prefix = match volume {
        Some(v) => format!("backups/{v}"),
        None => "backups".to_string(),
    };
    let mut out = Vec::new();
    for obj in store.list(&prefix).await? {
        if !obj.path.ends_with("/manifest.json") {
            continue;
        }
        let Some(raw) = store.get(&obj.path).await? else {
            continue; // pruned meanwhile
        };
        let m: Manifest = serde_json::from_slice(&raw).map_err(|e| BackupError::BadMetadata {
            path: obj.path.clone(),
            detail: e.to_string(),
        })?;
        out.push(m);
    }
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(out)
}

/// Deletes the backups of `volume` that `rule` does not keep; returns their ids.
/// Only manifests are deleted (the backup ceases to exist at once); their
/// indexes and chunks are reclaimed by [`crate::gc`].
pub async fn prune(store: &Store, volume: &str, rule: &Retention) -> Result<Vec<String>> {
    let backups = list(store, Some(volume)).await?;
    let created: Vec<u64> = backups.iter().map(|m| m.created).collect();
    let keep: BTreeSet<usize> = retention::select(&created, rule);
    let mut removed = Vec::new();
    for (i, m) in backups.iter().enumerate() {
        if !keep.contains(&i) {
            store.delete(&format::manifest_path(volume, &m.id)).await?;
            removed.push(m.id.clone());
        }
    }
    Ok(removed)
}
