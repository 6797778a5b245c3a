//! Helpers shared by the backup tests: devices with known content.

#![allow(dead_code)]

use std::sync::Arc;

use backup::{OnBadChunk, RunOptions, Store};
use blockdev::{BlockDevice, MemDevice};
use rand::{Rng, SeedableRng};

/// Chunk size used by the tests: small, so a test moves little data.
pub const CS: u32 = 64 << 10;

/// A memory device of `bytes` bytes: random data with every fourth chunk zero.
pub fn filled(name: &str, bytes: u64, seed: u64) -> Arc<MemDevice> {
    let dev = MemDevice::with_name(name, bytes);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; CS as usize];
    for (i, off) in (0..bytes).step_by(CS as usize).enumerate() {
        if i % 4 == 3 {
            continue;
        }
        rng.fill(&mut buf[..]);
        let n = (bytes - off).min(u64::from(CS)) as usize;
        dev.write_bytes(off, &buf[..n]);
    }
    Arc::new(dev)
}

/// The whole content of a memory device.
pub fn content(dev: &MemDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.geometry().bytes() as usize];
    dev.read_bytes(0, &mut out);
    out
}

/// Overwrites `chunks` (chunk numbers) of `dev` with fresh random data.
pub fn change(dev: &MemDevice, chunks: &[u64], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 4096];
    for &c in chunks {
        rng.fill(&mut buf[..]);
        dev.write_bytes(c * u64::from(CS) + 512, &buf);
    }
}

/// Restores `volume`/`id` into a fresh memory device and returns its content.
pub async fn restored(store: &Store, volume: &str, id: &str, bytes: u64) -> Vec<u8> {
    let target = MemDevice::with_name("restore-target", bytes);
    backup::restore(store, volume, id, &target, OnBadChunk::Refuse, 4)
        .await
        .expect("restore");
    content(&target)
}

/// Run options of the tests: [`CS`] chunks, 4 in flight, 4 uploads.
pub fn opts(volume: &str) -> RunOptions {
    RunOptions {
        chunk_size: CS,
        in_flight: 4,
        uploads: 4,
        ..RunOptions::new(volume)
    }
}

/// [`opts`] with progress published; the receiver watches it.
pub fn opts_watched(volume: &str) -> (RunOptions, tokio::sync::watch::Receiver<backup::Progress>) {
    let (tx, rx) = tokio::sync::watch::channel(backup::Progress::default());
    let o = RunOptions {
        progress: Some(tx),
        ..opts(volume)
    };
    (o, rx)
}

/// Asserts that `volume`/`id` restores to exactly `dev`'s content.
pub async fn assert_restores(store: &Store, volume: &str, id: &str, dev: &MemDevice) {
    let bytes = dev.geometry().bytes();
    assert_eq!(restored(store, volume, id, bytes).await, content(dev));
}

/// Asserts that verify finds no bad chunk in `volume`/`id`.
pub async fn assert_verifies(store: &Store, volume: &str, id: &str) {
    let report = backup::verify(store, volume, id, 4).await.unwrap();
    assert!(report.bad.is_empty(), "{report:?}");
}

/// Every file under `dir` (none if it does not exist).
pub fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
