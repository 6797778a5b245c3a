//! Stripe geometry: where each volume block, parity chunk and tag block lives.
//!
//! The data area of every member is cut into *rows*. A row holds one chunk of
//! `chunk_blocks` blocks per member followed by `tag_blocks` tag blocks (the
//! per-block checksums of that chunk, see [`crate::integrity`]). Across the
//! members a row is one stripe: `members - 1` data chunks and one parity chunk,
//! placed md-style *left-symmetric*: parity starts on the last member and moves
//! one member to the left each row, and data chunk `k` sits `k + 1` members to
//! the right of parity (wrapping), so consecutive chunks of the volume visit
//! every member before any repeats.

/// What a member holds in a given row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkRole {
    /// The parity chunk of the row.
    Parity,
    /// Data chunk `k` of the row (`0..members-1`).
    Data(u32),
}

/// Geometry of one RAID5 layout over a fixed number of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Number of members (data chunks + 1 parity), at least 2.
    pub members: u32,
    /// Blocks per chunk.
    pub chunk_blocks: u32,
    /// Tag blocks that follow each chunk on its member.
    pub tag_blocks: u32,
    /// First member block of the data area.
    pub data_start: u64,
    /// Rows in use on every member.
    pub rows: u64,
}

impl Layout {
    /// Data chunks per row.
    pub fn data_chunks(&self) -> u32 {
        self.members - 1
    }

    /// Volume blocks per row (one full stripe of data).
    pub fn row_data_blocks(&self) -> u64 {
        u64::from(self.data_chunks()) * u64::from(self.chunk_blocks)
    }

    /// Member blocks one row occupies (chunk plus its tag blocks).
    pub fn row_blocks(&self) -> u64 {
        u64::from(self.chunk_blocks) + u64::from(self.tag_blocks)
    }

    /// Volume capacity in blocks.
    pub fn capacity(&self) -> u64 {
        self.rows * self.row_data_blocks()
    }

    /// Member holding the parity chunk of `row`.
    pub fn parity_member(&self, row: u64) -> u32 {
        let n = u64::from(self.members);
        (n - 1 - row % n) as u32
    }

    /// Member holding data chunk `k` of `row`.
    pub fn data_member(&self, row: u64, k: u32) -> u32 {
        (self.parity_member(row) + 1 + k) % self.members
    }

    /// What `member` holds in `row`.
    pub fn role_of(&self, row: u64, member: u32) -> ChunkRole {
        let p = self.parity_member(row);
        if member == p {
            ChunkRole::Parity
        } else {
            ChunkRole::Data((member + self.members - p - 1) % self.members)
        }
    }

    /// Row, data chunk and block within the chunk of volume block `lba`.
    pub fn locate(&self, lba: u64) -> (u64, u32, u32) {
        let per_row = self.row_data_blocks();
        let row = lba / per_row;
        let within = lba % per_row;
        let c = u64::from(self.chunk_blocks);
        (row, (within / c) as u32, (within % c) as u32)
    }

    /// Volume block at block `i` of data chunk `k` of `row`.
    pub fn lba_of(&self, row: u64, k: u32, i: u32) -> u64 {
        row * self.row_data_blocks() + u64::from(k) * u64::from(self.chunk_blocks) + u64::from(i)
    }

    /// Member block of block `i` of the chunk in `row` (the same on every member).
    pub fn member_block(&self, row: u64, i: u32) -> u64 {
        self.data_start + row * self.row_blocks() + u64::from(i)
    }

    /// Member block of tag block `t` of `row`.
    pub fn tag_block(&self, row: u64, t: u32) -> u64 {
        self.member_block(row, self.chunk_blocks + t)
    }

    /// Member blocks a member needs to hold this layout.
    pub fn member_blocks_needed(&self) -> u64 {
        self.data_start + self.rows * self.row_blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(members: u32) -> Layout {
        Layout {
            members,
            chunk_blocks: 4,
            tag_blocks: 1,
            data_start: 100,
            rows: 10,
        }
    }

    /// Renders rows as md's documentation does: per member, `P` or the
    /// volume chunk number stored there.
    fn table(members: u32, rows: u64) -> Vec<String> {
        let l = layout(members);
        (0..rows)
            .map(|r| {
                (0..members)
                    .map(|m| match l.role_of(r, m) {
                        ChunkRole::Parity => "P".to_string(),
                        ChunkRole::Data(k) => {
                            (l.lba_of(r, k, 0) / u64::from(l.chunk_blocks)).to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn left_symmetric_two_members_mirrors() {
        assert_eq!(table(2, 4), ["0 P", "P 1", "2 P", "P 3"]);
    }

    #[test]
    fn left_symmetric_three_members() {
        assert_eq!(table(3, 4), ["0 1 P", "3 P 2", "P 4 5", "6 7 P"]);
    }

    #[test]
    fn left_symmetric_four_members() {
        assert_eq!(
            table(4, 5),
            ["0 1 2 P", "4 5 P 3", "8 P 6 7", "P 9 10 11", "12 13 14 P"]
        );
    }

    #[test]
    fn left_symmetric_five_members() {
        assert_eq!(
            table(5, 6),
            [
                "0 1 2 3 P",
                "5 6 7 P 4",
                "10 11 P 8 9",
                "15 P 12 13 14",
                "P 16 17 18 19",
                "20 21 22 23 P"
            ]
        );
    }

    #[test]
    fn locate_and_addresses_round_trip() {
        for n in 2..=5 {
            let l = layout(n);
            for lba in 0..l.capacity() {
                let (row, k, i) = l.locate(lba);
                assert_eq!(l.lba_of(row, k, i), lba);
                let m = l.data_member(row, k);
                assert_eq!(l.role_of(row, m), ChunkRole::Data(k));
            }
        }
        let l = layout(4);
        // Row 2 starts at 100 + 2 * (4 + 1); its tag block follows the chunk.
        assert_eq!(l.member_block(2, 0), 110);
        assert_eq!(l.tag_block(2, 0), 114);
        assert_eq!(l.capacity(), 10 * 3 * 4);
        assert_eq!(l.locate(13), (1, 0, 1));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("RAID_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).map_or(2000, |c: u32| c * 40)
        ))]

        /// Every volume block maps to exactly one (member, member block), never
        /// a parity position, and consecutive chunks visit every member.
        #[test]
        fn mapping_is_a_bijection(members in 2u32..=16, chunk in 1u32..=64, rows in 1u64..=64, lba_seed in any::<u64>()) {
            let l = Layout { members, chunk_blocks: chunk, tag_blocks: 1, data_start: 7, rows };
            let lba = lba_seed % l.capacity();
            let (row, k, i) = l.locate(lba);
            prop_assert!(row < rows && k < members - 1 && i < chunk);
            prop_assert_eq!(l.lba_of(row, k, i), lba);
            let m = l.data_member(row, k);
            prop_assert_ne!(m, l.parity_member(row));
            prop_assert_eq!(l.role_of(row, m), ChunkRole::Data(k));
            // N consecutive chunks starting at a row boundary cover all members.
            let start = row * u64::from(members - 1);
            let mut seen = vec![false; members as usize];
            for c in start..start + u64::from(members) {
                let (r, k, _) = l.locate(c * u64::from(chunk) % l.capacity());
                seen[l.data_member(r, k) as usize] = true;
            }
            if row + 1 < rows {
                prop_assert!(seen.iter().all(|&s| s));
            }
        }
    }
}
