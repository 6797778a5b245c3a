//! Multipath: one block device over several paths (iSCSI sessions, AoE
//! interfaces) to the same ISU disk, grouped by the disk's stable identity,
//! with failover that the caller never sees.
//!
//! The core is sans-I/O and takes the time as an input: the state machine of
//! each path ([`health`]: up, failed, marginal after flapping, dead), the
//! ALUA state of its port group ([`alua`]), its statistics ([`stats`]), the
//! selectors ([`selector`]), the no-path policy ([`no_path`]), all put
//! together in [`PathSet`]; and the grouping of discovered paths into disks
//! ([`group`]).
//!
//! At the edge, [`MultipathDevice`] is a `BlockDevice` over [`Path`]s: it
//! routes each I/O through the core, retries it on another path when its
//! error's class allows, fences a path before it reports a write whose
//! attempt there had an unknown outcome, and runs the checker task.

pub mod alua;
mod checker;
pub mod config;
mod device;
mod error;
pub mod events;
mod fenced;
pub mod group;
pub mod health;
pub mod no_path;
mod path;
mod path_set;
pub mod selector;
pub mod stats;

pub use alua::AluaState;
pub use config::{Config, Marginal};
pub use device::MultipathDevice;
pub use error::MultipathError;
pub use events::PathEvent;
pub use group::{group, PathGroup, Transport};
pub use health::PathState;
pub use path::Path;
pub use path_set::{PathReport, PathSet, Route};
pub use selector::SelectorKind;
pub use stats::PathStats;
