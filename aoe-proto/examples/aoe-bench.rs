//! Windowed AoE benchmark client built on the aoe-proto codec and its test client.
//!
//! Like the Linux `aoe` driver it discovers the target with a Query Config,
//! keeps as many frames in flight as the target's buffer count allows (capped
//! at 64, as the driver does), puts min(advertised, MTU) sectors in each frame,
//! and retransmits a frame with a new tag when it times out. It reads or writes
//! `--mib` MiB sequentially and prints one line of results:
//! `mode=read mib=256 secs=.. mbps=.. target_cpu_s=.. client_cpu_s=.. retransmits=..`
//!
//! ```text
//! aoe-bench --iface IF --shelf N --slot M --mode read|write [--mib 256] [--target-pid PID]
//! aoe-bench --iface IF --shelf N --slot M --mode reserve|release --as MAC
//! ```
//! `--mode reserve` makes MAC (any address, e.g. another host's) the target's
//! reservation holder by sending Reserve/Release "set" from that source
//! address, then checks with a Reserve read from this interface's own MAC.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aoe_proto::ata;
use aoe_proto::client;
use aoe_proto::frame::{
    pad_min, AtaArg, Command, ConfigArg, ConfigCommand, Frame, Mac, AFLAG_EXTENDED, AFLAG_WRITE,
    FLAG_ERROR,
};
use aoe_proto::rawsock::{RawSocket, RecvBatch};

fn usage() -> ! {
    eprintln!("usage: aoe-bench --iface IF --shelf N --slot M --mode read|write [--mib N] [--target-pid PID]");
    std::process::exit(2)
}

/// User+system CPU seconds of a process (all threads).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn self_cpu() -> f64 {
    cpu_secs(std::process::id())
}

struct Inflight {
    lba: u64,
    sent: Instant,
}

fn main() {
    let (mut iface, mut shelf, mut slot, mut mode, mut mib, mut pid) =
        (String::new(), 0u16, 0u8, String::new(), 256u64, 0u32);
    let mut holder: Option<Mac> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--iface" => iface = v(),
            "--shelf" => shelf = v().parse().unwrap_or_else(|_| usage()),
            "--slot" => slot = v().parse().unwrap_or_else(|_| usage()),
            "--mode" => mode = v(),
            "--mib" => mib = v().parse().unwrap_or_else(|_| usage()),
            "--target-pid" => pid = v().parse().unwrap_or_else(|_| usage()),
            "--as" => holder = Some(v().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if mode == "reserve" || mode == "release" {
        let holder = holder.unwrap_or_else(|| usage());
        let list = if mode == "reserve" {
            vec![holder]
        } else {
            vec![]
        };
        std::process::exit(reserve(&iface, shelf, slot, holder, list));
    }
    let write = match mode.as_str() {
        "read" => false,
        "write" => true,
        _ => usage(),
    };
    let sock = RawSocket::open(&iface, 16 << 20, Duration::from_millis(5)).expect("open interface");
    let me = sock.mac();
    let mut batch = RecvBatch::new(128, sock.mtu());

    // Discover: Query Config read to the target's address.
    let (target, bufcnt, maxs) = {
        let mut found = None;
        for attempt in 0..50u32 {
            let f = client::request(
                Mac::BROADCAST,
                me,
                shelf,
                slot,
                Command::QueryConfig,
                attempt + 1,
                &client::config_arg(ConfigCommand::Read, b""),
                &[],
            );
            sock.send(&f).expect("send");
            let end = Instant::now() + Duration::from_millis(200);
            while found.is_none() && Instant::now() < end {
                sock.recv_batch(&mut batch).expect("recv");
                for b in batch.frames() {
                    if let Ok(fr) = Frame::decode(b) {
                        if fr.header.is_response()
                            && fr.header.shelf == shelf
                            && fr.header.slot == slot
                            && fr.header.flags & FLAG_ERROR == 0
                        {
                            if let Ok(c) = ConfigArg::decode(fr.payload) {
                                found = Some((fr.src, c.buffer_count, c.max_sectors));
                            }
                        }
                    }
                }
            }
            if found.is_some() {
                break;
            }
        }
        found.unwrap_or_else(|| {
            eprintln!("aoe-bench: no target e{shelf}.{slot} on {iface}");
            std::process::exit(1)
        })
    };
    let own_max = ((sock.mtu() - 22) / 512) as u8;
    let sectors = maxs.min(own_max).max(1);
    let window = usize::from(bufcnt).clamp(1, 64);
    let total_sectors = (mib << 20) / 512;
    let frame_bytes = usize::from(sectors) * 512;
    let payload: Vec<u8> = (0..frame_bytes).map(|i| (i * 7 + 3) as u8).collect();
    eprintln!("aoe-bench: target {target} e{shelf}.{slot} bufcnt {bufcnt} window {window} sectors/frame {sectors} mode {mode}");

    // A request's headers go into `head` (reused); a write's data is the
    // shared `payload`, sent as the frame's second part without a copy.
    let mut arg = Vec::with_capacity(16);
    let mut build = |head: &mut Vec<u8>, tag: u32, lba: u64, n: u8| {
        let mut a = AtaArg {
            aflags: AFLAG_EXTENDED | if write { AFLAG_WRITE } else { 0 },
            sector_count: n,
            cmd_status: if write {
                ata::CMD_WRITE_EXT
            } else {
                ata::CMD_READ_EXT
            },
            ..AtaArg::default()
        };
        a.set_lba(lba);
        arg.clear();
        a.encode(&mut arg);
        client::request_head(head, target, me, shelf, slot, Command::Ata, tag, &arg);
        if !write {
            pad_min(head);
        }
    };

    let cpu0 = if pid != 0 { cpu_secs(pid) } else { 0.0 };
    let my0 = self_cpu();
    let start = Instant::now();
    let mut next_lba = 0u64;
    let mut done_sectors = 0u64;
    let mut tag = 0x100u32;
    let mut inflight: HashMap<u32, Inflight> = HashMap::new();
    let mut retransmits = 0u64;
    let mut rto = Duration::from_millis(50);
    // Request headers of this round (`heads[..nout]`) and their data lengths.
    let mut heads: Vec<Vec<u8>> = Vec::new();
    let mut lens: Vec<usize> = Vec::new();
    let mut last_scan = Instant::now();
    while done_sectors < total_sectors {
        let mut nout = 0;
        let mut queue = |heads: &mut Vec<Vec<u8>>, lens: &mut Vec<usize>, tag, lba, n: u8| {
            if heads.len() == nout {
                heads.push(Vec::with_capacity(64));
                lens.push(0);
            }
            build(&mut heads[nout], tag, lba, n);
            lens[nout] = if write { usize::from(n) * 512 } else { 0 };
            nout += 1;
        };
        // Fill the window.
        while inflight.len() < window && next_lba < total_sectors {
            let n = (total_sectors - next_lba).min(u64::from(sectors)) as u8;
            tag = (tag + 1) & 0x7fff_ffff;
            queue(&mut heads, &mut lens, tag, next_lba, n);
            inflight.insert(
                tag,
                Inflight {
                    lba: next_lba,
                    sent: Instant::now(),
                },
            );
            next_lba += u64::from(n);
        }
        // Retransmit what timed out, with new tags (looked for every 5 ms).
        let now = Instant::now();
        if now.duration_since(last_scan) >= Duration::from_millis(5) {
            last_scan = now;
            let late: Vec<u32> = inflight
                .iter()
                .filter(|(_, f)| now.duration_since(f.sent) > rto)
                .map(|(t, _)| *t)
                .collect();
            if !late.is_empty() {
                rto = (rto * 2).min(Duration::from_secs(2));
            }
            for t in late {
                if let Some(f) = inflight.remove(&t) {
                    let n = (total_sectors - f.lba).min(u64::from(sectors)) as u8;
                    tag = (tag + 1) & 0x7fff_ffff;
                    queue(&mut heads, &mut lens, tag, f.lba, n);
                    inflight.insert(
                        tag,
                        Inflight {
                            lba: f.lba,
                            sent: now,
                        },
                    );
                    retransmits += 1;
                }
            }
        }
        if nout > 0 {
            sock.send_batch(
                heads[..nout]
                    .iter()
                    .zip(&lens)
                    .map(|(h, &len)| [&h[..], &payload[..len]]),
            )
            .expect("send");
        }
        sock.recv_batch(&mut batch).expect("recv");
        for b in batch.frames() {
            let Ok(fr) = Frame::decode(b) else { continue };
            if !fr.header.is_response() || fr.src != target {
                continue;
            }
            let Some(f) = inflight.remove(&fr.header.tag) else {
                continue;
            };
            if fr.header.flags & FLAG_ERROR != 0 {
                eprintln!("aoe-bench: AoE error {} at lba {}", fr.header.error, f.lba);
                std::process::exit(1);
            }
            let Ok((a, data)) = AtaArg::decode(fr.payload) else {
                continue;
            };
            if a.cmd_status & (ata::STATUS_ERR | ata::STATUS_DF) != 0 {
                eprintln!(
                    "aoe-bench: ATA status {:#x} error {:#x} at lba {}",
                    a.cmd_status, a.err_feature, f.lba
                );
                std::process::exit(1);
            }
            let n = (total_sectors - f.lba).min(u64::from(sectors));
            if !write && data.len() < n as usize * 512 {
                eprintln!("aoe-bench: short read reply at lba {}", f.lba);
                std::process::exit(1);
            }
            done_sectors += n;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let tcpu = if pid != 0 { cpu_secs(pid) - cpu0 } else { 0.0 };
    let ccpu = self_cpu() - my0;
    let mb = (total_sectors * 512) as f64 / 1e6;
    println!(
        "mode={mode} mib={mib} secs={secs:.3} mbps={:.1} target_cpu_s={tcpu:.3} target_cpu_s_per_gb={:.3} client_cpu_s={ccpu:.3} window={window} sectors={sectors} retransmits={retransmits}",
        mb / secs,
        tcpu / (mb / 1000.0)
    );
}

/// Sets the reservation list of e`shelf`.`slot` to `list`, speaking as
/// `holder` (the current holder, or anyone when free); 0 on success.
fn reserve(iface: &str, shelf: u16, slot: u8, holder: Mac, list: Vec<Mac>) -> i32 {
    use aoe_proto::frame::{ReserveArg, RESERVE_READ, RESERVE_SET};
    let mut c = client::Client::open(iface).expect("open interface");
    let set = client::reserve_arg(&ReserveArg {
        rcmd: RESERVE_SET,
        macs: list.clone(),
    });
    let read = client::reserve_arg(&ReserveArg {
        rcmd: RESERVE_READ,
        macs: vec![],
    });
    for _ in 0..50 {
        let tag = c.tag();
        let f = client::request(
            Mac::BROADCAST,
            holder,
            shelf,
            slot,
            Command::ReserveRelease,
            tag,
            &set,
            &[],
        );
        c.send_raw(&f).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        let r = c
            .call(
                Mac::BROADCAST,
                shelf,
                slot,
                Command::ReserveRelease,
                &read,
                &[],
                Duration::from_millis(300),
            )
            .expect("recv");
        if let Some(r) = r {
            let f = r.frame();
            if let Ok(a) = ReserveArg::decode(f.payload) {
                if a.macs == list {
                    eprintln!("aoe-bench: e{shelf}.{slot} reservation list now {list:?}");
                    return 0;
                }
            }
        }
    }
    eprintln!("aoe-bench: could not set the reservation of e{shelf}.{slot} to {list:?}");
    1
}
