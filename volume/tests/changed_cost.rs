//! The cost of persistent changed-block tracking on the write path, on a
//! file device: a volume of a version 2 pool (no stored map: the write path
//! before it) against one with its map stored, in passes that start with
//! every region unmarked (each region's first write waits for its bit) and
//! in steady state, alternating round by round. A measurement, not a check:
//! `cargo test --release -p volume --test changed_cost -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::Instant;

mod common;

use blockdev::file::FileOptions;
use blockdev::{BlockDevice, Bytes, DeviceIdentity, FileDevice, WriteFlags};
use common::version_2_copy;
use futures::stream::{self, StreamExt};
use volume::{Pool, Volume};

const BS: u64 = 4096;
const MIB: u64 = 1 << 20;
const UNIT: u64 = 256;
const VOLUME_MIB: u64 = 256;

/// MiB/s of 1 MiB writes over the first `mib` MiB, one at a time.
async fn sequential(v: &Volume, mib: u64) -> f64 {
    let data = Bytes::from(vec![0x5a; MIB as usize]);
    let t = Instant::now();
    for i in 0..mib {
        v.write(i * MIB / BS, data.clone(), WriteFlags::NONE)
            .await
            .unwrap();
    }
    mib as f64 / t.elapsed().as_secs_f64()
}

/// IOPS of `n` 4 KiB writes at pseudo-random places, `depth` at once.
async fn random(v: &Volume, n: u64, depth: usize, seed: u64) -> f64 {
    let blocks = v.geometry().num_blocks;
    let data = Bytes::from(vec![0xa5; BS as usize]);
    let t = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let lba = (i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % blocks;
            let data = data.clone();
            async move { v.write(lba, data, WriteFlags::NONE).await.unwrap() }
        })
        .buffer_unordered(depth)
        .collect::<Vec<()>>()
        .await;
    n as f64 / t.elapsed().as_secs_f64()
}

/// A file-backed pool in version 2 format (no stored maps) with one volume
/// `v` of [`VOLUME_MIB`], written whole once (so no pass pays for the file's
/// block allocation).
async fn old_pool(name: &str) -> (Pool, Arc<Volume>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("cbt-cost-{name}-{}.img", std::process::id()));
    let opts = FileOptions {
        block_size: BS as u32,
        read_only: false,
        create_size: Some((VOLUME_MIB + 32) * MIB),
    };
    let dev = Arc::new(FileDevice::open(&path, &opts, DeviceIdentity::from_name(name)).unwrap());
    let copy = version_2_copy(BS as u32, UNIT, VOLUME_MIB * MIB / BS / UNIT);
    dev.write(0, Bytes::from(copy), WriteFlags::FUA)
        .await
        .unwrap();
    let pool = Pool::open(dev).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    sequential(&v, VOLUME_MIB).await;
    (pool, v, path)
}

/// A backup of `v` succeeds and the pool is closed: every region of the
/// volume is unmarked on the device, the next write into each pays for it.
async fn unmark(pool: &Pool) {
    let snap = pool
        .snapshot(&["v"], 16 * MIB, MIB)
        .await
        .unwrap()
        .pop()
        .unwrap();
    pool.drop_snapshot(snap).await.unwrap();
    pool.close().await.unwrap();
}

/// One round of a workload: rates without a stored map, with one in a pass
/// of first writes, with one in steady state.
type Round = (f64, f64, f64);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with --release"]
async fn write_path_cost_of_stored_maps() {
    // `plain` stays a version 2 pool: its volume's map is not stored (the
    // write path before); `tracked` gets its map stored at its first close.
    let (_plain_pool, plain, plain_path) = old_pool("plain").await;
    let (pool, tracked, tracked_path) = old_pool("tracked").await;
    let regions = VOLUME_MIB * MIB / volume::CHANGED_REGION_BYTES;
    let n = 20_000;
    // Per round and workload: (plain, tracked first writes, tracked steady).
    let mut rows: Vec<(&str, Vec<Round>)> = vec![
        ("sequential 1 MiB QD1 (MiB/s)", Vec::new()),
        ("random 4 KiB QD1 (IOPS)", Vec::new()),
        ("random 4 KiB QD16 (IOPS)", Vec::new()),
    ];
    for round in 0..5u64 {
        let p = sequential(&plain, VOLUME_MIB).await;
        unmark(&pool).await;
        let f = sequential(&tracked, VOLUME_MIB).await;
        let s = sequential(&tracked, VOLUME_MIB).await;
        rows[0].1.push((p, f, s));
        for (i, depth) in [(1, 1), (2, 16)] {
            let p = random(&plain, n, depth, round).await;
            unmark(&pool).await;
            let f = random(&tracked, n, depth, round).await;
            let s = random(&tracked, n, depth, round + 100).await;
            rows[i].1.push((p, f, s));
        }
    }
    println!(
        "volume {VOLUME_MIB} MiB ({regions} regions of 4 MiB) on a file, {BS}-byte blocks; \
         medians of 5 rounds; first writes: every region unmarked at the start of the pass"
    );
    // Work of one pass, in the rate's unit (MiB or writes).
    let work = [VOLUME_MIB as f64, n as f64, n as f64];
    for ((what, r), work) in rows.into_iter().zip(work) {
        let plain = median(r.iter().map(|x| x.0).collect());
        let first = median(r.iter().map(|x| x.1 / x.0).collect());
        let steady = median(r.iter().map(|x| x.2 / x.0).collect());
        // What the pass with first writes took more than a steady one, per
        // region (each region's first write waited for one map write).
        let extra_ms = median(
            r.iter()
                .map(|x| (work / x.1 - work / x.2) * 1000.0 / regions as f64)
                .collect(),
        );
        println!(
            "{what}: no stored map {plain:.0}; stored map, pass with first writes {first:.2}x, \
             steady {steady:.2}x; first write of a region {extra_ms:.2} ms more"
        );
    }
    drop((plain, tracked, pool));
    std::fs::remove_file(&plain_path).unwrap();
    std::fs::remove_file(&tracked_path).unwrap();
}
