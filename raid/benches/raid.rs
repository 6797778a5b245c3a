//! RAID5 engine benchmarks: XOR vs memcpy, full-stripe writes, degraded vs
//! healthy reads and rebuild rate, all over memory members.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, Bytes, DeviceIdentity, MemDevice, SharedDevice, WriteFlags};
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use raid::{Config, ManualClock, RaidArray};

const BS: u32 = 4096;
const CHUNK_BLOCKS: u32 = 64; // 256 KiB chunks
const MEMBER_BLOCKS: u64 = 8192 + 1024; // 32 MiB of data area plus metadata
const IO_BYTES: usize = 4 << 20;

/// The runtime `opie head` runs the engine on: one worker per core.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("runtime")
}

/// One thread for everything: what the engine does on a single core.
fn rt_one_core() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn members(n: usize, tag: &str) -> Vec<SharedDevice> {
    (0..n)
        .map(|i| {
            Arc::new(MemDevice::new(
                BS,
                MEMBER_BLOCKS,
                DeviceIdentity::from_name(&format!("{tag}{i}")),
            )) as SharedDevice
        })
        .collect()
}

fn config() -> Config {
    Config {
        chunk_blocks: CHUNK_BLOCKS,
        cache_blocks: 1024,
        checkpoint_rows: 1 << 20,
        ..Config::default()
    }
}

async fn array(n: usize, tag: &str) -> RaidArray {
    RaidArray::create(
        members(n, tag),
        vec![],
        config(),
        Arc::new(ManualClock::new()),
    )
    .await
    .expect("create")
}

/// An array whose hot spare is pulled in without delay.
async fn array_instant_spare(n: usize, tag: &str) -> RaidArray {
    let cfg = Config {
        spare_timeout: Duration::ZERO,
        ..config()
    };
    RaidArray::create(members(n, tag), vec![], cfg, Arc::new(ManualClock::new()))
        .await
        .expect("create")
}

fn xor_vs_memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("xor");
    for size in [64 << 10, 1 << 20] {
        let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut dst = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("xor_into", size), &size, |b, _| {
            b.iter(|| raid::parity::xor_into(black_box(&mut dst), black_box(&src)))
        });
        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

fn full_stripe_write(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("full_stripe_write");
    g.throughput(Throughput::Bytes(IO_BYTES as u64));
    let src = vec![0xa5u8; IO_BYTES];
    let mut dst = vec![0u8; IO_BYTES];
    g.bench_function("memcpy", |b| {
        b.iter(|| black_box(&mut dst).copy_from_slice(black_box(&src)))
    });
    // The members' stores land in 100+ MiB of memory, beyond the caches; the
    // 4 MiB memcpy above stays in them. This reference copies into a
    // destination as large as the members of a 4-wide array.
    let mut big = vec![0u8; 4 * MEMBER_BLOCKS as usize * BS as usize];
    let slots = big.len() / IO_BYTES;
    let mut at = 0;
    g.bench_function("memcpy_uncached_dst", |b| {
        b.iter(|| {
            black_box(&mut big[at * IO_BYTES..(at + 1) * IO_BYTES])
                .copy_from_slice(black_box(&src));
            at = (at + 1) % slots;
        })
    });
    // `raid5`: the engine as the head runs it, whole rows of a request
    // written as parallel tasks on every core. `raid5_one_core`: the same
    // on a single thread.
    let one = rt_one_core();
    for (name, rt) in [("raid5", &rt), ("raid5_one_core", &one)] {
        for n in [3usize, 4, 5] {
            let a = rt.block_on(array(n, &format!("{name}{n}-")));
            let row_bytes = (n - 1) * (CHUNK_BLOCKS * BS) as usize;
            // Whole rows per write.
            let io = IO_BYTES / row_bytes * row_bytes;
            let data = Bytes::from(vec![0x3cu8; io]);
            let blocks = (io / BS as usize) as u64;
            let cap = a.geometry().num_blocks / blocks * blocks;
            let mut lba = 0;
            g.throughput(Throughput::Bytes(io as u64));
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    rt.block_on(a.write(lba, data.clone(), WriteFlags::NONE))
                        .expect("write");
                    lba = (lba + blocks) % cap;
                })
            });
        }
    }
    g.finish();
}

fn healthy_vs_degraded_read(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("read");
    let n = 4;
    let a = rt.block_on(array(n, "r-"));
    let cap = a.geometry().num_blocks;
    rt.block_on(async {
        let step = (IO_BYTES / BS as usize) as u64;
        let mut lba = 0;
        while lba + step <= cap {
            a.write(lba, Bytes::from(vec![0x77u8; IO_BYTES]), WriteFlags::NONE)
                .await
                .expect("fill");
            lba += step;
        }
        a.flush().await.expect("flush");
    });
    let blocks = (IO_BYTES / BS as usize) as u32;
    let span = cap / u64::from(blocks) * u64::from(blocks);
    g.throughput(Throughput::Bytes(IO_BYTES as u64));
    let mut lba = 0;
    g.bench_function("healthy", |b| {
        b.iter(|| {
            black_box(rt.block_on(a.read(lba, blocks)).expect("read"));
            lba = (lba + u64::from(blocks)) % span;
        })
    });
    rt.block_on(a.fail(1));
    g.bench_function("degraded", |b| {
        b.iter(|| {
            black_box(rt.block_on(a.read(lba, blocks)).expect("read"));
            lba = (lba + u64::from(blocks)) % span;
        })
    });
    g.finish();
}

fn rebuild_rate(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("rebuild");
    // Each iteration fills a fresh array (not timed) and rebuilds a whole
    // member (timed). Flat sampling runs the same small number of iterations
    // per sample; criterion's default linear sampling would run 55 of them,
    // each with its untimed fill.
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(100));
    g.measurement_time(Duration::from_secs(1));
    let n = 4;
    let probe = rt.block_on(array(n, "probe-"));
    let member_bytes = rt.block_on(probe.layout()).rows * u64::from(CHUNK_BLOCKS * BS);
    g.throughput(Throughput::Bytes(member_bytes));
    g.bench_function("one_member_4_wide", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                total += rt.block_on(async {
                    let a = array_instant_spare(n, &format!("rb{i}-")).await;
                    let cap = a.geometry().num_blocks;
                    let step = (IO_BYTES / BS as usize) as u64;
                    let mut lba = 0;
                    while lba + step <= cap {
                        a.write(lba, Bytes::from(vec![0x11u8; IO_BYTES]), WriteFlags::NONE)
                            .await
                            .expect("fill");
                        lba += step;
                    }
                    a.flush().await.expect("flush");
                    a.fail(2).await;
                    let spare: SharedDevice = Arc::new(MemDevice::new(
                        BS,
                        MEMBER_BLOCKS,
                        DeviceIdentity::from_name(&format!("spare{i}")),
                    ));
                    a.add_spare(spare).await.expect("spare");
                    let start = Instant::now();
                    // With an unlimited rate, maintain() rebuilds up to
                    // `checkpoint_rows` rows itself; rebuild_step finishes.
                    let r = a.maintain().await.expect("maintain");
                    assert_eq!(r.spare_activated, Some(2));
                    let mut finished = r.rebuild_finished;
                    while !finished {
                        let (rows, fin) = a.rebuild_step(u64::MAX).await.expect("rebuild");
                        assert!(rows > 0 || fin, "rebuild made no progress");
                        finished = fin;
                    }
                    let took = start.elapsed();
                    assert!(!a.degraded());
                    took
                });
            }
            total
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    xor_vs_memcpy,
    full_stripe_write,
    healthy_vs_degraded_read,
    rebuild_rate
);
criterion_main!(benches);
