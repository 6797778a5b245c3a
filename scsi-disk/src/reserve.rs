//! RESERVE/RELEASE(6) and (10) (SPC-2 reservations) and the reservation
//! conflict check every command passes.

use super::dispatch::{CmdResult, Ctx, Failure, Reply};
use super::lu::LuState;
use super::opcodes::{OpInfo, PrClass};
use super::sense::Sense;
use super::ItNexus;

/// RESERVATION CONFLICT when another nexus' reservation forbids `info`.
pub(crate) fn check(st: &LuState, me: &ItNexus, info: &OpInfo) -> Result<(), Failure> {
    if info.pr == PrClass::Reserve {
        return if st.pr.in_use() {
            Err(Failure::Conflict)
        } else {
            Ok(())
        };
    }
    if let Some(holder) = &st.reserve {
        if holder != me && !info.res6_ok {
            return Err(Failure::Conflict);
        }
    }
    if st.pr.conflicts(me, info.pr) {
        return Err(Failure::Conflict);
    }
    Ok(())
}

fn check_cdb(ctx: &Ctx<'_>) -> Result<(), Sense> {
    // Third-party reservations and extents (obsolete) are not supported.
    if ctx.cdb[1] & 0x03 != 0 {
        return Err(Sense::invalid_cdb(1, None));
    }
    Ok(())
}

/// RESERVE(6)/(10).
pub(crate) fn reserve(ctx: &Ctx<'_>) -> CmdResult {
    check_cdb(ctx)?;
    let mut st = ctx.lu.state();
    match &st.reserve {
        Some(h) if *h != ctx.me => Err(Failure::Conflict),
        _ => {
            st.reserve = Some(ctx.me.clone());
            Ok(Reply::good())
        }
    }
}

/// RELEASE(6)/(10): releases the nexus' own reservation; GOOD otherwise too.
pub(crate) fn release(ctx: &Ctx<'_>) -> CmdResult {
    check_cdb(ctx)?;
    let mut st = ctx.lu.state();
    if st.reserve.as_ref() == Some(&ctx.me) {
        st.reserve = None;
    }
    Ok(Reply::good())
}
