//! ATA over Ethernet target (AoE revision 11) for the ISU.
//!
//! The wire format and the raw sockets are `aoe-proto`'s (shared with the
//! head's AoE initiator); this crate is the target on top of them. Layers,
//! innermost first:
//! - [`ata`]: ATA emulation (command classification, IDENTIFY DEVICE, the
//!   status and error registers of each outcome);
//! - [`target`]: one shelf.slot target as a sans-I/O state machine (mask list,
//!   reservations, config string, ATA dispatch), frames in, replies or I/O out;
//! - [`persist`]: when a target's persisted state is written and which replies
//!   each write releases (coalescing, bounded, sans-I/O with the clock passed in);
//! - [`state`]: the files of that state (config string, access lists);
//! - [`server`]: a raw socket per interface, batched receive/transmit, device
//!   I/O off the receive loop, and each disk's persister task (`persister`),
//!   which writes the state apart from the data path; [`AoeServer`] is what
//!   `opie isu serve` starts.
//!
//! AoE has no authentication: MAC mask lists and reservations are its only
//! access control, so it is served only on interfaces the admin names.

#![forbid(unsafe_code)]

pub mod ata;
pub mod persist;
mod persister;
pub mod server;
pub mod state;
pub mod target;

pub use server::{AoeConfig, AoeDisk, AoeDiskConfig, AoeError, AoeServer};
