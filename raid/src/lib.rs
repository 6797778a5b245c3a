//! Software RAID5 over opie block devices.
//!
//! An array stripes a volume over `N >= 2` members ([`layout`]) with XOR
//! parity ([`parity`]) and is itself a [`blockdev::BlockDevice`]. Every data
//! and parity block carries a checksum bound to its address ([`integrity`]),
//! so bit rot, misdirected and torn writes are caught and repaired from parity
//! instead of returned. Members carry a [`superblock`] from which the array
//! assembles on any head ([`assembly`]), a write-intent [`bitmap`] for resync
//! after a crash and for the partial rebuild of a returning member
//! ([`rebuild`]), and optionally a [`journal`] that closes the write hole.
//! Arrays grow online ([`reshape`]) and can be [`scrub`]bed. A member can be
//! [`suspend`]ed for maintenance and resumed, or [`replace`]d online, and
//! [`status`] is the state of it all in one call. See DESIGN.md.

pub mod array;
pub mod assembly;
mod batch;
pub mod bitmap;
mod cache;
pub mod clock;
mod discard;
pub mod error;
mod flush;
mod geometry;
pub mod integrity;
pub mod journal;
pub mod layout;
mod member_io;
mod members;
mod metadata;
mod pacing;
pub mod parity;
mod read;
pub mod rebuild;
pub mod replace;
pub mod reshape;
mod row_update;
mod rows;
pub mod scrub;
pub mod status;
pub mod superblock;
pub mod suspend;
mod tag_cache;
mod write;

pub use array::{Config, IntegrityStats, RaidArray, SizeReport};
pub use assembly::{AssembleOptions, AssemblyReport};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{RaidError, Result};
pub use layout::Layout;
pub use members::MemberState;
pub use rebuild::{MaintenanceReport, RebuildProgress};
pub use replace::ReplaceProgress;
pub use reshape::ReshapeProgress;
pub use scrub::{CheckReport, Finding, ScrubReport};
pub use status::{ArrayHealth, ArrayStatus, MemberStatus, MemberView};
pub use suspend::ResumeReport;
pub use tag_cache::TagCacheStats;
