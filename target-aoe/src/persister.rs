//! A disk's persister: the task that writes the disk's AoE state (config
//! string, access lists) when the coalescing policy of [`crate::persist`]
//! says so, and answers the changes each write covers.
//!
//! Receive threads apply a change to the target and hand its reply to the
//! policy under the disk's lock, then wake the persister; they never wait for
//! a write, and no read or write of the disk is ever queued behind one (the
//! data path does not come here). The persister takes the snapshot to write
//! under the same lock, so the generation it writes is exactly the state it
//! snapshots, and writes it on the blocking pool (temp file, fsync, rename,
//! fsync of the directory: [`crate::state`]).

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use aoe_proto::frame::{AoeErrorCode, Mac};
use aoe_proto::rawsock::RawSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::persist::{
    Admitted, Coalescer, FloodReport, Next, DEFAULT_INTERVAL, DEFAULT_MAX_WAITING, REPORT_EVERY,
};
use crate::server::{send_replies, Disk, DiskState};
use crate::state;
use crate::target::{Reply, ReplyCtx, Snapshot, StatePart};

/// A reply waiting for the write of the state it reports.
pub(crate) struct Waiter {
    /// The socket the request came in by.
    pub(crate) sock: Arc<RawSocket>,
    /// How to answer it.
    pub(crate) ctx: ReplyCtx,
}

/// The coalescing policies of a disk's two state parts.
pub(crate) struct Saves {
    config: Coalescer<Waiter>,
    access: Coalescer<Waiter>,
}

impl Saves {
    pub(crate) fn new() -> Saves {
        Saves {
            config: Coalescer::new(DEFAULT_INTERVAL, DEFAULT_MAX_WAITING),
            access: Coalescer::new(DEFAULT_INTERVAL, DEFAULT_MAX_WAITING),
        }
    }

    /// The policy of one part.
    pub(crate) fn of(&mut self, part: StatePart) -> &mut Coalescer<Waiter> {
        match part {
            StatePart::Config => &mut self.config,
            StatePart::Access => &mut self.access,
        }
    }
}

/// Where and how a disk's state is written.
pub(crate) struct StateFiles {
    /// The config string's file.
    pub(crate) config: PathBuf,
    /// The access lists' file.
    pub(crate) access: PathBuf,
    /// The mask list of the configuration (recorded with the lists).
    pub(crate) configured_mask: Vec<Mac>,
}

impl StateFiles {
    fn path(&self, part: StatePart) -> &Path {
        match part {
            StatePart::Config => &self.config,
            StatePart::Access => &self.access,
        }
    }

    fn write(&self, snapshot: &Snapshot) -> io::Result<()> {
        match snapshot {
            Snapshot::Config(c) => state::save_config(&self.config, c),
            Snapshot::Access(a) => state::save_access(&self.access, &self.configured_mask, a),
        }
    }
}

fn index(part: StatePart) -> usize {
    match part {
        StatePart::Config => 0,
        StatePart::Access => 1,
    }
}

/// Hands a change's reply (the change is applied to `state.target`) to the
/// policy: the reply to send at once when everything it reports is durable,
/// else `None` (it waits for the persister, or was dropped in a flood).
pub(crate) fn admit(
    state: &mut DiskState,
    now: Instant,
    part: StatePart,
    changed: bool,
    waiter: Waiter,
) -> Option<Reply> {
    match state.saves.of(part).change(now, changed, waiter) {
        Admitted::AnswerNow(w) => Some(w.ctx.persisted(&state.target.snapshot(part))),
        Admitted::Waiting | Admitted::Dropped(_) => None,
    }
}

/// Logs a flood report (the policy rate-limits them).
pub(crate) fn log_flood(disk: &str, part: StatePart, r: &FloodReport) {
    warn!(
        disk,
        state = ?part,
        changes = r.changes,
        writes = r.writes,
        dropped_replies = r.dropped,
        secs = format!("{:.1}", r.over.as_secs_f64()),
        "AoE state changes flooding: coalesced into one write per {:?}; replies beyond {} waiting are dropped (this line at most every {:?})",
        DEFAULT_INTERVAL,
        DEFAULT_MAX_WAITING,
        REPORT_EVERY,
    );
}

/// A finished write: the part, the generation and the state it wrote.
type Written = (StatePart, u64, Snapshot, io::Result<()>);

/// The persister of `disk`, whose durable state is `durable` (indexed as
/// [`StatePart::ALL`]). The two parts are written independently (one write
/// of each at most in flight). Runs until every sender of `wake` is gone,
/// then writes what is still dirty and returns.
pub(crate) async fn run(disk: Arc<Disk>, durable: [Snapshot; 2], mut wake: mpsc::Receiver<()>) {
    let mut durable = durable;
    let mut stopping = false;
    let mut writes: JoinSet<Written> = JoinSet::new();
    loop {
        let mut due: Option<Instant> = None;
        {
            let mut guard = disk.state();
            let st = &mut *guard;
            let now = Instant::now();
            for part in StatePart::ALL {
                let saves = st.saves.of(part);
                let next = if stopping {
                    saves.poll_now(now)
                } else {
                    saves.poll(now)
                };
                match next {
                    // The snapshot is taken under the lock the changes are
                    // made under: it is exactly that generation.
                    Next::Write(generation) => {
                        let snapshot = st.target.snapshot(part);
                        let d = disk.clone();
                        writes.spawn_blocking(move || {
                            let r =
                                panic::catch_unwind(AssertUnwindSafe(|| d.files.write(&snapshot)))
                                    .unwrap_or_else(|_| {
                                        Err(io::Error::other("state write panicked"))
                                    });
                            (part, generation, snapshot, r)
                        });
                    }
                    Next::WaitUntil(t) => due = Some(due.map_or(t, |d| d.min(t))),
                    Next::Idle => {}
                }
            }
        }
        if stopping && writes.is_empty() {
            break;
        }
        tokio::select! {
            Some(done) = writes.join_next(), if !writes.is_empty() => match done {
                Ok(w) => finish(&disk, &mut durable, w),
                Err(e) => error!(disk = %disk.name, error = %e, "AoE state write task failed"),
            },
            w = wake.recv(), if !stopping => stopping = w.is_none(),
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {}
        }
    }
    debug!(disk = %disk.name, "AoE disk persister stopped");
}

/// Takes a finished write: answers the replies it covers with the state it
/// wrote, or, if it failed, puts the last durable state back and answers
/// every waiting reply "device unavailable".
fn finish(disk: &Disk, durable: &mut [Snapshot; 2], (part, generation, snapshot, result): Written) {
    let (released, failed) = {
        let mut guard = disk.state();
        let st = &mut *guard;
        let out = match &result {
            Ok(()) => (st.saves.of(part).written(generation), Vec::new()),
            Err(e) => {
                let undone = st.saves.of(part).failed();
                error!(disk = %disk.name, path = %disk.files.path(part).display(), error = %e,
                       waiting = undone.len(),
                       "cannot persist AoE state; every change since the last write undone");
                st.target.restore(durable[index(part)].clone());
                (Vec::new(), undone)
            }
        };
        if let Some(report) = st.saves.of(part).flood_report(Instant::now()) {
            log_flood(&disk.name, part, &report);
        }
        out
    };
    let mut out: Vec<(Arc<RawSocket>, Reply)> = released
        .into_iter()
        .map(|w| {
            let r = w.ctx.persisted(&snapshot);
            (w.sock, r)
        })
        .chain(failed.into_iter().map(|w| {
            let r = w.ctx.error(AoeErrorCode::DeviceUnavailable);
            (w.sock, r)
        }))
        .collect();
    debug!(disk = %disk.name, ?part, generation, ok = result.is_ok(), replies = out.len(), "AoE state written");
    send_replies(&mut out);
    if result.is_ok() {
        durable[index(part)] = snapshot;
    }
}
