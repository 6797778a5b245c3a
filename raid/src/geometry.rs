//! The array's geometry at a moment: its current layout and, while a reshape
//! runs, the new one and how far it has got; and the cutting of a volume
//! request into the rows it touches.

use blockdev::Bytes;

use crate::layout::Layout;

/// The part of a volume request in one row: layout, row, and `(lba, blocks)`
/// runs each inside one chunk.
pub(crate) type RowSpan = (Layout, u64, Vec<(u64, u64)>);

/// A piece of a row write: blocks starting at `lba`, all within one chunk.
pub(crate) type Piece = (u64, Bytes);

/// The current layout, and the new one while a reshape runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub(crate) cur: Layout,
    /// New layout and the number of its rows already reshaped.
    pub(crate) reshape: Option<(Layout, u64)>,
}

impl Geo {
    /// The layout holding volume block `lba`, and where that layout ends in
    /// volume blocks.
    pub(crate) fn layout_for(&self, lba: u64) -> (Layout, u64) {
        match self.reshape {
            Some((new, pos)) => {
                let boundary = pos * new.row_data_blocks();
                if lba < boundary {
                    (new, boundary)
                } else {
                    (self.cur, self.cur.capacity())
                }
            }
            None => (self.cur, self.cur.capacity()),
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.cur.capacity()
    }

    /// The layout physical `row` of the members holds (a row below the
    /// reshape position holds the new one), or `None` past that layout's end.
    pub(crate) fn layout_of_row(&self, row: u64) -> Option<Layout> {
        let lay = match self.reshape {
            Some((new, pos)) if row < pos => new,
            _ => self.cur,
        };
        (row < lay.rows).then_some(lay)
    }

    /// Physical rows of the members in use by either layout.
    pub(crate) fn physical_rows(&self) -> u64 {
        self.reshape
            .map_or(self.cur.rows, |(new, _)| new.rows.max(self.cur.rows))
    }

    /// Volume blocks of `row` of `lay` that live in that layout: during a
    /// reshape the old layout's row at the boundary is partly moved already.
    pub(crate) fn row_range(&self, lay: &Layout, row: u64) -> std::ops::Range<u64> {
        let start = row * lay.row_data_blocks();
        let end = start + lay.row_data_blocks();
        match self.reshape {
            Some((new, pos)) if *lay == self.cur => {
                start.max(pos * new.row_data_blocks()).min(end)..end
            }
            _ => start..end,
        }
    }

    /// Splits `[lba, lba + n)` into rows of their layouts: `(layout, row,
    /// pieces of (lba, blocks))`.
    pub(crate) fn split(&self, lba: u64, n: u64) -> Vec<RowSpan> {
        let mut out: Vec<RowSpan> = Vec::new();
        let mut pos = lba;
        let end = lba + n;
        while pos < end {
            let (lay, lay_end) = self.layout_for(pos);
            let (row, _, i) = lay.locate(pos);
            let chunk_end = pos - u64::from(i) + u64::from(lay.chunk_blocks);
            let stop = end.min(chunk_end).min(lay_end);
            match out.last_mut() {
                Some((l, r, v)) if *l == lay && *r == row => v.push((pos, stop - pos)),
                _ => out.push((lay, row, vec![(pos, stop - pos)])),
            }
            pos = stop;
        }
        out
    }
}
