//! Standard INQUIRY data (SPC-4 6.6.2).

use super::super::cdb::{be16, byte, put_ascii, trim};
use super::super::dispatch::{CmdResult, Ctx, Reply};
use super::super::sense::Sense;
use super::vpd;

/// Vendor identification reported in INQUIRY.
pub(crate) const VENDOR: &str = "OPIE";
/// Product identification reported in INQUIRY.
pub(crate) const PRODUCT: &str = "opie disk";
/// Product revision level.
pub(crate) const REVISION: &str = "0001";

/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

fn standard(peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; 74];
    d[0] = peripheral;
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x10 | 0x08; // TPGS = implicit ALUA, 3PC (EXTENDED COPY)
    d[7] = 0x02; // CMDQUE
    put_ascii(&mut d[8..16], VENDOR);
    put_ascii(&mut d[16..32], PRODUCT);
    put_ascii(&mut d[32..36], REVISION);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Validates the INQUIRY CDB: returns (EVPD, page code, allocation length).
fn parse(cdb: &[u8]) -> Result<(bool, u8, usize), Sense> {
    let flags = byte(cdb, 1);
    if flags & 0x02 != 0 {
        return Err(Sense::invalid_cdb(1, Some(1))); // CMDDT (obsolete)
    }
    let evpd = flags & 0x01 != 0;
    let page = byte(cdb, 2);
    if !evpd && page != 0 {
        return Err(Sense::invalid_cdb(2, None));
    }
    Ok((evpd, page, usize::from(be16(cdb, 3))))
}

/// INQUIRY to an existing logical unit.
pub(crate) fn inquiry(ctx: &Ctx<'_>) -> CmdResult {
    let (evpd, page, alloc) = parse(ctx.cdb)?;
    let data = if evpd {
        vpd::page(ctx, page)?
    } else {
        standard(0x00)
    };
    Ok(Reply::data(trim(data, alloc)))
}

/// INQUIRY to a LUN that does not exist: peripheral qualifier 3, type 0x1f.
pub(crate) fn inquiry_absent(cdb: &[u8]) -> CmdResult {
    let (evpd, _, alloc) = parse(cdb)?;
    if evpd {
        return Err(Sense::invalid_cdb(1, Some(0)).into());
    }
    Ok(Reply::data(trim(standard(0x7f), alloc)))
}
