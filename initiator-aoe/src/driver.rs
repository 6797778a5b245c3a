//! The I/O edge: a [`Driver`] is one thread owning a raw socket on each of
//! a head's AoE interfaces, shared by every target attached to it (each a
//! [`TargetState`]) and by discoveries. The thread waits on every socket at
//! once (`poll`), on a wake-up socket the callers ring when they hand it
//! work while it sleeps, and on the earliest timer of its cores, so it
//! wakes for a frame on any interface, a request, or a timeout, and for
//! nothing else.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aoe_proto::frame::{Command, Frame};
use aoe_proto::rawsock::{RawSocket, RecvBatch};
use blockdev::{BlockError, Bytes};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tokio::sync::oneshot;
use tracing::debug;

use crate::discovery::{Discovery, Found};
use crate::paths::Interface;
use crate::target::{Request, TargetState};
use crate::wire;

/// How long one receive call waits when poll said a socket was ready but
/// nothing usable was there (a frame of our own): never longer.
const RECV_WAIT: Duration = Duration::from_millis(1);
/// How often discovery is broadcast while an attached target has no path.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(200);

/// A request's result, as the caller receives it.
pub type Reply = oneshot::Sender<Result<Bytes, BlockError>>;

/// A target's key in its driver.
pub type TargetKey = u64;

/// Why a target cannot be attached, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// An interface named is not one of the driver's: open the driver on it.
    #[error("AoE interface {0} is not one of the driver's")]
    UnknownInterface(String),
    /// The target is already attached on one of these interfaces (replies
    /// could not be told apart): share that device, or use other interfaces.
    #[error("AoE target {shelf}.{slot} is already attached on an interface named")]
    InUse {
        /// Shelf.
        shelf: u16,
        /// Slot.
        slot: u8,
    },
    /// The driver thread has ended.
    #[error("AoE driver has stopped")]
    Stopped,
}

/// What callers send the driver thread.
enum Cmd {
    Attach {
        key: TargetKey,
        core: Box<TargetState>,
        ifaces: Vec<usize>,
        discover_wait: Duration,
        reply: oneshot::Sender<Result<(), AttachError>>,
    },
    Detach(TargetKey),
    Submit(TargetKey, Request, Reply),
    Lba48(TargetKey, bool),
    Fence(TargetKey, oneshot::Sender<()>),
    Discover(Duration, oneshot::Sender<Vec<Found>>),
}

#[derive(Debug)]
struct Shared {
    tx: Mutex<Option<Sender<Cmd>>>,
    /// Set by the thread before it sleeps; a caller that clears it rings.
    asleep: Arc<AtomicBool>,
    bell: UnixStream,
    next_key: AtomicU64,
    ifnames: Vec<String>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        *self.tx.lock().expect("driver lock") = None;
        self.asleep.store(false, Ordering::SeqCst);
        let _ = (&self.bell).write(&[1]);
        if let Some(t) = self.thread.lock().expect("driver lock").take() {
            let _ = t.join();
        }
    }
}

/// The raw sockets of a head's AoE interfaces and the thread that serves
/// them; clones share them. Targets attach to it ([`crate::AoeDevice::attach`])
/// and [`Driver::discover`] lists what answers. The thread ends when the
/// last clone is dropped, once the requests it holds are finished.
#[derive(Debug, Clone)]
pub struct Driver {
    shared: Arc<Shared>,
}

impl Driver {
    /// Opens a raw socket on each of `ifnames` and starts the thread.
    pub fn open(ifnames: &[String]) -> io::Result<Driver> {
        let mut sockets = Vec::new();
        for name in ifnames {
            sockets.push(RawSocket::open(name, 8 << 20, RECV_WAIT)?);
        }
        let (bell, bell_rx) = UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        bell_rx.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tx: Mutex::new(Some(tx)),
            asleep: Arc::new(AtomicBool::new(false)),
            bell,
            next_key: AtomicU64::new(1),
            ifnames: ifnames.to_vec(),
            thread: Mutex::new(None),
        });
        // The thread holds the flag only: were it to hold `shared`, the
        // last handle could be dropped there, and join its own thread.
        let flag = shared.asleep.clone();
        let names = ifnames.to_vec();
        let thread = std::thread::Builder::new()
            .name(format!("aoe-init-{}", ifnames.join(",")))
            .spawn(move || {
                let asleep = move |v: bool| flag.swap(v, Ordering::SeqCst);
                Edge::new(sockets, names, bell_rx, rx).run(asleep)
            })?;
        *shared.thread.lock().expect("driver lock") = Some(thread);
        Ok(Driver { shared })
    }

    /// The interfaces, in the order the driver numbers them.
    pub fn interfaces(&self) -> &[String] {
        &self.shared.ifnames
    }

    fn send(&self, cmd: Cmd) -> bool {
        let sent = self
            .shared
            .tx
            .lock()
            .expect("driver lock")
            .as_ref()
            .is_some_and(|tx| tx.send(cmd).is_ok());
        if sent && self.shared.asleep.swap(false, Ordering::SeqCst) {
            let _ = (&self.shared.bell).write(&[1]);
        }
        sent
    }

    /// Broadcasts Query Config on every interface and lists the targets
    /// that answer within `wait`.
    pub async fn discover(&self, wait: Duration) -> Vec<Found> {
        let (tx, rx) = oneshot::channel();
        if !self.send(Cmd::Discover(wait, tx)) {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Attaches `core` on the interfaces named `ifnames` (all of the
    /// driver's when empty). Requests submitted within `discover_wait`
    /// wait for the target's first path instead of failing.
    pub(crate) async fn attach(
        &self,
        core: TargetState,
        ifnames: &[String],
        discover_wait: Duration,
    ) -> Result<Target, AttachError> {
        let ifaces = if ifnames.is_empty() {
            (0..self.shared.ifnames.len()).collect()
        } else {
            let mut v = Vec::new();
            for n in ifnames {
                match self.shared.ifnames.iter().position(|m| m == n) {
                    Some(i) => v.push(i),
                    None => return Err(AttachError::UnknownInterface(n.clone())),
                }
            }
            v
        };
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Attach {
            key,
            core: Box::new(core),
            ifaces,
            discover_wait,
            reply: tx,
        };
        if !self.send(cmd) {
            return Err(AttachError::Stopped);
        }
        rx.await.map_err(|_| AttachError::Stopped)??;
        Ok(Target {
            driver: self.clone(),
            key,
        })
    }
}

/// Lists the AoE targets answering a broadcast Query Config on `ifnames`
/// within `wait` (a driver opened for the purpose).
pub async fn discover(ifnames: &[String], wait: Duration) -> io::Result<Vec<Found>> {
    Ok(Driver::open(ifnames)?.discover(wait).await)
}

/// One target attached to a driver; detached when dropped (its core is
/// kept until nothing it sent can still land).
#[derive(Debug)]
pub(crate) struct Target {
    driver: Driver,
    key: TargetKey,
}

impl Target {
    /// Runs `req` and returns its result.
    pub(crate) async fn call(&self, req: Request) -> blockdev::Result<Bytes> {
        let (tx, rx) = oneshot::channel();
        let gone = || BlockError::PathDown("AoE: the initiator has stopped".into());
        if !self.driver.send(Cmd::Submit(self.key, req, tx)) {
            return Err(gone());
        }
        rx.await.map_err(|_| gone())?
    }

    /// Uses 48-bit commands or not.
    pub(crate) fn set_lba48(&self, on: bool) {
        self.driver.send(Cmd::Lba48(self.key, on));
    }

    /// Resolves once nothing this target's core sent can still write to
    /// the target ([`TargetState::is_settled`]).
    pub(crate) async fn settled(&self) {
        let (tx, rx) = oneshot::channel();
        if self.driver.send(Cmd::Fence(self.key, tx)) {
            let _ = rx.await;
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.driver.send(Cmd::Detach(self.key));
    }
}

/// A target's core in the thread, with what waits on it.
struct Attached {
    core: TargetState,
    ifaces: Vec<usize>,
    waiters: HashMap<u64, Reply>,
    /// Requests held until the first path is known (or the wait is over).
    held: Vec<(Request, Reply)>,
    discover_until: Instant,
    fences: Vec<oneshot::Sender<()>>,
    detached: bool,
}

/// The thread's state.
struct Edge {
    sockets: Vec<RawSocket>,
    names: Vec<String>,
    ifaces: Vec<Interface>,
    batches: Vec<RecvBatch>,
    bell: UnixStream,
    rx: Receiver<Cmd>,
    open: bool,
    targets: HashMap<TargetKey, Attached>,
    discoveries: Vec<(Instant, Discovery, oneshot::Sender<Vec<Found>>)>,
    next_discovery: Instant,
    /// When Query Config is next broadcast for the attached targets' new
    /// paths.
    next_rediscovery: Instant,
}

impl Edge {
    fn new(
        sockets: Vec<RawSocket>,
        names: Vec<String>,
        bell: UnixStream,
        rx: Receiver<Cmd>,
    ) -> Edge {
        let ifaces = sockets
            .iter()
            .enumerate()
            .map(|(id, s)| Interface {
                id,
                mac: s.mac(),
                mtu: s.mtu(),
            })
            .collect();
        let batches = sockets
            .iter()
            .map(|s| RecvBatch::new(64, s.mtu()))
            .collect();
        Edge {
            sockets,
            names,
            ifaces,
            batches,
            bell,
            rx,
            open: true,
            targets: HashMap::new(),
            discoveries: Vec::new(),
            next_discovery: Instant::now(),
            next_rediscovery: Instant::now(),
        }
    }

    /// The loop; `asleep(v)` sets the shared flag and returns its old value.
    fn run(mut self, asleep: impl Fn(bool) -> bool) {
        loop {
            self.commands();
            let now = Instant::now();
            self.step(now);
            if !self.open && self.targets.values().all(|t| t.waiters.is_empty()) {
                return;
            }
            // Sleep only when no command came in after the flag was set.
            asleep(true);
            if self.commands() {
                asleep(false);
                continue;
            }
            let wait = self
                .next_wake()
                .map(|t| t.saturating_duration_since(Instant::now()));
            let ready = self.wait(wait);
            asleep(false);
            let now = Instant::now();
            for i in ready {
                self.receive(i, now);
            }
        }
    }

    /// Takes every command waiting; whether there was one.
    fn commands(&mut self) -> bool {
        let mut any = false;
        while self.open {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    any = true;
                    self.command(cmd);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.open = false,
            }
        }
        any
    }

    fn command(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Attach {
                key,
                core,
                ifaces,
                discover_wait,
                reply,
            } => {
                let (shelf, slot) = core.shelf_slot();
                let clash = self.targets.values().any(|t| {
                    t.core.shelf_slot() == (shelf, slot)
                        && t.ifaces.iter().any(|i| ifaces.contains(i))
                        && !(t.detached && t.ifaces == ifaces)
                });
                if clash {
                    let _ = reply.send(Err(AttachError::InUse { shelf, slot }));
                    return;
                }
                // A detached core of the same target keeps its fences: it
                // goes on under the new key.
                let old = self
                    .targets
                    .iter()
                    .find(|(_, t)| t.core.shelf_slot() == (shelf, slot) && t.ifaces == ifaces)
                    .map(|(k, _)| *k);
                let core = match old.and_then(|k| self.targets.remove(&k)) {
                    Some(t) => t.core,
                    None => *core,
                };
                self.targets.insert(
                    key,
                    Attached {
                        core,
                        ifaces,
                        waiters: HashMap::new(),
                        held: Vec::new(),
                        discover_until: now + discover_wait,
                        fences: Vec::new(),
                        detached: false,
                    },
                );
                self.next_discovery = now;
                self.next_rediscovery = self.next_rediscovery.min(now + self.rediscover_interval());
                let _ = reply.send(Ok(()));
            }
            Cmd::Detach(key) => {
                if let Some(t) = self.targets.get_mut(&key) {
                    t.detached = true;
                }
            }
            Cmd::Submit(key, req, reply) => match self.targets.get_mut(&key) {
                Some(t) => t.held.push((req, reply)),
                None => {
                    let _ = reply.send(Err(BlockError::PathDown("AoE: target detached".into())));
                }
            },
            Cmd::Lba48(key, on) => {
                if let Some(t) = self.targets.get_mut(&key) {
                    t.core.set_lba48(on);
                }
            }
            Cmd::Fence(key, reply) => {
                if let Some(t) = self.targets.get_mut(&key) {
                    t.fences.push(reply);
                }
            }
            Cmd::Discover(wait, reply) => {
                for (s, i) in self.sockets.iter().zip(&self.ifaces) {
                    let _ = s.send(&wire::discovery(i.mac, 0));
                }
                self.discoveries
                    .push((now + wait, Discovery::default(), reply));
            }
        }
    }

    /// Everything due at `now`: held requests submitted, timers, frames
    /// sent, results handed back, fences and discoveries ended, detached
    /// cores dropped once settled.
    fn step(&mut self, now: Instant) {
        let mut broadcast = vec![false; self.sockets.len()];
        let discover = now >= self.next_discovery;
        let rediscover = now >= self.next_rediscovery;
        // Frames to send, by interface: one sendmmsg per interface a step.
        let mut out: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.sockets.len()];
        if rediscover {
            self.next_rediscovery = now + self.rediscover_interval();
        }
        for t in self.targets.values_mut() {
            let no_path = t.core.paths().all().is_empty();
            if (no_path && discover) || (rediscover && !t.detached) {
                for &i in &t.ifaces {
                    broadcast[i] = true;
                }
            }
            if !no_path || now >= t.discover_until {
                for (req, reply) in t.held.drain(..) {
                    t.waiters.insert(t.core.submit(now, req), reply);
                }
            }
            // A caller gone (its future dropped, e.g. by multipath's
            // timeout): stop sending its frames, so the fence can resolve.
            let gone: Vec<u64> = t
                .waiters
                .iter()
                .filter(|(_, r)| r.is_closed())
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                t.core.cancel(id);
            }
            if t.core.poll_timeout().is_some_and(|d| d <= now) {
                t.core.handle_timeout(now);
            }
            while let Some(tx) = t.core.poll_transmit(now) {
                out[tx.iface].push(tx.frame);
            }
            while let Some(c) = t.core.poll_completion() {
                if let Some(reply) = t.waiters.remove(&c.id) {
                    let _ = reply.send(c.result);
                }
            }
            if !t.fences.is_empty() && t.core.is_settled(now) {
                for f in t.fences.drain(..) {
                    let _ = f.send(());
                }
            }
        }
        for (s, frames) in self.sockets.iter().zip(&out) {
            if frames.is_empty() {
                continue;
            }
            if let Err(e) = s.send_batch(frames.iter().map(|f| [&f[..], &[][..]])) {
                // Counted as lost: the retransmission covers it.
                debug!(error = %e, "AoE send failed");
            }
        }
        if broadcast.contains(&true) {
            for ((s, i), b) in self.sockets.iter().zip(&self.ifaces).zip(broadcast) {
                if b {
                    let _ = s.send(&wire::discovery(i.mac, 0));
                }
            }
            self.next_discovery = now + DISCOVERY_INTERVAL;
        }
        self.targets.retain(|_, t| {
            !(t.detached && t.waiters.is_empty() && t.held.is_empty() && t.core.is_settled(now))
        });
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.discoveries)
            .into_iter()
            .partition(|(until, _, _)| *until <= now);
        self.discoveries = open;
        for (_, d, reply) in done {
            let _ = reply.send(d.found());
        }
    }

    /// The least rediscovery interval of the attached targets.
    fn rediscover_interval(&self) -> Duration {
        self.targets
            .values()
            .map(|t| t.core.settings().rediscover_interval)
            .min()
            .unwrap_or(Duration::from_secs(10))
            .max(DISCOVERY_INTERVAL)
    }

    /// When the loop must run again without a frame or a command.
    fn next_wake(&self) -> Option<Instant> {
        let mut at: Vec<Instant> = Vec::new();
        if self.targets.values().any(|t| !t.detached) {
            at.push(self.next_rediscovery);
        }
        for t in self.targets.values() {
            at.extend(t.core.poll_timeout());
            if !t.held.is_empty() {
                at.push(t.discover_until);
            }
            if t.core.paths().all().is_empty() {
                at.push(self.next_discovery);
            }
            if !t.fences.is_empty() || t.detached {
                at.extend(t.core.settles_at());
            }
        }
        at.extend(self.discoveries.iter().map(|(until, _, _)| *until));
        at.into_iter().min()
    }

    /// Sleeps until a socket has frames, the bell rings or `wait` passes;
    /// returns the ready sockets.
    fn wait(&mut self, wait: Option<Duration>) -> Vec<usize> {
        let ready = {
            let mut fds: Vec<PollFd<'_>> = self
                .sockets
                .iter()
                .map(|s| PollFd::new(s, PollFlags::IN))
                .collect();
            fds.push(PollFd::new(&self.bell, PollFlags::IN));
            let timeout = wait.map(|d| Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            if let Err(e) = poll(&mut fds, timeout.as_ref()) {
                if e != rustix::io::Errno::INTR {
                    debug!(error = %e, "AoE poll failed");
                }
                return Vec::new();
            }
            fds.iter()
                .map(|f| !f.revents().is_empty())
                .collect::<Vec<_>>()
        };
        if ready[self.sockets.len()] {
            let mut buf = [0u8; 64];
            while matches!((&self.bell).read(&mut buf), Ok(n) if n > 0) {}
        }
        (0..self.sockets.len()).filter(|&i| ready[i]).collect()
    }

    /// Takes the frames waiting on socket `i`.
    fn receive(&mut self, i: usize, now: Instant) {
        if self.sockets[i].recv_batch(&mut self.batches[i]).is_err() {
            return;
        }
        let iface = self.ifaces[i];
        for f in self.batches[i].frames() {
            let Ok(fr) = Frame::decode(f) else { continue };
            if fr.header.command == Command::QueryConfig {
                for (_, d, _) in &mut self.discoveries {
                    d.take(&self.names[i], &fr);
                }
            }
            let addr = (fr.header.shelf, fr.header.slot);
            if let Some(t) = self
                .targets
                .values_mut()
                .find(|t| t.core.shelf_slot() == addr && t.ifaces.contains(&i))
            {
                t.core.handle_frame(now, iface, &fr);
            }
        }
    }
}
