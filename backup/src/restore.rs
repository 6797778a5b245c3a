//! Verifying a backup and restoring it to a block device, every chunk
//! checked (crc32c of the blob, SHA-256 of the plaintext) on the way.

use std::collections::HashMap;
use std::ops::Range;

use blockdev::{BlockDevice, WriteFlags};
use bytes::Bytes;
use futures::StreamExt;

use crate::error::{BackupError, ChunkProblem, Result};
use crate::format::{self, ChunkDigest, ChunkRef, Manifest};
use crate::run::load;
use crate::store::Store;

/// One chunk that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChunk {
    /// Its position in the index.
    pub chunk: u64,
    /// Its digest.
    pub digest: ChunkDigest,
    /// The volume bytes it holds.
    pub range: Range<u64>,
    /// What is wrong.
    pub problem: ChunkProblem,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks in the backup.
    pub chunks: u64,
    /// Distinct stored chunks checked.
    pub checked: u64,
    /// The bad chunks, in volume order (one entry per index position).
    pub bad: Vec<BadChunk>,
}

impl VerifyReport {
    /// Bytes of the volume that cannot be restored.
    pub fn bad_bytes(&self) -> u64 {
        self.bad.iter().map(|b| b.range.end - b.range.start).sum()
    }

    /// The volume byte ranges that cannot be restored, adjacent ones merged.
    pub fn bad_ranges(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for b in &self.bad {
            match out.last_mut() {
                Some(last) if last.end == b.range.start => last.end = b.range.end,
                _ => out.push(b.range.clone()),
            }
        }
        out
    }
}

/// Fetches and checks one chunk; returns its plaintext.
async fn fetch_chunk(
    store: &Store,
    d: ChunkDigest,
    chunk_size: u32,
) -> Result<std::result::Result<Vec<u8>, ChunkProblem>> {
    let Some(blob) = store.get(&d.path()).await? else {
        return Ok(Err(ChunkProblem::Missing));
    };
    tokio::task::spawn_blocking(
        move || match format::decode_blob(&blob, chunk_size as usize) {
            Ok(plain) if ChunkDigest::of(&plain) == d => Ok(plain),
            Ok(_) => Err(ChunkProblem::WrongDigest),
            Err(format::BlobError::BadChecksum) => Err(ChunkProblem::BadChecksum),
            Err(e) => Err(ChunkProblem::Undecodable(e.to_string())),
        },
    )
    .await
    .map_err(|e| BackupError::Invalid(format!("verify task: {e}")))
}

/// Checks every chunk of backup `volume`/`id`; names the bad ones.
pub async fn verify(
    store: &Store,
    volume: &str,
    id: &str,
    concurrency: usize,
) -> Result<VerifyReport> {
    let (manifest, index) = load(store, volume, id).await?;
    let mut distinct: Vec<ChunkDigest> = index.stored().collect();
    distinct.sort();
    distinct.dedup();
    let problems: HashMap<ChunkDigest, ChunkProblem> =
        futures::stream::iter(distinct.iter().copied())
            .map(|d| async move {
                fetch_chunk(store, d, manifest.chunk_size)
                    .await
                    .map(|r| (d, r.err()))
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(d, p)| p.map(|p| (d, p)))
            .collect();
    let bad = index
        .chunks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            ChunkRef::Stored(d) => problems.get(d).map(|p| BadChunk {
                chunk: i as u64,
                digest: *d,
                range: manifest.chunk_range(i as u64),
                problem: p.clone(),
            }),
            ChunkRef::Zero => None,
        })
        .collect();
    Ok(VerifyReport {
        chunks: manifest.chunks,
        checked: distinct.len() as u64,
        bad,
    })
}

/// How a restore treats bad chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadChunk {
    /// Verify every chunk first and write nothing if any is bad (the default).
    Refuse,
    /// Write every good chunk, leave the bad chunks' ranges untouched, and report them.
    Skip,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Bytes written to the target (zero chunks included).
    pub bytes_written: u64,
    /// The chunks that could not be restored (empty unless [`OnBadChunk::Skip`]).
    pub unrestored: VerifyReport,
}

/// Restores backup `volume`/`id` onto `target` (at least as large as the
/// backup's volume), checking every chunk. With [`OnBadChunk::Refuse`] a
/// verify pass runs first and a bad chunk fails the restore with
/// [`BackupError::RestoreRefused`] before anything is written.
pub async fn restore(
    store: &Store,
    volume: &str,
    id: &str,
    target: &dyn BlockDevice,
    on_bad: OnBadChunk,
    concurrency: usize,
) -> Result<RestoreReport> {
    let (manifest, index) = load(store, volume, id).await?;
    let geo = target.geometry();
    if geo.bytes() < manifest.size {
        return Err(BackupError::Invalid(format!(
            "target holds {} bytes, the backup {}",
            geo.bytes(),
            manifest.size
        )));
    }
    let bs = u64::from(geo.block_size);
    if !u64::from(manifest.chunk_size).is_multiple_of(bs) || !manifest.size.is_multiple_of(bs) {
        return Err(BackupError::Invalid(format!(
            "target block size {bs} does not divide the backup's chunks"
        )));
    }
    if on_bad == OnBadChunk::Refuse {
        let report = verify(store, volume, id, concurrency).await?;
        if !report.bad.is_empty() {
            return Err(BackupError::RestoreRefused(report));
        }
    }
    let max_blocks = u64::from(match target.limits().max_transfer {
        0 => manifest.chunk_size / geo.block_size,
        m => m.min(manifest.chunk_size / geo.block_size),
    });
    let manifest_ref = &manifest;
    let results: Vec<Result<(u64, Option<BadChunk>)>> =
        futures::stream::iter(index.chunks.iter().copied().enumerate())
            .map(|(i, c)| async move {
                let range = manifest_ref.chunk_range(i as u64);
                let len = range.end - range.start;
                let write_err = |source| BackupError::TargetWrite {
                    range: range.clone(),
                    source,
                };
                match c {
                    ChunkRef::Zero => {
                        target
                            .write_zeroes(range.start / bs, len / bs, false)
                            .await
                            .map_err(write_err)?;
                        Ok((len, None))
                    }
                    ChunkRef::Stored(d) => {
                        let plain = match fetch_chunk(store, d, manifest_ref.chunk_size).await? {
                            Ok(p) if p.len() as u64 == len => Bytes::from(p),
                            Ok(p) => {
                                return Ok((
                                    0,
                                    Some(BadChunk {
                                        chunk: i as u64,
                                        digest: d,
                                        range: range.clone(),
                                        problem: ChunkProblem::Undecodable(format!(
                                            "{} bytes, expected {len}",
                                            p.len()
                                        )),
                                    }),
                                ))
                            }
                            Err(problem) => {
                                return Ok((
                                    0,
                                    Some(BadChunk {
                                        chunk: i as u64,
                                        digest: d,
                                        range: range.clone(),
                                        problem,
                                    }),
                                ))
                            }
                        };
                        let mut off = 0u64;
                        while off < len {
                            let n = (len - off).min(max_blocks * bs);
                            target
                                .write(
                                    (range.start + off) / bs,
                                    plain.slice(off as usize..(off + n) as usize),
                                    WriteFlags::default(),
                                )
                                .await
                                .map_err(write_err)?;
                            off += n;
                        }
                        Ok((len, None))
                    }
                }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
    let mut written = 0;
    let mut bad = Vec::new();
    for r in results {
        let (n, b) = r?;
        written += n;
        bad.extend(b);
    }
    target
        .flush()
        .await
        .map_err(|source| BackupError::TargetWrite {
            range: 0..manifest.size,
            source,
        })?;
    Ok(RestoreReport {
        unrestored: VerifyReport {
            chunks: manifest.chunks,
            checked: manifest.chunks - manifest.zero_chunks,
            bad,
        },
        bytes_written: written,
        manifest,
    })
}
