//! The AoE server: one receive thread per interface, one I/O worker and one
//! flusher per disk.
//!
//! Receive threads take frames in batches (from the receive ring) and run them through
//! every [`Target`] on the interface. While a disk's worker has nothing queued,
//! the receive thread starts the disk's reads and writes itself and, when the
//! device completes them at once (page-cache hits, buffered writes), answers in
//! the same `sendmmsg` as the batch's other replies: no thread hand-off on the
//! fast path. A durable write's acknowledgement then waits for the disk's
//! flusher, which makes every write done so far durable with one flush (group
//! commit across frames and batches) and only then sends the acknowledgements.
//! A device call that does not complete at once, and everything after it for
//! that disk, goes to the disk's worker, in arrival order.
//!
//! The worker (a tokio task) drains everything queued
//! for its disk, applies it in arrival order while merging contiguous reads and
//! contiguous writes into single device calls (batches that touch disjoint
//! sectors, or only read, run side by side; a batch that overlaps an earlier
//! write, or flushes, waits for it), makes writes durable with one
//! FUA write or one flush per batch, and sends the replies out of the interface
//! each request came in on. Overlapping writes are applied in arrival order
//! because a disk's work is never reordered. Tags are never used to dedupe:
//! the Linux driver retransmits with new tags and repeated writes are harmless.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use aoe_proto::ata::AtaStatus;
use aoe_proto::frame::{Frame, Mac, BROADCAST_SHELF, BROADCAST_SLOT, ETH_HEADER_LEN, SECTOR_SIZE};
use aoe_proto::outcome::AtaOutcome;
use aoe_proto::rawsock::{RawSocket, RecvBatch};
use blockdev::{Bytes, BytesMut, SharedDevice, WriteFlags};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::persister::{self, Saves, StateFiles, Waiter};
use crate::state;
use crate::target::{
    InterfaceInfo, IoOp, IoRequest, Outcome, Reply, StatePart, Target, TargetSettings,
};

/// Frames taken per receive call. Smaller than the initiator's window (64)
/// so its first replies leave while the rest of the window is still being
/// served and the initiator can refill it meanwhile.
const RX_BATCH: usize = 16;
/// How often receive threads look at the stop flag.
const RX_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest merged device read or write.
const MAX_MERGE_BYTES: usize = 4 << 20;
/// Default buffer count advertised in Query Config.
pub const DEFAULT_BUFFER_COUNT: u16 = 64;

/// The `[aoe]` table of `isu.toml`. AoE is off unless `interfaces` names some.
#[derive(Debug, Clone, Deserialize)]
pub struct AoeConfig {
    /// Interfaces to serve on (every disk is served on each of them).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Shelf (major) address of this ISU.
    pub shelf: u16,
    /// Frames each target accepts at once (default 64); sizes the socket buffers.
    pub buffer_count: Option<u16>,
    /// Default MAC mask list for every disk (empty: any initiator).
    #[serde(default)]
    pub mac_mask: Vec<String>,
    /// Acknowledge writes before they are durable. Unsafe on power loss: the
    /// Linux driver never sends FLUSH CACHE.
    #[serde(default)]
    pub write_back: bool,
}

/// The `[disk.aoe]` sub-table of one `[[disk]]` of `isu.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct AoeDiskConfig {
    /// Slot (minor) address of the disk.
    pub slot: u8,
    /// MAC mask list replacing `[aoe].mac_mask` for this disk.
    pub mac_mask: Option<Vec<String>>,
    /// Initial config string, used while none has been persisted.
    pub config_string: Option<String>,
}

/// A disk to serve.
#[derive(Debug)]
pub struct AoeDisk {
    /// Its AoE settings.
    pub config: AoeDiskConfig,
    /// The device (512-byte blocks).
    pub device: SharedDevice,
    /// Where its config string is persisted.
    pub state_path: PathBuf,
}

/// Errors of the AoE server.
#[derive(Debug, thiserror::Error)]
pub enum AoeError {
    /// A setting is invalid.
    #[error("AoE configuration: {0}")]
    Config(String),
    /// An interface could not be opened.
    #[error("AoE interface {name}: {source}")]
    Interface {
        /// Interface name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The persisted state of a disk could not be read.
    #[error("AoE state file {path}: {source}")]
    State {
        /// State file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `start` was called outside a tokio runtime.
    #[error("AoE server must be started inside a tokio runtime")]
    NoRuntime,
    /// A server thread or task died.
    #[error("AoE server thread failed: {0}")]
    Thread(String),
}

pub(crate) struct Disk {
    pub(crate) name: String,
    state: Mutex<DiskState>,
    device: SharedDevice,
    /// Where its state is persisted.
    pub(crate) files: StateFiles,
    /// Messages sent to the worker whose replies are not all sent yet. While
    /// it is non-zero, receive threads queue every request behind them.
    queued: AtomicUsize,
}

/// What a disk's lock protects: the target and the persistence of its state.
pub(crate) struct DiskState {
    pub(crate) target: Target,
    pub(crate) saves: Saves,
}

/// A disk as a receive thread sees it: the target, the way to its worker,
/// its flusher and its persister. (The worker, flusher and persister hold the
/// disk but not these senders, so dropping them ends all three.)
#[derive(Clone)]
struct DiskPort {
    disk: Arc<Disk>,
    work: mpsc::UnboundedSender<Queued>,
    acks: mpsc::UnboundedSender<Vec<Work>>,
    persist: mpsc::Sender<()>,
}

/// A device call in progress; reads yield their data, writes nothing.
type DeviceCall = Pin<Box<dyn Future<Output = blockdev::Result<Bytes>> + Send>>;

/// One message to a disk's worker: a receive batch's requests for the disk.
#[derive(Default)]
struct Queued {
    /// A device call the receive thread started that did not complete at
    /// once; the worker finishes it before `io`. Only started while the worker
    /// had nothing queued, so nothing older is pending.
    started: Option<(DeviceCall, Vec<Work>)>,
    /// Requests the worker performs, in arrival order.
    io: Vec<Work>,
}

impl Queued {
    fn is_empty(&self) -> bool {
        self.started.is_none() && self.io.is_empty()
    }
}

impl Disk {
    pub(crate) fn state(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock cannot leave the target half-updated
        // in a way that matters more than stopping service; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
struct Work {
    req: IoRequest,
    sock: Arc<RawSocket>,
}

/// A running AoE server.
pub struct AoeServer {
    stop: Arc<AtomicBool>,
    rx: Vec<thread::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    disks: Vec<DiskPort>,
}

impl std::fmt::Debug for AoeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AoeServer")
            .field(
                "disks",
                &self.disks.iter().map(|d| &d.disk.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn parse_macs(list: &[String]) -> Result<Vec<Mac>, AoeError> {
    list.iter()
        .map(|s| {
            s.parse::<Mac>()
                .map_err(|_| AoeError::Config(format!("bad MAC address {s:?} in mac_mask")))
        })
        .collect()
}

/// Bytes a frame of this MTU costs in a socket receive buffer (data rounded
/// to the allocator's size class plus the skb overhead).
fn frame_truesize(mtu: usize) -> usize {
    (mtu + ETH_HEADER_LEN + 64).next_power_of_two() + 1024
}

impl AoeServer {
    /// Opens the interfaces and starts serving `disks`. Must run inside a tokio
    /// runtime (the disk workers are tasks on it). With no interfaces named,
    /// nothing is served (AoE is off).
    pub fn start(cfg: &AoeConfig, disks: Vec<AoeDisk>) -> Result<AoeServer, AoeError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| AoeError::NoRuntime)?;
        if cfg.shelf == BROADCAST_SHELF {
            return Err(AoeError::Config(
                "shelf 65535 is the broadcast address".into(),
            ));
        }
        let buffer_count = cfg.buffer_count.unwrap_or(DEFAULT_BUFFER_COUNT);
        if buffer_count == 0 {
            return Err(AoeError::Config("buffer_count must be at least 1".into()));
        }
        let default_mask = parse_macs(&cfg.mac_mask)?;
        let mut slots = HashMap::new();
        let mut built = Vec::new();
        let mut workers = Vec::new();
        for d in disks {
            let slot = d.config.slot;
            if slot == BROADCAST_SLOT {
                return Err(AoeError::Config("slot 255 is the broadcast address".into()));
            }
            if slots.insert(slot, ()).is_some() {
                return Err(AoeError::Config(format!("slot {slot} used by two disks")));
            }
            let g = d.device.geometry();
            if g.block_size as usize != SECTOR_SIZE {
                return Err(AoeError::Config(format!(
                    "disk e{}.{slot}: AoE needs 512-byte blocks, the device has {}",
                    cfg.shelf, g.block_size
                )));
            }
            let mask = match &d.config.mac_mask {
                Some(m) => parse_macs(m)?,
                None => default_mask.clone(),
            };
            let mut config =
                state::load_config(&d.state_path).map_err(|source| AoeError::State {
                    path: d.state_path.clone(),
                    source,
                })?;
            if config.is_empty() {
                if let Some(s) = &d.config.config_string {
                    config = s.as_bytes().to_vec();
                }
            }
            let settings = TargetSettings {
                shelf: cfg.shelf,
                slot,
                buffer_count,
                write_back: cfg.write_back,
                model: "opie AoE disk".into(),
                sectors: g.num_blocks,
                identity: d.device.identity().clone(),
                read_only: d.device.read_only(),
                limits: d.device.limits(),
            };
            let access_path = state::access_path(&d.state_path);
            let access =
                state::load_access(&access_path, &mask).map_err(|source| AoeError::State {
                    path: access_path.clone(),
                    source,
                })?;
            let mut target = Target::new(settings, mask.clone(), config);
            if let Some(a) = access {
                info!(disk = %format!("e{}.{slot}", cfg.shelf), mask = ?a.mask, reservations = ?a.reservations,
                      "AoE access lists restored");
                target.restore_access(a);
            }
            // What is in effect now is what a restart would find.
            let durable = StatePart::ALL.map(|p| target.snapshot(p));
            let (tx, rx) = mpsc::unbounded_channel();
            let (acks_tx, acks_rx) = mpsc::unbounded_channel();
            let (persist_tx, persist_rx) = mpsc::channel(1);
            let disk = Arc::new(Disk {
                name: format!("e{}.{slot}", cfg.shelf),
                state: Mutex::new(DiskState {
                    target,
                    saves: Saves::new(),
                }),
                device: d.device,
                files: StateFiles {
                    config: d.state_path,
                    access: access_path,
                    configured_mask: mask,
                },
                queued: AtomicUsize::new(0),
            });
            workers.push(rt.spawn(worker(disk.clone(), rx, acks_tx.clone())));
            workers.push(rt.spawn(flusher(disk.clone(), acks_rx)));
            workers.push(rt.spawn(persister::run(disk.clone(), durable, persist_rx)));
            built.push(DiskPort {
                disk,
                work: tx,
                acks: acks_tx,
                persist: persist_tx,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut rx_threads = Vec::new();
        let result = (|| {
            for name in &cfg.interfaces {
                // Probe the MTU first: the buffer size depends on it.
                let probe =
                    RawSocket::open(name, 0, RX_TIMEOUT).map_err(|source| AoeError::Interface {
                        name: name.clone(),
                        source,
                    })?;
                let frames = (usize::from(buffer_count) + 1) * built.len().max(1);
                let want = frames * frame_truesize(probe.mtu());
                drop(probe);
                let sock = RawSocket::open(name, want, RX_TIMEOUT).map_err(|source| {
                    AoeError::Interface {
                        name: name.clone(),
                        source,
                    }
                })?;
                let granted = sock.rcvbuf().unwrap_or(0);
                if !sock.has_rx_ring() && granted < want {
                    warn!(iface = %name, want, granted, "socket receive buffer smaller than the buffer count needs");
                }
                let iface = InterfaceInfo {
                    mac: sock.mac(),
                    mtu: sock.mtu(),
                };
                info!(iface = %name, mac = %iface.mac, mtu = iface.mtu, max_sectors = iface.max_sectors(),
                      buffer_count, rcvbuf = granted, rx_ring = sock.has_rx_ring(), disks = built.len(), "AoE serving");
                let sock = Arc::new(sock);
                let disks = built.clone();
                let stop = stop.clone();
                let rt = rt.clone();
                let h = thread::Builder::new()
                    .name(format!("aoe-rx-{name}"))
                    .spawn(move || {
                        // Device calls started here may need the runtime
                        // (e.g. a file backend's blocking pool).
                        let _rt = rt.enter();
                        rx_loop(sock, iface, disks, stop)
                    })
                    .map_err(|e| AoeError::Thread(e.to_string()))?;
                rx_threads.push(h);
            }
            Ok(())
        })();
        let server = AoeServer {
            stop,
            rx: rx_threads,
            workers,
            disks: built,
        };
        match result {
            Ok(()) => Ok(server),
            Err(e) => {
                server.stop_threads();
                Err(e)
            }
        }
    }

    fn stop_threads(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops receiving, lets every disk finish the work it has queued, and returns.
    pub async fn shutdown(self) -> Result<(), AoeError> {
        self.stop_threads();
        let rx = self.rx;
        let joined = tokio::task::spawn_blocking(move || {
            rx.into_iter()
                .map(|h| h.join())
                .filter(Result::is_err)
                .count()
                == 0
        })
        .await
        .map_err(|e| AoeError::Thread(e.to_string()))?;
        // The receive threads held the other senders; dropping ours ends the workers.
        drop(self.disks);
        for w in self.workers {
            w.await.map_err(|e| AoeError::Thread(e.to_string()))?;
        }
        if joined {
            Ok(())
        } else {
            Err(AoeError::Thread("a receive thread panicked".into()))
        }
    }
}

/// Says when a repeated event may be logged: at most once per `every`, with
/// how many happened since the last line.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            count: 0,
        }
    }

    /// `n` more events at `now`: the count to log, if a line is due.
    fn note(&mut self, now: Instant, n: u64) -> Option<u64> {
        self.count += n;
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.every);
        if !due || self.count == 0 {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// How often a receive thread asks the kernel for receive ring drops.
const RING_DROPS_EVERY: Duration = Duration::from_secs(1);
/// Shortest time between two log lines about them.
const RING_DROPS_LOG: Duration = Duration::from_secs(10);

fn rx_loop(
    sock: Arc<RawSocket>,
    iface: InterfaceInfo,
    disks: Vec<DiskPort>,
    stop: Arc<AtomicBool>,
) {
    let name = sock.name().to_string();
    let mut batch = RecvBatch::new(RX_BATCH, iface.mtu);
    let mut replies: Vec<Reply> = Vec::with_capacity(RX_BATCH);
    let mut queued: Vec<Queued> = disks.iter().map(|_| Queued::default()).collect();
    let mut acks: Vec<Vec<Work>> = disks.iter().map(|_| Vec::new()).collect();
    let mut runs: Vec<Option<Run>> = disks.iter().map(|_| None).collect();
    let mut wake: Vec<bool> = vec![false; disks.len()];
    // Malformed frames: a line a second at most; frames the kernel dropped
    // because the ring was full (a flood, or this thread starved of CPU):
    // a line every RING_DROPS_LOG at most.
    let mut malformed = Throttle::new(Duration::from_secs(1));
    let mut ring_drops = Throttle::new(RING_DROPS_LOG);
    let mut drops_checked = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now.duration_since(drops_checked) >= RING_DROPS_EVERY {
            drops_checked = now;
            let n = sock.take_drops().unwrap_or(0);
            if let Some(n) = ring_drops.note(now, u64::from(n)) {
                warn!(iface = %name, dropped = n, "AoE receive ring full: frames dropped (a flood, or the receive thread short of CPU); initiators retransmit");
            }
        }
        let n = match sock.recv_batch(&mut batch) {
            Ok(n) => n,
            Err(e) => {
                error!(iface = %name, error = %e, "AoE receive failed; interface stops serving");
                return;
            }
        };
        if n == 0 {
            continue;
        }
        // Every disk's target stays locked for the whole batch, so requests
        // of one disk arriving on several interfaces are served (inline or
        // queued to the worker) in one order.
        let mut states: Vec<MutexGuard<'_, DiskState>> =
            disks.iter().map(|p| p.disk.state()).collect();
        let now = Instant::now();
        for buf in batch.frames() {
            let frame = match Frame::decode(buf) {
                Ok(f) => f,
                Err(e) => {
                    if let Some(n) = malformed.note(Instant::now(), 1) {
                        warn!(iface = %name, frames = n, "dropped malformed AoE frame: {e}");
                    }
                    continue;
                }
            };
            for (i, port) in disks.iter().enumerate() {
                let disk = &port.disk;
                let state = &mut *states[i];
                match state.target.handle_owned(&iface, &frame, Some(buf)) {
                    Outcome::Reply(r) => replies.push(r),
                    // Never queued behind I/O, nor I/O behind it: the
                    // disk's persister writes the state and answers.
                    Outcome::Persist(req) => {
                        let waiter = Waiter {
                            sock: sock.clone(),
                            ctx: req.ctx,
                        };
                        let part = req.part;
                        if let Some(r) = persister::admit(state, now, part, req.changed, waiter) {
                            replies.push(r);
                        }
                        if state.saves.of(part).dirty() {
                            wake[i] = true;
                        }
                        if let Some(report) = state.saves.of(part).flood_report(now) {
                            persister::log_flood(&disk.name, part, &report);
                        }
                    }
                    Outcome::Io(req) => {
                        let work = Work {
                            req,
                            sock: sock.clone(),
                        };
                        let mut out = InlineOut {
                            queued: &mut queued[i],
                            replies: &mut replies,
                            acks: &mut acks[i],
                        };
                        if !out.queued.is_empty() || disk.queued.load(Ordering::Acquire) != 0 {
                            out.queued.io.push(work);
                        } else {
                            serve_inline(disk, work, &mut runs[i], &mut out);
                        }
                    }
                    Outcome::Ignore(why) => {
                        debug!(iface = %name, disk = %disk.name, ?why, tag = frame.header.tag, "no reply")
                    }
                }
            }
        }
        for (i, port) in disks.iter().enumerate() {
            if std::mem::take(&mut wake[i]) {
                // Full: a wake-up is pending already.
                let _ = port.persist.try_send(());
            }
            let mut out = InlineOut {
                queued: &mut queued[i],
                replies: &mut replies,
                acks: &mut acks[i],
            };
            start_run(&port.disk, &mut runs[i], &mut out);
            // Hand over while the target is still locked: the worker gets
            // this disk's requests in the order they were served.
            if !queued[i].is_empty() {
                port.disk.queued.fetch_add(1, Ordering::AcqRel);
                if port.work.send(std::mem::take(&mut queued[i])).is_err() {
                    error!(disk = %port.disk.name, "disk worker is gone");
                }
            }
            if !acks[i].is_empty() && port.acks.send(std::mem::take(&mut acks[i])).is_err() {
                error!(disk = %port.disk.name, "disk flusher is gone");
            }
        }
        drop(states);
        if !replies.is_empty() {
            if let Err(e) = sock.send_batch(replies.iter().map(|r| [&r.head[..], &r.data[..]])) {
                warn!(iface = %name, error = %e, "AoE send failed");
            }
            replies.clear();
        }
    }
    debug!(iface = %name, "AoE receive thread stopped");
}

/// Largest run of contiguous reads or writes the receive thread merges into
/// one device call (small enough for a file backend to do it without a thread
/// hand-off, large enough for a whole receive batch of jumbo frames).
const INLINE_MERGE_MAX: usize = 160 << 10;

/// Contiguous requests of one kind gathered on the receive thread for one
/// device call.
struct Run {
    lba: u64,
    next: u64,
    kind: RunKind,
    works: Vec<Work>,
}

enum RunKind {
    /// Reads: the device call's data is split among them in order.
    Read,
    /// Writes with the same FUA flag, their data concatenated.
    Write { fua: bool, data: BytesMut },
}

impl Run {
    fn bytes(&self) -> usize {
        (self.next - self.lba) as usize * SECTOR_SIZE
    }

    /// Appends `work` if it continues this run; gives it back otherwise.
    fn extend(&mut self, work: Work) -> Option<Work> {
        let (lba, len) = match &work.req.op {
            IoOp::Read { lba, sectors } => (*lba, *sectors as usize * SECTOR_SIZE),
            IoOp::Write { lba, data, .. } => (*lba, data.len()),
            _ => return Some(work),
        };
        if lba != self.next || self.bytes() + len > INLINE_MERGE_MAX {
            return Some(work);
        }
        match (&mut self.kind, &work.req.op) {
            (RunKind::Read, IoOp::Read { .. }) => {}
            (
                RunKind::Write { fua, data },
                IoOp::Write {
                    fua: f, data: d, ..
                },
            ) if fua == f => data.extend_from_slice(d),
            _ => return Some(work),
        }
        self.next += (len / SECTOR_SIZE) as u64;
        self.works.push(work);
        None
    }
}

/// Where the receive thread's results for one disk go.
struct InlineOut<'a> {
    /// Requests for the worker (with a started call first, if any).
    queued: &'a mut Queued,
    /// Replies sent at the end of the batch.
    replies: &'a mut Vec<Reply>,
    /// Writes to acknowledge after the flusher's next flush.
    acks: &'a mut Vec<Work>,
}

/// Serves a request on the receive thread while the disk's worker is idle:
/// contiguous reads, and contiguous writes, are gathered into one device call
/// each; anything that breaks a run first starts it. Calls that complete at
/// once are answered without a thread hand-off; one that does not goes to the
/// worker, and everything after it queues behind it.
fn serve_inline(disk: &Disk, work: Work, run: &mut Option<Run>, out: &mut InlineOut<'_>) {
    let work = match run.as_mut() {
        Some(r) => match r.extend(work) {
            None => return,
            Some(w) => w,
        },
        None => work,
    };
    start_run(disk, run, out);
    if !out.queued.is_empty() {
        out.queued.io.push(work);
        return;
    }
    let (lba, sectors, kind) = match &work.req.op {
        IoOp::Read { lba, sectors } => (*lba, u64::from(*sectors), RunKind::Read),
        IoOp::Write { lba, data, fua } => {
            let mut buf = BytesMut::with_capacity(INLINE_MERGE_MAX.min(data.len() * RX_BATCH));
            buf.extend_from_slice(data);
            let sectors = (data.len() / SECTOR_SIZE) as u64;
            (
                *lba,
                sectors,
                RunKind::Write {
                    fua: *fua,
                    data: buf,
                },
            )
        }
        // A flush: the worker does it.
        _ => {
            out.queued.io.push(work);
            return;
        }
    };
    *run = Some(Run {
        lba,
        next: lba + sectors,
        kind,
        works: vec![work],
    });
}

/// Starts the gathered run, if any, as one device call.
fn start_run(disk: &Disk, run: &mut Option<Run>, out: &mut InlineOut<'_>) {
    let Some(r) = run.take() else { return };
    let dev = disk.device.clone();
    let lba = r.lba;
    let call: DeviceCall = match r.kind {
        RunKind::Read => {
            let sectors = (r.next - r.lba) as u32;
            Box::pin(async move { dev.read(lba, sectors).await })
        }
        RunKind::Write { data, .. } => {
            let data = data.freeze();
            // Durability comes from the flusher's group commit, not FUA.
            Box::pin(async move {
                dev.write(lba, data, WriteFlags::NONE)
                    .await
                    .map(|()| Bytes::new())
            })
        }
    };
    poll_call(disk, call, r.works, out);
}

/// Polls a device call once: finished, its replies go out with the batch;
/// not finished, the worker completes it.
fn poll_call(disk: &Disk, mut call: DeviceCall, works: Vec<Work>, out: &mut InlineOut<'_>) {
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        // A merged call failed: the worker redoes its requests one at a
        // time (it takes the finished call as a started one; nothing else is
        // queued yet, as runs start only while the queue is empty).
        Poll::Ready(Err(e)) if works.len() > 1 => {
            out.queued.started = Some((Box::pin(std::future::ready(Err(e))), works))
        }
        Poll::Ready(result) => finish_call(
            &disk.name,
            works,
            result,
            &mut |_, r| out.replies.push(r),
            &mut |w| out.acks.push(w),
        ),
        Poll::Pending => out.queued.started = Some((call, works)),
    }
}

/// Answers the requests of a finished device call: a read's data is split
/// among them in order; durable writes go to `durable` to be acknowledged
/// after a flush, everything else to `reply`.
fn finish_call(
    disk: &str,
    works: Vec<Work>,
    result: blockdev::Result<Bytes>,
    reply: &mut dyn FnMut(Arc<RawSocket>, Reply),
    durable: &mut dyn FnMut(Work),
) {
    match result {
        Ok(data) => {
            let mut off = 0;
            for w in works {
                match w.req.op {
                    IoOp::Write { fua: true, .. } => durable(w),
                    IoOp::Read { sectors, .. } => {
                        let len = (sectors as usize * SECTOR_SIZE).min(data.len() - off);
                        let part = data.slice(off..off + len);
                        off += len;
                        reply(w.sock.clone(), w.req.ctx.ata_done(AtaStatus::OK, part));
                    }
                    _ => reply(
                        w.sock.clone(),
                        w.req.ctx.ata_done(AtaStatus::OK, Bytes::new()),
                    ),
                }
            }
        }
        Err(e) => {
            let first = works.first().map(|w| lba_of(&w.req.op));
            warn!(disk, lba = ?first, requests = works.len(), error = %e, "device I/O failed");
            let st = AtaOutcome::of_error(&e);
            for w in works {
                reply(w.sock.clone(), w.req.ctx.answer(st, Bytes::new()));
            }
        }
    }
}

/// Redoes the requests of a failed merged call one at a time, so a bad
/// sector fails only the frames that touch it; answers each as
/// [`finish_call`] does.
async fn redo_singly(
    disk: &Disk,
    works: &[Work],
    reply: &mut (dyn FnMut(Arc<RawSocket>, Reply) + Send),
    durable: &mut (dyn FnMut(Work) + Send),
) {
    debug!(disk = %disk.name, requests = works.len(), "merged call failed; redoing its requests one at a time");
    for w in works {
        let result = match &w.req.op {
            IoOp::Read { lba, sectors } => disk.device.read(*lba, *sectors).await,
            IoOp::Write { lba, data, .. } => disk
                .device
                .write(*lba, data.clone(), WriteFlags::NONE)
                .await
                .map(|()| Bytes::new()),
            // Runs hold only reads and writes.
            _ => Ok(Bytes::new()),
        };
        finish_call(&disk.name, vec![w.clone()], result, reply, durable);
    }
}

/// Acknowledges durable writes: takes every acknowledgement queued, makes them
/// durable with one flush, sends them; writes that arrive during a flush share
/// the next one (group commit).
async fn flusher(disk: Arc<Disk>, mut rx: mpsc::UnboundedReceiver<Vec<Work>>) {
    while let Some(mut acks) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            acks.extend(more);
        }
        let st = match disk.device.flush().await {
            Ok(()) => AtaOutcome::OK,
            Err(e) => {
                warn!(disk = %disk.name, writes = acks.len(), error = %e, "flush for write acknowledgements failed");
                AtaOutcome::of_error(&e)
            }
        };
        let mut out: Vec<(Arc<RawSocket>, Reply)> = acks
            .into_iter()
            .map(|w| (w.sock, w.req.ctx.answer(st, Bytes::new())))
            .collect();
        send_replies(&mut out);
    }
    debug!(disk = %disk.name, "AoE disk flusher stopped");
}

/// Sends replies grouped by the socket they leave by.
pub(crate) fn send_replies(out: &mut Vec<(Arc<RawSocket>, Reply)>) {
    while let Some((sock, _)) = out.first().map(|(s, r)| (s.clone(), r.len())) {
        let (same, rest): (Vec<_>, Vec<_>) =
            out.drain(..).partition(|(s, _)| Arc::ptr_eq(s, &sock));
        *out = rest;
        if let Err(e) = sock.send_batch(same.iter().map(|(_, r)| [&r.head[..], &r.data[..]])) {
            warn!(iface = %sock.name(), error = %e, "AoE send failed");
        }
    }
}

/// Batches a disk runs at once.
const MAX_CONCURRENT_BATCHES: usize = 4;

/// What a batch touches, to decide whether it may run beside earlier ones.
struct Footprint {
    /// Sector ranges `[start, end)` it reads or writes.
    ranges: Vec<(u64, u64)>,
    /// Whether it writes.
    writes: bool,
    /// Whether it must wait for everything before it (a flush).
    barrier: bool,
}

impl Footprint {
    fn of(batch: &[Work]) -> Footprint {
        let mut f = Footprint {
            ranges: Vec::with_capacity(batch.len()),
            writes: false,
            barrier: false,
        };
        for w in batch {
            match &w.req.op {
                IoOp::Read { lba, .. } | IoOp::Write { lba, .. } => {
                    f.ranges.push((*lba, *lba + sectors_of(&w.req.op)));
                    f.writes |= matches!(w.req.op, IoOp::Write { .. });
                }
                IoOp::Flush => f.barrier = true,
            }
        }
        f
    }

    /// Whether running `self` beside `earlier` could reorder conflicting
    /// accesses (a write overlapping anything, or a barrier).
    fn conflicts(&self, earlier: &Footprint) -> bool {
        if self.barrier || earlier.barrier {
            return true;
        }
        if !self.writes && !earlier.writes {
            return false;
        }
        self.ranges
            .iter()
            .any(|a| earlier.ranges.iter().any(|b| a.0 < b.1 && b.0 < a.1))
    }
}

async fn worker(
    disk: Arc<Disk>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    acks: mpsc::UnboundedSender<Vec<Work>>,
) {
    // Batches in flight, oldest first. A batch starts only when it conflicts
    // with none of them, so overlapping writes (and reads against writes) are
    // applied in arrival order while independent batches overlap their I/O.
    let mut inflight: std::collections::VecDeque<(Footprint, tokio::task::JoinHandle<()>)> =
        std::collections::VecDeque::new();
    // A message that starts with a started call, taken while merging.
    let mut carry: Option<Queued> = None;
    loop {
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => break,
            },
        };
        if let Some((call, works)) = first.started {
            // Everything older is done (receive threads start calls only
            // while nothing is queued); wait anyway, order is what matters.
            for (_, h) in inflight.drain(..) {
                let _ = h.await;
            }
            let (mut out, mut durable) = (Vec::new(), Vec::new());
            match call.await {
                // A merged call failed: redo its requests one at a time.
                Err(_) if works.len() > 1 => {
                    redo_singly(&disk, &works, &mut |s, r| out.push((s, r)), &mut |w| {
                        durable.push(w)
                    })
                    .await
                }
                result => finish_call(
                    &disk.name,
                    works,
                    result,
                    &mut |s, r| out.push((s, r)),
                    &mut |w| durable.push(w),
                ),
            }
            send_replies(&mut out);
            if !durable.is_empty() && acks.send(durable).is_err() {
                error!(disk = %disk.name, "disk flusher is gone");
            }
        }
        let mut batch = first.io;
        let mut messages = 1;
        while batch.len() < 4 * RX_BATCH {
            let Ok(more) = rx.try_recv() else { break };
            if more.started.is_some() {
                carry = Some(more);
                break;
            }
            messages += 1;
            batch.extend(more.io);
        }
        if batch.is_empty() {
            disk.queued.fetch_sub(messages, Ordering::AcqRel);
            continue;
        }
        let fp = Footprint::of(&batch);
        while inflight.len() >= MAX_CONCURRENT_BATCHES
            || inflight.iter().any(|(earlier, _)| fp.conflicts(earlier))
        {
            if let Some((_, h)) = inflight.pop_front() {
                if let Err(e) = h.await {
                    error!(disk = %disk.name, error = %e, "AoE batch task failed");
                }
            }
        }
        inflight.retain(|(_, h)| !h.is_finished());
        let d = disk.clone();
        let h = tokio::spawn(async move {
            let mut out = Vec::new();
            run_batch(&d, batch, &mut out).await;
            send_replies(&mut out);
            // Replies are out: receive threads may serve this disk again.
            d.queued.fetch_sub(messages, Ordering::AcqRel);
        });
        inflight.push_back((fp, h));
    }
    for (_, h) in inflight {
        let _ = h.await;
    }
    debug!(disk = %disk.name, "AoE disk worker stopped");
}

fn sectors_of(op: &IoOp) -> u64 {
    match op {
        IoOp::Read { sectors, .. } => u64::from(*sectors),
        IoOp::Write { data, .. } => (data.len() / SECTOR_SIZE) as u64,
        _ => 0,
    }
}

fn lba_of(op: &IoOp) -> Option<u64> {
    match op {
        IoOp::Read { lba, .. } | IoOp::Write { lba, .. } => Some(*lba),
        _ => None,
    }
}

/// Length of the run of contiguous same-kind requests starting at `batch[0]`.
fn run_len(batch: &[Work]) -> usize {
    let Some(first) = batch.first() else { return 0 };
    let is_read = matches!(first.req.op, IoOp::Read { .. });
    let Some(mut next) = lba_of(&first.req.op) else {
        return 1;
    };
    let mut bytes = 0usize;
    let mut n = 0;
    for w in batch {
        let same_kind = matches!(w.req.op, IoOp::Read { .. }) == is_read;
        let contiguous = lba_of(&w.req.op) == Some(next);
        let len = sectors_of(&w.req.op) as usize * SECTOR_SIZE;
        if !(same_kind && contiguous) || (n > 0 && bytes + len > MAX_MERGE_BYTES) {
            break;
        }
        if let IoOp::Write { fua, .. } = w.req.op {
            if let IoOp::Write { fua: f0, .. } = first.req.op {
                if fua != f0 {
                    break;
                }
            }
        }
        next += sectors_of(&w.req.op);
        bytes += len;
        n += 1;
    }
    n.max(1)
}

async fn run_batch(disk: &Disk, batch: Vec<Work>, out: &mut Vec<(Arc<RawSocket>, Reply)>) {
    let dev = &disk.device;
    // Write replies wait here until the batch's writes are durable.
    let mut unsynced: Vec<Work> = Vec::new();
    let fua_writes = batch
        .iter()
        .filter(|w| matches!(w.req.op, IoOp::Write { fua: true, .. }))
        .count();
    let mut rest = &batch[..];
    while !rest.is_empty() {
        let n = run_len(rest);
        let (run, tail) = rest.split_at(n);
        rest = tail;
        match &run[0].req.op {
            IoOp::Read { lba, .. } => {
                let total: u64 = run.iter().map(|w| sectors_of(&w.req.op)).sum();
                match dev.read(*lba, total as u32).await {
                    Ok(data) => {
                        let mut off = 0;
                        for w in run {
                            let len = sectors_of(&w.req.op) as usize * SECTOR_SIZE;
                            let part = data.slice(off..off + len);
                            off += len;
                            out.push((w.sock.clone(), w.req.ctx.ata_done(AtaStatus::OK, part)));
                        }
                    }
                    Err(_) if run.len() > 1 => {
                        redo_singly(disk, run, &mut |s, r| out.push((s, r)), &mut |w| {
                            unsynced.push(w)
                        })
                        .await
                    }
                    Err(e) => {
                        warn!(disk = %disk.name, lba, sectors = total, error = %e, "read failed");
                        let st = AtaOutcome::of_error(&e);
                        for w in run {
                            out.push((w.sock.clone(), w.req.ctx.answer(st, Bytes::new())));
                        }
                    }
                }
            }
            IoOp::Write { lba, fua, .. } => {
                let data = if run.len() == 1 {
                    match &run[0].req.op {
                        IoOp::Write { data, .. } => data.clone(),
                        _ => Bytes::new(),
                    }
                } else {
                    let mut buf = BytesMut::with_capacity(
                        run.iter()
                            .map(|w| sectors_of(&w.req.op) as usize * SECTOR_SIZE)
                            .sum(),
                    );
                    for w in run {
                        if let IoOp::Write { data, .. } = &w.req.op {
                            buf.extend_from_slice(data);
                        }
                    }
                    buf.freeze()
                };
                // A single durable write in the batch goes out as FUA; several
                // share one flush at the end of the batch (group commit).
                let flags = if *fua && fua_writes == run.len() {
                    WriteFlags::FUA
                } else {
                    WriteFlags::NONE
                };
                match dev.write(*lba, data, flags).await {
                    Ok(()) if *fua && flags != WriteFlags::FUA => {
                        unsynced.extend(run.iter().cloned())
                    }
                    Ok(()) => {
                        for w in run {
                            out.push((
                                w.sock.clone(),
                                w.req.ctx.ata_done(AtaStatus::OK, Bytes::new()),
                            ));
                        }
                    }
                    Err(_) if run.len() > 1 => {
                        redo_singly(disk, run, &mut |s, r| out.push((s, r)), &mut |w| {
                            unsynced.push(w)
                        })
                        .await
                    }
                    Err(e) => {
                        warn!(disk = %disk.name, lba, error = %e, "write failed");
                        let st = AtaOutcome::of_error(&e);
                        for w in run {
                            out.push((w.sock.clone(), w.req.ctx.answer(st, Bytes::new())));
                        }
                    }
                }
            }
            IoOp::Flush => {
                let st = match dev.flush().await {
                    Ok(()) => AtaOutcome::OK,
                    Err(e) => {
                        warn!(disk = %disk.name, error = %e, "flush failed");
                        AtaOutcome::of_error(&e)
                    }
                };
                // The flush also covers every write before it.
                for w in unsynced.drain(..) {
                    out.push((w.sock.clone(), w.req.ctx.answer(st, Bytes::new())));
                }
                for w in run {
                    out.push((w.sock.clone(), w.req.ctx.answer(st, Bytes::new())));
                }
            }
        }
    }
    if !unsynced.is_empty() {
        let st = match dev.flush().await {
            Ok(()) => AtaOutcome::OK,
            Err(e) => {
                warn!(disk = %disk.name, error = %e, "flush after writes failed");
                AtaOutcome::of_error(&e)
            }
        };
        for w in unsynced {
            out.push((w.sock.clone(), w.req.ctx.answer(st, Bytes::new())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_lines_carry_the_count_since_the_last() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::new(10 * s);
        assert_eq!(t.note(t0, 0), None, "nothing to say");
        assert_eq!(t.note(t0, 3), Some(3), "the first line at once");
        assert_eq!(t.note(t0 + s, 5), None);
        assert_eq!(t.note(t0 + 9 * s, 1), None);
        assert_eq!(t.note(t0 + 10 * s, 0), Some(6));
        assert_eq!(t.note(t0 + 30 * s, 0), None);
    }

    fn fp(ranges: &[(u64, u64)], writes: bool, barrier: bool) -> Footprint {
        Footprint {
            ranges: ranges.to_vec(),
            writes,
            barrier,
        }
    }

    #[test]
    fn only_overlapping_writes_and_barriers_serialize() {
        let r1 = fp(&[(0, 17), (17, 34)], false, false);
        let r2 = fp(&[(10, 20)], false, false);
        let w1 = fp(&[(34, 51)], true, false);
        let w2 = fp(&[(50, 60)], true, false);
        let flush = fp(&[], false, true);
        assert!(!r2.conflicts(&r1), "reads overlap freely");
        assert!(!w1.conflicts(&r1), "disjoint write beside reads");
        assert!(w2.conflicts(&w1), "overlapping writes keep arrival order");
        assert!(
            r2.conflicts(&fp(&[(19, 21)], true, false)),
            "read after overlapping write waits"
        );
        assert!(
            !fp(&[(51, 52)], true, false).conflicts(&w1),
            "adjacent is not overlapping"
        );
        assert!(flush.conflicts(&r1) && r1.conflicts(&flush));
    }
}
