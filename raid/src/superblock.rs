//! The superblock every member carries: enough to assemble the array from its
//! members alone.
//!
//! It lives in two slots of [`SB_BYTES`] at the start of each member; a new
//! version goes to slot `events % 2`, so a torn superblock write leaves the
//! previous version intact, and the reader takes the valid slot with the
//! highest event counter. Layout (little-endian, offsets in bytes):
//!
//! ```text
//!   0 magic "OPIERAID"          8 version u32          12 crc32c u32 (of all SB_BYTES, this field 0)
//!  16 array uuid [16]          32 device uuid [16]     48 role u32 (slot, SPARE, REPLACEMENT or RETIRED)
//!  52 flags u32                56 events u64           64 block size u32
//!  68 chunk blocks u32         72 tag blocks u32       76 members u32
//!  80 rows u64                 88 data start u64       96 bitmap start u64
//! 104 bitmap blocks u64       112 rows per bitmap bit u64
//! 120 journal start u64       128 journal blocks u64
//! 136 backup start u64        144 backup rows u64
//! 152 rebuild slot u32        156 rebuild flags u32   160 rebuild checkpoint row u64
//! 168 reshape members u32     172 reserved u32        176 reshape checkpoint row u64
//! 184 slot count u32          188 reserved u32
//! 192 slot table: MAX_SLOTS x 32 bytes: device uuid [16], state u8, reserved [15]
//! 2240 closed flush epoch u64
//! 2248 replace slot u32       2252 reserved u32
//! 2256 replace checkpoint row u64
//! 2264 replacement device uuid [16]
//! ```
//!
//! Slot states: 0 active, 1 faulty, 2 rebuilding, 3 suspended.

use blockdev::SharedDevice;

use crate::error::{RaidError, Result};

/// Bytes of one superblock copy.
pub const SB_BYTES: usize = 4096;
/// Most member slots an array can have.
pub const MAX_SLOTS: usize = 64;
/// Role of a hot spare.
pub const SPARE: u32 = u32::MAX;
/// Role of the device a running replace copies a member onto
/// ([`Superblock::replace_slot`] names the member).
pub const REPLACEMENT: u32 = u32::MAX - 1;
/// Role of a device retired from the array (the old member after a
/// replace finished): it names the array it left, so no head mistakes it
/// for a blank disk, and assembly never takes it back. Written on both
/// copies, so no older version outvotes it.
pub const RETIRED: u32 = u32::MAX - 2;
/// Current on-disk format version (2: tag entries carry the previous
/// checksum and tag blocks the flush epoch; version 1 arrays are refused).
pub const VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"OPIERAID";
const SLOT_TABLE: usize = 192;
const CLOSED_EPOCH: usize = SLOT_TABLE + 32 * MAX_SLOTS;
const REPLACE_SLOT: usize = CLOSED_EPOCH + 8;
const REPLACE_POS: usize = REPLACE_SLOT + 8;
const REPLACE_DEVICE: usize = REPLACE_POS + 8;

/// Superblock flag: the array was shut down cleanly (parity known good).
pub const FLAG_CLEAN: u32 = 1;
/// Superblock flag: writes go through the journal.
pub const FLAG_JOURNAL: u32 = 2;
/// Superblock flag: a reshape is in progress.
pub const FLAG_RESHAPE: u32 = 4;
/// Superblock flag: the reshape critical-section backup is valid.
pub const FLAG_BACKUP: u32 = 8;
/// Superblock flag: a rebuild is in progress.
pub const FLAG_REBUILD: u32 = 16;
/// Superblock flag: a member is being replaced (copied onto another device).
pub const FLAG_REPLACE: u32 = 32;
/// Rebuild flag: only rows marked in the write-intent bitmap need rebuilding.
pub const REBUILD_BITMAP: u32 = 1;

/// State of a member slot as recorded in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// In sync.
    Active,
    /// Failed; its data is reconstructed from the others.
    Faulty,
    /// Being rebuilt (see the rebuild checkpoint).
    Rebuilding,
    /// Taken out of service on purpose (maintenance): not failed, no spare
    /// replaces it, and when it is resumed only the regions written
    /// meanwhile (the write-intent bitmap) are resynced.
    Suspended,
}

/// One slot of the member table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotEntry {
    /// Identity uuid of the device in the slot.
    pub device: [u8; 16],
    /// Its state.
    pub state: SlotState,
}

/// Decoded superblock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Superblock {
    /// Array identity.
    pub array_uuid: [u8; 16],
    /// Identity of the device this copy is written on.
    pub device_uuid: [u8; 16],
    /// Slot of this device, or [`SPARE`].
    pub role: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Bumped on every change; the highest count is the truth.
    pub events: u64,
    /// Block size of members and volume.
    pub block_size: u32,
    /// Blocks per chunk.
    pub chunk_blocks: u32,
    /// Tag blocks per chunk.
    pub tag_blocks: u32,
    /// Members of the (current) layout.
    pub members: u32,
    /// Rows of the layout.
    pub rows: u64,
    /// First block of the data area.
    pub data_start: u64,
    /// First block of the write-intent bitmap.
    pub bitmap_start: u64,
    /// Blocks of the bitmap.
    pub bitmap_blocks: u64,
    /// Rows covered by one bitmap bit.
    pub region_rows: u64,
    /// First block of the journal (0 blocks: none).
    pub journal_start: u64,
    /// Blocks of the journal.
    pub journal_blocks: u64,
    /// First block of the reshape backup area.
    pub backup_start: u64,
    /// Rows the backup area holds.
    pub backup_rows: u64,
    /// Slot being rebuilt.
    pub rebuild_slot: u32,
    /// `REBUILD_*` bits.
    pub rebuild_flags: u32,
    /// Rows below this are rebuilt.
    pub rebuild_pos: u64,
    /// Members after the reshape in progress.
    pub reshape_members: u32,
    /// New-layout rows below this are reshaped.
    pub reshape_pos: u64,
    /// Every tag flush epoch below this one has been flushed: a crash cannot
    /// bring back the "previous" content its tag entries name
    /// ([`crate::integrity`]). 0 when nothing is known.
    pub closed_epoch: u64,
    /// Slot being replaced (with [`FLAG_REPLACE`]).
    pub replace_slot: u32,
    /// Rows below this are copied onto the replacement device.
    pub replace_pos: u64,
    /// Identity uuid of the replacement device.
    pub replace_device: [u8; 16],
    /// The member table.
    pub slots: Vec<SlotEntry>,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Superblock {
    /// Encodes into [`SB_BYTES`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SB_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        put32(&mut b, 8, VERSION);
        b[16..32].copy_from_slice(&self.array_uuid);
        b[32..48].copy_from_slice(&self.device_uuid);
        put32(&mut b, 48, self.role);
        put32(&mut b, 52, self.flags);
        put64(&mut b, 56, self.events);
        put32(&mut b, 64, self.block_size);
        put32(&mut b, 68, self.chunk_blocks);
        put32(&mut b, 72, self.tag_blocks);
        put32(&mut b, 76, self.members);
        put64(&mut b, 80, self.rows);
        put64(&mut b, 88, self.data_start);
        put64(&mut b, 96, self.bitmap_start);
        put64(&mut b, 104, self.bitmap_blocks);
        put64(&mut b, 112, self.region_rows);
        put64(&mut b, 120, self.journal_start);
        put64(&mut b, 128, self.journal_blocks);
        put64(&mut b, 136, self.backup_start);
        put64(&mut b, 144, self.backup_rows);
        put32(&mut b, 152, self.rebuild_slot);
        put32(&mut b, 156, self.rebuild_flags);
        put64(&mut b, 160, self.rebuild_pos);
        put32(&mut b, 168, self.reshape_members);
        put64(&mut b, 176, self.reshape_pos);
        put32(&mut b, 184, self.slots.len() as u32);
        put64(&mut b, CLOSED_EPOCH, self.closed_epoch);
        put32(&mut b, REPLACE_SLOT, self.replace_slot);
        put64(&mut b, REPLACE_POS, self.replace_pos);
        b[REPLACE_DEVICE..REPLACE_DEVICE + 16].copy_from_slice(&self.replace_device);
        for (i, s) in self.slots.iter().enumerate() {
            let at = SLOT_TABLE + 32 * i;
            b[at..at + 16].copy_from_slice(&s.device);
            b[at + 16] = match s.state {
                SlotState::Active => 0,
                SlotState::Faulty => 1,
                SlotState::Rebuilding => 2,
                SlotState::Suspended => 3,
            };
        }
        let crc = crc32c::crc32c(&b);
        put32(&mut b, 12, crc);
        b
    }

    /// Decodes and validates one copy.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = |why: &str| Err(RaidError::BadSuperblock(why.to_string()));
        if b.len() < SB_BYTES || &b[0..8] != MAGIC {
            return bad("no magic");
        }
        let mut copy = b[..SB_BYTES].to_vec();
        put32(&mut copy, 12, 0);
        if crc32c::crc32c(&copy) != get32(b, 12) {
            return bad("checksum mismatch");
        }
        if get32(b, 8) != VERSION {
            return bad("unsupported version");
        }
        let nslots = get32(b, 184) as usize;
        if nslots > MAX_SLOTS {
            return bad("slot table too large");
        }
        let mut slots = Vec::with_capacity(nslots);
        for i in 0..nslots {
            let at = SLOT_TABLE + 32 * i;
            let state = match b[at + 16] {
                0 => SlotState::Active,
                1 => SlotState::Faulty,
                2 => SlotState::Rebuilding,
                3 => SlotState::Suspended,
                _ => return bad("bad slot state"),
            };
            slots.push(SlotEntry {
                device: b[at..at + 16].try_into().expect("16 bytes"),
                state,
            });
        }
        let sb = Superblock {
            array_uuid: b[16..32].try_into().expect("16 bytes"),
            device_uuid: b[32..48].try_into().expect("16 bytes"),
            role: get32(b, 48),
            flags: get32(b, 52),
            events: get64(b, 56),
            block_size: get32(b, 64),
            chunk_blocks: get32(b, 68),
            tag_blocks: get32(b, 72),
            members: get32(b, 76),
            rows: get64(b, 80),
            data_start: get64(b, 88),
            bitmap_start: get64(b, 96),
            bitmap_blocks: get64(b, 104),
            region_rows: get64(b, 112),
            journal_start: get64(b, 120),
            journal_blocks: get64(b, 128),
            backup_start: get64(b, 136),
            backup_rows: get64(b, 144),
            rebuild_slot: get32(b, 152),
            rebuild_flags: get32(b, 156),
            rebuild_pos: get64(b, 160),
            reshape_members: get32(b, 168),
            reshape_pos: get64(b, 176),
            closed_epoch: get64(b, CLOSED_EPOCH),
            replace_slot: get32(b, REPLACE_SLOT),
            replace_pos: get64(b, REPLACE_POS),
            replace_device: b[REPLACE_DEVICE..REPLACE_DEVICE + 16]
                .try_into()
                .expect("16 bytes"),
            slots,
        };
        if sb.members < 2
            || sb.members as usize > sb.slots.len()
            || sb.chunk_blocks == 0
            || sb.region_rows == 0
            || !sb.block_size.is_power_of_two()
            || sb.block_size < 512
        {
            return bad("inconsistent geometry");
        }
        Ok(sb)
    }

    /// Blocks of one superblock copy on a device of `block_size`.
    pub fn blocks(block_size: u32) -> u64 {
        (SB_BYTES as u64).div_ceil(u64::from(block_size))
    }

    /// Member block where the copy for `events` goes.
    pub fn slot_block(block_size: u32, events: u64) -> u64 {
        (events % 2) * Self::blocks(block_size)
    }
}

/// The newest valid superblock in `buf`, the first `2 * Superblock::blocks`
/// blocks of a device of `block_size` (both copies), as
/// [`read_newest`] reads them from a device.
pub fn newest_in(buf: &[u8], block_size: u32) -> Result<Superblock> {
    let n = Superblock::blocks(block_size) as usize * block_size as usize;
    let mut best: Option<Superblock> = None;
    let mut last_err = RaidError::BadSuperblock("no superblock".into());
    for copy in [buf.get(..n), buf.get(n..2 * n)] {
        match copy.map(Superblock::decode) {
            Some(Ok(sb)) if best.as_ref().is_none_or(|b| sb.events > b.events) => best = Some(sb),
            Some(Ok(_)) => {}
            Some(Err(e)) => last_err = e,
            None => last_err = RaidError::BadSuperblock("short read".into()),
        }
    }
    best.ok_or(last_err)
}

/// Reads both superblock copies of a device and returns the newest valid one.
pub async fn read_newest(dev: &SharedDevice) -> Result<Superblock> {
    let bs = dev.geometry().block_size;
    let n = Superblock::blocks(bs);
    let mut best: Option<Superblock> = None;
    let mut last_err = RaidError::BadSuperblock("no superblock".into());
    for slot in 0..2u64 {
        match dev.read(slot * n, n as u32).await {
            Ok(buf) => match Superblock::decode(&buf) {
                Ok(sb) if best.as_ref().is_none_or(|b| sb.events > b.events) => best = Some(sb),
                Ok(_) => {}
                Err(e) => last_err = e,
            },
            Err(e) => last_err = RaidError::Member { slot: 0, source: e },
        }
    }
    best.ok_or(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Superblock {
        Superblock {
            array_uuid: [1; 16],
            device_uuid: [2; 16],
            role: 1,
            flags: FLAG_CLEAN | FLAG_JOURNAL,
            events: 42,
            block_size: 512,
            chunk_blocks: 8,
            tag_blocks: 1,
            members: 3,
            rows: 100,
            data_start: 64,
            bitmap_start: 16,
            bitmap_blocks: 1,
            region_rows: 4,
            journal_start: 17,
            journal_blocks: 20,
            backup_start: 37,
            backup_rows: 3,
            rebuild_slot: 2,
            rebuild_flags: REBUILD_BITMAP,
            rebuild_pos: 7,
            reshape_members: 0,
            reshape_pos: 0,
            closed_epoch: (41 << 32) + 7,
            replace_slot: 1,
            replace_pos: 9,
            replace_device: [5; 16],
            slots: vec![
                SlotEntry {
                    device: [3; 16],
                    state: SlotState::Active,
                },
                SlotEntry {
                    device: [2; 16],
                    state: SlotState::Active,
                },
                SlotEntry {
                    device: [4; 16],
                    state: SlotState::Rebuilding,
                },
                SlotEntry {
                    device: [6; 16],
                    state: SlotState::Suspended,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_rejects_damage() {
        let sb = sample();
        let enc = sb.encode();
        assert_eq!(Superblock::decode(&enc).unwrap(), sb);
        for at in [0, 13, 60, 200, 4095] {
            let mut bad = enc.clone();
            bad[at] ^= 0x10;
            assert!(Superblock::decode(&bad).is_err(), "flip at {at} accepted");
        }
        assert!(Superblock::decode(&[0u8; SB_BYTES]).is_err());
        assert_eq!(Superblock::blocks(512), 8);
        assert_eq!(Superblock::slot_block(512, 3), 8);
        assert_eq!(Superblock::slot_block(4096, 4), 0);
    }

    #[test]
    fn newest_in_takes_the_higher_valid_copy() {
        let mut old = sample();
        old.events = 7;
        let new = sample();
        let mut buf = old.encode();
        buf.extend(new.encode());
        assert_eq!(newest_in(&buf, 512).unwrap().events, 42);
        // A damaged newer copy leaves the older one.
        buf[SB_BYTES + 100] ^= 1;
        assert_eq!(newest_in(&buf, 512).unwrap().events, 7);
        assert!(newest_in(&[0u8; 2 * SB_BYTES], 512).is_err());
        assert!(newest_in(&buf[..10], 512).is_err());
    }
}
