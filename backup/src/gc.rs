//! Garbage collection: mark the chunks every backup references, sweep the
//! rest once they are older than the grace time.
//!
//! The rule that keeps a concurrent backup safe: a chunk is swept only if no
//! index references it and it was written before `now - grace`. A running
//! backup's new chunks are younger than that as long as the run finishes
//! within the grace time; a chunk it finds already present but not in its
//! parent's index it rewrites, which renews its age (see `run`). Backup
//! directories without a manifest (failed runs, pruned backups) whose newest
//! object is older than the grace are deleted; younger ones' indexes are
//! marked too (a run between writing its index and its manifest).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::error::{BackupError, Result};
use crate::format::{ChunkDigest, Index};
use crate::run::load;
use crate::store::{Store, StoredObject};

/// What a GC did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Distinct chunks referenced by some index.
    pub referenced: u64,
    /// Chunk objects deleted.
    pub chunks_swept: u64,
    /// Bytes of those objects.
    pub bytes_swept: u64,
    /// Unreferenced chunks kept because they are younger than the grace.
    pub chunks_in_grace: u64,
    /// Backup directories without a manifest that were deleted.
    pub incomplete_removed: u64,
}

/// Collects garbage in `store`: see the module docs for the rule.
pub async fn gc(store: &Store, grace: Duration, now: SystemTime) -> Result<GcReport> {
    let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport::default();
    // backups/<volume>/<id>/<file>, grouped by directory.
    let mut dirs: BTreeMap<(String, String), Vec<StoredObject>> = BTreeMap::new();
    for obj in store.list("backups").await? {
        let parts: Vec<&str> = obj.path.split('/').collect();
        if parts.len() == 4 {
            dirs.entry((parts[1].to_string(), parts[2].to_string()))
                .or_default()
                .push(obj);
        }
    }
    let mut marked: HashSet<ChunkDigest> = HashSet::new();
    for ((volume, id), objs) in &dirs {
        let has = |name: &str| objs.iter().any(|o| o.path.ends_with(&format!("/{name}")));
        if has("manifest.json") {
            let (_, index) = load(store, volume, id).await?;
            marked.extend(index.stored());
            continue;
        }
        let newest = objs
            .iter()
            .map(|o| o.modified)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if newest < cutoff {
            for o in objs {
                store.delete(&o.path).await?;
            }
            report.incomplete_removed += 1;
        } else if has("index") {
            let path = crate::format::index_path(volume, id);
            if let Some(raw) = store.get(&path).await? {
                let index = Index::decode(&raw)
                    .map_err(|detail| BackupError::BadMetadata { path, detail })?;
                marked.extend(index.stored());
            }
        }
    }
    report.referenced = marked.len() as u64;
    for obj in store.list("chunks").await? {
        let name = obj.path.rsplit('/').next().unwrap_or_default();
        let Some(d) = ChunkDigest::parse(name) else {
            continue; // not ours: leave it
        };
        if marked.contains(&d) {
            continue;
        }
        if obj.modified < cutoff {
            store.delete(&obj.path).await?;
            report.chunks_swept += 1;
            report.bytes_swept += obj.size;
        } else {
            report.chunks_in_grace += 1;
        }
    }
    Ok(report)
}
