//! EXTENDED COPY (LID1, SPC-4 6.4) with block-to-block segment descriptors
//! (type 0x02) between logical units of this target named by their NAA
//! designator in identification target descriptors (type 0xE4), and
//! RECEIVE COPY RESULTS (copy status, operating parameters).

use std::collections::HashMap;
use std::sync::Arc;

use blockdev::WriteFlags;

use super::cdb::{be16, be32, be64, byte, trim};
use super::dispatch::{CmdResult, Ctx, Failure, Reply};
use super::lu::LogicalUnit;
use super::opcodes::sa;
use super::sense::{key, Asc, Sense};
use super::ItNexus;

/// Copies one copy manager runs at a time per LU.
pub(crate) const MAX_CONCURRENT: u32 = 1;
const MAX_TARGET_DESCRIPTORS: u16 = 8;
const MAX_SEGMENT_DESCRIPTORS: u16 = 32;
const MAX_DESCRIPTOR_LIST: u32 = 2048;
const TARGET_DESCRIPTOR_LEN: usize = 32;
const SEGMENT_B2B_LEN: usize = 28;
/// Bytes moved per read/write pair.
const CHUNK_BYTES: u64 = 1 << 20;
/// Copy results kept per LU.
const MAX_RESULTS: usize = 64;

/// Largest segment in bytes (a type 0x02 descriptor counts blocks in 16 bits).
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

struct Segment {
    src: usize,
    dst: usize,
    blocks: u64,
    src_lba: u64,
    dst_lba: u64,
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
    let mut segs = Vec::new();
    for off in offsets {
        let d = &p[off..];
        if d[0] != 0x02 {
            return Err(Sense::param_error(Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR, off as u16).into());
        }
        if 4 + usize::from(be16(d, 2)) != SEGMENT_B2B_LEN {
            return Err(Sense::invalid_param(off as u16 + 2, None).into());
        }
        let seg = Segment {
            src: usize::from(be16(d, 4)),
            dst: usize::from(be16(d, 6)),
            blocks: u64::from(be16(d, 10)),
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        };
        let (Some(src), Some(dst)) = (targets.get(seg.src), targets.get(seg.dst)) else {
            return Err(copy_aborted(Asc::UNREACHABLE_COPY_TARGET).into());
        };
        let in_range = |lu: &LogicalUnit, lba: u64| {
            lba.checked_add(seg.blocks)
                .is_some_and(|e| e <= lu.geometry().num_blocks)
        };
        if !in_range(src, seg.src_lba) || !in_range(dst, seg.dst_lba) {
            return Err(copy_aborted(Asc::NONE).into());
        }
        if dst.write_protected() {
            return Err(Sense::write_protected().into());
        }
        segs.push(seg);
    }
    Ok((targets, segs))
}

async fn copy_segment(src: &LogicalUnit, dst: &LogicalUnit, s: &Segment) -> Result<u64, Failure> {
    let bs = u64::from(src.geometry().block_size);
    let per = (CHUNK_BYTES / bs).max(1);
    let mut done = 0;
    while done < s.blocks {
        let n = per.min(s.blocks - done);
        let data = src
            .device
            .read(s.src_lba + done, n as u32)
            .await
            .map_err(|e| copy_aborted(super::sense::from_block_error(&e).asc))?;
        let _range = dst.ranges.lock(s.dst_lba + done, n).await;
        dst.device
            .write(s.dst_lba + done, data, WriteFlags::NONE)
            .await
            .map_err(|e| copy_aborted(super::sense::from_block_error(&e).asc))?;
        done += n;
    }
    Ok(done * bs)
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
            let implemented = [0x02u8, 0xE4];
            d[43] = implemented.len() as u8;
            d.extend_from_slice(&implemented);
            let n = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&n.to_be_bytes());
            Ok(Reply::data(trim(d, alloc)))
        }
    }
}
