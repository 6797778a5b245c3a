//! Sequential reads or writes through opie's AoE initiator ([`AoeDevice`]),
//! for `interop/aoe-initiator-bench`.
//!
//! ```text
//! aoe-seq --iface IF [--iface IF ...] --shelf N --slot N --mode read|write
//!         [--mib N] [--req-kib N] [--depth N] [--target-pid PID]
//! ```
//! Keeps `depth` requests of `req-kib` KiB in flight (default 16 x 64 KiB:
//! enough to fill a window of 64 frames at any MTU), moving `mib` MiB from
//! the start of the disk. Prints one line: `mbps=`, `client_cpu_s=` and
//! `client_cpu_s_per_gb=` (this process's user+system time from /proc over
//! the transfer), and
//! `target_cpu_s_per_gb=` of `--target-pid` when given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, Bytes, WriteFlags};
use initiator_aoe::{AoeDevice, Settings};

/// utime + stime of `pid` (or this process) in seconds, from /proc.
fn cpu_s(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

fn usage() -> ! {
    eprintln!("usage: aoe-seq --iface IF [--iface IF ...] --shelf N --slot N --mode read|write [--mib N] [--req-kib N] [--depth N] [--target-pid PID]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (mut ifs, mut shelf, mut slot, mut write) = (Vec::new(), None, None, None);
    let (mut mib, mut req_kib, mut depth, mut target) = (256u64, 64u64, 16usize, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--iface" => ifs.push(v()),
            "--shelf" => shelf = v().parse().ok(),
            "--slot" => slot = v().parse().ok(),
            "--mode" => write = Some(v() == "write"),
            "--mib" => mib = v().parse().unwrap_or_else(|_| usage()),
            "--req-kib" => req_kib = v().parse().unwrap_or_else(|_| usage()),
            "--depth" => depth = v().parse().unwrap_or_else(|_| usage()),
            "--target-pid" => target = v().parse().ok(),
            _ => usage(),
        }
    }
    let (Some(shelf), Some(slot), Some(write)) = (shelf, slot, write) else {
        usage()
    };
    let d = AoeDevice::open(
        &ifs,
        shelf,
        slot,
        Settings::default(),
        Duration::from_secs(3),
    )
    .await
    .unwrap_or_else(|e| {
        eprintln!("aoe-seq: {e}");
        std::process::exit(1)
    });
    let d = Arc::new(d);
    let sectors = (req_kib * 2) as u32;
    let reqs = mib * 1024 / req_kib;
    let data = Bytes::from(vec![0x5a; (req_kib * 1024) as usize]);
    let (t_cpu, c_cpu) = (cpu_s(target), cpu_s(None));
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut jobs = Vec::new();
    for _ in 0..depth {
        let (d, next, data) = (d.clone(), next.clone(), data.clone());
        jobs.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= reqs {
                    return;
                }
                let lba = k * u64::from(sectors);
                let r = if write {
                    d.write(lba, data.clone(), WriteFlags::NONE).await
                } else {
                    d.read(lba, sectors).await.map(|_| ())
                };
                if let Err(e) = r {
                    eprintln!("aoe-seq: {e}");
                    std::process::exit(1);
                }
            }
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    if write {
        d.flush().await.expect("flush");
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (reqs * req_kib * 1024) as f64;
    let gb = bytes / 1e9;
    let mut line = format!(
        "mbps={:.1} client_cpu_s={:.2} client_cpu_s_per_gb={:.3}",
        bytes / 1e6 / secs,
        cpu_s(None) - c_cpu,
        (cpu_s(None) - c_cpu) / gb
    );
    if target.is_some() {
        line += &format!(" target_cpu_s_per_gb={:.3}", (cpu_s(target) - t_cpu) / gb);
    }
    println!("{line}");
}
