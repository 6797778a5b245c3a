//! Creating an array, and assembling one from its members alone.
//!
//! Creation writes fresh metadata on every member and zeroes the data area
//! (a zero tag block means "never written", whose blocks read as zeroes).
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
//!
//! A suspended slot stays suspended (its device is not used until it is
//! resumed). A replace in progress resumes at its checkpoint when both its
//! member and its replacement are there; with the member gone the
//! replacement takes the slot as a rebuild target; with the replacement gone
//! the replace is abandoned.

use std::collections::BTreeMap;
use std::sync::Arc;

use blockdev::{DeviceIdentity, SharedDevice};
use tracing::{info, warn};

use crate::array::{Config, RaidArray};
use crate::bitmap::Bitmap;
use crate::clock::Clock;
use crate::error::{RaidError, Result};
use crate::geometry::Geo;
use crate::integrity::tag_blocks_for;
use crate::layout::Layout;
use crate::member_io::MemberDevice;
use crate::members::{MemberState, Meta, RebuildState, ReplaceState, Slot};
use crate::superblock::{
    read_newest, SlotEntry, SlotState, Superblock, FLAG_CLEAN, FLAG_JOURNAL, FLAG_REBUILD,
    FLAG_REPLACE, FLAG_RESHAPE, MAX_SLOTS, REBUILD_BITMAP, REPLACEMENT, RETIRED, SPARE,
};
use crate::tag_cache::TagCache;

/// Options of [`RaidArray::assemble`].
#[derive(Debug, Clone, Default)]
pub struct AssembleOptions {
    /// Start a dirty degraded array even though parity may be inconsistent.
    pub force: bool,
}

/// What assembly found.
#[derive(Debug, Clone, Default)]
pub struct AssemblyReport {
    /// Devices not used and why.
    pub refused: Vec<(DeviceIdentity, String)>,
    /// Slots with no usable member.
    pub missing_slots: Vec<u32>,
    /// Journal records replayed.
    pub journal_replayed: u64,
    /// Rows resynced because the array was not shut down cleanly.
    pub resynced_rows: u64,
    /// Slots suspended (their devices, if given, are not used: resume them).
    pub suspended_slots: Vec<u32>,
    /// A replace found running: the slot and the row its copy resumes at.
    pub replace_resumed: Option<(u32, u64)>,
    /// Rows below that position copied again because a crash may have left
    /// them different on the two devices.
    pub replace_recopied_rows: u64,
}

impl RaidArray {
    /// Creates a new array over `members` (their order gives the slots) with
    /// optional hot `spares`, writing fresh metadata and zeroing the data area.
    pub async fn create(
        members: Vec<SharedDevice>,
        spares: Vec<SharedDevice>,
        cfg: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<RaidArray> {
        let tags = Arc::new(TagCache::new(cfg.tag_cache_bytes));
        let as_member = |d| MemberDevice::wrap(d, cfg.member_timeout, clock.clone(), tags.clone());
        let members: Vec<SharedDevice> = members.into_iter().map(as_member).collect();
        let spares: Vec<SharedDevice> = spares.into_iter().map(as_member).collect();
        if members.len() < 2 || members.len() > MAX_SLOTS {
            return Err(RaidError::Config(format!(
                "need 2..={MAX_SLOTS} members, got {}",
                members.len()
            )));
        }
        if cfg.chunk_blocks == 0 || cfg.region_rows == 0 || cfg.checkpoint_rows == 0 {
            return Err(RaidError::Config(
                "chunk, region and checkpoint sizes must be > 0".into(),
            ));
        }
        let bs = members[0].geometry().block_size;
        if members
            .iter()
            .chain(&spares)
            .any(|d| d.geometry().block_size != bs)
        {
            return Err(RaidError::Config("members differ in block size".into()));
        }
        let max_members = cfg.max_members.max(members.len() as u32);
        let tag_blocks = tag_blocks_for(bs, cfg.chunk_blocks);
        let row_blocks = u64::from(cfg.chunk_blocks) + u64::from(tag_blocks);
        let smallest = members
            .iter()
            .map(|d| d.geometry().num_blocks)
            .min()
            .unwrap_or(0);
        let sbb = Superblock::blocks(bs);
        let bitmap_start = 2 * sbb;
        let bitmap_blocks = Bitmap::blocks_for(smallest / row_blocks, cfg.region_rows, bs);
        let journal_start = bitmap_start + bitmap_blocks;
        let journal_blocks = cfg.journal_blocks;
        let backup_start = journal_start + journal_blocks;
        let backup_rows = u64::from(max_members);
        let data_start = backup_start + backup_rows * row_blocks;
        if smallest <= data_start + row_blocks {
            return Err(RaidError::Config(format!(
                "members of {smallest} blocks are too small for the metadata ({data_start} blocks)"
            )));
        }
        let rows = (smallest - data_start) / row_blocks;
        let array_uuid: [u8; 16] = rand::random();
        let sb = Superblock {
            array_uuid,
            device_uuid: [0; 16],
            role: 0,
            flags: FLAG_CLEAN | if journal_blocks > 0 { FLAG_JOURNAL } else { 0 },
            events: 0,
            block_size: bs,
            chunk_blocks: cfg.chunk_blocks,
            tag_blocks,
            members: members.len() as u32,
            rows,
            data_start,
            bitmap_start,
            bitmap_blocks,
            region_rows: cfg.region_rows,
            journal_start,
            journal_blocks,
            backup_start,
            backup_rows,
            rebuild_slot: 0,
            rebuild_flags: 0,
            rebuild_pos: 0,
            reshape_members: 0,
            reshape_pos: 0,
            closed_epoch: 0,
            replace_slot: 0,
            replace_pos: 0,
            replace_device: [0; 16],
            slots: members
                .iter()
                .map(|d| SlotEntry {
                    device: d.identity().uuid,
                    state: SlotState::Active,
                })
                .collect(),
        };
        let layout = Layout {
            members: members.len() as u32,
            chunk_blocks: cfg.chunk_blocks,
            tag_blocks,
            data_start,
            rows,
        };
        for d in members.iter().chain(&spares) {
            // Metadata areas and data area start out zeroed: a zero tag block
            // means "never written", whose blocks must read as zeroes.
            d.write_zeroes(0, layout.member_blocks_needed(), true)
                .await
                .map_err(|e| RaidError::Member { slot: 0, source: e })?;
        }
        let slots = members
            .iter()
            .map(|d| Slot {
                dev: Some(d.clone()),
                uuid: d.identity().uuid,
                state: MemberState::InSync,
            })
            .collect();
        let meta = Meta {
            sb,
            slots,
            spares,
            rebuild: None,
            replace: None,
            bitmap: Bitmap::new(rows, cfg.region_rows),
            clean_on_disk: true,
        };
        let array = Self::from_parts(
            cfg,
            bs,
            array_uuid,
            clock,
            Geo {
                cur: layout,
                reshape: None,
            },
            meta,
            tags,
        );
        if let Some(j) = &array.inner.journal {
            j.reset_all(&array).await?;
        }
        array.write_superblocks().await?;
        array.begin_epochs();
        info!(uuid = %array.inner.identity, rows, members = layout.members, "raid5 array created");
        Ok(array)
    }

    /// Assembles the array found on `devices` (members, spares, and possibly
    /// unrelated devices, which are refused and reported).
    pub async fn assemble(
        devices: Vec<SharedDevice>,
        cfg: Config,
        clock: Arc<dyn Clock>,
        opts: AssembleOptions,
    ) -> Result<(RaidArray, AssemblyReport)> {
        let mut report = AssemblyReport::default();
        let tags = Arc::new(TagCache::new(cfg.tag_cache_bytes));
        let mut found: Vec<(SharedDevice, Superblock)> = Vec::new();
        for d in devices {
            let d = MemberDevice::wrap(d, cfg.member_timeout, clock.clone(), tags.clone());
            match read_newest(&d).await {
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
                state: match e.state {
                    SlotState::Suspended => MemberState::Suspended { since: now },
                    _ => MemberState::Faulty { since: now },
                },
            })
            .collect();
        let replacing = best.flags & FLAG_REPLACE != 0;
        let mut spares = Vec::new();
        let mut replacement = None;
        for (d, sb) in &found {
            let id = d.identity().uuid;
            let mut sb = sb.clone();
            if sb.role == REPLACEMENT {
                if replacing && best.replace_device == id && sb.events + 1 >= best.events {
                    replacement = Some(d.clone());
                    continue;
                }
                // A replace that finished while this device's superblock
                // lagged one event: the table lists it in the slot.
                match best.slots[..width].iter().position(|e| e.device == id) {
                    Some(slot) => sb.role = slot as u32,
                    None => {
                        report.refused.push((
                            d.identity().clone(),
                            "replacement of a replace that is no longer running".into(),
                        ));
                        continue;
                    }
                }
            }
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
            if sb.role == RETIRED {
                report.refused.push((
                    d.identity().clone(),
                    "retired from this array (its replace finished)".into(),
                ));
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
            if entry.state == SlotState::Suspended {
                // Behind by design: it missed what was written meanwhile.
                report
                    .refused
                    .push((d.identity().clone(), "member suspended: resume it".into()));
                continue;
            }
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
                SlotState::Suspended => continue,
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
        let mut replace = None;
        if replacing {
            let s = best.replace_slot;
            match (replacement, slots.get_mut(s as usize)) {
                (Some(target), Some(slot)) if slot.state == MemberState::InSync => {
                    report.replace_resumed = Some((s, best.replace_pos));
                    replace = Some(ReplaceState::new(s, target, best.replace_pos, now));
                }
                // The member being replaced is gone: its replacement holds
                // the rows copied so far and takes the slot as a rebuild.
                (Some(target), Some(slot))
                    if matches!(slot.state, MemberState::Faulty { .. }) && rebuild.is_none() =>
                {
                    info!(
                        slot = s,
                        "member being replaced is missing; its replacement takes over"
                    );
                    slot.uuid = target.identity().uuid;
                    slot.dev = Some(target);
                    slot.state = MemberState::Rebuilding;
                    rebuild = Some(RebuildState::new(s, best.replace_pos, false, now));
                }
                _ => warn!(slot = s, "replace abandoned: its replacement is missing"),
            }
        }
        report.missing_slots = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, MemberState::Faulty { .. }))
            .map(|(i, _)| i as u32)
            .collect();
        report.suspended_slots = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, MemberState::Suspended { .. }))
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
            replace,
            bitmap,
            clean_on_disk: !dirty,
        };
        let bs = best.block_size;
        let array = RaidArray::from_parts(cfg, bs, uuid, clock, Geo { cur, reshape }, meta, tags);
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
            report.replace_recopied_rows = array.recopy_dirty_rows().await?;
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
