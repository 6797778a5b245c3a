//! MODE SENSE / MODE SELECT (SPC-4 6.11-6.14) with the read-write error
//! recovery, disconnect-reconnect, caching, control and informational
//! exceptions pages. WCE (caching) and SWP (control) are changeable; saving
//! pages is not supported.

use super::cdb::{be16, byte, trim};
use super::dispatch::{CmdResult, Ctx, Reply};
use super::lu::LuState;
use super::opcodes::code;
use super::sense::{Asc, Sense};
use super::ItNexus;

/// Changeable mode parameters of a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModeState {
    /// Caching page WCE: completed writes may sit in a volatile cache.
    pub wce: bool,
    /// Control page SWP: the medium is software write protected.
    pub swp: bool,
    /// Default WCE.
    default_wce: bool,
}

impl ModeState {
    /// Initial (and default) parameters.
    pub(crate) fn new(wce: bool) -> Self {
        ModeState {
            wce,
            swp: false,
            default_wce: wce,
        }
    }

    /// The parameters after a logical unit reset: saving is not supported,
    /// so every page returns to its defaults (SAM-5 6.3.3).
    pub(crate) fn defaults(&self) -> Self {
        ModeState::new(self.default_wce)
    }
}

/// Page codes in the order MODE SENSE returns them.
const PAGES: [u8; 5] = [0x01, 0x02, 0x08, 0x0A, 0x1C];
const RETURN_ALL: u8 = 0x3F;

/// Page control field values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

fn page(code: u8, pc: Pc, st: &ModeState) -> Vec<u8> {
    let (wce, swp) = match pc {
        Pc::Current => (st.wce, st.swp),
        Pc::Changeable => (true, true),
        Pc::Default => (st.default_wce, false),
    };
    let mut p = match code {
        0x01 => vec![0u8; 12],
        0x02 => vec![0u8; 16],
        0x08 => vec![0u8; 20],
        0x0A => vec![0u8; 12],
        _ => vec![0u8; 12], // 0x1C
    };
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    let fixed = pc != Pc::Changeable;
    match code {
        0x08 if wce => p[2] |= 0x04,
        0x0A => {
            if fixed {
                p[3] = 0x10; // queue algorithm modifier: unrestricted reordering
                p[5] = 0x40; // TAS: tasks aborted by another nexus end with TASK ABORTED
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // busy timeout: unlimited
            }
            if swp {
                p[4] |= 0x08;
            }
        }
        0x1C if fixed => p[2] = 0x08, // DEXCPT: no informational exceptions reported
        _ => {}
    }
    p
}

/// MODE SENSE(6)/(10).
pub(crate) fn sense(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let ten = cdb[0] == code::MODE_SENSE_10;
    let dbd = byte(cdb, 1) & 0x08 != 0;
    let llbaa = ten && byte(cdb, 1) & 0x10 != 0;
    let pc = match byte(cdb, 2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED).into()),
    };
    let code = byte(cdb, 2) & 0x3f;
    let sub = byte(cdb, 3);
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };
    if sub != 0 && sub != 0xFF {
        return Err(Sense::invalid_cdb(3, None).into());
    }
    let codes: Vec<u8> = if code == RETURN_ALL {
        PAGES.to_vec()
    } else if PAGES.contains(&code) {
        vec![code]
    } else {
        return Err(Sense::invalid_cdb(2, Some(5)).into());
    };
    let st = ctx.lu.state().mode;
    let g = ctx.lu.geometry();
    let wp = ctx.lu.read_only || st.swp;
    let device_specific = if wp { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend_from_slice(&g.num_blocks.to_be_bytes());
            bd.extend_from_slice(&[0; 4]);
            bd.extend_from_slice(&g.block_size.to_be_bytes());
        } else {
            let n = u32::try_from(g.num_blocks).unwrap_or(u32::MAX);
            bd.extend_from_slice(&n.to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&g.block_size.to_be_bytes()[1..]);
        }
    }
    let mut pages = Vec::new();
    for c in codes {
        pages.extend_from_slice(&page(c, pc, &st));
    }
    let mut out = Vec::new();
    if ten {
        let len = 6 + bd.len() + pages.len();
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.push(0);
        out.push(device_specific);
        out.push(if llbaa && !dbd { 0x01 } else { 0 });
        out.push(0);
        out.extend_from_slice(&(bd.len() as u16).to_be_bytes());
    } else {
        let len = (3 + bd.len() + pages.len()).min(255);
        out.push(len as u8);
        out.push(0);
        out.push(device_specific);
        out.push(bd.len() as u8);
    }
    out.extend_from_slice(&bd);
    out.extend_from_slice(&pages);
    Ok(Reply::data(trim(out, alloc)))
}

/// MODE SELECT(6)/(10).
pub(crate) fn select(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let ten = cdb[0] == code::MODE_SELECT_10;
    let flags = byte(cdb, 1);
    let len = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };
    if flags & 0x01 != 0 {
        return Err(Sense::invalid_cdb(1, Some(0)).into()); // SP: saving not supported
    }
    if len == 0 {
        return Ok(Reply::good());
    }
    if flags & 0x10 == 0 {
        return Err(Sense::invalid_cdb(1, Some(4)).into()); // PF must be set
    }
    let hdr = if ten { 8 } else { 4 };
    if ctx.data.len() < len || len < hdr {
        return Err(Sense::param_list_length().into());
    }
    let data = &ctx.data[..len];
    let bdl = if ten {
        usize::from(be16(data, 6))
    } else {
        usize::from(byte(data, 3))
    };
    let long = ten && byte(data, 4) & 0x01 != 0;
    let want_bd = if long { 16 } else { 8 };
    if bdl != 0 && bdl != want_bd {
        return Err(Sense::invalid_param(if ten { 6 } else { 3 } as u16, None).into());
    }
    if hdr + bdl > len {
        return Err(Sense::param_list_length().into());
    }
    if bdl != 0 {
        let bd = &data[hdr..hdr + bdl];
        let blen = if long {
            u64::from(super::cdb::be32(bd, 12))
        } else {
            super::cdb::be(bd, 5, 3)
        };
        if blen != 0 && blen != u64::from(ctx.lu.geometry().block_size) {
            return Err(
                Sense::invalid_param((hdr + if long { 12 } else { 5 }) as u16, None).into(),
            );
        }
    }
    let mut new = ctx.lu.state().mode;
    let mut off = hdr + bdl;
    while off < len {
        let code = data[off] & 0x3f;
        if data[off] & 0x40 != 0 || !PAGES.contains(&code) {
            return Err(Sense::invalid_param(off as u16, None).into());
        }
        let cur = page(code, Pc::Current, &new);
        let mask = page(code, Pc::Changeable, &new);
        let plen = usize::from(byte(data, off + 1)) + 2;
        if plen != cur.len() {
            return Err(Sense::invalid_param((off + 1) as u16, None).into());
        }
        if off + plen > len {
            return Err(Sense::param_list_length().into());
        }
        let p = &data[off..off + plen];
        for i in 2..plen {
            if (p[i] ^ cur[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_param((off + i) as u16, None).into());
            }
        }
        match code {
            0x08 => new.wce = p[2] & 0x04 != 0,
            0x0A => new.swp = p[4] & 0x08 != 0,
            _ => {}
        }
        off += plen;
    }
    let others: Vec<_> = ctx
        .target
        .nexuses()
        .into_iter()
        .filter(|n| *n != ctx.me)
        .collect();
    let mut st = ctx.lu.state();
    if st.mode != new {
        let old = std::mem::replace(&mut st.mode, new);
        for n in &others {
            announce_change(&mut st, n, old, new);
        }
    }
    Ok(Reply::good())
}

/// Tells `n` that the shared mode parameters changed from `old` to `new`
/// (SPC-4 6.11: MODE PARAMETERS CHANGED on every other I_T nexus). If `n`
/// still has that attention pending and `new` restores what it last saw, the
/// change is invisible to it and the attention is withdrawn: a nexus is told
/// about parameters that differ from its view, not about a set-and-restore
/// it never observed.
fn announce_change(st: &mut LuState, n: &ItNexus, old: ModeState, new: ModeState) {
    if st.ua.is_pending(n, Asc::MODE_PARAMETERS_CHANGED) {
        if st.mode_seen.get(n) == Some(&new) {
            st.ua.withdraw(n, Asc::MODE_PARAMETERS_CHANGED);
            st.mode_seen.remove(n);
        }
    } else {
        st.ua.add(n, Asc::MODE_PARAMETERS_CHANGED);
        st.mode_seen.insert(n.clone(), old);
    }
}
