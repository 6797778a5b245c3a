//! EXTENDED COPY (LID1, SPC-4 6.4) between logical units of this target
//! named by their NAA designator in identification target descriptors (type
//! 0xE4), with block-to-block segment descriptors, whole blocks (type 0x02)
//! or a byte count with byte offsets into the first source and destination
//! blocks (type 0x0A), and RECEIVE COPY RESULTS (copy status, operating
//! parameters).
//!
//! Both kinds of segment become one byte range copied to another: data is
//! read in whole source blocks and written in whole destination blocks, the
//! bytes of a partly written first or last destination block around the
//! copied range read back and written unchanged, under the destination's
//! range lock so no other writer comes between.

use std::collections::HashMap;
use std::sync::Arc;

use blockdev::WriteFlags;
use bytes::{Bytes, BytesMut};

use super::cdb::{be16, be32, be64, byte, trim};
use super::dispatch::{CmdResult, Ctx, Failure, Reply};
use super::lu::LogicalUnit;
use super::opcodes::sa;
use super::order::Ticket;
use super::sense::{key, Asc, Sense};
use super::{ItNexus, TaskAttr};

/// Copies one copy manager runs at a time per LU.
pub(crate) const MAX_CONCURRENT: u32 = 1;
const MAX_TARGET_DESCRIPTORS: u16 = 8;
const MAX_SEGMENT_DESCRIPTORS: u16 = 32;
const MAX_DESCRIPTOR_LIST: u32 = 2048;
const TARGET_DESCRIPTOR_LEN: usize = 32;
/// Segment descriptor type codes.
const SEGMENT_B2B: u8 = 0x02;
const SEGMENT_B2B_OFFSET: u8 = 0x0A;
const SEGMENT_B2B_LEN: usize = 28;
const SEGMENT_B2B_OFFSET_LEN: usize = 32;
/// Bytes moved per read/write pair.
const CHUNK_BYTES: u64 = 1 << 20;
/// Copy results kept per LU.
const MAX_RESULTS: usize = 64;

/// Largest segment in bytes (a type 0x02 descriptor counts blocks in 16
/// bits; a type 0x0A descriptor is held to the same figure).
pub(crate) fn max_segment_bytes(block_size: u32) -> u32 {
    65535u32.saturating_mul(block_size)
}

/// The outcome of one copy operation, for RECEIVE COPY RESULTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopyStatus {
    ok: bool,
    segments: u16,
    bytes: u64,
}

/// Held copy results, per nexus and list identifier.
#[derive(Debug, Default)]
pub(crate) struct CopyResults {
    done: HashMap<(ItNexus, u8), CopyStatus>,
}

impl CopyResults {
    fn record(&mut self, n: &ItNexus, list_id: u8, st: CopyStatus) {
        if self.done.len() >= MAX_RESULTS {
            self.done.clear();
        }
        self.done.insert((n.clone(), list_id), st);
    }
}

fn copy_aborted(asc: Asc) -> Sense {
    Sense::new(key::COPY_ABORTED, asc)
}

/// One segment: `bytes` bytes from byte address `src_at` of target `src`
/// to byte address `dst_at` of target `dst`.
struct Segment {
    src: usize,
    dst: usize,
    bytes: u64,
    src_at: u64,
    dst_at: u64,
}

impl Segment {
    /// Parses the segment descriptor at `off` (its type and length checked)
    /// against the copy targets, before any data moves.
    fn parse(
        d: &[u8],
        off: usize,
        targets: &[Arc<LogicalUnit>],
        max_bytes: u32,
    ) -> Result<Segment, Failure> {
        let at = |field: usize| (off + field) as u16;
        let (src, dst) = (usize::from(be16(d, 4)), usize::from(be16(d, 6)));
        let (Some(s), Some(t)) = (targets.get(src), targets.get(dst)) else {
            return Err(copy_aborted(Asc::UNREACHABLE_COPY_TARGET).into());
        };
        let (sbs, dbs) = (
            u64::from(s.geometry().block_size),
            u64::from(t.geometry().block_size),
        );
        let (src_lba, dst_lba) = (be64(d, 12), be64(d, 20));
        let (bytes, src_off, dst_off, count_field) = if d[0] == SEGMENT_B2B {
            // DC: the block count is in destination blocks, else in source ones.
            let blocks = u64::from(be16(d, 10));
            let bytes = blocks * if d[1] & 0x02 != 0 { dbs } else { sbs };
            if !bytes.is_multiple_of(sbs) || !bytes.is_multiple_of(dbs) {
                return Err(Sense::invalid_param(at(10), None).into());
            }
            (bytes, 0, 0, 10)
        } else {
            let (src_off, dst_off) = (u64::from(be16(d, 28)), u64::from(be16(d, 30)));
            if src_off >= sbs {
                return Err(Sense::invalid_param(at(28), None).into());
            }
            if dst_off >= dbs {
                return Err(Sense::invalid_param(at(30), None).into());
            }
            (u64::from(be32(d, 8)), src_off, dst_off, 8)
        };
        if bytes > u64::from(max_bytes) {
            return Err(Sense::invalid_param(at(count_field), None).into());
        }
        let seg = Segment {
            src,
            dst,
            bytes,
            src_at: byte_address(src_lba, sbs, src_off)?,
            dst_at: byte_address(dst_lba, dbs, dst_off)?,
        };
        // Every block the range touches lies inside its unit.
        let inside = |at: u64, lu: &LogicalUnit, bs: u64| {
            at.checked_add(bytes)
                .is_some_and(|end| end.div_ceil(bs) <= lu.geometry().num_blocks)
        };
        if !inside(seg.src_at, s, sbs) || !inside(seg.dst_at, t, dbs) {
            return Err(copy_aborted(Asc::NONE).into());
        }
        if t.write_protected() {
            return Err(Sense::write_protected().into());
        }
        Ok(seg)
    }
}

/// The byte address of `offset` bytes into block `lba`; beyond any device
/// when it does not fit 64 bits.
fn byte_address(lba: u64, block_size: u64, offset: u64) -> Result<u64, Failure> {
    lba.checked_mul(block_size)
        .and_then(|a| a.checked_add(offset))
        .ok_or_else(|| copy_aborted(Asc::NONE).into())
}

/// Parses and validates the whole parameter list before any data moves.
fn parse(ctx: &Ctx<'_>, p: &[u8]) -> Result<(Vec<Arc<LogicalUnit>>, Vec<Segment>), Failure> {
    let tdl = usize::from(be16(p, 2));
    let sdl = be32(p, 8) as usize;
    let inline = be32(p, 12) as usize;
    if 16 + tdl + sdl + inline > p.len() {
        return Err(Sense::param_list_length().into());
    }
    if (tdl + sdl) as u64 > u64::from(MAX_DESCRIPTOR_LIST) {
        return Err(Sense::param_list_length().into());
    }
    if inline != 0 {
        return Err(Sense::invalid_param(12, None).into());
    }
    if tdl % TARGET_DESCRIPTOR_LEN != 0 {
        return Err(Sense::invalid_param(2, None).into());
    }
    if tdl / TARGET_DESCRIPTOR_LEN > usize::from(MAX_TARGET_DESCRIPTORS) {
        return Err(Sense::param_error(Asc::TOO_MANY_TARGET_DESCRIPTORS, 2).into());
    }
    // Count segment descriptors first (the limit is checked before their contents).
    let seg_start = 16 + tdl;
    let mut offsets = Vec::new();
    let mut off = seg_start;
    while off < seg_start + sdl {
        offsets.push(off);
        let len = 4 + usize::from(be16(p, off + 2));
        off += len;
    }
    if off != seg_start + sdl {
        return Err(Sense::param_list_length().into());
    }
    if offsets.len() > usize::from(MAX_SEGMENT_DESCRIPTORS) {
        return Err(Sense::param_error(Asc::TOO_MANY_SEGMENT_DESCRIPTORS, 8).into());
    }
    let mut targets = Vec::new();
    for i in 0..tdl / TARGET_DESCRIPTOR_LEN {
        let d = &p[16 + i * TARGET_DESCRIPTOR_LEN..16 + (i + 1) * TARGET_DESCRIPTOR_LEN];
        let at = (16 + i * TARGET_DESCRIPTOR_LEN) as u16;
        if d[0] != 0xE4 {
            return Err(Sense::param_error(Asc::UNSUPPORTED_TARGET_DESCRIPTOR, at).into());
        }
        if d[1] & 0x1f != 0 {
            return Err(Sense::invalid_param(at + 1, None).into()); // not a block device
        }
        let (code_set, ty, dlen) = (d[4] & 0x0f, d[5] & 0x0f, usize::from(d[7]));
        let lu = if code_set == 1 && ty == 3 && dlen == 16 {
            ctx.target
                .units()
                .values()
                .find(|lu| lu.device.identity().naa6()[..] == d[8..24])
                .cloned()
        } else {
            None
        };
        let lu = lu.ok_or_else(|| copy_aborted(Asc::UNREACHABLE_COPY_TARGET))?;
        let disk_bs = be32(d, 28) & 0x00ff_ffff;
        if disk_bs != lu.geometry().block_size {
            return Err(Sense::invalid_param(at + 29, None).into());
        }
        targets.push(lu);
    }
    let max_bytes = max_segment_bytes(ctx.lu.geometry().block_size);
    let mut segs = Vec::new();
    for off in offsets {
        let d = &p[off..];
        let len = match d[0] {
            SEGMENT_B2B => SEGMENT_B2B_LEN,
            SEGMENT_B2B_OFFSET => SEGMENT_B2B_OFFSET_LEN,
            _ => {
                return Err(
                    Sense::param_error(Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR, off as u16).into(),
                )
            }
        };
        if 4 + usize::from(be16(d, 2)) != len {
            return Err(Sense::invalid_param(off as u16 + 2, None).into());
        }
        segs.push(Segment::parse(d, off, &targets, max_bytes)?);
    }
    Ok((targets, segs))
}

/// A device error met while copying: the copy is aborted.
fn device_failed(e: blockdev::BlockError) -> Failure {
    copy_aborted(super::sense::from_block_error(&e).asc).into()
}

/// Reads `len` bytes at byte address `at` of `lu` (whole blocks read).
async fn read_bytes(lu: &LogicalUnit, at: u64, len: u64) -> Result<Bytes, Failure> {
    let bs = u64::from(lu.geometry().block_size);
    let first = at / bs;
    let blocks = (at + len).div_ceil(bs) - first;
    let data = lu
        .device
        .read(first, blocks as u32)
        .await
        .map_err(device_failed)?;
    let skip = (at - first * bs) as usize;
    Ok(data.slice(skip..skip + len as usize))
}

/// Writes `data` at byte address `at` of `lu` in whole blocks, keeping the
/// bytes of a partly covered first or last block; the range lock is held
/// from reading those blocks until the write has returned.
async fn write_bytes(lu: &LogicalUnit, at: u64, data: Bytes) -> Result<(), Failure> {
    let bs = u64::from(lu.geometry().block_size);
    let end = at + data.len() as u64;
    let (first, last) = (at / bs, end.div_ceil(bs));
    let _range = lu.ranges.lock(first, last - first).await;
    let head = (at - first * bs) as usize;
    let whole = if head == 0 && end.is_multiple_of(bs) {
        data
    } else {
        let bsz = bs as usize;
        let mut buf = BytesMut::zeroed(((last - first) * bs) as usize);
        if head != 0 {
            let b = lu.device.read(first, 1).await.map_err(device_failed)?;
            buf[..bsz].copy_from_slice(&b);
        }
        // The last block, unless it is the first one and already read.
        let tail_read = head != 0 && last - 1 == first;
        if !end.is_multiple_of(bs) && !tail_read {
            let b = lu.device.read(last - 1, 1).await.map_err(device_failed)?;
            let n = buf.len();
            buf[n - bsz..].copy_from_slice(&b);
        }
        buf[head..head + data.len()].copy_from_slice(&data);
        buf.freeze()
    };
    lu.device
        .write(first, whole, WriteFlags::NONE)
        .await
        .map_err(device_failed)
}

/// Copies one segment in pieces of about [`CHUNK_BYTES`], each but the last
/// ending on a destination block boundary (so only the segment's first and
/// last destination blocks can be partial). Returns the bytes copied.
async fn copy_segment(src: &LogicalUnit, dst: &LogicalUnit, s: &Segment) -> Result<u64, Failure> {
    let dbs = u64::from(dst.geometry().block_size);
    let end = s.dst_at + s.bytes;
    let mut done = 0;
    while done < s.bytes {
        let at = s.dst_at + done;
        // A block is at most 64 KiB, a chunk 1 MiB: always progress.
        let stop = end.min((at + CHUNK_BYTES) / dbs * dbs);
        let n = stop - at;
        let data = read_bytes(src, s.src_at + done, n).await?;
        write_bytes(dst, at, data).await?;
        done += n;
    }
    Ok(done)
}

/// Enters the copy, under its own tag, in the task set of every other unit
/// it names, for as long as it runs: a removal, a reset or an ABORT TASK
/// of the copy then waits for its I/O there too, and a unit being removed
/// is no longer a copy target.
fn enter_other_units(ctx: &Ctx<'_>, targets: &[Arc<LogicalUnit>]) -> Result<Vec<Ticket>, Failure> {
    let mut held: Vec<(&Arc<LogicalUnit>, Ticket)> = Vec::new();
    for lu in targets {
        if Arc::ptr_eq(lu, ctx.lu) || held.iter().any(|(h, _)| Arc::ptr_eq(h, lu)) {
            continue;
        }
        let t = lu
            .tasks
            .enter(TaskAttr::HeadOfQueue, &ctx.me, ctx.nexus.id, ctx.tag)
            .ok_or_else(|| copy_aborted(Asc::UNREACHABLE_COPY_TARGET))?;
        held.push((lu, t));
    }
    Ok(held.into_iter().map(|(_, t)| t).collect())
}

/// EXTENDED COPY (LID1).
pub(crate) async fn extended_copy(ctx: &Ctx<'_>) -> CmdResult {
    let len = be32(ctx.cdb, 10) as usize;
    if len == 0 {
        return Ok(Reply::good());
    }
    if len < 16 || ctx.data.len() < len {
        return Err(Sense::param_list_length().into());
    }
    let p = &ctx.data[..len];
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    if usage == 0x01 {
        return Err(Sense::invalid_param(1, Some(4)).into());
    }
    let (targets, segs) = parse(ctx, p)?;
    let _elsewhere = enter_other_units(ctx, &targets)?;
    let mut status = CopyStatus {
        ok: true,
        segments: 0,
        bytes: 0,
    };
    let mut result = Ok(Reply::good());
    for s in &segs {
        match copy_segment(&targets[s.src], &targets[s.dst], s).await {
            Ok(b) => {
                status.bytes += b;
                status.segments += 1;
            }
            Err(e) => {
                status.ok = false;
                result = Err(e);
                break;
            }
        }
    }
    if usage != 0x03 {
        ctx.lu.state().copies.record(&ctx.me, list_id, status);
    }
    result
}

/// RECEIVE COPY RESULTS: COPY STATUS and OPERATING PARAMETERS.
pub(crate) fn receive_copy_results(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let alloc = be32(cdb, 10) as usize;
    match cdb[1] & 0x1f {
        sa::RCR_COPY_STATUS => {
            let list_id = byte(cdb, 2);
            let st = ctx
                .lu
                .state()
                .copies
                .done
                .get(&(ctx.me.clone(), list_id))
                .copied()
                .ok_or_else(|| Sense::invalid_cdb(2, None))?;
            let mut d = vec![0u8; 12];
            d[0..4].copy_from_slice(&8u32.to_be_bytes());
            d[4] = if st.ok { 0x01 } else { 0x02 };
            d[5..7].copy_from_slice(&st.segments.to_be_bytes());
            d[7] = 0; // transfer count in bytes
            d[8..12].copy_from_slice(&u32::try_from(st.bytes).unwrap_or(u32::MAX).to_be_bytes());
            Ok(Reply::data(trim(d, alloc)))
        }
        _ => {
            let bs = ctx.lu.geometry().block_size;
            let mut d = vec![0u8; 44];
            d[4] = 0x01; // SNLID
            d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
            d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST.to_be_bytes());
            d[16..20].copy_from_slice(&max_segment_bytes(bs).to_be_bytes());
            d[34..36].copy_from_slice(&(MAX_CONCURRENT as u16).to_be_bytes());
            d[36] = MAX_CONCURRENT as u8;
            d[37] = bs.trailing_zeros() as u8;
            let implemented = [SEGMENT_B2B, SEGMENT_B2B_OFFSET, 0xE4];
            d[43] = implemented.len() as u8;
            d.extend_from_slice(&implemented);
            let n = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&n.to_be_bytes());
            Ok(Reply::data(trim(d, alloc)))
        }
    }
}
