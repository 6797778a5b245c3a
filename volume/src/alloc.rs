//! Free space and allocation of units (sans-I/O).

use crate::table::{Table, UnitExtent};

/// The free runs of units of `table` on a device of `device_units` units,
/// in address order.
pub fn free_extents(table: &Table, device_units: u64) -> Vec<UnitExtent> {
    let mut used: Vec<UnitExtent> = table
        .volumes
        .iter()
        .flat_map(|v| v.extents.iter().copied())
        .collect();
    used.sort_unstable();
    let mut free = Vec::new();
    let mut at = table.first_unit;
    for u in used {
        if u.start > at {
            free.push(UnitExtent {
                start: at,
                len: u.start.min(device_units).saturating_sub(at),
            });
        }
        at = at.max(u.end());
    }
    if device_units > at {
        free.push(UnitExtent {
            start: at,
            len: device_units - at,
        });
    }
    free.retain(|e| e.len > 0);
    free
}

/// Picks `units` units from `free`: right after `after` first (so a grown
/// volume stays contiguous where it can), then the first free runs in
/// address order. None if there are not that many free.
pub fn allocate(free: &[UnitExtent], units: u64, after: Option<u64>) -> Option<Vec<UnitExtent>> {
    if units == 0 {
        return Some(Vec::new());
    }
    if free.iter().map(|e| e.len).sum::<u64>() < units {
        return None;
    }
    let mut order: Vec<UnitExtent> = free.to_vec();
    let next_to = after.and_then(|end| order.iter().position(|e| e.start == end));
    // Else a run that holds the whole request in one piece beats splitting it.
    let first = next_to.or_else(|| order.iter().position(|e| e.len >= units));
    if let Some(i) = first {
        let e = order.remove(i);
        order.insert(0, e);
    }
    let mut out = Vec::new();
    let mut left = units;
    for e in order {
        if left == 0 {
            break;
        }
        let n = e.len.min(left);
        out.push(UnitExtent {
            start: e.start,
            len: n,
        });
        left -= n;
    }
    Some(out)
}

/// Picks `units` units from the top of `free` (the highest free units
/// first), in address order: small hidden allocations (changed-block maps)
/// stay out of the way of volumes growing in place. None if there are not
/// that many free.
pub fn allocate_high(free: &[UnitExtent], units: u64) -> Option<Vec<UnitExtent>> {
    if free.iter().map(|e| e.len).sum::<u64>() < units {
        return None;
    }
    let mut out = Vec::new();
    let mut left = units;
    for e in free.iter().rev() {
        if left == 0 {
            break;
        }
        let n = e.len.min(left);
        out.push(UnitExtent {
            start: e.end() - n,
            len: n,
        });
        left -= n;
    }
    out.reverse();
    Some(out)
}

/// The parts of `extents` that may not read zeroes: those in
/// [`Table::dirty`] or at or beyond [`Table::zero_known`]. In address order.
pub fn needs_zero(table: &Table, extents: &[UnitExtent]) -> Vec<UnitExtent> {
    let mut out = Vec::new();
    for e in extents {
        for d in &table.dirty {
            push_overlap(&mut out, e, d.start, d.end());
        }
        push_overlap(&mut out, e, table.zero_known, u64::MAX);
    }
    out.sort_unstable();
    merge(out)
}

/// Pushes the part of `e` in `[start, end)`, if any.
fn push_overlap(out: &mut Vec<UnitExtent>, e: &UnitExtent, start: u64, end: u64) {
    let (s, t) = (e.start.max(start), e.end().min(end));
    if s < t {
        out.push(UnitExtent {
            start: s,
            len: t - s,
        });
    }
}

/// Sorted runs with those that touch or overlap merged.
fn merge(sorted: Vec<UnitExtent>) -> Vec<UnitExtent> {
    let mut out: Vec<UnitExtent> = Vec::with_capacity(sorted.len());
    for e in sorted {
        match out.last_mut() {
            Some(last) if last.end() >= e.start => {
                let end = last.end().max(e.end());
                last.len = end - last.start;
            }
            _ => out.push(e),
        }
    }
    out
}

/// `list` (sorted, disjoint) without the units of `cut`.
pub fn subtract(list: &[UnitExtent], cut: &[UnitExtent]) -> Vec<UnitExtent> {
    let mut cut = cut.to_vec();
    cut.sort_unstable();
    let mut out = Vec::new();
    for d in list {
        let mut at = d.start;
        for c in cut
            .iter()
            .filter(|c| c.end() > d.start && c.start < d.end())
        {
            if c.start > at {
                out.push(UnitExtent {
                    start: at,
                    len: c.start - at,
                });
            }
            at = at.max(c.end());
        }
        if d.end() > at {
            out.push(UnitExtent {
                start: at,
                len: d.end() - at,
            });
        }
    }
    out
}

/// Records `freed` (a deleted volume's extents) in [`Table::dirty`]: the
/// parts below [`Table::zero_known`] join it (beyond it every unit counts
/// as dirty already).
pub fn mark_dirty(table: &mut Table, freed: &[UnitExtent]) {
    let mut all = table.dirty.clone();
    for e in freed {
        push_overlap(&mut all, e, 0, table.zero_known);
    }
    all.sort_unstable();
    table.dirty = merge(all);
}

/// Appends `new` to `extents`, merging runs that touch.
pub fn append(extents: &mut Vec<UnitExtent>, new: &[UnitExtent]) {
    for &n in new {
        match extents.last_mut() {
            Some(last) if last.end() == n.start => last.len += n.len,
            _ => extents.push(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Entry;

    fn table(extents: &[(u64, u64)]) -> Table {
        Table {
            seq: 1,
            block_size: 512,
            unit_blocks: 8,
            first_unit: 10,
            volumes: extents
                .iter()
                .enumerate()
                .map(|(i, &(start, len))| Entry {
                    uuid: [i as u8; 16],
                    name: format!("v{i}"),
                    flags: 0,
                    created_ms: 0,
                    extents: vec![UnitExtent { start, len }],
                })
                .collect(),
            zero_known: 0,
            dirty: Vec::new(),
        }
    }

    fn ext(v: &[(u64, u64)]) -> Vec<UnitExtent> {
        v.iter()
            .map(|&(start, len)| UnitExtent { start, len })
            .collect()
    }

    #[test]
    fn high_allocations_take_the_top_units() {
        let free = ext(&[(12, 8), (25, 15)]);
        assert_eq!(allocate_high(&free, 1), Some(ext(&[(39, 1)])));
        assert_eq!(allocate_high(&free, 17), Some(ext(&[(18, 2), (25, 15)])));
        assert_eq!(allocate_high(&free, 24), None);
    }

    #[test]
    fn free_runs_lie_between_volumes() {
        let t = table(&[(20, 5), (10, 2)]);
        assert_eq!(free_extents(&t, 40), ext(&[(12, 8), (25, 15)]));
        assert_eq!(free_extents(&t, 22), ext(&[(12, 8)]));
        assert_eq!(free_extents(&table(&[]), 10), ext(&[]));
    }

    #[test]
    fn allocation_prefers_contiguous_then_whole_runs() {
        let free = ext(&[(12, 3), (25, 15)]);
        assert_eq!(allocate(&free, 2, None), Some(ext(&[(12, 2)])));
        assert_eq!(allocate(&free, 5, None), Some(ext(&[(25, 5)])));
        assert_eq!(allocate(&free, 2, Some(25)), Some(ext(&[(25, 2)])));
        assert_eq!(allocate(&free, 17, None), Some(ext(&[(12, 3), (25, 14)])));
        assert_eq!(allocate(&free, 19, None), None);
    }

    #[test]
    fn dirty_units_and_units_beyond_the_known_zero_need_zeroing() {
        let mut t = table(&[]);
        t.zero_known = 30;
        t.dirty = ext(&[(12, 3), (20, 2)]);
        assert_eq!(needs_zero(&t, &ext(&[(10, 4)])), ext(&[(12, 2)]));
        assert_eq!(needs_zero(&t, &ext(&[(15, 5)])), ext(&[]));
        assert_eq!(
            needs_zero(&t, &ext(&[(10, 30)])),
            ext(&[(12, 3), (20, 2), (30, 10)])
        );
        // Dirty space next to the unknown tail merges with it.
        t.dirty = ext(&[(25, 5)]);
        assert_eq!(needs_zero(&t, &ext(&[(24, 10)])), ext(&[(25, 9)]));
        t.zero_known = 0;
        t.dirty.clear();
        assert_eq!(needs_zero(&t, &ext(&[(12, 3)])), ext(&[(12, 3)]));
    }

    #[test]
    fn freed_units_become_dirty_and_allocated_ones_leave_the_list() {
        let mut t = table(&[]);
        t.zero_known = 40;
        mark_dirty(&mut t, &ext(&[(20, 5), (12, 3)]));
        assert_eq!(t.dirty, ext(&[(12, 3), (20, 5)]));
        mark_dirty(&mut t, &ext(&[(15, 5), (38, 10)]));
        assert_eq!(t.dirty, ext(&[(12, 13), (38, 2)]));
        assert_eq!(
            subtract(&t.dirty, &ext(&[(14, 2), (30, 9)])),
            ext(&[(12, 2), (16, 9), (39, 1)])
        );
        assert_eq!(subtract(&t.dirty, &ext(&[(0, 100)])), ext(&[]));
    }

    #[test]
    fn appended_runs_merge() {
        let mut e = ext(&[(10, 2)]);
        append(&mut e, &ext(&[(12, 3), (20, 1)]));
        assert_eq!(e, ext(&[(10, 5), (20, 1)]));
    }
}
