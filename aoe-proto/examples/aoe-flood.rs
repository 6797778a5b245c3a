//! AoE config-flood benchmark client, built on the aoe-proto codec and its test client.
//!
//! Floods one target with Query Config force-sets and then MAC mask list
//! add/delete toggles, sent as fast as a raw socket can (`sendmmsg` batches
//! from a thread of its own), while a reader on the same interface keeps
//! reading and records each read's latency, from its first transmission to
//! its reply (reads are retransmitted with a new tag after `--rto-ms`, as the
//! Linux driver does, at most `--window` in flight, one issued every
//! `--read-every-us`). It also samples the target's resident set size.
//!
//! Before the flood the reader puts its own MAC on the target's mask list, so
//! the toggles (of another address) never mask it out. After the flood it
//! sends one last force-set and one last mask delete and waits for both
//! replies ("settled": every change of the flood has been applied and
//! persisted), reads on for `--tail-ms`, then waits for its outstanding reads
//! (up to `--drain-secs`; a read never answered counts as infinitely slow).
//! The measured reads are those issued from the flood's start to the end of
//! the tail. Prints one line:
//! `reads=.. p50_ms=.. p99_ms=.. max_ms=.. lost=.. quiet_p99_ms=.. ...`
//!
//! ```text
//! aoe-flood --iface IF --shelf N --slot M [--config-sets 20000] [--mask-toggles 20000]
//!           [--string-len 1024] [--target-pid PID] [--sectors 131072]
//!           [--read-every-us 1000] [--window 16] [--rto-ms 200] [--tail-ms 500] [--drain-secs 120]
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use aoe_proto::ata;
use aoe_proto::client::{self, Client};
use aoe_proto::frame::{
    AtaArg, Command, ConfigArg, ConfigCommand, Directive, Mac, MaskArg, AFLAG_EXTENDED,
    DIRECTIVE_ADD, DIRECTIVE_DELETE, FLAG_ERROR, MASK_EDIT,
};
use aoe_proto::rawsock::RawSocket;

/// The address the mask list toggles add and delete (nobody's).
const TOGGLED: Mac = Mac([0x02, 0, 0, 0, 0x5a, 0x5a]);
/// Tag spaces (bit 31 stays clear, as the driver expects of targets' echoes).
const TAG_READ: u32 = 0x1000_0000;
const TAG_FLOOD: u32 = 0x2000_0000;
const TAG_FINAL: u32 = 0x3000_0000;
const TAG_SPACE: u32 = 0xf000_0000;
/// The last force-set's string prefix.
const FINAL: &str = "flood-final";

struct Args {
    iface: String,
    shelf: u16,
    slot: u8,
    config_sets: u32,
    mask_toggles: u32,
    string_len: usize,
    pid: u32,
    sectors: u64,
    read_every: Duration,
    window: usize,
    rto: Duration,
    tail: Duration,
    drain: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: aoe-flood --iface IF --shelf N --slot M [--config-sets N] [--mask-toggles N] \
         [--string-len N] [--target-pid PID] [--sectors N] [--read-every-us N] [--window N] \
         [--rto-ms N] [--tail-ms N] [--drain-secs N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        iface: String::new(),
        shelf: 0,
        slot: 0,
        config_sets: 20_000,
        mask_toggles: 20_000,
        string_len: 1024,
        pid: 0,
        sectors: 131_072,
        read_every: Duration::from_millis(1),
        window: 16,
        rto: Duration::from_millis(200),
        tail: Duration::from_millis(500),
        drain: Duration::from_secs(120),
    };
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        let num = |v: &str| v.parse::<u64>().unwrap_or_else(|_| usage());
        match k.as_str() {
            "--iface" => a.iface = v,
            "--shelf" => a.shelf = v.parse().unwrap_or_else(|_| usage()),
            "--slot" => a.slot = v.parse().unwrap_or_else(|_| usage()),
            "--config-sets" => a.config_sets = v.parse().unwrap_or_else(|_| usage()),
            "--mask-toggles" => a.mask_toggles = v.parse().unwrap_or_else(|_| usage()),
            "--string-len" => a.string_len = (num(&v) as usize).clamp(FINAL.len(), 1024),
            "--target-pid" => a.pid = v.parse().unwrap_or_else(|_| usage()),
            "--sectors" => a.sectors = num(&v),
            "--read-every-us" => a.read_every = Duration::from_micros(num(&v)),
            "--window" => a.window = num(&v).max(1) as usize,
            "--rto-ms" => a.rto = Duration::from_millis(num(&v)),
            "--tail-ms" => a.tail = Duration::from_millis(num(&v)),
            "--drain-secs" => a.drain = Duration::from_secs(num(&v)),
            _ => usage(),
        }
    }
    if a.iface.is_empty() || a.sectors < 4 {
        usage()
    }
    a
}

/// VmRSS of a process in KiB (0 when unknown).
fn rss_kib(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A config string of `len` bytes that names its sequence number.
fn config_string(prefix: &str, n: u32, len: usize) -> Vec<u8> {
    let mut s = format!("{prefix}-{n:06}-").into_bytes();
    s.resize(len.max(s.len()), b'.');
    s
}

fn mask_edit(dcmd: u8, mac: Mac) -> Vec<u8> {
    client::mask_arg(&MaskArg {
        mcmd: MASK_EDIT,
        merror: 0,
        directives: vec![Directive { dcmd, mac }],
    })
}

fn read_arg(lba: u64) -> Vec<u8> {
    let mut a = AtaArg {
        aflags: AFLAG_EXTENDED,
        sector_count: 1,
        cmd_status: ata::CMD_READ_EXT,
        ..AtaArg::default()
    };
    a.set_lba(lba);
    client::ata_arg(&a)
}

/// When each phase of the flood started and ended.
struct FloodTimes {
    start: Instant,
    config_end: Instant,
    end: Instant,
}

/// Sends the flood: `config_sets` force-sets, then `mask_toggles` mask edits
/// alternating add and delete of [`TOGGLED`], in `sendmmsg` batches.
fn flood(a: &Args, target: Mac) -> FloodTimes {
    let sock = RawSocket::open_without_ring(&a.iface, 1 << 16, Duration::from_millis(1))
        .expect("open flood socket");
    let me = sock.mac();
    const BATCH: u32 = 256;
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(BATCH as usize);
    let send = |frames: &mut Vec<Vec<u8>>| {
        sock.send_batch(frames.iter().map(|f| [&f[..], &[][..]]))
            .expect("send flood");
        frames.clear();
    };
    let start = Instant::now();
    for n in 0..a.config_sets {
        let arg = client::config_arg(
            ConfigCommand::ForceSet,
            &config_string("flood", n, a.string_len),
        );
        frames.push(client::request(
            target,
            me,
            a.shelf,
            a.slot,
            Command::QueryConfig,
            TAG_FLOOD | (n & 0x0fff_ffff),
            &arg,
            &[],
        ));
        if frames.len() == BATCH as usize {
            send(&mut frames);
        }
    }
    send(&mut frames);
    let config_end = Instant::now();
    for n in 0..a.mask_toggles {
        let dcmd = if n % 2 == 0 {
            DIRECTIVE_ADD
        } else {
            DIRECTIVE_DELETE
        };
        frames.push(client::request(
            target,
            me,
            a.shelf,
            a.slot,
            Command::MacMask,
            TAG_FLOOD | ((a.config_sets + n) & 0x0fff_ffff),
            &mask_edit(dcmd, TOGGLED),
            &[],
        ));
        if frames.len() == BATCH as usize {
            send(&mut frames);
        }
    }
    send(&mut frames);
    FloodTimes {
        start,
        config_end,
        end: Instant::now(),
    }
}

/// Sends `arg` until a reply with no error comes (each try a new tag);
/// gives the reply's payload.
fn call_until_ok(c: &mut Client, target: Mac, a: &Args, cmd: Command, arg: &[u8]) -> Vec<u8> {
    for _ in 0..100 {
        let r = c
            .call(
                target,
                a.shelf,
                a.slot,
                cmd,
                arg,
                &[],
                Duration::from_millis(300),
            )
            .expect("call");
        if let Some(r) = r {
            let f = r.frame();
            if f.header.flags & FLAG_ERROR == 0 {
                return f.payload.to_vec();
            }
            eprintln!(
                "aoe-flood: {cmd:?} answered with AoE error {}",
                f.header.error
            );
        }
    }
    eprintln!(
        "aoe-flood: no answer to {cmd:?} from e{}.{}",
        a.shelf, a.slot
    );
    std::process::exit(1)
}

/// One read in flight.
struct Pending {
    first: Instant,
    last: Instant,
    lba: u64,
}

/// A final change of the settle step, sent until answered.
struct FinalOp {
    cmd: Command,
    arg: Vec<u8>,
    tag: u32,
    sent: Instant,
    done: bool,
}

#[derive(Default)]
struct Counts {
    config_ok: u64,
    config_err: u64,
    mask_ok: u64,
    mask_err: u64,
    retransmits: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "inf".into()
    }
}

fn main() {
    let a = Arc::new(parse_args());
    let mut c =
        Client::open_with_timeout(&a.iface, Duration::from_millis(1)).expect("open reader socket");
    let me = c.mac();
    // Discover the target's MAC.
    let mut target = None;
    for _ in 0..50 {
        let r = c
            .call(
                Mac::BROADCAST,
                a.shelf,
                a.slot,
                Command::QueryConfig,
                &client::config_arg(ConfigCommand::Read, b""),
                &[],
                Duration::from_millis(200),
            )
            .expect("discover");
        if let Some(r) = r {
            target = Some(r.frame().src);
            break;
        }
    }
    let Some(target) = target else {
        eprintln!(
            "aoe-flood: no target e{}.{} on {}",
            a.shelf, a.slot, a.iface
        );
        std::process::exit(1)
    };
    // Admit ourselves first, so the toggles of another address never mask us.
    call_until_ok(
        &mut c,
        target,
        &a,
        Command::MacMask,
        &mask_edit(DIRECTIVE_ADD, me),
    );
    eprintln!(
        "aoe-flood: target {target} e{}.{}; {} force-sets of {} bytes, {} mask toggles",
        a.shelf, a.slot, a.config_sets, a.string_len, a.mask_toggles
    );

    // RSS sampler.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let rss_before = rss_kib(a.pid);
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), a.pid);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let t0 = Instant::now();
    let quiet_until = t0 + Duration::from_millis(500);
    let mut flooder: Option<thread::JoinHandle<FloodTimes>> = None;
    let mut times: Option<FloodTimes> = None;
    let mut finals: Vec<FinalOp> = Vec::new();
    let mut settled: Option<Instant> = None;
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    // (issued at, latency in ms) of every answered read.
    let mut done: Vec<(Instant, f64)> = Vec::new();
    let mut lost: Vec<Instant> = Vec::new();
    let mut counts = Counts::default();
    let mut next_tag = 0u32;
    let mut tag = |space: u32| {
        next_tag = (next_tag + 1) & 0x0fff_ffff;
        space | next_tag
    };
    let mut next_read = t0;
    let mut reads_issued = 0u64;
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Start the flood after a quiet half second.
        if flooder.is_none() && times.is_none() && now >= quiet_until {
            let a2 = a.clone();
            flooder = Some(thread::spawn(move || flood(&a2, target)));
        }
        if flooder.as_ref().is_some_and(|h| h.is_finished()) {
            times = Some(flooder.take().unwrap().join().expect("flood thread"));
            // The settle step: one last force-set and mask delete.
            for (cmd, arg) in [
                (
                    Command::QueryConfig,
                    client::config_arg(
                        ConfigCommand::ForceSet,
                        &config_string(FINAL, 0, a.string_len),
                    ),
                ),
                (Command::MacMask, mask_edit(DIRECTIVE_DELETE, TOGGLED)),
            ] {
                finals.push(FinalOp {
                    cmd,
                    arg,
                    tag: 0,
                    sent: now - a.rto * 2,
                    done: false,
                });
            }
        }
        for f in finals.iter_mut().filter(|f| !f.done) {
            if now.duration_since(f.sent) >= a.rto {
                f.tag = tag(TAG_FINAL);
                f.sent = now;
                let req = client::request(target, me, a.shelf, a.slot, f.cmd, f.tag, &f.arg, &[]);
                c.send_raw(&req).expect("send");
            }
        }
        if settled.is_none() && !finals.is_empty() && finals.iter().all(|f| f.done) {
            settled = Some(now);
        }
        let reading = settled.is_none_or(|s| now < s + a.tail);
        if !reading && drain_until.is_none() {
            drain_until = Some(now + a.drain);
        }
        if drain_until.is_some_and(|d| now >= d) || (!reading && pending.is_empty()) {
            break;
        }
        // Issue reads at the set pace, at most `window` in flight.
        let mut out: Vec<Vec<u8>> = Vec::new();
        let read_req = |t: u32, lba: u64| {
            client::request(
                target,
                me,
                a.shelf,
                a.slot,
                Command::Ata,
                t,
                &read_arg(lba),
                &[],
            )
        };
        while reading && now >= next_read && pending.len() < a.window {
            let lba = (reads_issued * 7919) % (a.sectors - 1);
            let t = tag(TAG_READ);
            out.push(read_req(t, lba));
            pending.insert(
                t,
                Pending {
                    first: now,
                    last: now,
                    lba,
                },
            );
            reads_issued += 1;
            next_read += a.read_every;
        }
        if reading && pending.len() >= a.window && now >= next_read {
            // The window is full: the pace resumes when it opens.
            next_read = now;
        }
        // Retransmit late reads with new tags.
        let late: Vec<u32> = pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.last) >= a.rto)
            .map(|(t, _)| *t)
            .collect();
        for old in late {
            let mut p = pending.remove(&old).expect("late read");
            let t = tag(TAG_READ);
            out.push(read_req(t, p.lba));
            p.last = now;
            pending.insert(t, p);
            counts.retransmits += 1;
        }
        if !out.is_empty() {
            c.socket()
                .send_batch(out.iter().map(|f| [&f[..], &[][..]]))
                .expect("send");
        }
        // Take replies for up to 1 ms.
        for r in c.responses(Duration::from_micros(500)).expect("recv") {
            let f = r.frame();
            let h = f.header;
            let error = h.flags & FLAG_ERROR != 0;
            match h.tag & TAG_SPACE {
                TAG_READ => {
                    if let Some(p) = pending.remove(&h.tag) {
                        let ok = !error
                            && AtaArg::decode(f.payload).is_ok_and(|(arg, data)| {
                                arg.cmd_status & ata::STATUS_ERR == 0 && data.len() >= 512
                            });
                        if !ok {
                            eprintln!("aoe-flood: read at lba {} failed", p.lba);
                            std::process::exit(1);
                        }
                        let lat = Instant::now().duration_since(p.first);
                        done.push((p.first, lat.as_secs_f64() * 1e3));
                    }
                }
                TAG_FLOOD => match (h.command, error) {
                    (Command::QueryConfig, false) => counts.config_ok += 1,
                    (Command::QueryConfig, true) => counts.config_err += 1,
                    (_, false) => counts.mask_ok += 1,
                    (_, true) => counts.mask_err += 1,
                },
                TAG_FINAL => {
                    if let Some(op) = finals.iter_mut().find(|o| o.tag == h.tag && !o.done) {
                        if error {
                            eprintln!(
                                "aoe-flood: final {:?} answered with AoE error {}; retrying",
                                op.cmd, h.error
                            );
                        } else {
                            op.done = true;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for p in pending.values() {
        lost.push(p.first);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_before);

    // The final state: the last force-set's string is in effect.
    let payload = call_until_ok(
        &mut c,
        target,
        &a,
        Command::QueryConfig,
        &client::config_arg(ConfigCommand::Read, b""),
    );
    let final_ok = ConfigArg::decode(&payload)
        .is_ok_and(|arg| arg.config == config_string(FINAL, 0, a.string_len));

    let times = times.expect("flood ran");
    let settled = settled.unwrap_or_else(Instant::now);
    let measured_end = settled + a.tail;
    let in_flood = |t: &Instant| *t >= times.start && *t < measured_end;
    let mut lat: Vec<f64> = done
        .iter()
        .filter(|(t, _)| in_flood(t))
        .map(|(_, l)| *l)
        .collect();
    lat.extend(lost.iter().filter(|t| in_flood(t)).map(|_| f64::INFINITY));
    lat.sort_by(f64::total_cmp);
    let mut quiet: Vec<f64> = done
        .iter()
        .filter(|(t, _)| *t < times.start)
        .map(|(_, l)| *l)
        .collect();
    quiet.sort_by(f64::total_cmp);
    let secs = |d: Duration| format!("{:.3}", d.as_secs_f64());
    println!(
        "reads={} p50_ms={} p99_ms={} max_ms={} lost={} quiet_reads={} quiet_p99_ms={} retransmits={} \
         config_send_s={} mask_send_s={} settle_s={} config_replies={} config_errors={} \
         mask_replies={} mask_errors={} rss_before_kib={} rss_peak_kib={} rss_growth_kib={} final_ok={}",
        lat.len(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0.0)),
        lost.len(),
        quiet.len(),
        ms(percentile(&quiet, 0.99)),
        counts.retransmits,
        secs(times.config_end - times.start),
        secs(times.end - times.config_end),
        secs(settled - times.start),
        counts.config_ok,
        counts.config_err,
        counts.mask_ok,
        counts.mask_err,
        rss_before,
        rss_peak,
        rss_peak - rss_before,
        u8::from(final_ok),
    );
}
