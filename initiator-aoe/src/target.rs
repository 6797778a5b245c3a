//! One AoE target (a shelf.slot) seen from the initiator, as a sans-I/O
//! state machine: requests and received frames in, frames to send and
//! completions out, with the time passed in.
//!
//! The edge [`TargetState::submit`]s requests, hands every AoE response for
//! this shelf.slot to [`TargetState::handle_frame`], sends what
//! [`TargetState::poll_transmit`] returns, calls
//! [`TargetState::handle_timeout`] when [`TargetState::poll_timeout`] says,
//! and takes the results from [`TargetState::poll_completion`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use aoe_proto::frame::{AtaArg, Command, ConfigArg, Frame, Mac, SECTOR_SIZE};
use aoe_proto::outcome::reply_result;
use blockdev::{BlockError, Bytes, BytesMut, ErrorClass};
use tracing::debug;

use crate::order::{Access, Extent, Fences};
use crate::paths::{Interface, PathId, Paths};
use crate::rtt::RttEstimator;
use crate::settings::Settings;
use crate::window::Window;
use crate::wire::{ata_request, config_query, Address, AtaCommand};

/// The caller's name for a submitted request.
pub type RequestId = u64;

/// A request to the target, in 512-byte sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read `sectors` sectors at `lba`.
    Read {
        /// First sector.
        lba: u64,
        /// Number of sectors.
        sectors: u32,
    },
    /// Write `data` (whole sectors) at `lba`.
    Write {
        /// First sector.
        lba: u64,
        /// The data.
        data: Bytes,
    },
    /// FLUSH CACHE: every write answered before is durable.
    Flush,
    /// IDENTIFY DEVICE: the 512-byte page.
    Identify,
}

/// A finished request: the data read (the IDENTIFY page; empty for a write
/// or flush) or why it failed.
#[derive(Debug)]
pub struct Completion {
    /// The request.
    pub id: RequestId,
    /// Its result.
    pub result: Result<Bytes, BlockError>,
}

/// A frame to send on the edge's interface `iface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The edge's index of the local interface.
    pub iface: usize,
    /// The whole Ethernet frame.
    pub frame: Vec<u8>,
}

/// Counters of one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent for the first time.
    pub sent: u64,
    /// Copies sent again after a timeout.
    pub retransmits: u64,
    /// Replies to a copy of a finished frame (a late one, or the other copy's).
    pub late: u64,
    /// Replies with a tag nobody waits for (duplicates, or older than the
    /// stale horizon), ignored.
    pub unknown: u64,
    /// Replies with a known tag that were malformed or from the wrong MAC,
    /// ignored (the frame is retransmitted as if lost).
    pub bad: u64,
    /// Busy (retry-later) replies: the frame was not carried out and is
    /// sent again after a backoff.
    pub busy: u64,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Read,
    Write,
    Flush,
    Identify,
}

#[derive(Debug, Clone, Copy)]
struct Copy {
    tag: u32,
    path: PathId,
    at: Instant,
}

#[derive(Debug)]
struct FrameState {
    req: RequestId,
    op: Op,
    extent: Option<Extent>,
    data: Bytes,
    /// Byte offset of this frame's data in its request's.
    offset: usize,
    copies: Vec<Copy>,
    rexmit_at: Option<Instant>,
    deadline: Instant,
    /// Busy replies so far; while it has no copy out, not sent before
    /// `not_before`.
    busy: u32,
    not_before: Option<Instant>,
    /// The last busy reply's error, what the frame ends with if its
    /// deadline passes before another answer.
    busy_error: Option<BlockError>,
}

impl FrameState {
    fn access(&self) -> Access {
        Access {
            extent: self.extent,
            write: matches!(self.op, Op::Write),
        }
    }

    fn sectors(&self) -> u32 {
        self.extent.map_or(1, |e| e.sectors)
    }
}

#[derive(Debug)]
struct Pending {
    frames_left: usize,
    data: BytesMut,
    error: Option<BlockError>,
}

/// The initiator's state for one target.
#[derive(Debug)]
pub struct TargetState {
    settings: Settings,
    shelf: u16,
    slot: u8,
    lba48: bool,
    paths: Paths,
    rtt: RttEstimator,
    window: Option<Window>,
    /// Unfinished frames by submission order, queued and outstanding.
    frames: BTreeMap<u64, FrameState>,
    /// Tags of the copies of unfinished frames.
    tags: HashMap<u32, u64>,
    probes: HashMap<u32, PathId>,
    fences: Fences,
    requests: HashMap<RequestId, Pending>,
    outstanding: u32,
    /// When the last copy of a write frame was sent.
    last_write_sent: Option<Instant>,
    next_req: RequestId,
    next_seq: u64,
    next_tag: u32,
    tx: VecDeque<Transmit>,
    done: VecDeque<Completion>,
    stats: Stats,
}

impl TargetState {
    /// The state for target `shelf`.`slot`, with no path yet: paths come
    /// from its Query Config replies ([`TargetState::handle_frame`]).
    pub fn new(shelf: u16, slot: u8, settings: Settings) -> TargetState {
        TargetState {
            settings,
            shelf,
            slot,
            lba48: true,
            paths: Paths::default(),
            rtt: RttEstimator::new(&settings),
            window: None,
            frames: BTreeMap::new(),
            tags: HashMap::new(),
            probes: HashMap::new(),
            fences: Fences::default(),
            requests: HashMap::new(),
            outstanding: 0,
            last_write_sent: None,
            next_req: 1,
            next_seq: 0,
            next_tag: 0,
            tx: VecDeque::new(),
            done: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Uses 48-bit commands (the default) or, for a disk whose IDENTIFY page
    /// says it has no 48-bit feature set, LBA28 ones.
    pub fn set_lba48(&mut self, lba48: bool) {
        self.lba48 = lba48;
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The target's shelf and slot.
    pub fn shelf_slot(&self) -> (u16, u8) {
        (self.shelf, self.slot)
    }

    /// The paths known so far.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The window: frames that may be outstanding now (0 before any path).
    pub fn window(&self) -> u32 {
        self.window.as_ref().map_or(0, Window::size)
    }

    /// The current retransmit timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    /// Takes a Query Config reply that arrived from `remote` on `local`:
    /// the path exists, with the target's buffer count and sector limit.
    pub fn learn(&mut self, local: Interface, remote: Mac, config: &ConfigArg) -> PathId {
        match &mut self.window {
            Some(w) => w.set_limit(config.buffer_count),
            None => self.window = Some(Window::new(config.buffer_count)),
        }
        self.paths.learn(local, remote, config.max_sectors)
    }

    fn tag(&mut self) -> u32 {
        loop {
            self.next_tag = self.next_tag.wrapping_add(1) & 0x7fff_ffff;
            let t = self.next_tag;
            if t != 0
                && !self.tags.contains_key(&t)
                && !self.probes.contains_key(&t)
                && !self.fences.holds(t)
            {
                return t;
            }
        }
    }

    /// Submits a request at `now`; its [`Completion`] comes out of
    /// [`TargetState::poll_completion`]. Before any path is known it fails
    /// at once (`PathDown`).
    pub fn submit(&mut self, now: Instant, request: Request) -> RequestId {
        let id = self.next_req;
        self.next_req += 1;
        let max = self.paths.max_sectors().map_or(0, u32::from);
        if max == 0 {
            self.finish_now(
                id,
                Err(BlockError::PathDown("AoE: no path to the target".into())),
            );
            return id;
        }
        let deadline = now + self.settings.give_up;
        let frame = |op, extent, data, offset| FrameState {
            req: id,
            op,
            extent,
            data,
            offset,
            copies: Vec::new(),
            rexmit_at: None,
            deadline,
            busy: 0,
            not_before: None,
            busy_error: None,
        };
        let mut frames = Vec::new();
        let mut buf_len = 0;
        match request {
            Request::Read { lba, sectors } => {
                buf_len = sectors as usize * SECTOR_SIZE;
                for (l, n, off) in split(lba, sectors, max) {
                    frames.push(frame(
                        Op::Read,
                        Some(Extent { lba: l, sectors: n }),
                        Bytes::new(),
                        off,
                    ));
                }
            }
            Request::Write { lba, data } => {
                if data.len() % SECTOR_SIZE != 0 {
                    let e = BlockError::Misaligned {
                        len: data.len(),
                        block_size: SECTOR_SIZE as u32,
                    };
                    self.finish_now(id, Err(e));
                    return id;
                }
                let sectors = (data.len() / SECTOR_SIZE) as u32;
                for (l, n, off) in split(lba, sectors, max) {
                    let part = data.slice(off..off + n as usize * SECTOR_SIZE);
                    frames.push(frame(
                        Op::Write,
                        Some(Extent { lba: l, sectors: n }),
                        part,
                        off,
                    ));
                }
            }
            Request::Flush => frames.push(frame(Op::Flush, None, Bytes::new(), 0)),
            Request::Identify => {
                buf_len = SECTOR_SIZE;
                frames.push(frame(Op::Identify, None, Bytes::new(), 0));
            }
        }
        if frames.is_empty() {
            self.finish_now(id, Ok(Bytes::new()));
            return id;
        }
        self.requests.insert(
            id,
            Pending {
                frames_left: frames.len(),
                data: BytesMut::zeroed(buf_len),
                error: None,
            },
        );
        for f in frames {
            self.frames.insert(self.next_seq, f);
            self.next_seq += 1;
        }
        id
    }

    fn finish_now(&mut self, id: RequestId, result: Result<Bytes, BlockError>) {
        self.done.push_back(Completion { id, result });
    }

    /// The next finished request.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    /// The next frame to send: retransmissions and probes first, then new
    /// frames as the window and the ordering rule allow.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.tx.is_empty() {
            self.schedule(now);
        }
        self.tx.pop_front()
    }

    /// Queues every new frame that may go now.
    fn schedule(&mut self, now: Instant) {
        let Some(window) = self.window.as_ref().map(Window::size) else {
            return;
        };
        let mut ready = Vec::new();
        let mut outstanding = self.outstanding;
        for (&seq, f) in &self.frames {
            if outstanding >= window {
                break;
            }
            if !f.copies.is_empty() || f.not_before.is_some_and(|t| t > now) {
                continue;
            }
            let a = f.access();
            let held = self
                .frames
                .range(..seq)
                .any(|(_, g)| a.conflicts(&g.access()))
                || (a.write && a.extent.is_some_and(|e| self.fences.blocks_write(&e)));
            if !held {
                ready.push(seq);
                outstanding += 1;
            }
        }
        for seq in ready {
            if self.send(now, seq, None) {
                self.outstanding += 1;
                self.stats.sent += 1;
            }
        }
    }

    /// The local interface and the addresses of a frame on `path`.
    fn address(&self, path: PathId) -> (usize, Address) {
        let p = self.paths.get(path);
        let to = Address {
            dst: p.remote,
            src: p.local.mac,
            shelf: self.shelf,
            slot: self.slot,
        };
        (p.local.id, to)
    }

    /// Sends a copy of frame `seq`, avoiding path `avoid`; false when no
    /// path carries it.
    fn send(&mut self, now: Instant, seq: u64, avoid: Option<PathId>) -> bool {
        let sectors = self.frames[&seq].sectors();
        let Some(path) = self.paths.pick(&self.settings, sectors, avoid) else {
            return false;
        };
        let tag = self.tag();
        let (iface, to) = self.address(path);
        let f = &self.frames[&seq];
        let cmd = match (f.op, f.extent) {
            (Op::Read, Some(e)) => AtaCommand::Read {
                lba: e.lba,
                sectors: e.sectors as u8,
            },
            (Op::Write, Some(e)) => AtaCommand::Write {
                lba: e.lba,
                data: &f.data,
            },
            (Op::Flush, _) => AtaCommand::Flush,
            _ => AtaCommand::Identify,
        };
        let frame = ata_request(&to, tag, cmd, self.lba48);
        let retries = f.copies.len() as u32;
        let rexmit_at = now + self.rtt.backed_off(retries);
        let f = self.frames.get_mut(&seq).expect("frame exists");
        f.copies.push(Copy { tag, path, at: now });
        f.rexmit_at = Some(rexmit_at);
        f.not_before = None;
        if matches!(f.op, Op::Write) {
            self.last_write_sent = Some(now);
        }
        self.tags.insert(tag, seq);
        self.paths.on_send(path);
        self.tx.push_back(Transmit { iface, frame });
        true
    }

    /// When [`TargetState::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let frames = self
            .frames
            .values()
            .flat_map(|f| [f.rexmit_at, f.not_before, Some(f.deadline)])
            .flatten()
            .min();
        [frames, self.fences.next_expiry(), self.paths.next_probe()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Acts on the timers due at `now`: retransmissions, requests given up,
    /// fences expired, probes of failing paths.
    pub fn handle_timeout(&mut self, now: Instant) {
        for tag in self.fences.expire(now) {
            debug!(tag, "stale write copy presumed gone");
        }
        let due: Vec<u64> = self
            .frames
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            let f = self.frames.get_mut(&seq).expect("frame exists");
            let busy = f.busy_error.take();
            let err = match (f.copies.is_empty(), f.op) {
                (true, _) if busy.is_some() => busy.expect("checked"),
                (true, _) => BlockError::PathDown("AoE: no path carried the frame in time".into()),
                (false, Op::Read | Op::Identify) => {
                    BlockError::PathDown("AoE: no reply in time".into())
                }
                (false, Op::Write | Op::Flush) => {
                    BlockError::TimedOut("AoE: no reply in time".into())
                }
            };
            self.finish_frame(seq, None, Err(err));
        }
        let rexmit: Vec<u64> = self
            .frames
            .iter()
            .filter(|(_, f)| f.rexmit_at.is_some_and(|t| t <= now))
            .map(|(s, _)| *s)
            .collect();
        for seq in rexmit {
            let last = *self.frames[&seq]
                .copies
                .last()
                .expect("sent frames have copies");
            self.paths.on_timeout(&self.settings, last.path, now);
            let rtt = self.rtt.srtt().unwrap_or(self.rtt.rto());
            if let Some(w) = &mut self.window {
                w.on_timeout(now, rtt);
            }
            if self.send(now, seq, Some(last.path)) {
                self.stats.retransmits += 1;
            } else if let Some(f) = self.frames.get_mut(&seq) {
                // No path carries it now: try again a timeout later.
                f.rexmit_at = Some(now + self.rtt.rto());
            }
        }
        for path in self.paths.due_probes(&self.settings, now) {
            let tag = self.tag();
            let (iface, to) = self.address(path);
            // One probe per path is awaited: the last one.
            self.probes.retain(|_, p| *p != path);
            self.probes.insert(tag, path);
            self.tx.push_back(Transmit {
                iface,
                frame: config_query(&to, tag),
            });
        }
    }

    /// Takes a frame received at `now` on local interface `local`. Returns
    /// whether it was for this target (a response from its shelf.slot).
    pub fn handle_frame(&mut self, now: Instant, local: Interface, frame: &Frame<'_>) -> bool {
        let h = &frame.header;
        if !h.is_response() || h.shelf != self.shelf || h.slot != self.slot {
            return false;
        }
        match h.command {
            Command::QueryConfig => {
                if let Ok(config) = ConfigArg::decode(frame.payload) {
                    let path = self.learn(local, frame.src, &config);
                    self.probes.remove(&h.tag);
                    self.paths.on_reply(path);
                }
            }
            Command::Ata => self.ata_reply(now, local, frame),
            _ => {}
        }
        true
    }

    fn ata_reply(&mut self, now: Instant, local: Interface, frame: &Frame<'_>) {
        let tag = frame.header.tag;
        let Some(&seq) = self.tags.get(&tag) else {
            if self.fences.answered(tag) {
                self.stats.late += 1;
                if let Some(p) = self.paths.find(local.id, frame.src) {
                    self.paths.on_reply(p);
                }
            } else {
                self.stats.unknown += 1;
            }
            return;
        };
        let f = &self.frames[&seq];
        let copy = *f
            .copies
            .iter()
            .find(|c| c.tag == tag)
            .expect("tag of a copy");
        let (op, lba, sectors) = (f.op, f.extent.map_or(0, |e| e.lba), f.sectors());
        let path = self.paths.get(copy.path);
        if path.remote != frame.src || path.local.id != local.id {
            self.stats.bad += 1;
            return;
        }
        let Ok((arg, data)) = AtaArg::decode(frame.payload) else {
            self.stats.bad += 1;
            return;
        };
        let want = match op {
            Op::Read => sectors as usize * SECTOR_SIZE,
            Op::Identify => SECTOR_SIZE,
            Op::Write | Op::Flush => 0,
        };
        let result = match reply_result(&frame.header, &arg, lba) {
            Ok(()) if data.len() < want => {
                self.stats.bad += 1;
                return;
            }
            Ok(()) => Ok(&data[..want]),
            Err(e) => Err(e),
        };
        self.rtt.sample(now.saturating_duration_since(copy.at));
        self.paths.on_reply(copy.path);
        match result {
            Err(e) if e.class() == ErrorClass::RetryLater => self.retry_later(now, seq, tag, e),
            result => {
                if let Some(w) = &mut self.window {
                    w.on_answer();
                }
                self.finish_frame(seq, Some(tag), result);
            }
        }
    }

    /// The target answered copy `tag` of frame `seq` with busy (`error`):
    /// it did not carry it out, so that copy can no longer land. The frame
    /// is sent again after a backoff doubling per busy reply (unless another
    /// copy is still out, whose timer stands), until its deadline; the
    /// window shrinks as on a loss, since a busy target has no buffer free.
    fn retry_later(&mut self, now: Instant, seq: u64, tag: u32, error: BlockError) {
        self.stats.busy += 1;
        self.tags.remove(&tag);
        let rtt = self.rtt.srtt().unwrap_or(self.rtt.rto());
        if let Some(w) = &mut self.window {
            w.on_timeout(now, rtt);
        }
        let f = self.frames.get_mut(&seq).expect("frame exists");
        f.copies.retain(|c| c.tag != tag);
        f.busy += 1;
        f.busy_error = Some(error);
        if f.copies.is_empty() {
            self.outstanding -= 1;
            f.rexmit_at = None;
            f.not_before = Some(now + self.rtt.backed_off(f.busy - 1));
        }
    }

    /// Ends request `id`, whose caller is gone: its frames are sent no
    /// more (a write's copies already sent leave a fence, as when a frame is
    /// given up) and it completes at once with `TimedOut` (outcome unknown).
    pub fn cancel(&mut self, id: RequestId) {
        let seqs: Vec<u64> = self
            .frames
            .iter()
            .filter(|(_, f)| f.req == id)
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            let e = BlockError::TimedOut("AoE: the request was abandoned".into());
            self.finish_frame(seq, None, Err(e));
        }
    }

    /// Whether nothing this core sent can still write to the target at
    /// `now`: no write frame unfinished, and [`Settings::stale_horizon`]
    /// passed since the last copy of a write was sent (the target has
    /// carried out or dropped every copy by then). Reads may still be out:
    /// they change nothing.
    pub fn is_settled(&self, now: Instant) -> bool {
        !self.frames.values().any(|f| matches!(f.op, Op::Write))
            && self.settles_at().is_none_or(|t| t <= now)
    }

    /// When the last write copy sent passes the stale horizon.
    pub fn settles_at(&self) -> Option<Instant> {
        self.last_write_sent
            .map(|t| t + self.settings.stale_horizon)
    }

    /// Ends frame `seq` with `result` (its data, for a read), the reply to
    /// copy `answered` or none; a write with other copies unanswered leaves
    /// a fence over its sectors.
    fn finish_frame(&mut self, seq: u64, answered: Option<u32>, result: Result<&[u8], BlockError>) {
        let f = self.frames.remove(&seq).expect("frame exists");
        if !f.copies.is_empty() {
            self.outstanding -= 1;
        }
        let mut unanswered = Vec::new();
        let mut last_sent = None::<Instant>;
        for c in &f.copies {
            self.tags.remove(&c.tag);
            if Some(c.tag) != answered {
                unanswered.push(c.tag);
                last_sent = Some(last_sent.map_or(c.at, |t| t.max(c.at)));
            }
        }
        if let (Op::Write, Some(extent), Some(last)) = (f.op, f.extent, last_sent) {
            self.fences
                .add(extent, unanswered, last + self.settings.stale_horizon);
        }
        let Some(p) = self.requests.get_mut(&f.req) else {
            return;
        };
        match result {
            Ok(data) => {
                if !data.is_empty() {
                    p.data[f.offset..f.offset + data.len()].copy_from_slice(data);
                }
            }
            Err(e) => {
                p.error.get_or_insert(e);
            }
        }
        p.frames_left -= 1;
        if p.frames_left == 0 {
            let p = self.requests.remove(&f.req).expect("request exists");
            let result = match p.error {
                Some(e) => Err(e),
                None => Ok(p.data.freeze()),
            };
            self.done.push_back(Completion { id: f.req, result });
        }
    }
}

/// Splits `sectors` sectors at `lba` into frames of at most `max`:
/// (lba, sectors, byte offset) of each.
fn split(lba: u64, sectors: u32, max: u32) -> impl Iterator<Item = (u64, u32, usize)> {
    (0..sectors).step_by(max as usize).map(move |done| {
        let n = max.min(sectors - done);
        (lba + u64::from(done), n, done as usize * SECTOR_SIZE)
    })
}
