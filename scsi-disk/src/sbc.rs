//! SBC-4 block commands: READ/WRITE/VERIFY/WRITE AND VERIFY in all sizes,
//! WRITE ATOMIC, ORWRITE, COMPARE AND WRITE, WRITE SAME, UNMAP, GET LBA
//! STATUS, READ CAPACITY, PRE-FETCH, SYNCHRONIZE CACHE, READ DEFECT DATA,
//! START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL.
//!
//! Every writer holds an exclusive range lock over its blocks, so writes
//! that overlap never interleave and COMPARE AND WRITE / ORWRITE are atomic
//! against every other writer on every nexus.

use bytes::{Bytes, BytesMut};

use blockdev::WriteFlags;

use super::cdb::{be, be16, be32, be64, byte, trim};
use super::dispatch::{CmdResult, Ctx, Reply};
use super::opcodes::code;
use super::sense::{Asc, Sense};
use super::spc::Limits;

/// Bytes moved per device call by WRITE SAME and VERIFY of long ranges.
const CHUNK_BYTES: u64 = 1 << 20;

/// The LBA, block count and flag byte of a READ/WRITE/VERIFY-type CDB, with
/// the CDB byte offset of its transfer length (for field pointers).
#[derive(Debug, Clone, Copy)]
struct Rw {
    lba: u64,
    blocks: u64,
    flags: u8,
    len_byte: u16,
}

fn decode_rw(cdb: &[u8]) -> Rw {
    match cdb[0] {
        code::READ_6 | code::WRITE_6 => {
            let n = u64::from(byte(cdb, 4));
            Rw {
                lba: be(cdb, 1, 3) & 0x1f_ffff,
                blocks: if n == 0 { 256 } else { n },
                flags: 0,
                len_byte: 4,
            }
        }
        code::READ_12 | code::WRITE_12 | code::WRITE_VERIFY_12 | code::VERIFY_12 => Rw {
            lba: u64::from(be32(cdb, 2)),
            blocks: u64::from(be32(cdb, 6)),
            flags: byte(cdb, 1),
            len_byte: 6,
        },
        code::READ_16
        | code::WRITE_16
        | code::WRITE_VERIFY_16
        | code::VERIFY_16
        | code::ORWRITE_16
        | code::PRE_FETCH_16
        | code::SYNC_CACHE_16 => Rw {
            lba: be64(cdb, 2),
            blocks: u64::from(be32(cdb, 10)),
            flags: byte(cdb, 1),
            len_byte: 10,
        },
        code::WRITE_ATOMIC_16 => Rw {
            lba: be64(cdb, 2),
            blocks: u64::from(be16(cdb, 12)),
            flags: byte(cdb, 1),
            len_byte: 12,
        },
        _ => Rw {
            lba: u64::from(be32(cdb, 2)),
            blocks: u64::from(be16(cdb, 7)),
            flags: byte(cdb, 1),
            len_byte: 7,
        },
    }
}

/// Checks that the range lies on the medium.
fn check_range(ctx: &Ctx<'_>, lba: u64, blocks: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= ctx.lu.geometry().num_blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

fn limits(ctx: &Ctx<'_>) -> Limits {
    Limits::new(ctx.lu.geometry().block_size, ctx.lu.device.limits())
}

/// Blocks per device call for commands that walk a long range: about
/// [`CHUNK_BYTES`], never more than the device takes at once.
fn chunk_blocks(l: &Limits, block_size: u64) -> u64 {
    (CHUNK_BYTES / block_size)
        .max(1)
        .min(u64::from(l.max_transfer))
}

/// The common checks: protection field (we have no protection information),
/// LBA range and maximum transfer length.
fn check_rw(ctx: &Ctx<'_>, rw: &Rw) -> Result<(), Sense> {
    if rw.flags & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    check_range(ctx, rw.lba, rw.blocks)?;
    if rw.blocks > u64::from(limits(ctx).max_transfer) {
        return Err(Sense::invalid_cdb(rw.len_byte, None));
    }
    Ok(())
}

/// The data-out for a write of `blocks` blocks. When the initiator sent less
/// (its expected transfer length was shorter than the CDB's), only the whole
/// blocks it did send are written (FCP-4 9.4.2 a; the transport reports the
/// residual); a partial block is refused before anything is written.
fn write_data(ctx: &Ctx<'_>, blocks: u64) -> Result<Bytes, Sense> {
    let bs = ctx.lu.geometry().block_size as usize;
    let need = blocks as usize * bs;
    if ctx.data.len() >= need {
        return Ok(ctx.data.slice(..need));
    }
    if !ctx.data.len().is_multiple_of(bs) {
        return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CIU));
    }
    Ok(ctx.data.clone())
}

/// The data-out buffer for `blocks` blocks of comparison data; a short
/// buffer is refused.
fn data_for(ctx: &Ctx<'_>, blocks: u64) -> Result<Bytes, Sense> {
    let need = (blocks * u64::from(ctx.lu.geometry().block_size)) as usize;
    if ctx.data.len() < need {
        return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CIU));
    }
    Ok(ctx.data.slice(..need))
}

/// Write flags: FUA when asked for, or always while the write cache is disabled.
fn write_flags(ctx: &Ctx<'_>, fua: bool) -> WriteFlags {
    let wce = ctx.lu.state().mode.wce;
    WriteFlags { fua: fua || !wce }
}

/// Offset of the first differing byte.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// READ(6/10/12/16).
pub(crate) async fn read(ctx: &Ctx<'_>) -> CmdResult {
    let rw = decode_rw(ctx.cdb);
    check_rw(ctx, &rw)?;
    if rw.blocks == 0 {
        return Ok(Reply::good());
    }
    if ctx.data_in_from_file {
        if let Some(file) = ctx.lu.device.cached_slice(rw.lba, rw.blocks as u32) {
            return Ok(Reply {
                status: super::status::GOOD,
                data: Bytes::new(),
                file: Some(file),
            });
        }
    }
    let data = ctx.lu.device.read(rw.lba, rw.blocks as u32).await?;
    Ok(Reply::data(data))
}

/// WRITE ATOMIC(16) is supported only when the device makes writes atomic
/// (its atomic write unit, [`blockdev::Limits::atomic_write`], is not 0),
/// and takes at most that many blocks, with no atomic boundary; the write
/// is then one device call, which the device lands whole or not at all.
fn check_atomic(ctx: &Ctx<'_>, rw: &Rw) -> Result<(), Sense> {
    let l = limits(ctx);
    if l.max_atomic == 0 {
        return Err(Sense::invalid_opcode());
    }
    if be16(ctx.cdb, 10) != 0 {
        return Err(Sense::invalid_cdb(10, None)); // no atomic boundaries
    }
    if rw.blocks > u64::from(l.max_atomic) {
        return Err(Sense::invalid_cdb(12, None));
    }
    Ok(())
}

/// WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16) and WRITE ATOMIC(16).
pub(crate) async fn write(ctx: &Ctx<'_>) -> CmdResult {
    let op = ctx.cdb[0];
    let rw = decode_rw(ctx.cdb);
    if op == code::WRITE_ATOMIC_16 {
        check_atomic(ctx, &rw)?;
    }
    check_rw(ctx, &rw)?;
    let verify = matches!(
        op,
        code::WRITE_VERIFY_10 | code::WRITE_VERIFY_12 | code::WRITE_VERIFY_16
    );
    let bytchk = (rw.flags >> 1) & 0x03;
    if verify && bytchk > 1 {
        return Err(Sense::invalid_cdb(1, Some(2)).into());
    }
    if rw.blocks == 0 {
        return Ok(Reply::good());
    }
    let data = write_data(ctx, rw.blocks)?;
    if data.is_empty() {
        return Ok(Reply::good());
    }
    let blocks = (data.len() / ctx.lu.geometry().block_size as usize) as u64;
    // WRITE AND VERIFY verifies the medium: the data must be on it.
    let flags = write_flags(ctx, rw.flags & 0x08 != 0 || verify);
    let _range = ctx.lu.ranges.lock(rw.lba, blocks).await;
    ctx.lu.device.write(rw.lba, data.clone(), flags).await?;
    if verify && bytchk == 1 {
        let back = ctx.lu.device.read(rw.lba, blocks as u32).await?;
        if let Some(off) = first_difference(&back, &data) {
            return Err(Sense::miscompare(off as u64).into());
        }
    }
    Ok(Reply::good())
}

/// VERIFY(10/12/16): medium verification (BYTCHK 00b), byte-by-byte compare
/// (01b) or compare of one block against every block (11b).
pub(crate) async fn verify(ctx: &Ctx<'_>) -> CmdResult {
    let rw = decode_rw(ctx.cdb);
    check_rw(ctx, &rw)?;
    let bytchk = (rw.flags >> 1) & 0x03;
    if bytchk == 2 {
        return Err(Sense::invalid_cdb(1, Some(2)).into());
    }
    if rw.blocks == 0 {
        return Ok(Reply::good());
    }
    let bs = u64::from(ctx.lu.geometry().block_size);
    let expected = match bytchk {
        0 => None,
        1 => Some(data_for(ctx, rw.blocks)?),
        _ => Some(data_for(ctx, 1)?),
    };
    let per = chunk_blocks(&limits(ctx), bs);
    let mut done = 0u64;
    while done < rw.blocks {
        let n = per.min(rw.blocks - done);
        let got = ctx.lu.device.read(rw.lba + done, n as u32).await?;
        match (&expected, bytchk) {
            (Some(exp), 1) => {
                let start = (done * bs) as usize;
                let want = &exp[start..start + got.len()];
                if let Some(off) = first_difference(&got, want) {
                    return Err(Sense::miscompare((start + off) as u64).into());
                }
            }
            (Some(exp), _) => {
                for (i, blk) in got.chunks(bs as usize).enumerate() {
                    if let Some(off) = first_difference(blk, exp) {
                        let at = (done + i as u64) * bs + off as u64;
                        return Err(Sense::miscompare(at).into());
                    }
                }
            }
            (None, _) => {}
        }
        done += n;
    }
    Ok(Reply::good())
}

/// COMPARE AND WRITE: compares the first half of the data-out with the
/// medium and, only if equal, writes the second half, atomically with
/// respect to every other writer. Any mismatch is MISCOMPARE DURING VERIFY
/// OPERATION with the offset of the first differing byte.
pub(crate) async fn compare_and_write(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let flags = cdb[1];
    if flags & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)).into());
    }
    let lba = be64(cdb, 2);
    let blocks = u64::from(cdb[13]);
    if blocks > u64::from(limits(ctx).max_caw) {
        return Err(Sense::invalid_cdb(13, None).into());
    }
    check_range(ctx, lba, blocks)?;
    if blocks == 0 {
        // Zero blocks transfer nothing; data sent anyway contradicts the CDB.
        return if ctx.data.is_empty() {
            Ok(Reply::good())
        } else {
            Err(Sense::invalid_cdb(13, None).into())
        };
    }
    let bs = ctx.lu.geometry().block_size as usize;
    let half = blocks as usize * bs;
    if ctx.data.len() != 2 * half {
        return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CIU).into());
    }
    let (verify, new) = (ctx.data.slice(..half), ctx.data.slice(half..));
    let wflags = write_flags(ctx, flags & 0x08 != 0);
    let _range = ctx.lu.ranges.lock(lba, blocks).await;
    let cur = ctx.lu.device.read(lba, blocks as u32).await?;
    if let Some(off) = first_difference(&cur, &verify) {
        return Err(Sense::miscompare(off as u64).into());
    }
    ctx.lu.device.write(lba, new, wflags).await?;
    Ok(Reply::good())
}

/// ORWRITE(16): ORs the data-out into the medium, atomically.
pub(crate) async fn orwrite(ctx: &Ctx<'_>) -> CmdResult {
    let rw = decode_rw(ctx.cdb);
    check_rw(ctx, &rw)?;
    if rw.blocks == 0 {
        return Ok(Reply::good());
    }
    let data = data_for(ctx, rw.blocks)?;
    let flags = write_flags(ctx, rw.flags & 0x08 != 0);
    let _range = ctx.lu.ranges.lock(rw.lba, rw.blocks).await;
    let cur = ctx.lu.device.read(rw.lba, rw.blocks as u32).await?;
    let mut out = BytesMut::from(&cur[..]);
    for (o, d) in out.iter_mut().zip(data.iter()) {
        *o |= d;
    }
    ctx.lu.device.write(rw.lba, out.freeze(), flags).await?;
    Ok(Reply::good())
}

/// WRITE SAME(10/16), with UNMAP and NDOB.
pub(crate) async fn write_same(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let sixteen = cdb[0] == code::WRITE_SAME_16;
    let flags = cdb[1];
    let (lba, mut blocks, len_byte) = if sixteen {
        (be64(cdb, 2), u64::from(be32(cdb, 10)), 10)
    } else {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), 7)
    };
    if flags & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)).into());
    }
    if flags & 0x10 != 0 {
        return Err(Sense::invalid_cdb(1, Some(4)).into()); // ANCHOR: anchored state not supported
    }
    let unmap = flags & 0x08 != 0;
    let features = ctx.lu.device.features();
    if unmap && !features.thin {
        // Only a logical unit with logical block provisioning management
        // implements the UNMAP bit (SBC-4 5.50, table 237 note a): here it
        // is an unsupported field value (SPC-4 4.5.1), not a hint to ignore.
        return Err(Sense::invalid_cdb(1, Some(3)).into());
    }
    let ndob = sixteen && flags & 0x01 != 0;
    let g = ctx.lu.geometry();
    let l = limits(ctx);
    if lba >= g.num_blocks && !(blocks == 0 && lba == g.num_blocks) {
        return Err(Sense::lba_out_of_range().into());
    }
    if blocks == 0 {
        blocks = g.num_blocks.saturating_sub(lba);
    }
    if blocks > l.max_write_same {
        return Err(Sense::invalid_cdb(len_byte, None).into());
    }
    check_range(ctx, lba, blocks)?;
    let bs = g.block_size as usize;
    let pattern = if ndob {
        Bytes::from(vec![0u8; bs])
    } else {
        if ctx.data.len() != bs {
            return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CIU).into());
        }
        ctx.data.clone()
    };
    if blocks == 0 {
        return Ok(Reply::good());
    }
    let zero = pattern.iter().all(|&b| b == 0);
    let _range = ctx.lu.ranges.lock(lba, blocks).await;
    if unmap && features.thin {
        // UNMAP set on a thin LU: the blocks are deallocated (SBC-3 5.42),
        // whatever the pattern; with LBPRZ they then read back as zeroes.
        if features.unmap_reads_zero {
            ctx.lu.device.write_zeroes(lba, blocks, true).await?;
        } else {
            ctx.lu.device.unmap(lba, blocks).await?;
        }
    } else if zero {
        ctx.lu.device.write_zeroes(lba, blocks, false).await?;
    } else {
        let per = chunk_blocks(&l, bs as u64);
        let n0 = per.min(blocks) as usize;
        let mut buf = BytesMut::with_capacity(n0 * bs);
        for _ in 0..n0 {
            buf.extend_from_slice(&pattern);
        }
        let buf = buf.freeze();
        let flags = write_flags(ctx, false);
        let mut done = 0u64;
        while done < blocks {
            let n = per.min(blocks - done);
            let chunk = buf.slice(..n as usize * bs);
            ctx.lu.device.write(lba + done, chunk, flags).await?;
            done += n;
        }
    }
    Ok(Reply::good())
}

/// UNMAP: validates every block descriptor before deallocating anything.
pub(crate) async fn unmap(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    // (A fully provisioned LU never gets here: the command table refuses
    // UNMAP there as an unsupported operation code.)
    if cdb[1] & 0x01 != 0 {
        return Err(Sense::invalid_cdb(1, Some(0)).into()); // ANCHOR
    }
    let len = usize::from(be16(cdb, 7));
    if len == 0 {
        return Ok(Reply::good());
    }
    if len < 8 || ctx.data.len() < len {
        return Err(Sense::param_list_length().into());
    }
    let p = &ctx.data[..len];
    let bd_len = usize::from(be16(p, 2));
    if bd_len % 16 != 0 || 8 + bd_len > len {
        return Err(Sense::param_list_length().into());
    }
    let l = limits(ctx);
    let count = bd_len / 16;
    if count > l.max_unmap_descriptors as usize {
        return Err(Sense::invalid_param(2, None).into());
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let off = 8 + 16 * i;
        let lba = be64(p, off);
        let n = u64::from(be32(p, off + 8));
        check_range(ctx, lba, n)?;
        if n > u64::from(l.max_unmap_lbas) {
            return Err(Sense::invalid_param((off + 8) as u16, None).into());
        }
        if n > 0 {
            ranges.push((lba, n));
        }
    }
    for (lba, n) in ranges {
        let _range = ctx.lu.ranges.lock(lba, n).await;
        ctx.lu.device.unmap(lba, n).await?;
    }
    Ok(Reply::good())
}

/// GET LBA STATUS(16): runs of mapped/deallocated blocks from the device.
pub(crate) async fn get_lba_status(ctx: &Ctx<'_>) -> CmdResult {
    let lba = be64(ctx.cdb, 2);
    let alloc = be32(ctx.cdb, 10) as usize;
    let g = ctx.lu.geometry();
    if lba >= g.num_blocks {
        return Err(Sense::lba_out_of_range().into());
    }
    let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 64);
    let mut out = vec![0u8; 8];
    let mut at = lba;
    for _ in 0..max_desc {
        if at >= g.num_blocks {
            break;
        }
        let left = (g.num_blocks - at).min(u64::from(u32::MAX));
        let e = ctx.lu.device.block_status(at, left).await?;
        let n = e.blocks.clamp(1, left);
        out.extend_from_slice(&at.to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        out.push(if e.mapped { 0 } else { 1 });
        out.extend_from_slice(&[0; 3]);
        at += n;
    }
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Reply::data(trim(out, alloc)))
}

/// READ CAPACITY(10).
pub(crate) fn read_capacity_10(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    if cdb[8] & 0x01 == 0 && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb(2, None).into());
    }
    let g = ctx.lu.geometry();
    let last = u32::try_from(g.num_blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&g.block_size.to_be_bytes());
    Ok(Reply::data(d))
}

/// Logical blocks per 4 KiB physical block, as an exponent.
fn physical_exponent(block_size: u32) -> u8 {
    if block_size < 4096 {
        (4096 / block_size).trailing_zeros() as u8
    } else {
        0
    }
}

/// READ CAPACITY(16).
pub(crate) fn read_capacity_16(ctx: &Ctx<'_>) -> CmdResult {
    let alloc = be32(ctx.cdb, 10) as usize;
    let g = ctx.lu.geometry();
    let f = ctx.lu.device.features();
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&g.num_blocks.saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&g.block_size.to_be_bytes());
    d[13] = physical_exponent(g.block_size);
    if f.thin {
        d[14] |= 0x80; // LBPME
        if f.unmap_reads_zero {
            d[14] |= 0x40; // LBPRZ
        }
    }
    Ok(Reply::data(trim(d, alloc)))
}

/// PRE-FETCH(10/16): the range is checked; the data is not cached here (the
/// backend's page cache decides), so GOOD rather than CONDITION MET.
pub(crate) fn pre_fetch(ctx: &Ctx<'_>) -> CmdResult {
    let rw = decode_rw(ctx.cdb);
    check_range(ctx, rw.lba, rw.blocks)?;
    Ok(Reply::good())
}

/// SYNCHRONIZE CACHE(10/16): durable once it returns.
pub(crate) async fn synchronize_cache(ctx: &Ctx<'_>) -> CmdResult {
    let rw = decode_rw(ctx.cdb);
    check_range(ctx, rw.lba, rw.blocks)?;
    ctx.lu.device.flush().await?;
    Ok(Reply::good())
}

/// READ DEFECT DATA(10/12): a virtual disk has no defect lists.
pub(crate) fn read_defect_data(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    if cdb[0] == code::READ_DEFECT_10 {
        let alloc = usize::from(be16(cdb, 7));
        let d = vec![0, cdb[2] & 0x1f, 0, 0];
        Ok(Reply::data(trim(d, alloc)))
    } else {
        let alloc = be32(cdb, 6) as usize;
        let d = vec![0, cdb[1] & 0x1f, 0, 0, 0, 0, 0, 0];
        Ok(Reply::data(trim(d, alloc)))
    }
}

/// START STOP UNIT: the medium is not removable and always ready; a stop
/// (without NO_FLUSH) flushes the write cache.
pub(crate) async fn start_stop_unit(ctx: &Ctx<'_>) -> CmdResult {
    let b4 = ctx.cdb[4];
    let power_condition = b4 >> 4;
    if !matches!(power_condition, 0 | 1 | 2 | 3 | 7 | 0xA | 0xB) {
        return Err(Sense::invalid_cdb(4, Some(7)).into());
    }
    let loej = b4 & 0x02 != 0;
    let start = b4 & 0x01 != 0;
    if power_condition == 0 && loej && !start && !ctx.lu.state().prevent.is_empty() {
        return Err(Sense::illegal(Asc::MEDIUM_REMOVAL_PREVENTED).into());
    }
    let no_flush = b4 & 0x04 != 0;
    if power_condition == 0 && !start && !no_flush {
        ctx.lu.device.flush().await?;
    }
    Ok(Reply::good())
}

/// PREVENT ALLOW MEDIUM REMOVAL.
pub(crate) fn prevent_allow(ctx: &Ctx<'_>) -> CmdResult {
    let prevent = ctx.cdb[4] & 0x03;
    let mut st = ctx.lu.state();
    match prevent {
        0 => {
            st.prevent.remove(&ctx.me);
        }
        1 => {
            st.prevent.insert(ctx.me.clone());
        }
        _ => return Err(Sense::invalid_cdb(4, Some(1)).into()),
    }
    Ok(Reply::good())
}
