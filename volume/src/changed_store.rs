//! The on-device format of a volume's changed-block map (sans-I/O).
//!
//! Each volume of a pool (table format version 3) has a hidden *map
//! volume* of its own in the table ([`crate::table::FLAG_CHANGE_MAP`],
//! named [`crate::table::change_map_name`] of the volume's uuid), allocated,
//! grown and deleted in the same commits as the volume. Its block 0 is the
//! header, its blocks from 1 on the bits: region `r` in bit `r % 8` of byte
//! `r / 8`.
//!
//! The header, little-endian, the rest of its block zero:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OPIECBTM` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | CRC32C of the header block with this field zero |
//! | 16 | 16 | uuid of the volume |
//! | 32 | 4 | state: 1 closed cleanly, 0 open |
//! | 36 | 4 | zero |
//! | 40 | 8 | region size in blocks |
//! | 48 | 8 | regions the bits cover |
//! | 56 | 4 | CRC32C of the bit bytes (`ceil(regions / 8)` bytes; closed only) |
//!
//! A map is trusted only when its header is valid, names the volume, has
//! the region size of this build and says *closed*, and its bits match the
//! checksum: anything else (never written, written by a process that did
//! not close it, torn, another volume's) loads as all dirty.

use crate::changed::ChangedMap;

/// The header's magic.
pub const MAGIC: [u8; 8] = *b"OPIECBTM";
/// The header format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header state: the map was written whole by an orderly close.
const CLOSED: u32 = 1;
/// Header state: a process has the volume open (its writes may not all be
/// in the bits, and a crash may have changed what it wrote).
const OPEN: u32 = 0;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The volume the map belongs to.
    pub uuid: [u8; 16],
    /// Whether an orderly close wrote the bits whole (and `bits_crc`).
    pub closed: bool,
    /// Region size in blocks.
    pub region: u64,
    /// Regions the bits cover.
    pub regions: u64,
    /// CRC32C of the bit bytes (meaningful when closed).
    pub bits_crc: u32,
}

impl Header {
    /// Encodes the header as one block of `block_size` bytes.
    pub fn encode(&self, block_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; block_size as usize];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        let state = if self.closed { CLOSED } else { OPEN };
        b[32..36].copy_from_slice(&state.to_le_bytes());
        b[40..48].copy_from_slice(&self.region.to_le_bytes());
        b[48..56].copy_from_slice(&self.regions.to_le_bytes());
        b[56..60].copy_from_slice(&self.bits_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header block; `None` if it is not one this build wrote
    /// whole (no magic, bad checksum, another version, a bad state).
    pub fn decode(block: &[u8]) -> Option<Header> {
        if block.len() < 64 || block[..8] != MAGIC {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8"));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..12]), &[0; 4]);
        if crc32c::crc32c_append(crc, &block[16..]) != u32_at(12) || u32_at(8) != FORMAT_VERSION {
            return None;
        }
        let closed = match u32_at(32) {
            CLOSED => true,
            OPEN => false,
            _ => return None,
        };
        Some(Header {
            uuid: block[16..32].try_into().expect("16"),
            closed,
            region: u64_at(40),
            regions: u64_at(48),
            bits_crc: u32_at(56),
        })
    }
}

/// Bytes of the bits of `regions` regions.
pub fn bit_bytes(regions: u64) -> u64 {
    regions.div_ceil(8)
}

/// Blocks a map of `regions` regions takes: the header and the bits.
pub fn map_blocks(regions: u64, block_size: u32) -> u64 {
    1 + bit_bytes(regions).div_ceil(u64::from(block_size)).max(1)
}

/// Bit block `b` (counted from the first bit block) of `map`, with the
/// regions of `also` (a frozen map whose backup has not succeeded yet)
/// set too.
pub fn encode_bits(
    map: &ChangedMap,
    also: Option<&ChangedMap>,
    b: u64,
    block_size: u32,
) -> Vec<u8> {
    let bs = u64::from(block_size);
    (b * bs..(b + 1) * bs)
        .map(|i| map.byte(i) | also.map_or(0, |f| f.byte(i)))
        .collect()
}

/// CRC32C of the bit bytes a closed header covers.
pub fn bits_crc(bits: &[u8], regions: u64) -> u32 {
    crc32c::crc32c(&bits[..bit_bytes(regions) as usize])
}

/// The map of a volume of `blocks` blocks (region `region`) that `header`
/// and `bits` (the bit blocks as read) describe: as stored when the header
/// is closed, names `uuid`, has this region size and the bits match its
/// checksum; else all dirty. Regions past those the header covers (a volume
/// grown since) are dirty.
pub fn load(
    header: Option<Header>,
    bits: &[u8],
    uuid: [u8; 16],
    blocks: u64,
    region: u64,
) -> ChangedMap {
    match header {
        Some(h)
            if h.closed
                && h.uuid == uuid
                && h.region == region
                && bit_bytes(h.regions) <= bits.len() as u64
                && bits_crc(bits, h.regions) == h.bits_crc =>
        {
            ChangedMap::from_bytes(blocks, region, bits, h.regions)
        }
        _ => ChangedMap::all_dirty(blocks, region),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(closed: bool) -> Header {
        Header {
            uuid: [7; 16],
            closed,
            region: 8192,
            regions: 20,
            bits_crc: 0,
        }
    }

    #[test]
    fn a_header_round_trips_and_a_flipped_bit_is_caught() {
        let h = header(true);
        let b = h.encode(512);
        assert_eq!(Header::decode(&b), Some(h));
        for pos in [0usize, 9, 13, 20, 33, 45, 511] {
            let mut c = b.clone();
            c[pos] ^= 2;
            assert_eq!(Header::decode(&c), None, "byte {pos}");
        }
        assert_eq!(Header::decode(&[0; 512]), None);
    }

    #[test]
    fn only_a_closed_map_of_the_volume_is_trusted() {
        let blocks = 20 * 8192;
        let mut m = ChangedMap::clean(blocks, 8192);
        m.mark(3 * 8192, 1);
        let bits = encode_bits(&m, None, 0, 512);
        let closed = Header {
            bits_crc: bits_crc(&bits, 20),
            ..header(true)
        };
        assert_eq!(load(Some(closed), &bits, [7; 16], blocks, 8192), m);
        let dirty = ChangedMap::all_dirty(blocks, 8192);
        let open = Header {
            closed: false,
            ..closed
        };
        assert_eq!(load(Some(open), &bits, [7; 16], blocks, 8192), dirty);
        assert_eq!(load(Some(closed), &bits, [8; 16], blocks, 8192), dirty);
        assert_eq!(
            load(Some(closed), &bits, [7; 16], blocks, 4096),
            ChangedMap::all_dirty(blocks, 4096)
        );
        assert_eq!(load(None, &bits, [7; 16], blocks, 8192), dirty);
        let mut torn = bits.clone();
        torn[1] ^= 1;
        assert_eq!(load(Some(closed), &torn, [7; 16], blocks, 8192), dirty);
        // Grown since: the new regions are dirty.
        let grown = load(Some(closed), &bits, [7; 16], blocks + 8192, 8192);
        assert_eq!(grown.runs(), vec![(3 * 8192, 8192), (blocks, 8192)]);
    }

    #[test]
    fn a_frozen_map_stays_in_the_bits() {
        let mut m = ChangedMap::clean(64 * 10, 10);
        m.mark(0, 1);
        let mut f = ChangedMap::clean(64 * 10, 10);
        f.mark(630, 1);
        let bits = encode_bits(&m, Some(&f), 0, 512);
        assert_eq!(bits[0], 1);
        assert_eq!(bits[7], 0x80);
        assert_eq!(map_blocks(20, 512), 2);
        assert_eq!(map_blocks(512 * 8 + 1, 512), 3);
    }
}
