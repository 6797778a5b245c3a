//! A volume's blocks mapped onto the device through its extents (sans-I/O).

use crate::table::UnitExtent;

/// One run of the map: `blocks` volume blocks from `vol_lba` live at
/// `dev_lba` on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    vol_lba: u64,
    dev_lba: u64,
    blocks: u64,
}

/// A piece of a request that lies in one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Where the piece starts on the device.
    pub dev_lba: u64,
    /// Its length in blocks.
    pub blocks: u64,
    /// Blocks of the request before it.
    pub offset: u64,
}

/// The map of a volume: its extents in blocks, in volume order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMap {
    runs: Vec<Run>,
}

impl ExtentMap {
    /// The map of `extents` (in units of `unit_blocks` blocks).
    pub fn new(extents: &[UnitExtent], unit_blocks: u64) -> ExtentMap {
        let mut vol_lba = 0;
        let runs = extents
            .iter()
            .map(|e| {
                let r = Run {
                    vol_lba,
                    dev_lba: e.start * unit_blocks,
                    blocks: e.len * unit_blocks,
                };
                vol_lba += r.blocks;
                r
            })
            .collect();
        ExtentMap { runs }
    }

    /// Capacity of the volume in blocks.
    pub fn num_blocks(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.vol_lba + r.blocks)
    }

    /// The pieces of `blocks` blocks at `lba`, one per extent it touches, in
    /// order. The caller has checked the range.
    pub fn pieces(&self, lba: u64, blocks: u64) -> Vec<Piece> {
        let mut out = Vec::with_capacity(1);
        let first = self.runs.partition_point(|r| r.vol_lba + r.blocks <= lba);
        let (mut at, end) = (lba, lba + blocks);
        for r in &self.runs[first..] {
            if at >= end {
                break;
            }
            let n = (r.vol_lba + r.blocks).min(end) - at;
            out.push(Piece {
                dev_lba: r.dev_lba + (at - r.vol_lba),
                blocks: n,
                offset: at - lba,
            });
            at += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_split_at_extent_boundaries() {
        let m = ExtentMap::new(
            &[
                UnitExtent { start: 10, len: 2 },
                UnitExtent { start: 3, len: 1 },
            ],
            4,
        );
        assert_eq!(m.num_blocks(), 12);
        let p = |dev_lba, blocks, offset| Piece {
            dev_lba,
            blocks,
            offset,
        };
        assert_eq!(m.pieces(0, 8), vec![p(40, 8, 0)]);
        assert_eq!(m.pieces(6, 4), vec![p(46, 2, 0), p(12, 2, 2)]);
        assert_eq!(m.pieces(8, 4), vec![p(12, 4, 0)]);
        assert_eq!(m.pieces(11, 1), vec![p(15, 1, 0)]);
        assert_eq!(m.pieces(0, 12).len(), 2);
    }
}
