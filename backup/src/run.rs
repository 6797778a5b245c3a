//! Taking a backup: read the source in chunk order, hash and compress on the
//! blocking pool, upload in parallel, all with at most K chunks in flight;
//! then write the index and, last, the manifest.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use blockdev::BlockDevice;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};

use crate::error::{BackupError, Result};
use crate::format::{self, ChunkDigest, ChunkRef, Index, Manifest};
use crate::rate_limit::RateLimiter;
use crate::store::Store;

/// Which chunk-sized regions of the source may differ from the parent
/// backup (changed-block tracking). Regions not marked are taken from the
/// parent's index without being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedMap {
    chunk_size: u32,
    changed: Vec<bool>,
}

impl ChangedMap {
    /// A map of `chunks` regions of `chunk_size` bytes, none changed.
    pub fn new(chunk_size: u32, chunks: u64) -> Self {
        ChangedMap {
            chunk_size,
            changed: vec![false; chunks as usize],
        }
    }

    /// Marks the regions overlapping volume bytes `offset..offset + len` as changed.
    pub fn mark_bytes(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let cs = u64::from(self.chunk_size);
        for i in offset / cs..=(offset + len - 1) / cs {
            if let Some(c) = self.changed.get_mut(i as usize) {
                *c = true;
            }
        }
    }

    /// Whether region `i` may have changed (regions past the map's end have).
    pub fn is_changed(&self, i: u64) -> bool {
        self.changed.get(i as usize).copied().unwrap_or(true)
    }

    /// The region size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
}

/// Settings of one backup run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Volume name: the directory under `backups/`.
    pub volume: String,
    /// Chunk size in bytes: a power of two, a multiple of the source's block size.
    pub chunk_size: u32,
    /// At most this many chunks are read, processed or uploaded at once (bounds memory to about K chunk sizes times two).
    pub in_flight: usize,
    /// At most this many uploads at once.
    pub uploads: usize,
    /// Progress is published here, if given.
    pub progress: Option<watch::Sender<Progress>>,
    /// At most this many bytes per second are read from the source (a
    /// token bucket one chunk deep, taken before each chunk's read); `None`:
    /// as fast as it goes. Chunks taken from the parent unread cost nothing.
    pub rate_limit: Option<u64>,
}

impl RunOptions {
    /// Defaults for `volume`: 4 MiB chunks, 8 in flight, 4 uploads.
    pub fn new(volume: &str) -> Self {
        RunOptions {
            volume: volume.to_string(),
            chunk_size: format::DEFAULT_CHUNK_SIZE,
            in_flight: 8,
            uploads: 4,
            progress: None,
            rate_limit: None,
        }
    }
}

/// Progress of a run, published after every chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Chunks in the backup.
    pub chunks_total: u64,
    /// Chunks finished (read or taken from the parent).
    pub chunks_done: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Chunks read from the source.
    pub chunks_read: u64,
    /// Chunk objects created in the store.
    pub chunks_uploaded: u64,
    /// Chunks not uploaded: unchanged since the parent, already present, or zero.
    pub chunks_skipped: u64,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The manifest written.
    pub manifest: Manifest,
    /// The final progress counters.
    pub progress: Progress,
    /// Wall time of the run.
    pub elapsed: std::time::Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new backup id: the UTC creation time to the second, its milliseconds
/// and 4 random hex digits (`YYYYMMDDTHHMMSSZ-mmmxxxx`), so ids sort by
/// time even for backups of one second (the order prune and list go by).
pub fn new_id(created_ms: u64) -> String {
    format!(
        "{}-{:03}{:04x}",
        crate::calendar::compact_utc(created_ms / 1000),
        created_ms % 1000,
        rand::random::<u16>()
    )
}

/// Reads the manifest and index of backup `volume`/`id`, checking the index's digest.
pub async fn load(store: &Store, volume: &str, id: &str) -> Result<(Manifest, Index)> {
    let mpath = format::manifest_path(volume, id);
    let raw = store
        .get(&mpath)
        .await?
        .ok_or_else(|| BackupError::NoSuchBackup {
            volume: volume.into(),
            id: id.into(),
        })?;
    let manifest: Manifest =
        serde_json::from_slice(&raw).map_err(|e| BackupError::BadMetadata {
            path: mpath.clone(),
            detail: e.to_string(),
        })?;
    let ipath = format::index_path(volume, id);
    let bad = |detail: String| BackupError::BadMetadata {
        path: ipath.clone(),
        detail,
    };
    let raw = store
        .get(&ipath)
        .await?
        .ok_or_else(|| bad("missing".into()))?;
    if format::index_digest(&raw) != manifest.index_sha256 {
        return Err(bad("SHA-256 does not match the manifest".into()));
    }
    let index = Index::decode(&raw).map_err(bad)?;
    if index.chunks.len() as u64 != manifest.chunks {
        return Err(bad(format!(
            "{} entries, manifest says {}",
            index.chunks.len(),
            manifest.chunks
        )));
    }
    Ok((manifest, index))
}

/// What processing one chunk produced.
struct Chunk {
    entry: ChunkRef,
    read: bool,
    uploaded: bool,
    bytes: u64,
}

/// Takes a backup of `source` into `store`.
///
/// With `parent`, chunks the parent already holds are not uploaded again
/// (its index seeds the presence set: the store is never listed nor asked
/// chunk by chunk), and with `changed` as well, regions not marked changed
/// are taken from the parent's index without being read. The manifest is
/// written last: a run that fails leaves no backup, only an in-progress
/// marker and chunks that GC reclaims after the grace time.
pub async fn run(
    source: &dyn BlockDevice,
    changed: Option<&ChangedMap>,
    parent: Option<&str>,
    store: &Store,
    opts: &RunOptions,
) -> Result<Report> {
    let started = Instant::now();
    let geo = source.geometry();
    let cs = opts.chunk_size;
    if !format::valid_name(&opts.volume) {
        return Err(BackupError::Invalid(format!(
            "volume name {:?}: use letters, digits, '-', '_', '.'",
            opts.volume
        )));
    }
    if !cs.is_power_of_two() || cs < geo.block_size || !cs.is_multiple_of(geo.block_size) {
        return Err(BackupError::Invalid(format!(
            "chunk size {cs} must be a power of two and a multiple of the block size {}",
            geo.block_size
        )));
    }
    let size = geo.bytes();
    let n_chunks = size.div_ceil(u64::from(cs));

    let parent_data = match parent {
        Some(p) => {
            let (m, idx) = load(store, &opts.volume, p).await?;
            if m.chunk_size != cs {
                return Err(BackupError::Invalid(format!(
                    "parent {p} has chunk size {}, this run {cs}",
                    m.chunk_size
                )));
            }
            Some((m, idx))
        }
        None => None,
    };
    if changed.is_some() && parent_data.is_none() {
        return Err(BackupError::Invalid(
            "a changed-region map needs a parent backup".into(),
        ));
    }
    if let Some(c) = changed {
        if c.chunk_size() != cs {
            return Err(BackupError::Invalid(format!(
                "changed map regions are {} bytes, chunks {cs}",
                c.chunk_size()
            )));
        }
    }
    let present: Arc<Mutex<HashSet<ChunkDigest>>> = Arc::new(Mutex::new(
        parent_data
            .as_ref()
            .map(|(_, idx)| idx.stored().collect())
            .unwrap_or_default(),
    ));

    let created_ms = now_ms();
    let created = created_ms / 1000;
    let id = new_id(created_ms);
    store
        .put(
            &format::running_path(&opts.volume, &id),
            Bytes::from(format!("{{\"started\":{created}}}\n")),
        )
        .await?;

    let mut progress = Progress {
        chunks_total: n_chunks,
        ..Progress::default()
    };
    let uploads = Arc::new(Semaphore::new(opts.uploads.max(1)));
    let bs = u64::from(geo.block_size);
    let max_blocks = match source.limits().max_transfer {
        0 => cs / geo.block_size,
        m => m.min(cs / geo.block_size),
    };

    let limiter = opts.rate_limit.map(|r| {
        Arc::new(Mutex::new(RateLimiter::new(
            r,
            u64::from(cs),
            tokio::time::Instant::now().into_std(),
        )))
    });
    let process = |i: u64| {
        let present = present.clone();
        let limiter = limiter.clone();
        let uploads = uploads.clone();
        let parent_entry = parent_data
            .as_ref()
            .and_then(|(_, idx)| idx.chunks.get(i as usize).copied());
        async move {
            let start = i * u64::from(cs);
            let len = (u64::from(cs)).min(size - start);
            if let (Some(c), Some(entry)) = (changed, parent_entry) {
                if !c.is_changed(i) {
                    return Ok(Chunk {
                        entry,
                        read: false,
                        uploaded: false,
                        bytes: 0,
                    });
                }
            }
            if let Some(l) = &limiter {
                let wait = l
                    .lock()
                    .expect("rate limiter")
                    .take(len, tokio::time::Instant::now().into_std());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            // Read the chunk, in pieces the device accepts.
            let mut buf = BytesMut::with_capacity(len as usize);
            let mut lba = start / bs;
            let end = (start + len) / bs;
            while lba < end {
                let blocks = (end - lba).min(u64::from(max_blocks)) as u32;
                let data = source
                    .read(lba, blocks)
                    .await
                    .map_err(|e| BackupError::SourceRead {
                        range: lba * bs..(lba + u64::from(blocks)) * bs,
                        source: e,
                    })?;
                buf.extend_from_slice(&data);
                lba += u64::from(blocks);
            }
            let plain = buf.freeze();
            let (entry, blob) = tokio::task::spawn_blocking(move || {
                if plain.iter().all(|&b| b == 0) {
                    return (ChunkRef::Zero, None);
                }
                let d = ChunkDigest::of(&plain);
                (ChunkRef::Stored(d), Some(plain))
            })
            .await
            .map_err(|e| BackupError::Invalid(format!("hashing task: {e}")))?;
            let mut uploaded = false;
            if let (ChunkRef::Stored(d), Some(plain)) = (entry, blob) {
                let known = !present.lock().expect("presence set").insert(d);
                if !known {
                    let blob = tokio::task::spawn_blocking(move || format::encode_blob(&plain))
                        .await
                        .map_err(|e| BackupError::Invalid(format!("compression task: {e}")))?;
                    let _permit = uploads.acquire().await.expect("semaphore open");
                    let blob = Bytes::from(blob);
                    uploaded = store.put_chunk(&d, blob.clone()).await?;
                    if !uploaded {
                        // Present but not known from the parent: it may be an
                        // orphan that GC is about to sweep as old. Rewriting it
                        // (same content, atomic) renews its age; see README "GC".
                        store.put(&d.path(), blob).await?;
                        uploaded = true;
                    }
                }
            }
            Ok::<_, BackupError>(Chunk {
                entry,
                read: true,
                uploaded,
                bytes: len,
            })
        }
    };

    let mut results = futures::stream::iter(0..n_chunks)
        .map(process)
        .buffered(opts.in_flight.max(1));
    let mut index = Index {
        chunks: Vec::with_capacity(n_chunks as usize),
    };
    let mut zero = 0;
    while let Some(r) = results.next().await {
        let c = r?;
        if c.entry == ChunkRef::Zero {
            zero += 1;
        }
        index.chunks.push(c.entry);
        progress.chunks_done += 1;
        progress.bytes_read += c.bytes;
        progress.chunks_read += u64::from(c.read);
        if c.uploaded {
            progress.chunks_uploaded += 1;
        } else {
            progress.chunks_skipped += 1;
        }
        if let Some(tx) = &opts.progress {
            tx.send_replace(progress);
        }
    }
    drop(results);

    let encoded = index.encode();
    let manifest = Manifest {
        format_version: format::FORMAT_VERSION,
        id: id.clone(),
        volume: opts.volume.clone(),
        identity: source.identity().into(),
        size,
        chunk_size: cs,
        created,
        parent: parent.map(str::to_string),
        index_sha256: format::index_digest(&encoded),
        chunks: n_chunks,
        zero_chunks: zero,
        chunks_read: progress.chunks_read,
        chunks_uploaded: progress.chunks_uploaded,
    };
    store
        .put(&format::index_path(&opts.volume, &id), Bytes::from(encoded))
        .await?;
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    store
        .put(&format::manifest_path(&opts.volume, &id), Bytes::from(json))
        .await?;
    store
        .delete(&format::running_path(&opts.volume, &id))
        .await?;
    Ok(Report {
        manifest,
        progress,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_of_one_second_sort_by_time() {
        let a = super::new_id(1_796_390_000_001);
        let b = super::new_id(1_796_390_000_999);
        let c = super::new_id(1_796_390_001_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(a.starts_with("20261204T131320Z-001"), "{a}");
    }
}
