//! Volumes carved out of one block device, the head's RAID5 array.
//!
//! A [`Pool`] keeps the volumes of one device in a mapping table stored on
//! the device itself ([`table`]): two copies at fixed places in a reserved
//! area at its start, each with a magic, a format version, a sequence
//! number and a CRC32C over the whole copy. A change commits the new table
//! into the copy not holding the current one, with the sequence number one
//! higher, flushes and reads it back; only then is it current. Opening
//! takes the valid copy with the higher sequence number; a torn or corrupt
//! copy is ignored, and both unusable is an error ([`VolumeError::Corrupt`]),
//! never a guess. So a crash at any point of a commit leaves the old table
//! or the new one.
//!
//! Space is handed out in allocation units (the array's full stripe, which
//! the head passes to [`Pool::format`]); a volume holds one or more extents
//! of whole units, more after grows. New space is zeroed and flushed before
//! the commit that hands it out, so it reads zeroes and nothing of a deleted
//! volume leaks into a new one.
//!
//! An open volume is a [`Volume`], itself a [`blockdev::BlockDevice`]: its
//! identity derives from the volume's uuid (the same on every head and
//! across restarts), it splits requests at extent boundaries, passes flush,
//! FUA, zeroing and unmap down, and publishes a grow on its status channel
//! (the SCSI layer raises CAPACITY DATA HAS CHANGED). A volume cannot be
//! deleted while a handle to it is alive.
//!
//! Table changes are serialized; I/O to open volumes never waits on one.
//!
//! A [`Snapshot`] is a volume's content at one instant, kept by
//! copy-before-write into a hidden reserve volume while a backup reads it
//! ([`Pool::snapshot`]; module `snapshot`). Each volume tracks the regions
//! written since its last snapshot ([`changed`]), which the snapshot hands
//! to the backup; the map is kept on the device, each of its bits there
//! before a write into its region is acknowledged, and trusted at the next
//! open only after an orderly [`Pool::close`] ([`changed_store`]).

#![warn(missing_docs)]

mod alloc;
pub mod changed;
pub mod changed_store;
mod cow;
mod error;
pub mod mapping;
mod pool;
mod snapshot;
mod store;
pub mod table;
mod tracker;
mod volume;

pub use error::{CopyFault, Result, VolumeError};
pub use pool::{Clock, Pool, Space, VolumeInfo};
pub use snapshot::Snapshot;
pub use table::UnitExtent;
pub use volume::{Volume, CHANGED_REGION_BYTES};
