//! Benchmark of backups (driven by `interop/backup-bench`; not a CI step).
//!
//! usage: backup_bench WORKDIR SIZE_MIB [S3S_FS_BINARY PORT]
//!
//! Prints ratios: a full backup of a file-backed device to a local directory
//! against the device's own sequential read rate, an incremental with 1% of
//! the chunks changed against the full's time, and, given s3s-fs, a full
//! backup to it beside raw PUTs of chunk-sized objects to the same server.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backup::{ChangedMap, RetryPolicy, RunOptions, S3Credentials, Store, StoreConfig};
use blockdev::file::FileOptions;
use blockdev::{BlockDevice, DeviceIdentity, FileDevice};
use bytes::Bytes;
use rand::{Rng, SeedableRng};

const CS: u64 = 4 << 20;

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let work = PathBuf::from(&args[1]);
    let size = args[2].parse::<u64>().expect("SIZE_MIB") << 20;
    std::fs::create_dir_all(&work).unwrap();
    let img = work.join("source.img");
    // Half incompressible, a quarter text-like, a quarter zero.
    {
        let mut f = std::fs::File::create(&img).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = vec![0u8; CS as usize];
        let text: Vec<u8> = b"opie backup benchmark line 0123456789\n"
            .iter()
            .copied()
            .cycle()
            .take(CS as usize)
            .collect();
        for i in 0..size / CS {
            match i % 4 {
                0 | 1 => {
                    rng.fill(&mut buf[..]);
                    f.write_all(&buf).unwrap();
                }
                2 => f.write_all(&text).unwrap(),
                _ => f.write_all(&vec![0u8; CS as usize]).unwrap(),
            }
        }
        f.sync_all().unwrap();
    }
    let dev = FileDevice::open(
        &img,
        &FileOptions::default(),
        DeviceIdentity::from_name("bench"),
    )
    .unwrap();
    // The device's own sequential read rate (4 MiB reads, 8 in flight, as the backup reads).
    let t = Instant::now();
    let blocks = (CS / 512) as u32;
    let mut lba = 0;
    while lba < size / 512 {
        let mut batch = Vec::new();
        for _ in 0..8 {
            if lba < size / 512 {
                batch.push(dev.read(lba, blocks));
                lba += u64::from(blocks);
            }
        }
        for r in futures::future::join_all(batch).await {
            r.unwrap();
        }
    }
    let read_t = t.elapsed();
    let dir = work.join("store");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&StoreConfig::Dir(dir), RetryPolicy::default()).unwrap();
    let full = backup::run(&dev, None, None, &store, &RunOptions::new("bench"))
        .await
        .unwrap();
    // 1% of the chunks changed.
    let chunks = size / CS;
    let mut map = ChangedMap::new(CS as u32, chunks);
    let step = 100;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut changed = 0;
    for c in (0..chunks).step_by(step) {
        let mut b = vec![0u8; 4096];
        rng.fill(&mut b[..]);
        dev.write(c * CS / 512, Bytes::from(b), Default::default())
            .await
            .unwrap();
        map.mark_bytes(c * CS, 4096);
        changed += 1;
    }
    let inc = backup::run(
        &dev,
        Some(&map),
        Some(&full.manifest.id),
        &store,
        &RunOptions::new("bench"),
    )
    .await
    .unwrap();
    println!(
        "source: {} MiB, {} chunks of 4 MiB (1/2 random, 1/4 text, 1/4 zero)",
        size >> 20,
        chunks
    );
    println!("sequential read: {:.0} MiB/s", mib_s(size, read_t));
    println!(
        "full backup to a directory: {:.0} MiB/s, ratio to the read rate {:.2} (goal >= 0.5)",
        mib_s(size, full.elapsed),
        read_t.as_secs_f64() / full.elapsed.as_secs_f64()
    );
    println!(
        "incremental, {changed} of {chunks} chunks changed: {:.3} s, {:.3} of the full's time (goal <= 0.05); read {}, uploaded {}",
        inc.elapsed.as_secs_f64(),
        inc.elapsed.as_secs_f64() / full.elapsed.as_secs_f64(),
        inc.progress.chunks_read,
        inc.progress.chunks_uploaded
    );
    if args.len() >= 5 {
        let port: u16 = args[4].parse().unwrap();
        let s3dir = work.join("s3");
        let _ = std::fs::remove_dir_all(&s3dir);
        std::fs::create_dir_all(s3dir.join("bench")).unwrap();
        let mut child = std::process::Command::new(&args[3])
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &args[4],
                "--access-key",
                "bench-ak",
                "--secret-key",
                "bench-secret",
            ])
            .arg(&s3dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let s3 = Store::open(
            &StoreConfig::S3 {
                endpoint: format!("http://127.0.0.1:{port}"),
                bucket: "bench".into(),
                region: "us-east-1".into(),
                credentials: S3Credentials {
                    access_key: "bench-ak".into(),
                    secret_key: "bench-secret".into(),
                },
            },
            RetryPolicy::default(),
        )
        .unwrap();
        let r = backup::run(&dev, None, None, &s3, &RunOptions::new("bench"))
            .await
            .unwrap();
        // Raw PUTs of 4 MiB random objects, 4 at once, as many as the backup uploaded.
        let n = r.progress.chunks_uploaded.max(1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let blobs: Vec<Bytes> = (0..n)
            .map(|_| {
                let mut b = vec![0u8; CS as usize];
                rng.fill(&mut b[..]);
                Bytes::from(b)
            })
            .collect();
        let t = Instant::now();
        let puts = futures::stream::iter(blobs.into_iter().enumerate())
            .map(|(i, b)| {
                let s3 = s3.clone();
                async move { s3.put(&format!("raw/{i}"), b).await }
            })
            .buffer_unordered(4);
        use futures::StreamExt;
        let results: Vec<_> = puts.collect().await;
        results.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        let put_t = t.elapsed();
        println!(
            "S3 (s3s-fs): full backup {:.0} MiB/s of volume ({} chunks uploaded); raw 4 MiB PUTs x4: {:.0} MiB/s",
            mib_s(size, r.elapsed),
            r.progress.chunks_uploaded,
            mib_s(n * CS, put_t)
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
