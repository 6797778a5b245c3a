//! opie's AoE initiator: how the head reaches an ISU disk over AoE r11.
//!
//! The core is sans-I/O, one [`TargetState`] per shelf.slot, with the time
//! passed in; the codec, the ATA registers and the reading of replies into
//! [`blockdev::BlockError`]s are `aoe-proto`'s. Modules, innermost first:
//! - [`settings`]: the timers and thresholds, with their defaults;
//! - [`rtt`]: the round-trip estimate and the adaptive retransmit timeout;
//! - [`window`]: how many frames may be outstanding (from the target's
//!   buffer count, halved on loss, grown back one by one);
//! - [`paths`]: the (local interface, target MAC) pairs, round-robin with
//!   steering away from a failing one, and its probes;
//! - [`order`]: the write-ordering rule below;
//! - [`wire`]: the request frames;
//! - [`target`]: the per-target state machine on all of these;
//! - [`discovery`]: what answers a broadcast Query Config (sans-I/O);
//! - [`driver`]: the I/O edge, one thread per head ([`Driver`]) that owns a
//!   raw socket on each interface (`aoe-proto`'s), polls them all at once,
//!   and runs the state machine of every target attached to it;
//! - [`device`]: [`AoeDevice`], a target as a `BlockDevice` on a driver;
//! - [`path`]: [`AoePath`], an `AoeDevice` as a `multipath::Path`.
//!
//! # What a request becomes
//!
//! A read or write is split into frames of at most the sectors every path
//! carries (the least of the targets' Query Config words and the local
//! MTUs: 2 sectors on a 1500-byte MTU, 17 on a 9000-byte one). Each frame is
//! sent when the window has room and the ordering rule lets it; every
//! transmission (copy) has a tag of its own, so every reply is a round-trip
//! sample and a reply to one copy is told from a reply to another. A frame
//! unanswered for its timeout is sent again with a new tag, on another path
//! when there is one. The first reply to any copy finishes the frame;
//! replies to other copies, duplicates and tags nobody waits for are
//! counted and dropped. A request finishes when all its frames have (never
//! earlier, so a returned request has nothing of it left in flight but the
//! stale copies the rule below holds off), with the first frame's error.
//! After [`Settings::give_up`] without an answer a frame ends: a read with
//! `PathDown` (retry elsewhere), a write or flush with `TimedOut` (the
//! outcome is unknown).
//!
//! # Write ordering
//!
//! AoE cannot cancel a frame: a copy that timed out may be sitting in a
//! switch queue, on a link that comes back, or in the target's queue, and
//! land later. The target runs frames concurrently, so even two frames on
//! one path may execute in either order. The initiator therefore keeps two
//! rules ([`order`]):
//! 1. Two frames whose sectors overlap, one of them a write, are never
//!    outstanding together: the later one by submission order waits until
//!    the earlier is finished (answered or given up). Reads may overlap
//!    reads and go on any path.
//! 2. A write that finished while a copy of it was unanswered (it was
//!    retransmitted, and the reply came to another copy; or it was given
//!    up) leaves a fence over its sectors: a later write to any of them is
//!    held back until every such copy is answered, or until
//!    [`Settings::stale_horizon`] has passed since the last of them was
//!    sent (a copy is presumed dead by then: that horizon is the one
//!    assumption, like TCP's segment lifetime). Reads are not held: a stale
//!    copy writes the same data the answered one wrote.
//!
//! What the rules do not cover: a copy of a write frame made by the
//! network itself (the same tag twice). AoE cannot tell it from the first,
//! and fencing every write for the horizon would hold back every rewrite of
//! a block; Ethernet duplicates frames only in a forwarding loop.
//!
//! So a retransmitted write's stale first copy can never land over a later
//! write of the same blocks; what it can still do is write its own data
//! again, which is what was acknowledged.

#![forbid(unsafe_code)]

pub mod device;
pub mod discovery;
pub mod driver;
pub mod order;
pub mod path;
pub mod paths;
pub mod rtt;
pub mod settings;
pub mod target;
pub mod window;
pub mod wire;

pub use device::{AoeDevice, OpenError};
pub use discovery::Found;
pub use driver::{discover, AttachError, Driver};
pub use path::AoePath;
pub use paths::Interface;
pub use settings::Settings;
pub use target::{Completion, Request, RequestId, Stats, TargetState, Transmit};
