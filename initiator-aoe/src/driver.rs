//! The I/O edge of one target: a thread that owns the raw sockets of the
//! named interfaces and the target's [`TargetState`], moves frames between
//! them, keeps the time, and hands each finished request back through a
//! oneshot channel.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aoe_proto::frame::Frame;
use aoe_proto::rawsock::{RawSocket, RecvBatch};
use blockdev::{BlockError, Bytes};
use tokio::sync::oneshot;
use tracing::debug;

use crate::paths::Interface;
use crate::target::{Request, TargetState};
use crate::wire;

/// How long one receive call waits for a frame: the latency a request
/// submitted while the thread waits may see.
const RECV_WAIT: Duration = Duration::from_millis(1);
/// How often discovery is broadcast while the target has no path.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(200);

/// A request's result, as the caller receives it.
pub type Reply = oneshot::Sender<Result<Bytes, BlockError>>;

/// What the device sends its driver.
pub enum Cmd {
    /// Run a request.
    Submit(Request, Reply),
    /// Use 48-bit commands or not (from the IDENTIFY page).
    Lba48(bool),
}

/// The running driver of one target; dropping it ends the thread once the
/// requests it holds are finished.
#[derive(Debug)]
pub struct Driver {
    tx: Option<Sender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Opens a raw socket on each of `ifnames` and starts the thread for
    /// target `core`. Requests submitted within `discover_wait` of the start
    /// wait for the first path instead of failing.
    pub fn start(
        ifnames: &[String],
        core: TargetState,
        discover_wait: Duration,
    ) -> io::Result<Driver> {
        let mut sockets = Vec::new();
        for name in ifnames {
            sockets.push(RawSocket::open(name, 8 << 20, RECV_WAIT)?);
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("aoe-init-{}", ifnames.join(",")))
            .spawn(move || run(sockets, core, rx, discover_wait))?;
        Ok(Driver {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Sends `cmd` to the thread; false when it has ended.
    pub fn send(&self, cmd: Cmd) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(cmd).is_ok())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(sockets: Vec<RawSocket>, mut core: TargetState, rx: Receiver<Cmd>, discover_wait: Duration) {
    let ifaces: Vec<Interface> = sockets
        .iter()
        .enumerate()
        .map(|(id, s)| Interface {
            id,
            mac: s.mac(),
            mtu: s.mtu(),
        })
        .collect();
    let mut batches: Vec<RecvBatch> = sockets
        .iter()
        .map(|s| RecvBatch::new(64, s.mtu()))
        .collect();
    let start = Instant::now();
    let mut waiters: HashMap<u64, Reply> = HashMap::new();
    let mut held: Vec<(Request, Reply)> = Vec::new();
    let mut next_discovery = start;
    let mut open = true;
    loop {
        let now = Instant::now();
        let no_path = core.paths().all().is_empty();
        if no_path && now >= next_discovery {
            for (s, i) in sockets.iter().zip(&ifaces) {
                let _ = s.send(&wire::discovery(i.mac, 0));
            }
            next_discovery = now + DISCOVERY_INTERVAL;
        }
        while open {
            match rx.try_recv() {
                Ok(Cmd::Submit(req, reply)) => held.push((req, reply)),
                Ok(Cmd::Lba48(on)) => core.set_lba48(on),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !no_path || now >= start + discover_wait {
            for (req, reply) in held.drain(..) {
                waiters.insert(core.submit(now, req), reply);
            }
        }
        if !open && waiters.is_empty() && held.is_empty() {
            return;
        }
        while let Some(t) = core.poll_transmit(now) {
            if let Err(e) = sockets[t.iface].send(&t.frame) {
                // Counted as lost: the retransmission covers it.
                debug!(error = %e, "AoE send failed");
            }
        }
        for ((s, batch), iface) in sockets.iter().zip(&mut batches).zip(&ifaces) {
            if s.recv_batch(batch).is_err() {
                continue;
            }
            let now = Instant::now();
            for f in batch.frames() {
                if let Ok(fr) = Frame::decode(f) {
                    core.handle_frame(now, *iface, &fr);
                }
            }
        }
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        while let Some(c) = core.poll_completion() {
            if let Some(reply) = waiters.remove(&c.id) {
                let _ = reply.send(c.result);
            }
        }
    }
}
