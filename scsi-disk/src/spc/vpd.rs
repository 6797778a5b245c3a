//! Vital product data pages (SPC-4 7.8, SBC-4 6.6): supported pages, unit
//! serial number, device identification, third-party copy, block limits,
//! block device characteristics and logical block provisioning.

use super::super::alua;
use super::super::dispatch::Ctx;
use super::super::identification::{put_designator, put_lu_designators};
use super::super::opcodes::{code, sa};
use super::super::sense::Sense;
use super::super::xcopy;

/// Pages in ascending order.
const PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2];

/// Transfer and resource limits advertised in the Block Limits page and
/// enforced by the SBC commands: the device's own limits
/// ([`blockdev::Limits`]) within what this emulation takes in one command,
/// so nothing is advertised that the device does not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// MAXIMUM TRANSFER LENGTH in blocks.
    pub max_transfer: u32,
    /// OPTIMAL TRANSFER LENGTH GRANULARITY in blocks (the device's
    /// preferred granularity; 1 when it states none or one too large to say).
    pub opt_granularity: u16,
    /// OPTIMAL TRANSFER LENGTH in blocks: about 1 MiB, a multiple of the
    /// granularity, at most the maximum transfer.
    pub opt_transfer: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH in blocks.
    pub max_caw: u8,
    /// MAXIMUM UNMAP LBA COUNT.
    pub max_unmap_lbas: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// MAXIMUM WRITE SAME LENGTH in blocks.
    pub max_write_same: u64,
    /// MAXIMUM ATOMIC TRANSFER LENGTH in blocks: the device's atomic write
    /// unit (at most the maximum transfer). 0: the device makes no write
    /// atomic, and WRITE ATOMIC is not supported. An atomic write has no
    /// alignment or granularity requirement (ATOMIC ALIGNMENT and ATOMIC
    /// TRANSFER LENGTH GRANULARITY are 0) and no atomic boundaries.
    pub max_atomic: u32,
}

impl Limits {
    /// The limits for a device with `block_size`-byte blocks and `device` limits.
    pub(crate) fn new(block_size: u32, device: blockdev::Limits) -> Self {
        let bs = block_size.max(512);
        // The data-out of a command is held whole in memory: 32 MiB, and at
        // least 8192 blocks.
        let own_max = ((32u32 << 20) / bs).max(8192);
        let max_transfer = match device.max_transfer {
            0 => own_max,
            m => m.min(own_max),
        };
        let granularity = u16::try_from(device.optimal_granularity.max(1)).unwrap_or(1);
        let opt_transfer = ((1u32 << 20) / bs)
            .max(1)
            .next_multiple_of(u32::from(granularity))
            .min(max_transfer);
        Limits {
            max_transfer,
            opt_granularity: granularity,
            opt_transfer,
            max_caw: 255,
            // Deallocation is one hole punch per descriptor: no limit.
            max_unmap_lbas: u32::MAX,
            max_unmap_descriptors: 4096,
            max_write_same: (1u64 << 32) / u64::from(bs),
            max_atomic: device.atomic_write.min(max_transfer),
        }
    }
}

/// Builds the VPD page `page`.
pub(crate) fn page(ctx: &Ctx<'_>, page: u8) -> Result<Vec<u8>, Sense> {
    let body = match page {
        0x00 => PAGES.to_vec(),
        0x80 => ctx.lu.device.identity().serial.as_bytes().to_vec(),
        0x83 => device_identification(ctx),
        0x8F => third_party_copy(ctx),
        0xB0 => block_limits(ctx),
        0xB1 => block_device_characteristics(ctx),
        0xB2 => logical_block_provisioning(ctx),
        _ => return Err(Sense::invalid_cdb(2, None)),
    };
    let mut d = Vec::with_capacity(body.len() + 4);
    d.extend_from_slice(&[0x00, page]);
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    Ok(d)
}

/// Device identification: the LU's designators (NAA, and the whole identity:
/// see [`crate::identification`]), the relative target port, the target
/// port group and the target device name. The same on every portal of a
/// target port group and across restarts.
fn device_identification(ctx: &Ctx<'_>) -> Vec<u8> {
    let mut d = Vec::new();
    put_lu_designators(&mut d, ctx.lu.device.identity());
    let rel = ctx.nexus.relative_port;
    put_designator(&mut d, 0x51, 0x94, &[0, 0, (rel >> 8) as u8, rel as u8]);
    let groups = ctx.target.port_groups();
    let gid = alua::group_of(&groups, rel).map(|g| g.id).unwrap_or(0);
    put_designator(&mut d, 0x51, 0x95, &[0, 0, (gid >> 8) as u8, gid as u8]);
    // SCSI name string, null-terminated and padded to a multiple of 4.
    let mut name = ctx.target.name().as_bytes().to_vec();
    name.truncate(251);
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    put_designator(&mut d, 0x53, 0xA8, &name);
    d
}

/// Third-party copy: supported commands and general copy operations.
fn third_party_copy(ctx: &Ctx<'_>) -> Vec<u8> {
    let cmds: [(u8, &[u8]); 2] = [
        (code::EXTENDED_COPY, &[sa::XCOPY_LID1]),
        (
            code::RECEIVE_COPY_RESULTS,
            &[sa::RCR_COPY_STATUS, sa::RCR_OPERATING_PARAMETERS],
        ),
    ];
    let mut list = Vec::new();
    for (op, sas) in cmds {
        list.push(op);
        list.push(sas.len() as u8);
        list.extend_from_slice(sas);
    }
    let mut desc = vec![list.len() as u8];
    desc.extend_from_slice(&list);
    while (desc.len() + 4) % 4 != 0 {
        desc.push(0);
    }
    let mut d = Vec::new();
    d.extend_from_slice(&0x0001u16.to_be_bytes());
    d.extend_from_slice(&(desc.len() as u16).to_be_bytes());
    d.extend_from_slice(&desc);
    // General copy operations (0x8001).
    let bs = ctx.lu.geometry().block_size;
    let mut g = vec![0u8; 0x20];
    g[0..4].copy_from_slice(&xcopy::MAX_CONCURRENT.to_be_bytes());
    g[4..8].copy_from_slice(&xcopy::MAX_CONCURRENT.to_be_bytes());
    g[8..12].copy_from_slice(&xcopy::max_segment_bytes(bs).to_be_bytes());
    g[12] = bs.trailing_zeros() as u8; // data segment granularity (log2)
    g[13] = 0;
    d.extend_from_slice(&0x8001u16.to_be_bytes());
    d.extend_from_slice(&(g.len() as u16).to_be_bytes());
    d.extend_from_slice(&g);
    d
}

fn block_limits(ctx: &Ctx<'_>) -> Vec<u8> {
    let l = Limits::new(ctx.lu.geometry().block_size, ctx.lu.device.limits());
    let mut d = vec![0u8; 0x3C];
    // byte 0 (page byte 4): WSNZ = 0: WRITE SAME with 0 blocks means "to the end".
    d[1] = l.max_caw;
    d[2..4].copy_from_slice(&l.opt_granularity.to_be_bytes());
    d[4..8].copy_from_slice(&l.max_transfer.to_be_bytes());
    d[8..12].copy_from_slice(&l.opt_transfer.to_be_bytes());
    d[12..16].copy_from_slice(&l.max_transfer.to_be_bytes()); // max pre-fetch length
    if ctx.lu.device.features().thin {
        d[16..20].copy_from_slice(&l.max_unmap_lbas.to_be_bytes());
        d[20..24].copy_from_slice(&l.max_unmap_descriptors.to_be_bytes());
        d[24..28].copy_from_slice(&1u32.to_be_bytes()); // optimal unmap granularity
    }
    d[32..40].copy_from_slice(&l.max_write_same.to_be_bytes());
    // Atomic alignment, granularity, and the boundary fields stay 0.
    d[40..44].copy_from_slice(&l.max_atomic.to_be_bytes());
    d
}

fn block_device_characteristics(ctx: &Ctx<'_>) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
                                                  // WACEREQ = 01b: reads after a cryptographic erase succeed. WABEREQ the
                                                  // same where BLOCK ERASE is supported (a thin LU); 00b (not specified)
                                                  // where it is not (a fully provisioned LU).
    d[3] = if ctx.lu.device.features().thin {
        0x50
    } else {
        0x10
    };
    d
}

fn logical_block_provisioning(ctx: &Ctx<'_>) -> Vec<u8> {
    let f = ctx.lu.device.features();
    let mut d = vec![0u8; 4];
    if f.thin {
        d[1] = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
        if f.unmap_reads_zero {
            d[1] |= 0x04; // LBPRZ = 001b
        }
        d[2] = 0x02; // thin provisioned
    }
    d
}
