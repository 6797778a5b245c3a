//! Assembling an array from its members alone.
//!
//! Each device's newest valid superblock is read. The array is the uuid most
//! devices carry; devices of another array are refused. The superblock with the
//! highest event counter is the truth: its member table says which device
//! belongs in which slot and in what state. A device whose counter is behind
//! (it missed updates while away) is refused as stale; one event behind is
//! tolerated for a member the table still lists as active, which is what a
//! crash in the middle of a superblock update leaves. A dirty array (not shut
//! down cleanly) with a member missing could hold a row whose parity disagrees
//! with its data, so it only starts with the journal, or when forced.

use std::collections::BTreeMap;
use std::sync::Arc;

use blockdev::SharedDevice;
use tracing::{info, warn};

use crate::array::{
    read_superblock, AssembleOptions, AssemblyReport, Config, Geo, MemberState, Meta, RaidArray,
    Slot,
};
use crate::bitmap::Bitmap;
use crate::clock::Clock;
use crate::error::{RaidError, Result};
use crate::layout::Layout;
use crate::rebuild::RebuildState;
use crate::superblock::{
    SlotState, Superblock, FLAG_CLEAN, FLAG_JOURNAL, FLAG_REBUILD, FLAG_RESHAPE, REBUILD_BITMAP,
    SPARE,
};

impl RaidArray {
    /// Assembles the array found on `devices` (members, spares, and possibly
    /// unrelated devices, which are refused and reported).
    pub async fn assemble(
        devices: Vec<SharedDevice>,
        cfg: Config,
        clock: Arc<dyn Clock>,
        opts: AssembleOptions,
    ) -> Result<(RaidArray, AssemblyReport)> {
        let mut report = AssemblyReport::default();
        let mut found: Vec<(SharedDevice, Superblock)> = Vec::new();
        for d in devices {
            match read_superblock(&d).await {
                Ok(sb) => found.push((d, sb)),
                Err(e) => report
                    .refused
                    .push((d.identity().clone(), format!("no valid superblock: {e}"))),
            }
        }
        let mut votes: BTreeMap<[u8; 16], usize> = BTreeMap::new();
        for (_, sb) in &found {
            *votes.entry(sb.array_uuid).or_default() += 1;
        }
        let max_votes = votes.values().copied().max().unwrap_or(0);
        let winners: Vec<[u8; 16]> = votes
            .iter()
            .filter(|(_, &v)| v == max_votes)
            .map(|(k, _)| *k)
            .collect();
        if winners.len() != 1 {
            return Err(RaidError::Assembly(
                "no array, or several arrays with equal claims".into(),
            ));
        }
        let uuid = winners[0];
        found.retain(|(d, sb)| {
            let ours = sb.array_uuid == uuid;
            if !ours {
                report
                    .refused
                    .push((d.identity().clone(), "member of another array".into()));
            }
            ours
        });
        let best = found
            .iter()
            .map(|(_, sb)| sb)
            .max_by_key(|sb| sb.events)
            .cloned()
            .ok_or_else(|| RaidError::Assembly("no members".into()))?;
        let now = clock.now();
        let width = best.members.max(best.reshape_members) as usize;
        let mut slots: Vec<Slot> = best.slots[..width]
            .iter()
            .map(|e| Slot {
                dev: None,
                uuid: e.device,
                state: MemberState::Faulty { since: now },
            })
            .collect();
        let mut spares = Vec::new();
        for (d, sb) in &found {
            let id = d.identity().uuid;
            if sb.role == SPARE {
                if slots.iter().any(|s| s.uuid == id) {
                    report.refused.push((
                        d.identity().clone(),
                        "spare superblock for a member device".into(),
                    ));
                } else {
                    spares.push(d.clone());
                }
                continue;
            }
            let Some(slot) = slots.get_mut(sb.role as usize).filter(|s| s.uuid == id) else {
                report.refused.push((
                    d.identity().clone(),
                    format!("slot {} belongs to another device", sb.role),
                ));
                continue;
            };
            let entry = best.slots[sb.role as usize];
            let current = sb.events == best.events
                || (sb.events + 1 == best.events && entry.state == SlotState::Active);
            if !current {
                report.refused.push((
                    d.identity().clone(),
                    format!("stale member (events {} < {})", sb.events, best.events),
                ));
                continue;
            }
            match entry.state {
                SlotState::Active => slot.state = MemberState::InSync,
                SlotState::Rebuilding => slot.state = MemberState::Rebuilding,
                SlotState::Faulty => {
                    report
                        .refused
                        .push((d.identity().clone(), "member marked faulty".into()));
                    continue;
                }
            }
            slot.dev = Some(d.clone());
        }
        let mut rebuild = None;
        if best.flags & FLAG_REBUILD != 0 {
            let s = best.rebuild_slot as usize;
            if slots
                .get(s)
                .is_some_and(|s| s.state == MemberState::Rebuilding)
            {
                rebuild = Some(RebuildState::new(
                    best.rebuild_slot,
                    best.rebuild_pos,
                    best.rebuild_flags & REBUILD_BITMAP != 0,
                    now,
                ));
            }
        }
        for (i, s) in slots.iter_mut().enumerate() {
            if s.state == MemberState::Rebuilding
                && rebuild.as_ref().is_none_or(|r| r.slot as usize != i)
            {
                s.state = MemberState::Faulty { since: now };
            }
        }
        report.missing_slots = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, MemberState::Faulty { .. }))
            .map(|(i, _)| i as u32)
            .collect();
        let unavailable = slots
            .iter()
            .filter(|s| s.state != MemberState::InSync)
            .count();
        if unavailable > 1 {
            return Err(RaidError::Failed(format!(
                "{unavailable} members unavailable"
            )));
        }
        let dirty = best.flags & FLAG_CLEAN == 0;
        let journal = best.flags & FLAG_JOURNAL != 0;
        if dirty && unavailable > 0 && !journal && !opts.force {
            return Err(RaidError::Assembly(
                "array is dirty and degraded: parity may disagree with data; start with force to accept that".into(),
            ));
        }
        let cur = Layout {
            members: best.members,
            chunk_blocks: best.chunk_blocks,
            tag_blocks: best.tag_blocks,
            data_start: best.data_start,
            rows: best.rows,
        };
        let reshape = (best.flags & FLAG_RESHAPE != 0).then_some((
            Layout {
                members: best.reshape_members,
                ..cur
            },
            best.reshape_pos,
        ));
        let mut bitmap = Bitmap::new(best.rows, best.region_rows);
        for s in &slots {
            if let (Some(d), MemberState::InSync | MemberState::Rebuilding) = (&s.dev, s.state) {
                match d.read(best.bitmap_start, best.bitmap_blocks as u32).await {
                    Ok(buf) => bitmap.merge(&buf),
                    Err(e) => warn!(error = %e, "bitmap copy unreadable"),
                }
            }
        }
        let meta = Meta {
            sb: best.clone(),
            slots,
            spares,
            rebuild,
            bitmap,
            clean_on_disk: !dirty,
        };
        let bs = best.block_size;
        let array = RaidArray::from_parts(cfg, bs, uuid, clock, Geo { cur, reshape }, meta);
        array.write_superblocks().await?;
        array.begin_epochs();
        if let Some(j) = &array.inner.journal {
            let layouts: Vec<Layout> = [Some(cur), reshape.map(|(l, _)| l)]
                .into_iter()
                .flatten()
                .collect();
            report.journal_replayed = j.replay(&array, &layouts).await?;
        }
        if dirty {
            report.resynced_rows = array.resync_dirty().await?;
        }
        // Everything of earlier assemblies is durable now (closed cleanly,
        // or resynced and flushed here): only this one's epochs are open.
        array.flush_members().await?;
        array.close_epochs_below(array.epoch(), false).await?;
        info!(
            uuid = %array.inner.identity,
            missing = ?report.missing_slots,
            refused = report.refused.len(),
            replayed = report.journal_replayed,
            resynced = report.resynced_rows,
            "raid5 array assembled"
        );
        Ok((array, report))
    }
}
