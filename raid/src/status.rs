//! The state of an array and of each member in one cheap call, for a status
//! monitor to poll ([`RaidArray::states`]): no I/O and no async lock, only
//! the in-memory member table.

use std::time::Duration;

use blockdev::DeviceIdentity;

use crate::array::RaidArray;
use crate::layout::Layout;
use crate::members::MemberState;
use crate::rebuild::RebuildProgress;
use crate::replace::ReplaceProgress;
use crate::reshape::{rows_needed, ReshapeProgress};

/// What one member slot is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberStatus {
    /// In sync and used.
    Active,
    /// Suspended on purpose since the given clock time (not failed).
    Suspended {
        /// When it was suspended (or the array assembled).
        since: Duration,
    },
    /// Failed or missing since the given clock time.
    Failed {
        /// When it failed.
        since: Duration,
    },
    /// Being rebuilt: rows below `done_rows` are in sync on it.
    Rebuilding {
        /// The rebuild position.
        done_rows: u64,
        /// Rows in the array.
        total_rows: u64,
    },
    /// Active, and being copied onto `target`, which takes the slot at the end.
    Replacing {
        /// The copy position.
        done_rows: u64,
        /// Rows in the array.
        total_rows: u64,
        /// The device it is copied onto.
        target: DeviceIdentity,
    },
}

/// One member slot in [`ArrayStatus`].
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    /// The slot.
    pub slot: u32,
    /// The device in it, if one is attached (none for a missing member).
    pub device: Option<DeviceIdentity>,
    /// What it is doing.
    pub status: MemberStatus,
}

/// The array's headline state: the most pressing of what holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayHealth {
    /// Every member active, nothing running.
    Clean,
    /// A member a replace is copying: still fully redundant.
    Replacing,
    /// A reshape (grow) is restriping the array.
    Reshaping,
    /// A member is being rebuilt (the array is not yet redundant).
    Rebuilding,
    /// A member is failed, missing or suspended: no redundancy.
    Degraded,
    /// More members are unavailable than parity covers: no I/O succeeds.
    Failed,
}

/// Everything a status monitor shows of an array ([`RaidArray::states`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayStatus {
    /// The headline state.
    pub health: ArrayHealth,
    /// Whether a member is unavailable or still rebuilding.
    pub degraded: bool,
    /// Every member slot.
    pub members: Vec<MemberView>,
    /// Hot spares waiting.
    pub spares: Vec<DeviceIdentity>,
    /// Volume capacity in blocks.
    pub capacity_blocks: u64,
    /// The running rebuild.
    pub rebuild: Option<RebuildProgress>,
    /// The running replace.
    pub replace: Option<ReplaceProgress>,
    /// The running reshape (position as of its last finished window).
    pub reshape: Option<ReshapeProgress>,
}

impl RaidArray {
    /// The array's state and every member's, in one call that does no I/O
    /// and takes no async lock: cheap enough to poll.
    pub fn states(&self) -> ArrayStatus {
        let rebuild = self.rebuild_progress();
        let replace = self.replace_progress();
        let capacity_blocks = blockdev::BlockDevice::geometry(self).num_blocks;
        let m = self.meta();
        let total_rows = m.sb.rows;
        let members: Vec<MemberView> = m
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let slot = i as u32;
                let status = match s.state {
                    MemberState::InSync => match m.replace.as_ref().filter(|r| r.slot == slot) {
                        Some(r) => MemberStatus::Replacing {
                            done_rows: r.pos,
                            total_rows,
                            target: r.target.identity().clone(),
                        },
                        None => MemberStatus::Active,
                    },
                    MemberState::Suspended { since } => MemberStatus::Suspended { since },
                    MemberState::Faulty { since } => MemberStatus::Failed { since },
                    MemberState::Rebuilding => MemberStatus::Rebuilding {
                        done_rows: m
                            .rebuild
                            .as_ref()
                            .filter(|r| r.slot == slot)
                            .map_or(0, |r| r.pos),
                        total_rows,
                    },
                };
                MemberView {
                    slot,
                    device: s.dev.as_ref().map(|d| d.identity().clone()),
                    status,
                }
            })
            .collect();
        let reshape = (m.sb.reshape_members != 0).then(|| {
            let old = Layout {
                members: m.sb.members,
                chunk_blocks: m.sb.chunk_blocks,
                tag_blocks: m.sb.tag_blocks,
                data_start: m.sb.data_start,
                rows: m.sb.rows,
            };
            let new = Layout {
                members: m.sb.reshape_members,
                ..old
            };
            ReshapeProgress {
                new_members: new.members,
                done_rows: m.sb.reshape_pos,
                total_rows: rows_needed(&old, &new),
            }
        });
        let unavailable = m.failed_members();
        let health = if unavailable > 1 {
            ArrayHealth::Failed
        } else if unavailable == 1 {
            ArrayHealth::Degraded
        } else if m.rebuild.is_some() {
            ArrayHealth::Rebuilding
        } else if reshape.is_some() {
            ArrayHealth::Reshaping
        } else if m.replace.is_some() {
            ArrayHealth::Replacing
        } else {
            ArrayHealth::Clean
        };
        ArrayStatus {
            health,
            degraded: m.degraded(),
            members,
            spares: m.spares.iter().map(|d| d.identity().clone()).collect(),
            capacity_blocks,
            rebuild,
            replace,
            reshape,
        }
    }
}
