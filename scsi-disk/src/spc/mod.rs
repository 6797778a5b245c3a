//! SPC-4 primary commands: INQUIRY (standard data and VPD pages), REPORT
//! LUNS and REQUEST SENSE.

mod inquiry;
mod vpd;

pub(crate) use inquiry::{inquiry, inquiry_absent};
pub(crate) use vpd::Limits;

use super::cdb::{be32, byte, trim};
use super::dispatch::{sanitize_in_progress, CmdResult, Ctx, Reply};
use super::lu::SanitizeStatus;
use super::sense::{Asc, Sense};
use super::{ItNexus, ScsiTarget};

/// The 8-byte SAM LUN for `lun`: peripheral addressing below 256, flat space above.
pub(crate) fn encode_lun(lun: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

/// REPORT LUNS (SPC-4 6.33). Having reported the inventory, it clears the
/// nexus' REPORTED LUNS DATA HAS CHANGED attentions.
pub(crate) fn report_luns(target: &ScsiTarget, me: &ItNexus, cdb: &[u8]) -> CmdResult {
    let select = byte(cdb, 2);
    let alloc = be32(cdb, 6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb(6, None).into());
    }
    let luns: Vec<u64> = match select {
        0x00 | 0x02 | 0x10..=0x12 => target.lun_numbers(),
        0x01 => Vec::new(), // no well-known logical units
        _ => return Err(Sense::invalid_cdb(2, None).into()),
    };
    let mut out = Vec::with_capacity(8 + luns.len() * 8);
    out.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    for l in luns {
        out.extend_from_slice(&encode_lun(l));
    }
    target.inventory_reported(me);
    Ok(Reply::data(trim(out, alloc)))
}

/// Sense data returned as REQUEST SENSE parameter data (fixed or descriptor format).
pub(crate) fn sense_reply(cdb: &[u8], s: &Sense) -> CmdResult {
    let alloc = usize::from(byte(cdb, 4));
    let desc = byte(cdb, 1) & 0x01 != 0;
    let data = if desc {
        s.to_descriptor()
    } else {
        s.to_fixed().to_vec()
    };
    Ok(Reply::data(trim(data, alloc)))
}

/// REQUEST SENSE (SPC-4 6.39): a pending unit attention (which it clears),
/// sanitize progress, or NO SENSE.
pub(crate) fn request_sense(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    if byte(cdb, 1) & 0xFE != 0 {
        return Err(Sense::invalid_cdb(1, None).into());
    }
    let s = {
        let mut st = ctx.lu.state();
        if let SanitizeStatus::Running { done } = st.sanitize {
            sanitize_in_progress(done)
        } else if let Some(asc) = st.ua.pop(&ctx.me) {
            Sense::unit_attention(asc)
        } else {
            Sense::new(super::sense::key::NO_SENSE, Asc::NONE)
        }
    };
    sense_reply(cdb, &s)
}

#[cfg(test)]
mod tests {
    use super::encode_lun;

    #[test]
    fn lun_encoding() {
        assert_eq!(encode_lun(3), [0, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x1234), [0x52, 0x34, 0, 0, 0, 0, 0, 0]);
    }
}
