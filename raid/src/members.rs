//! The member table held in memory: which device serves each slot and in
//! what state, the hot spares, a running rebuild's or replace's position,
//! and beside them
//! the rest of the array's metadata (the superblock it last wrote and the
//! write-intent bitmap). Pure state: persisting it is
//! [`crate::metadata`]'s, and what a member error does to it is decided there
//! from the error's class.

use std::time::Duration;

use blockdev::SharedDevice;

use crate::bitmap::Bitmap;
use crate::pacing::Pacing;
use crate::superblock::{SlotEntry, SlotState, Superblock, REPLACEMENT, SPARE};

/// State of one member slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In sync and used.
    InSync,
    /// Failed or missing since the given clock time.
    Faulty {
        /// When it failed.
        since: Duration,
    },
    /// Being rebuilt.
    Rebuilding,
    /// Suspended on purpose since the given clock time (maintenance): no
    /// I/O goes to it, the array serves degraded, no spare replaces it.
    Suspended {
        /// When it was suspended (or, after a restart, assembled).
        since: Duration,
    },
}

impl MemberState {
    /// Whether the slot is out of the array's I/O: failed or suspended.
    pub fn unavailable(&self) -> bool {
        matches!(
            self,
            MemberState::Faulty { .. } | MemberState::Suspended { .. }
        )
    }
}

/// One member slot.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) dev: Option<SharedDevice>,
    pub(crate) uuid: [u8; 16],
    pub(crate) state: MemberState,
}

/// An ongoing rebuild.
#[derive(Debug, Clone)]
pub(crate) struct RebuildState {
    pub(crate) slot: u32,
    /// Rows below are in sync on the target.
    pub(crate) pos: u64,
    /// Last persisted position.
    pub(crate) checkpoint: u64,
    /// Only bitmap-dirty rows need rebuilding (a returning member).
    pub(crate) bitmap_only: bool,
    pub(crate) pace: Pacing,
}

impl RebuildState {
    pub(crate) fn new(slot: u32, pos: u64, bitmap_only: bool, now: Duration) -> Self {
        RebuildState {
            slot,
            pos,
            checkpoint: pos,
            bitmap_only,
            pace: Pacing::new(now),
        }
    }

    /// Whether the target holds current data for `row`.
    pub(crate) fn in_sync(&self, row: u64, bitmap: &Bitmap) -> bool {
        row < self.pos || (self.bitmap_only && !bitmap.row_dirty(row))
    }
}

/// A running replace: the slot's chunks are being copied onto `target`
/// while the slot's own device still serves.
#[derive(Debug, Clone)]
pub(crate) struct ReplaceState {
    pub(crate) slot: u32,
    pub(crate) target: SharedDevice,
    /// Rows below are copied: writes to them go to both devices.
    pub(crate) pos: u64,
    /// Last persisted position (the target flushed up to it).
    pub(crate) checkpoint: u64,
    pub(crate) pace: Pacing,
}

impl ReplaceState {
    pub(crate) fn new(slot: u32, target: SharedDevice, pos: u64, now: Duration) -> Self {
        ReplaceState {
            slot,
            target,
            pos,
            checkpoint: pos,
            pace: Pacing::new(now),
        }
    }
}

/// The array's metadata in memory.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) sb: Superblock,
    pub(crate) slots: Vec<Slot>,
    pub(crate) spares: Vec<SharedDevice>,
    pub(crate) rebuild: Option<RebuildState>,
    pub(crate) replace: Option<ReplaceState>,
    pub(crate) bitmap: Bitmap,
    pub(crate) clean_on_disk: bool,
}

impl Meta {
    /// The member device usable for `row` in `slot`, if any: in sync, or
    /// being rebuilt and already past `row`.
    pub(crate) fn usable(&self, slot: u32, row: u64) -> Option<SharedDevice> {
        let s = self.slots.get(slot as usize)?;
        match s.state {
            MemberState::InSync => s.dev.clone(),
            MemberState::Rebuilding => match &self.rebuild {
                Some(r) if r.slot == slot && r.in_sync(row, &self.bitmap) => s.dev.clone(),
                _ => None,
            },
            MemberState::Faulty { .. } | MemberState::Suspended { .. } => None,
        }
    }

    /// The replacement device that also takes the writes of `slot`'s
    /// chunk in `row`: a replace of that slot has copied the row already.
    pub(crate) fn mirror(&self, slot: u32, row: u64) -> Option<SharedDevice> {
        self.replace
            .as_ref()
            .filter(|r| r.slot == slot && row < r.pos)
            .map(|r| r.target.clone())
    }

    /// Devices that hold metadata (bitmap, superblock, journal ring):
    /// present, neither faulty nor suspended.
    pub(crate) fn live_members(&self) -> Vec<(u32, SharedDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.state.unavailable())
            .filter_map(|(i, s)| s.dev.clone().map(|d| (i as u32, d)))
            .collect()
    }

    /// Marks a slot faulty since `now` (a spare's role is ignored). Returns
    /// whether it changed; a rebuild onto it ends. A slot being replaced
    /// hands over to its replacement instead: the rows copied so far are in
    /// sync there, and the copy goes on as a rebuild from where it stood.
    pub(crate) fn mark_faulty(&mut self, slot: u32, now: Duration) -> bool {
        if slot == SPARE || slot == REPLACEMENT {
            return false;
        }
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        if matches!(s.state, MemberState::Faulty { .. }) {
            return false;
        }
        let handover = self.replace.take_if(|r| {
            r.slot == slot && s.state == MemberState::InSync && self.rebuild.is_none()
        });
        if let Some(r) = handover {
            s.uuid = r.target.identity().uuid;
            s.dev = Some(r.target);
            s.state = MemberState::Rebuilding;
            let mut rebuild = RebuildState::new(slot, r.pos, false, now);
            rebuild.checkpoint = r.checkpoint;
            self.rebuild = Some(rebuild);
            return true;
        }
        s.state = MemberState::Faulty { since: now };
        if self.rebuild.as_ref().is_some_and(|r| r.slot == slot) {
            self.rebuild = None;
        }
        if self.replace.as_ref().is_some_and(|r| r.slot == slot) {
            self.replace = None;
        }
        true
    }

    /// Unavailable (faulty or suspended) slots among those the array (or a
    /// running reshape) uses.
    pub(crate) fn failed_members(&self) -> usize {
        let members = self.sb.members.max(self.sb.reshape_members) as usize;
        self.slots[..members.min(self.slots.len())]
            .iter()
            .filter(|s| s.state.unavailable())
            .count()
    }

    /// Whether any member is failed, missing or still rebuilding.
    pub(crate) fn degraded(&self) -> bool {
        self.slots.iter().any(|s| s.state != MemberState::InSync)
    }

    /// The member table as the superblock records it.
    pub(crate) fn slot_entries(&self) -> Vec<SlotEntry> {
        self.slots
            .iter()
            .map(|s| SlotEntry {
                device: s.uuid,
                state: match s.state {
                    MemberState::InSync => SlotState::Active,
                    MemberState::Faulty { .. } => SlotState::Faulty,
                    MemberState::Rebuilding => SlotState::Rebuilding,
                    MemberState::Suspended { .. } => SlotState::Suspended,
                },
            })
            .collect()
    }
}
