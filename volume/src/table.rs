//! The mapping table and its on-disk encoding (sans-I/O).
//!
//! One copy is [`COPY_BYTES`] long, little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OPIEVOLT` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | CRC32C of the whole copy with this field zero |
//! | 16 | 8 | sequence number |
//! | 24 | 4 | block size of the device |
//! | 28 | 4 | number of volumes |
//! | 32 | 8 | allocation unit, in blocks |
//! | 40 | 8 | first allocatable unit (the reserved area before it) |
//! | 48 | 8 | zero-known units ([`Table::zero_known`]; version 2, zero in version 1) |
//! | 56 | 4 | number of dirty extents ([`Table::dirty`]; version 2, zero in version 1) |
//! | 60 | 4 | zero |
//! | 64 | | the volumes, one after another, then the dirty extents |
//!
//! A volume: uuid (16), flags (4), creation time in milliseconds since the
//! Unix epoch (8), name length (2) and the name, number of extents (4), and
//! each extent as start and length in allocation units (8 + 8). A dirty
//! extent is a start and a length in units (8 + 8). The rest of the copy is
//! zero, and covered by the checksum too.
//!
//! Version 3 is version 2's layout with changed-block maps: each volume may
//! have a hidden volume flagged [`FLAG_CHANGE_MAP`] holding its map. A
//! build of version 2 refuses it, rather than write to volumes without
//! their maps (a later open would trust a map that missed those writes).
//! A version 2 table opens with no maps (every volume all dirty); the next
//! change writes version 3 with them.
//!
//! Version 1 had no zero tracking (its bytes 48..64 are zero and nothing
//! follows the volumes): it is read as "no unit known to read zeroes", so
//! every unit handed out from it is zeroed first, as version 1 did. This
//! build writes version 2.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::CopyFault;

/// Bytes of one copy of the table (a multiple of every block size).
pub const COPY_BYTES: usize = 256 * 1024;
/// The table's magic.
pub const MAGIC: [u8; 8] = *b"OPIEVOLT";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub const OLDEST_VERSION: u32 = 1;
/// Bytes of the header before the first volume.
const HEADER_BYTES: usize = 64;
/// Volume flag: the volume refuses writes.
pub const FLAG_READ_ONLY: u32 = 1;
/// Flag of a hidden volume holding a backup snapshot's copy-on-write data
/// (not listed; deleted when its snapshot ends, or at the next start).
pub const FLAG_COW_RESERVE: u32 = 2;
/// Flag of a hidden volume holding another volume's changed-block map
/// ([`crate::changed_store`]; version 3). Not listed, not opened, deleted
/// with its volume.
pub const FLAG_CHANGE_MAP: u32 = 4;
/// Longest volume name.
pub const MAX_NAME: usize = 64;

/// A run of allocation units of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitExtent {
    /// First unit (absolute: unit `u` is device block `u * unit_blocks`).
    pub start: u64,
    /// Number of units (at least 1).
    pub len: u64,
}

impl UnitExtent {
    /// One past the last unit.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// One volume of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The volume's 128-bit identity, fixed at creation.
    pub uuid: [u8; 16],
    /// Its name, unique in the table.
    pub name: String,
    /// [`FLAG_READ_ONLY`] and future flags.
    pub flags: u32,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its extents in the order they map the volume's blocks.
    pub extents: Vec<UnitExtent>,
}

impl Entry {
    /// Units the volume holds.
    pub fn units(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }

    /// Whether it is a snapshot's copy-on-write reserve.
    pub fn cow_reserve(&self) -> bool {
        self.flags & FLAG_COW_RESERVE != 0
    }

    /// Whether it holds another volume's changed-block map.
    pub fn change_map(&self) -> bool {
        self.flags & FLAG_CHANGE_MAP != 0
    }

    /// Whether it is hidden from clients (a reserve or a map).
    pub fn hidden(&self) -> bool {
        self.cow_reserve() || self.change_map()
    }

    /// Whether the read-only flag is set.
    pub fn read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }

    /// The creation time.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_ms)
    }
}

/// The whole table: what one valid copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Sequence number: the copy with the higher one is current.
    pub seq: u64,
    /// Block size of the device it was made for.
    pub block_size: u32,
    /// Allocation unit in blocks (the array's full stripe).
    pub unit_blocks: u64,
    /// First unit volumes may use; the copies live before it.
    pub first_unit: u64,
    /// The volumes.
    pub volumes: Vec<Entry>,
    /// Units below this one that are in no volume and not in [`Table::dirty`]
    /// read zeroes (never handed out since a format that found the device
    /// zeroed, or zeroed since); every unit at or beyond it may hold old
    /// data. 0 knows nothing (version 1, or a device formatted with data).
    pub zero_known: u64,
    /// Free units below [`Table::zero_known`] that may hold a deleted
    /// volume's data: zeroed before a volume gets them. Sorted, disjoint,
    /// not touching, each in no volume.
    pub dirty: Vec<UnitExtent>,
}

/// The name of the hidden volume holding the changed-block map of the
/// volume with uuid `uuid`: `.cbt-` and the uuid in hex.
pub fn change_map_name(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!(".cbt-{hex}")
}

/// Whether `name` is a valid volume name: 1-64 of `a-z 0-9 - . _`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// Units reserved at the start of a device for the two copies.
pub fn reserved_units(block_size: u32, unit_blocks: u64) -> u64 {
    let blocks = (2 * COPY_BYTES as u64).div_ceil(u64::from(block_size));
    blocks.div_ceil(unit_blocks)
}

/// Block of the device where copy `slot` (0 or 1) starts.
pub fn copy_lba(slot: usize, block_size: u32) -> u64 {
    (slot * COPY_BYTES) as u64 / u64::from(block_size)
}

/// Blocks one copy takes.
pub fn copy_blocks(block_size: u32) -> u32 {
    (COPY_BYTES / block_size as usize) as u32
}

impl Table {
    /// Bytes the encoded table takes (before the zero padding).
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + self
                .volumes
                .iter()
                .map(|v| 16 + 4 + 8 + 2 + v.name.len() + 4 + 16 * v.extents.len())
                .sum::<usize>()
            + 16 * self.dirty.len()
    }

    /// Encodes the table as one copy of [`COPY_BYTES`] bytes; `None` if it
    /// does not fit.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.encoded_len() > COPY_BYTES {
            return None;
        }
        let mut b = Vec::with_capacity(COPY_BYTES);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&(self.volumes.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.unit_blocks.to_le_bytes());
        b.extend_from_slice(&self.first_unit.to_le_bytes());
        b.extend_from_slice(&self.zero_known.to_le_bytes());
        b.extend_from_slice(&(self.dirty.len() as u32).to_le_bytes());
        b.resize(HEADER_BYTES, 0);
        for v in &self.volumes {
            b.extend_from_slice(&v.uuid);
            b.extend_from_slice(&v.flags.to_le_bytes());
            b.extend_from_slice(&v.created_ms.to_le_bytes());
            b.extend_from_slice(&(v.name.len() as u16).to_le_bytes());
            b.extend_from_slice(v.name.as_bytes());
            b.extend_from_slice(&(v.extents.len() as u32).to_le_bytes());
            for e in &v.extents {
                b.extend_from_slice(&e.start.to_le_bytes());
                b.extend_from_slice(&e.len.to_le_bytes());
            }
        }
        for e in &self.dirty {
            b.extend_from_slice(&e.start.to_le_bytes());
            b.extend_from_slice(&e.len.to_le_bytes());
        }
        b.resize(COPY_BYTES, 0);
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        Some(b)
    }

    /// Decodes one copy, checking magic, version, checksum and every field.
    pub fn decode(copy: &[u8]) -> Result<Table, CopyFault> {
        if copy.len() != COPY_BYTES {
            return Err(CopyFault::Malformed(format!("{} bytes", copy.len())));
        }
        if copy[..8] != MAGIC {
            return Err(CopyFault::NoMagic);
        }
        let mut r = Reader { buf: copy, pos: 8 };
        let version = r.u32()?;
        let stored = r.u32()?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&copy[..12]), &[0; 4]);
        let crc = crc32c::crc32c_append(crc, &copy[16..]);
        if crc != stored {
            return Err(CopyFault::BadChecksum);
        }
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(CopyFault::Version(version));
        }
        let seq = r.u64()?;
        let block_size = r.u32()?;
        let count = r.u32()? as usize;
        let unit_blocks = r.u64()?;
        let first_unit = r.u64()?;
        let zero_known = r.u64()?;
        let dirty_count = r.u32()? as usize;
        if version < 2 && (zero_known != 0 || dirty_count != 0) {
            return Err(CopyFault::Malformed(
                "version 1 with zero tracking fields set".into(),
            ));
        }
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(CopyFault::Malformed(format!("block size {block_size}")));
        }
        if unit_blocks == 0 || first_unit < reserved_units(block_size, unit_blocks) {
            return Err(CopyFault::Malformed(format!(
                "unit {unit_blocks}, first unit {first_unit}"
            )));
        }
        r.pos = HEADER_BYTES;
        let mut volumes = Vec::with_capacity(count.min(COPY_BYTES / 34));
        for _ in 0..count {
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(r.take(16)?);
            let flags = r.u32()?;
            let created_ms = r.u64()?;
            let name_len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| CopyFault::Malformed("name not UTF-8".into()))?
                .to_string();
            if !valid_name(&name) {
                return Err(CopyFault::Malformed(format!("name {name:?}")));
            }
            let n = r.u32()? as usize;
            let mut extents = Vec::with_capacity(n.min(COPY_BYTES / 16));
            for _ in 0..n {
                let e = UnitExtent {
                    start: r.u64()?,
                    len: r.u64()?,
                };
                if e.len == 0 || e.start < first_unit || e.start.checked_add(e.len).is_none() {
                    return Err(CopyFault::Malformed(format!("extent {e:?} of {name:?}")));
                }
                extents.push(e);
            }
            if extents.is_empty() {
                return Err(CopyFault::Malformed(format!("{name:?} has no extent")));
            }
            volumes.push(Entry {
                uuid,
                name,
                flags,
                created_ms,
                extents,
            });
        }
        let mut dirty = Vec::with_capacity(dirty_count.min(COPY_BYTES / 16));
        for _ in 0..dirty_count {
            dirty.push(UnitExtent {
                start: r.u64()?,
                len: r.u64()?,
            });
        }
        let t = Table {
            seq,
            block_size,
            unit_blocks,
            first_unit,
            volumes,
            zero_known,
            dirty,
        };
        t.check().map_err(CopyFault::Malformed)?;
        Ok(t)
    }

    /// Checks what the checksum cannot: unique names and uuids, no two
    /// extents sharing a unit, dirty extents sorted, apart, free and below
    /// [`Table::zero_known`].
    pub fn check(&self) -> Result<(), String> {
        let mut names: Vec<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("duplicate volume name".into());
        }
        let mut uuids: Vec<[u8; 16]> = self.volumes.iter().map(|v| v.uuid).collect();
        uuids.sort_unstable();
        if uuids.windows(2).any(|w| w[0] == w[1]) {
            return Err("duplicate volume uuid".into());
        }
        let mut all: Vec<UnitExtent> = self
            .volumes
            .iter()
            .flat_map(|v| v.extents.iter().copied())
            .collect();
        all.sort_unstable();
        if all.windows(2).any(|w| w[0].end() > w[1].start) {
            return Err("overlapping extents".into());
        }
        let d = &self.dirty;
        if d.iter().any(|e| {
            e.len == 0
                || e.start < self.first_unit
                || e.start
                    .checked_add(e.len)
                    .is_none_or(|end| end > self.zero_known)
        }) || d.windows(2).any(|w| w[0].end() >= w[1].start)
        {
            return Err("dirty extents out of order or out of range".into());
        }
        all.extend(d.iter().copied());
        all.sort_unstable();
        if all.windows(2).any(|w| w[0].end() > w[1].start) {
            return Err("a dirty extent inside a volume".into());
        }
        Ok(())
    }

    /// The volume named `name`.
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CopyFault> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| CopyFault::Malformed("runs past the copy".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, CopyFault> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, CopyFault> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, CopyFault> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table {
            seq: 7,
            block_size: 512,
            unit_blocks: 8,
            first_unit: reserved_units(512, 8),
            volumes: vec![
                Entry {
                    uuid: [1; 16],
                    name: "a".into(),
                    flags: FLAG_READ_ONLY,
                    created_ms: 1234,
                    extents: vec![UnitExtent { start: 128, len: 3 }],
                },
                Entry {
                    uuid: [2; 16],
                    name: "b-2.x_y".into(),
                    flags: 0,
                    created_ms: 99,
                    extents: vec![
                        UnitExtent { start: 131, len: 1 },
                        UnitExtent { start: 140, len: 5 },
                    ],
                },
            ],
            zero_known: 160,
            dirty: vec![
                UnitExtent { start: 132, len: 8 },
                UnitExtent { start: 150, len: 2 },
            ],
        }
    }

    #[test]
    fn a_copy_round_trips() {
        let t = sample();
        let b = t.encode().unwrap();
        assert_eq!(b.len(), COPY_BYTES);
        assert_eq!(Table::decode(&b).unwrap(), t);
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let b = sample().encode().unwrap();
        for pos in [9usize, 13, 17, 70, 100, COPY_BYTES - 1] {
            let mut c = b.clone();
            c[pos] ^= 4;
            assert_eq!(Table::decode(&c), Err(CopyFault::BadChecksum), "byte {pos}");
        }
        let mut c = b.clone();
        c[0] ^= 1;
        assert_eq!(Table::decode(&c), Err(CopyFault::NoMagic));
        assert_eq!(Table::decode(&vec![0; COPY_BYTES]), Err(CopyFault::NoMagic));
    }

    /// `c` with version `v` and its checksum redone.
    fn with_version(mut c: Vec<u8>, v: u32) -> Vec<u8> {
        c[8..12].copy_from_slice(&v.to_le_bytes());
        c[12..16].fill(0);
        let crc = crc32c::crc32c(&c);
        c[12..16].copy_from_slice(&crc.to_le_bytes());
        c
    }

    #[test]
    fn a_newer_version_is_named() {
        let c = with_version(sample().encode().unwrap(), 4);
        assert_eq!(Table::decode(&c), Err(CopyFault::Version(4)));
    }

    #[test]
    fn a_version_1_copy_reads_as_knowing_no_zeroes() {
        let mut t = sample();
        t.zero_known = 0;
        t.dirty.clear();
        // Version 1 wrote exactly this, with its version number.
        let c = with_version(t.encode().unwrap(), 1);
        assert_eq!(Table::decode(&c).unwrap(), t);
        // Zero tracking fields in a version 1 copy are not taken on trust.
        let c = with_version(sample().encode().unwrap(), 1);
        assert!(matches!(Table::decode(&c), Err(CopyFault::Malformed(_))));
    }

    #[test]
    fn dirty_extents_must_be_free_ordered_and_below_the_known_zero() {
        let mut t = sample();
        t.dirty = vec![UnitExtent { start: 129, len: 2 }];
        assert!(t.check().is_err(), "inside volume a");
        let mut t = sample();
        t.dirty = vec![UnitExtent { start: 158, len: 4 }];
        assert!(t.check().is_err(), "past zero_known");
        let mut t = sample();
        t.dirty.reverse();
        assert!(t.check().is_err(), "out of order");
        assert!(sample().check().is_ok());
    }

    #[test]
    fn overlaps_and_duplicates_are_refused() {
        let mut t = sample();
        t.volumes[1].extents[0].start = 130;
        assert!(t.check().is_err());
        let mut t = sample();
        t.volumes[1].name = "a".into();
        assert!(matches!(
            Table::decode(&t.encode().unwrap()),
            Err(CopyFault::Malformed(_))
        ));
    }

    #[test]
    fn names() {
        assert!(valid_name("vol-1.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("Vol"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn a_table_too_big_for_its_copy_does_not_encode() {
        let mut t = sample();
        t.volumes[0].extents = (0..COPY_BYTES as u64 / 16)
            .map(|i| UnitExtent {
                start: 1000 + 2 * i,
                len: 1,
            })
            .collect();
        assert!(t.encode().is_none());
    }
}
