//! The SCSI disk commands the initiator's block device sends (SBC-4,
//! SPC-4), as CDBs, and the reading of what they return: READ CAPACITY(16),
//! REPORT LUNS and the Block Limits VPD page. The identity pages are read by
//! `scsi_disk::identification`, the sense data by `scsi_disk::sense`.

use blockdev::Limits;

/// TEST UNIT READY.
pub fn test_unit_ready() -> [u8; 6] {
    [0; 6]
}

/// INQUIRY of VPD page `page`, up to `len` bytes.
pub fn inquiry_vpd(page: u8, len: u16) -> [u8; 6] {
    let l = len.to_be_bytes();
    [0x12, 1, page, l[0], l[1], 0]
}

/// MODE SENSE(6) of the Caching page (08h), block descriptors off.
pub fn mode_sense_caching() -> [u8; 6] {
    [0x1a, 0x08, 0x08, 0, 255, 0]
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), 10h).
pub fn read_capacity16() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    c
}

/// A 16-byte CDB with an 8-byte LBA at byte 2 and a 4-byte count at 10.
fn lba16(op: u8, flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(16).
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    lba16(0x88, 0, lba, blocks)
}

/// WRITE(16), with FUA when `fua`.
pub fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    lba16(0x8a, if fua { 0x08 } else { 0 }, lba, blocks)
}

/// SYNCHRONIZE CACHE(16) of the whole device.
pub fn synchronize_cache16() -> [u8; 16] {
    lba16(0x91, 0, 0, 0)
}

/// WRITE SAME(16) of one block of zeroes (sent as data-out) over `blocks`
/// blocks at `lba`, the target allowed to unmap them when `unmap`.
pub fn write_same16(lba: u64, blocks: u32, unmap: bool) -> [u8; 16] {
    lba16(0x93, if unmap { 0x08 } else { 0 }, lba, blocks)
}

/// UNMAP with one block descriptor: its CDB and parameter list.
pub fn unmap(lba: u64, blocks: u32) -> ([u8; 10], [u8; 24]) {
    let mut p = [0u8; 24];
    p[0..2].copy_from_slice(&22u16.to_be_bytes());
    p[2..4].copy_from_slice(&16u16.to_be_bytes());
    p[8..16].copy_from_slice(&lba.to_be_bytes());
    p[16..20].copy_from_slice(&blocks.to_be_bytes());
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&24u16.to_be_bytes());
    (c, p)
}

/// The blocks a command changes, as (first block, count): WRITE(10),
/// WRITE(16), WRITE SAME(10/16) from the CDB, UNMAP from its parameter
/// list (the span from its lowest to its highest block descriptor); None
/// for a command that changes no blocks, or one this initiator does not
/// send (a count of zero, which WRITE SAME takes as "to the end", spans
/// every block from the first).
pub fn written_span(cdb: &[u8], data: &[u8]) -> Option<(u64, u64)> {
    let be = |b: &[u8]| b.iter().fold(0u64, |n, &x| n << 8 | u64::from(x));
    let (lba, blocks) = match *cdb.first()? {
        0x2a | 0x41 if cdb.len() >= 10 => (be(&cdb[2..6]), be(&cdb[7..9])),
        0x8a | 0x93 if cdb.len() >= 16 => (be(&cdb[2..10]), be(&cdb[10..14])),
        0x42 => {
            let descriptors = data.get(8..)?.chunks_exact(16);
            let spans = descriptors.map(|d| (be(&d[0..8]), be(&d[8..12])));
            let (lo, hi) =
                spans
                    .filter(|&(_, n)| n > 0)
                    .fold(None, |acc: Option<(u64, u64)>, (l, n)| {
                        let end = l.saturating_add(n);
                        Some(acc.map_or((l, end), |(a, b)| (a.min(l), b.max(end))))
                    })?;
            (lo, hi - lo)
        }
        _ => return None,
    };
    let wide = matches!(cdb[0], 0x41 | 0x93) && blocks == 0;
    Some((lba, if wide { u64::MAX - lba } else { blocks }))
}

/// What READ CAPACITY(16) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of blocks (the last LBA plus one).
    pub num_blocks: u64,
    /// Logical block length in bytes.
    pub block_size: u32,
    /// Logical block provisioning management enabled (LBPME): unmap works.
    pub thin: bool,
    /// Unmapped blocks read as zeroes (LBPRZ).
    pub unmap_reads_zero: bool,
}

/// Reads READ CAPACITY(16) parameter data; None when too short or
/// nonsensical (a block size that is not a power of two from 512 to 64 KiB).
pub fn parse_capacity(d: &[u8]) -> Option<Capacity> {
    let last = u64::from_be_bytes(d.get(0..8)?.try_into().ok()?);
    let block_size = u32::from_be_bytes(d.get(8..12)?.try_into().ok()?);
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return None;
    }
    let p = d.get(14).copied().unwrap_or(0);
    Some(Capacity {
        num_blocks: last.checked_add(1)?,
        block_size,
        thin: p & 0x80 != 0,
        unmap_reads_zero: p & 0x40 != 0,
    })
}

/// What the Block Limits VPD page (B0h) states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockLimits {
    /// The transfer limits, as the device reports them upward.
    pub limits: Limits,
    /// MAXIMUM UNMAP LBA COUNT (0: UNMAP not supported).
    pub max_unmap: u32,
    /// MAXIMUM WRITE SAME LENGTH (0: no limit reported).
    pub max_write_same: u64,
}

/// Reads a Block Limits VPD page (with its header); fields cut off by a
/// short page read as 0.
pub fn parse_block_limits(page: &[u8]) -> BlockLimits {
    let be = |from: usize, n: usize| {
        page.get(from..from + n)
            .map_or(0, |b| b.iter().fold(0u64, |v, x| v << 8 | u64::from(*x)))
    };
    BlockLimits {
        limits: Limits {
            max_transfer: be(8, 4) as u32,
            optimal_granularity: be(6, 2) as u32,
            atomic_write: be(44, 4) as u32,
            queue_depth: 0,
        },
        max_unmap: be(20, 4) as u32,
        max_write_same: be(36, 8),
    }
}

/// The pages listed by the Supported VPD Pages page (00h).
pub fn supported_pages(page: &[u8]) -> &[u8] {
    let n = page
        .get(2..4)
        .map_or(0, |l| usize::from(u16::from_be_bytes([l[0], l[1]])));
    page.get(4..).map_or(&[][..], |p| &p[..n.min(p.len())])
}

/// Write protected (WP) in a MODE SENSE(6) header, and the write cache
/// enabled (WCE) in the Caching page after it: (read-only, volatile cache).
pub fn parse_caching(d: &[u8]) -> (bool, bool) {
    let wp = d.get(2).is_some_and(|b| b & 0x80 != 0);
    let page = 4 + usize::from(d.get(3).copied().unwrap_or(0));
    let wce = d.get(page).is_some_and(|b| b & 0x3f == 0x08)
        && d.get(page + 2).is_some_and(|b| b & 0x04 != 0);
    (wp, wce)
}

/// REPORT LUNS (SELECT REPORT 0) with an allocation length of `len`.
pub fn report_luns(len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa0;
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

/// The LUNs of REPORT LUNS parameter data.
pub fn parse_report_luns(d: &[u8]) -> Vec<u64> {
    let Some(len) = d
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return Vec::new();
    };
    let end = d.len().min(8 + len as usize);
    d.get(8..end)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|e| iscsi_proto::pdu::decode_lun(u64::from_be_bytes(e.try_into().expect("8 bytes"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_reads_its_fields_and_refuses_nonsense() {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&4095u64.to_be_bytes());
        d[8..12].copy_from_slice(&4096u32.to_be_bytes());
        d[14] = 0xc0;
        let c = parse_capacity(&d).unwrap();
        assert_eq!(
            (c.num_blocks, c.block_size, c.thin, c.unmap_reads_zero),
            (4096, 4096, true, true)
        );
        d[8..12].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(parse_capacity(&d), None);
        d[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        d[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(parse_capacity(&d), None, "no room for the count");
        assert_eq!(parse_capacity(&d[..10]), None);
    }

    #[test]
    fn block_limits_and_page_lists_read_what_fits() {
        let mut p = vec![0, 0xb0, 0, 0x3c];
        p.resize(64, 0);
        p[6..8].copy_from_slice(&8u16.to_be_bytes());
        p[8..12].copy_from_slice(&2048u32.to_be_bytes());
        p[20..24].copy_from_slice(&65536u32.to_be_bytes());
        p[36..44].copy_from_slice(&(1u64 << 20).to_be_bytes());
        p[44..48].copy_from_slice(&16u32.to_be_bytes());
        let b = parse_block_limits(&p);
        assert_eq!(
            (
                b.limits.max_transfer,
                b.limits.optimal_granularity,
                b.limits.atomic_write
            ),
            (2048, 8, 16)
        );
        assert_eq!((b.max_unmap, b.max_write_same), (65536, 1 << 20));
        assert_eq!(parse_block_limits(&p[..10]).limits.max_transfer, 0);
        assert_eq!(
            supported_pages(&[0, 0, 0, 3, 0x00, 0x80, 0x83]),
            [0, 0x80, 0x83]
        );
        assert_eq!(supported_pages(&[0, 0, 0, 9, 0x00]), [0]);
        assert!(supported_pages(&[0]).is_empty());
    }

    #[test]
    fn caching_reads_wp_and_wce() {
        assert_eq!(
            parse_caching(&[0x17, 0, 0x80, 0, 0x08, 0x12, 0x04]),
            (true, true)
        );
        assert_eq!(
            parse_caching(&[0x17, 0, 0, 0, 0x08, 0x12, 0x00]),
            (false, false)
        );
        assert_eq!(parse_caching(&[0x17]), (false, false));
    }

    #[test]
    fn the_blocks_a_command_changes_are_read_from_it() {
        assert_eq!(written_span(&write16(9, 4, true), &[]), Some((9, 4)));
        assert_eq!(
            written_span(&[0x2a, 0, 0, 0, 1, 2, 0, 0, 3, 0], &[]),
            Some((258, 3))
        );
        assert_eq!(
            written_span(&write_same16(7, 5, true), &[0; 512]),
            Some((7, 5))
        );
        assert_eq!(
            written_span(&write_same16(7, 0, false), &[]),
            Some((7, u64::MAX - 7))
        );
        let (c, p) = unmap(100, 8);
        assert_eq!(written_span(&c, &p), Some((100, 8)));
        assert_eq!(written_span(&read16(9, 4), &[]), None);
        assert_eq!(written_span(&synchronize_cache16(), &[]), None);
        assert_eq!(written_span(&c, &p[..8]), None, "an UNMAP of nothing");
    }

    #[test]
    fn commands_carry_their_fields() {
        let w = write16(0x0102_0304_0506_0708, 9, true);
        assert_eq!(
            (w[0], w[1], &w[2..10], &w[10..14]),
            (0x8a, 0x08, &[1, 2, 3, 4, 5, 6, 7, 8][..], &[0, 0, 0, 9][..])
        );
        let (c, p) = unmap(5, 7);
        assert_eq!(
            (c[0], c[8], p[1], p[3], p[15], p[19]),
            (0x42, 24, 22, 16, 5, 7)
        );
    }

    #[test]
    fn report_luns_data_is_read_to_its_stated_length() {
        let mut d = vec![0, 0, 0, 16, 0, 0, 0, 0];
        d.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        d.extend_from_slice(&[0, 7, 0, 0, 0, 0, 0, 0]);
        d.extend_from_slice(&[0, 9, 0, 0, 0, 0, 0, 0]); // past the length
        assert_eq!(parse_report_luns(&d), [0, 7]);
        assert_eq!(parse_report_luns(&[0, 0]), Vec::<u64>::new());
    }
}
