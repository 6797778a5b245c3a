//! `opie initiator perf`: throughput of the initiator at a queue depth,
//! for a time: 4 KiB random and 128 KiB sequential reads (and writes, when
//! allowed), through an [`IscsiDevice`] (an opie disk), over two or more
//! portals through a round-robin [`MultipathDevice`] of [`IscsiPath`]s
//! reporting each path's share, or, for another vendor's LUN (which an
//! `IscsiDevice` refuses: no opie identity), READ(16)/WRITE(16) straight
//! on the session. Reports I/Os per second, MB/s, and the process's CPU
//! time (getrusage: user + system) per I/O.

use crate::output::{out, outln};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blockdev::{Bytes, SharedDevice, WriteFlags};
use clap::{Args, ValueEnum};
use initiator_iscsi::disk_commands as cdb;
use initiator_iscsi::{
    Command, FailoverConfig, IscsiDevice, IscsiPath, PipelineConfig, PipelinedSession,
    ReinstateConfig,
};
use multipath::{MultipathDevice, Path, SelectorKind};
use rand::Rng;
use serde::Serialize;

use super::error::CliError;
use super::lun::{run, Login};
use super::portal::{login_config, Portal};

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 4 KiB reads at random aligned offsets.
    #[value(name = "read-4k-rand")]
    Read4kRand,
    /// 128 KiB reads in order, wrapping at the end.
    #[value(name = "read-128k-seq")]
    Read128kSeq,
    /// 4 KiB writes at random aligned offsets (needs --allow-writes).
    #[value(name = "write-4k-rand")]
    Write4kRand,
    /// 128 KiB writes in order (needs --allow-writes).
    #[value(name = "write-128k-seq")]
    Write128kSeq,
}

impl Workload {
    fn bytes(self) -> u32 {
        match self {
            Workload::Read4kRand | Workload::Write4kRand => 4096,
            Workload::Read128kSeq | Workload::Write128kSeq => 128 * 1024,
        }
    }
    fn random(self) -> bool {
        matches!(self, Workload::Read4kRand | Workload::Write4kRand)
    }
    fn write(self) -> bool {
        matches!(self, Workload::Write4kRand | Workload::Write128kSeq)
    }
    fn name(self) -> &'static str {
        match self {
            Workload::Read4kRand => "read-4k-rand",
            Workload::Read128kSeq => "read-128k-seq",
            Workload::Write4kRand => "write-4k-rand",
            Workload::Write128kSeq => "write-128k-seq",
        }
    }
}

/// `perf`.
#[derive(Debug, Args)]
pub struct PerfArgs {
    #[command(flatten)]
    pub(super) common: super::Common,
    /// The target name.
    #[arg(short, long, value_name = "IQN")]
    target: String,
    /// The LUN.
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// Workloads, run one after the other (repeatable).
    #[arg(short, long = "workload", value_enum, default_values_t = [Workload::Read4kRand, Workload::Read128kSeq])]
    workloads: Vec<Workload>,
    /// Seconds per workload.
    #[arg(short, long, default_value_t = 10.0)]
    seconds: f64,
    /// I/Os in flight.
    #[arg(long, default_value_t = 32)]
    qd: u32,
    /// Allow the write workloads (they overwrite the LUN).
    #[arg(long)]
    allow_writes: bool,
}

/// Where the I/O goes.
enum Target {
    /// An opie disk: a device, and the multipath device when several paths.
    Device(SharedDevice, Option<Arc<MultipathDevice>>),
    /// Another vendor's LUN: commands on the session.
    Raw {
        session: Arc<PipelinedSession>,
        lun: u64,
        block_size: u32,
        num_blocks: u64,
    },
}

impl Target {
    fn geometry(&self) -> (u32, u64) {
        match self {
            Target::Device(d, _) => (d.geometry().block_size, d.geometry().num_blocks),
            Target::Raw {
                block_size,
                num_blocks,
                ..
            } => (*block_size, *num_blocks),
        }
    }

    async fn io(&self, lba: u64, blocks: u32, write: Option<Bytes>) -> Result<(), String> {
        match self {
            Target::Device(d, _) => match write {
                Some(data) => d.write(lba, data, WriteFlags::NONE).await,
                None => d.read(lba, blocks).await.map(drop),
            }
            .map_err(|e| e.to_string()),
            Target::Raw {
                session,
                lun,
                block_size,
                ..
            } => {
                let cmd = match write {
                    Some(data) => Command::write(*lun, &cdb::write16(lba, blocks, false), data),
                    None => Command::read(*lun, &cdb::read16(lba, blocks), blocks * block_size),
                };
                run(session, cmd).await.map(drop)
            }
        }
    }
}

/// One path's part of a run.
#[derive(Debug, Serialize)]
pub struct PathShare {
    /// Its portal.
    pub portal: String,
    /// I/Os it completed.
    pub completed: u64,
    /// Its share of all I/Os, 0..1.
    pub share: f64,
}

/// What one workload measured.
#[derive(Debug, Serialize)]
pub struct Measure {
    /// The workload and queue depth, e.g. `read-4k-rand-qd32`.
    pub workload: String,
    /// Seconds measured.
    pub seconds: f64,
    /// I/Os completed.
    pub ios: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_s: f64,
    /// CPU seconds of this process (user + system).
    pub cpu_s: f64,
    /// CPU microseconds per I/O.
    pub cpu_us_per_io: f64,
    /// Minor page faults of this process per I/O: buffers the allocator
    /// handed back to the kernel and takes anew, zeroed, for each I/O.
    pub page_faults_per_io: f64,
    /// Latency of one I/O (issue to completion), median, microseconds.
    pub lat_p50_us: f64,
    /// Latency, 99th percentile, microseconds.
    pub lat_p99_us: f64,
    /// Latency, the slowest I/O, microseconds.
    pub lat_max_us: f64,
    /// The first error, which ended the run.
    pub error: Option<String>,
    /// Each path's share, over several portals.
    pub paths: Vec<PathShare>,
}

/// What `perf` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The target.
    pub target: String,
    /// The LUN.
    pub lun: u64,
    /// `iscsi-device`, `multipath` or `session`.
    pub via: &'static str,
    /// One entry per workload.
    pub results: Vec<Measure>,
}

/// This process's CPU time (user + system) and minor page faults so far.
fn usage() -> (Duration, u64) {
    // SAFETY: getrusage writes into a valid, zeroed rusage struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_minflt as u64)
}

/// Opens the LUN through each portal.
async fn open(a: &PerfArgs, portals: &[Portal], login: &Login) -> Result<Target, CliError> {
    let fail = |p: &Portal, source| CliError::Portal {
        portal: p.name.clone(),
        target: Some(a.target.clone()),
        source,
    };
    let failover = if portals.len() > 1 {
        FailoverConfig::multipath()
    } else {
        FailoverConfig::default()
    };
    let mut devices = Vec::new();
    for p in portals {
        let cfg = PipelineConfig {
            queue_depth: a.qd,
            ..PipelineConfig::default()
        };
        let lc = login_config(&login.initiator, Some(&a.target), &login.auth);
        let s = PipelinedSession::connect_failover(
            p.addr,
            lc,
            cfg,
            ReinstateConfig::default(),
            failover,
        )
        .await
        .map_err(|e| fail(p, e))?;
        match IscsiDevice::open(s, a.lun).await {
            Ok(d) => devices.push(d),
            Err(e) if portals.len() == 1 => {
                tracing::info!(error = %e, "not an opie disk: commands on the session");
                let session = login.session(p, &a.target, a.qd).await?;
                let r = run(&session, Command::read(a.lun, &cdb::read_capacity16(), 32))
                    .await
                    .ok()
                    .and_then(|r| cdb::parse_capacity(&r.data));
                let c = r.ok_or_else(|| CliError::Device {
                    portal: p.name.clone(),
                    target: a.target.clone(),
                    lun: a.lun,
                    what: format!("not a disk that can be read: {e}"),
                })?;
                return Ok(Target::Raw {
                    session: Arc::new(session),
                    lun: a.lun,
                    block_size: c.block_size,
                    num_blocks: c.num_blocks,
                });
            }
            Err(e) => {
                return Err(CliError::Device {
                    portal: p.name.clone(),
                    target: a.target.clone(),
                    lun: a.lun,
                    what: format!("cannot be opened as an opie disk (multipath needs one): {e}"),
                })
            }
        }
    }
    if devices.len() == 1 {
        let d: SharedDevice = Arc::new(devices.pop().expect("one"));
        return Ok(Target::Device(d, None));
    }
    let paths: Vec<Arc<dyn Path>> = devices
        .into_iter()
        .map(|d| Arc::new(IscsiPath::new(d)) as Arc<dyn Path>)
        .collect();
    let config = multipath::Config {
        selector: SelectorKind::RoundRobin,
        ..multipath::Config::default()
    };
    let mp = Arc::new(
        MultipathDevice::new(paths, config).map_err(|e| CliError::Device {
            portal: portals[0].name.clone(),
            target: a.target.clone(),
            lun: a.lun,
            what: format!("the portals do not reach one disk: {e}"),
        })?,
    );
    Ok(Target::Device(mp.clone(), Some(mp)))
}

/// Runs one workload for `secs` at queue depth `qd`.
async fn measure(t: &Arc<Target>, w: Workload, secs: f64, qd: u32, portals: &[Portal]) -> Measure {
    let (block_size, num_blocks) = t.geometry();
    let blocks = (w.bytes() / block_size).max(1);
    let slots = (num_blocks / u64::from(blocks)).max(1);
    let before: Vec<u64> = match &**t {
        Target::Device(_, Some(mp)) => mp.paths().iter().map(|p| p.stats.completed).collect(),
        _ => Vec::new(),
    };
    let data = w
        .write()
        .then(|| Bytes::from(vec![0xa5u8; (blocks * block_size) as usize]));
    let ios = Arc::new(AtomicU64::new(0));
    let cursor = Arc::new(AtomicU64::new(0));
    let error: Arc<Mutex<Option<String>>> = Arc::default();
    let ((cpu0, faults0), t0) = (usage(), Instant::now());
    let end = t0 + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..qd.max(1))
        .map(|_| {
            let (t, ios, cursor, error, data) = (
                t.clone(),
                ios.clone(),
                cursor.clone(),
                error.clone(),
                data.clone(),
            );
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let issued = Instant::now();
                    if issued >= end {
                        break;
                    }
                    let slot = if w.random() {
                        rand::thread_rng().gen_range(0..slots)
                    } else {
                        cursor.fetch_add(1, Ordering::Relaxed) % slots
                    };
                    if let Err(e) = t.io(slot * u64::from(blocks), blocks, data.clone()).await {
                        error.lock().expect("not poisoned").get_or_insert(e);
                        break;
                    }
                    lat.push(issued.elapsed());
                    ios.fetch_add(1, Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for h in workers {
        if let Ok(l) = h.await {
            lat.extend(l);
        }
    }
    lat.sort_unstable();
    let us = |q: f64| percentile(&lat, q).as_secs_f64() * 1e6;
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, faults1) = usage();
    let cpu = (cpu1 - cpu0).as_secs_f64();
    let n = ios.load(Ordering::Relaxed);
    let per_io = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
    let paths = match &**t {
        Target::Device(_, Some(mp)) => {
            let done: Vec<u64> = mp
                .paths()
                .iter()
                .zip(&before)
                .map(|(p, b)| p.stats.completed - b)
                .collect();
            let total = done.iter().sum::<u64>().max(1) as f64;
            done.iter()
                .zip(portals)
                .map(|(&c, p)| PathShare {
                    portal: p.name.clone(),
                    completed: c,
                    share: c as f64 / total,
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let error = error.lock().expect("not poisoned").take();
    Measure {
        workload: format!("{}-qd{qd}", w.name()),
        seconds: elapsed,
        ios: n,
        iops: n as f64 / elapsed,
        mb_s: n as f64 * f64::from(blocks * block_size) / elapsed / 1e6,
        cpu_s: cpu,
        cpu_us_per_io: per_io(cpu * 1e6),
        page_faults_per_io: per_io((faults1 - faults0) as f64),
        lat_p50_us: us(0.5),
        lat_p99_us: us(0.99),
        lat_max_us: us(1.0),
        error,
        paths,
    }
}

/// The `q` quantile (0..=1) of `sorted` by the nearest rank: the smallest
/// value with at least `q` of the values at or below it; zero when empty.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `perf`.
pub async fn perf(a: &PerfArgs) -> Result<Report, CliError> {
    if !a.allow_writes && a.workloads.iter().any(|w| w.write()) {
        return Err(CliError::Usage(
            "a write workload overwrites the LUN: add --allow-writes".into(),
        ));
    }
    if !a.seconds.is_finite() || a.seconds <= 0.0 {
        return Err(CliError::Usage("--seconds must be above 0".into()));
    }
    let (portals, login) = (a.common.portals()?, a.common.login()?);
    let target = Arc::new(open(a, &portals, &login).await?);
    let via = match &*target {
        Target::Device(_, Some(_)) => "multipath",
        Target::Device(_, None) => "iscsi-device",
        Target::Raw { .. } => "session",
    };
    let mut results = Vec::new();
    for &w in &a.workloads {
        results.push(measure(&target, w, a.seconds, a.qd, &portals).await);
    }
    Ok(Report {
        target: a.target.clone(),
        lun: a.lun,
        via,
        results,
    })
}

/// The text form: one line per workload.
pub fn print(r: &Report) {
    for m in &r.results {
        out!(
            "{} {:.0} IOPS {:.1} MB/s latency p50 {:.0} us p99 {:.0} us max {:.0} us, cpu {:.1} us/io, {:.1} page faults/io ({} I/Os in {:.1} s via {})",
            m.workload,
            m.iops,
            m.mb_s,
            m.lat_p50_us,
            m.lat_p99_us,
            m.lat_max_us,
            m.cpu_us_per_io,
            m.page_faults_per_io,
            m.ios,
            m.seconds,
            r.via
        );
        for p in &m.paths {
            out!(" {} {:.1}%", p.portal, p.share * 100.0);
        }
        outln!();
        if let Some(e) = &m.error {
            outln!("  stopped by an error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;
    use std::time::Duration;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_micros(100));
        assert_eq!(percentile(&v, 0.0), Duration::from_micros(1));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }
}
