//! Persistent reservations (SPC-4 5.13, 6.15, 6.16): registrations per I_T
//! nexus, the six reservation types, every PERSISTENT RESERVE IN/OUT service
//! action, SPEC_I_PT, ALL_TG_PT and APTPL state persisted durably (temporary
//! file, fsync, rename) to the LU's state path and reloaded at start.

use std::fmt::Write as _;
use std::path::Path;

use super::cdb::{be16, be32, be64, byte, trim};
use super::dispatch::{CmdResult, Ctx, Failure, Reply};
use super::opcodes::PrClass;
use super::sense::{Asc, Sense};
use super::transport_id::TransportId;
use super::{InitiatorPort, ItNexus, ScsiError};

/// Reservation types.
#[allow(missing_docs)]
pub(crate) mod types {
    pub const WRITE_EXCLUSIVE: u8 = 1;
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    pub const WRITE_EXCLUSIVE_RO: u8 = 5;
    pub const EXCLUSIVE_ACCESS_RO: u8 = 6;
    pub const WRITE_EXCLUSIVE_AR: u8 = 7;
    pub const EXCLUSIVE_ACCESS_AR: u8 = 8;
}
use types::*;

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5 | 6 | 7 | 8)
}

fn all_registrants(t: u8) -> bool {
    t == WRITE_EXCLUSIVE_AR || t == EXCLUSIVE_ACCESS_AR
}

/// One registration: an I_T nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    pub nexus: ItNexus,
    pub key: u64,
}

/// The persistent reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    /// The nexus that holds it (for all-registrants types: the one that reserved).
    pub holder: ItNexus,
    /// Reservation type.
    pub rtype: u8,
}

/// Persistent reservation state of one logical unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
    /// Activate persist through power loss: state survives restarts.
    pub aptpl: bool,
}

impl PrState {
    fn key_of(&self, n: &ItNexus) -> Option<u64> {
        self.regs.iter().find(|r| r.nexus == *n).map(|r| r.key)
    }

    fn is_holder(&self, n: &ItNexus) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.rtype) => self.key_of(n).is_some(),
            Some(r) => r.holder == *n,
            None => false,
        }
    }

    /// Whether any registration or reservation exists.
    pub(crate) fn in_use(&self) -> bool {
        !self.regs.is_empty() || self.res.is_some()
    }

    /// Whether the reservation makes a command of `class` from `n` conflict
    /// (SPC-4 table 53).
    pub(crate) fn conflicts(&self, n: &ItNexus, class: PrClass) -> bool {
        let Some(res) = &self.res else {
            return false;
        };
        if matches!(
            class,
            PrClass::Allowed | PrClass::Persistent | PrClass::Reserve
        ) || self.is_holder(n)
        {
            return false;
        }
        let registered = self.key_of(n).is_some();
        match res.rtype {
            WRITE_EXCLUSIVE => class == PrClass::Write,
            EXCLUSIVE_ACCESS => true,
            WRITE_EXCLUSIVE_RO | WRITE_EXCLUSIVE_AR => class == PrClass::Write && !registered,
            _ => !registered,
        }
    }

    fn remove_where(&mut self, pred: impl Fn(&Registration) -> bool) -> Vec<ItNexus> {
        let (gone, kept): (Vec<_>, Vec<_>) = self.regs.drain(..).partition(|r| pred(r));
        self.regs = kept;
        if let Some(res) = &self.res {
            let holder_gone = if all_registrants(res.rtype) {
                self.regs.is_empty()
            } else {
                gone.iter().any(|r| r.nexus == res.holder)
            };
            if holder_gone {
                self.res = None;
            }
        }
        gone.into_iter().map(|r| r.nexus).collect()
    }

    fn set_key(&mut self, n: &ItNexus, key: u64) {
        match self.regs.iter_mut().find(|r| r.nexus == *n) {
            Some(r) => r.key = key,
            None => self.regs.push(Registration {
                nexus: n.clone(),
                key,
            }),
        }
    }

    /// Serialises the state for the state file.
    fn to_text(&self) -> String {
        let mut s = String::from("opie-pr 1\n");
        let _ = writeln!(s, "generation {}", self.generation);
        let _ = writeln!(s, "aptpl {}", u8::from(self.aptpl));
        let nexus = |n: &ItNexus| format!("{} {}", n.rel_port, n.port.to_state_words());
        for r in &self.regs {
            let _ = writeln!(s, "reg {:016x} {}", r.key, nexus(&r.nexus));
        }
        if let Some(r) = &self.res {
            let _ = writeln!(s, "res {} {}", r.rtype, nexus(&r.holder));
        }
        s
    }

    fn from_text(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != "opie-pr 1" {
            return None;
        }
        let mut st = PrState::default();
        let nexus = |it: &mut std::str::SplitWhitespace<'_>| -> Option<ItNexus> {
            let rel_port = it.next()?.parse().ok()?;
            let port = InitiatorPort::from_state_words(it)?;
            Some(ItNexus { port, rel_port })
        };
        for line in lines {
            let mut it = line.split_whitespace();
            match it.next() {
                Some("generation") => st.generation = it.next()?.parse().ok()?,
                Some("aptpl") => st.aptpl = it.next()? == "1",
                Some("reg") => {
                    let key = u64::from_str_radix(it.next()?, 16).ok()?;
                    st.regs.push(Registration {
                        key,
                        nexus: nexus(&mut it)?,
                    });
                }
                Some("res") => {
                    let rtype: u8 = it.next()?.parse().ok()?;
                    if !valid_type(rtype) {
                        return None;
                    }
                    st.res = Some(Reservation {
                        rtype,
                        holder: nexus(&mut it)?,
                    });
                }
                None => {}
                Some(_) => return None,
            }
        }
        Some(st)
    }

    /// Loads the state persisted at `path` (empty state when there is none or
    /// when APTPL was off).
    pub(crate) fn load(path: &Path) -> Result<Self, ScsiError> {
        // Never through a symbolic link (blockdev::statefile).
        match blockdev::statefile::read(path) {
            Ok(Some(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                let st = PrState::from_text(&text).ok_or_else(|| ScsiError::State {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed"),
                })?;
                Ok(if st.aptpl {
                    st
                } else {
                    PrState {
                        generation: st.generation,
                        ..PrState::default()
                    }
                })
            }
            Ok(None) => Ok(PrState::default()),
            Err(source) => Err(ScsiError::State {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// PERSISTENT RESERVE IN.
pub(crate) fn persistent_reserve_in(ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb;
    let alloc = usize::from(be16(cdb, 7));
    let st = ctx.lu.state().pr.clone();
    let mut out = Vec::new();
    out.extend_from_slice(&st.generation.to_be_bytes());
    match cdb[1] & 0x1f {
        0 => {
            out.extend_from_slice(&((st.regs.len() * 8) as u32).to_be_bytes());
            for r in &st.regs {
                out.extend_from_slice(&r.key.to_be_bytes());
            }
        }
        1 => match &st.res {
            Some(res) => {
                out.extend_from_slice(&16u32.to_be_bytes());
                let key = if all_registrants(res.rtype) {
                    0
                } else {
                    st.key_of(&res.holder).unwrap_or(0)
                };
                out.extend_from_slice(&key.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0, 0, res.rtype, 0, 0]);
            }
            None => out.extend_from_slice(&0u32.to_be_bytes()),
        },
        2 => {
            out.clear();
            let ptpl_c = ctx.lu.state_path.is_some();
            out.extend_from_slice(&8u16.to_be_bytes());
            // CRH, SIP_C, ATP_C, PTPL_C
            out.push(0x10 | 0x08 | 0x04 | u8::from(ptpl_c));
            // TMV, ALLOW COMMANDS = 001b, PTPL_A
            out.push(0x80 | 0x10 | u8::from(st.aptpl));
            // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX ; EX_AC_AR
            out.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
            out.push(0x01);
            out.extend_from_slice(&[0, 0]);
        }
        3 => {
            let mut body = Vec::new();
            for r in &st.regs {
                let holder = st.is_holder(&r.nexus);
                let tid = r.nexus.port.transport_id();
                body.extend_from_slice(&r.key.to_be_bytes());
                body.extend_from_slice(&[0; 4]);
                body.push(u8::from(holder));
                body.push(match (&st.res, holder) {
                    (Some(res), true) => res.rtype,
                    _ => 0,
                });
                body.extend_from_slice(&[0; 4]);
                body.extend_from_slice(&r.nexus.rel_port.to_be_bytes());
                body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                body.extend_from_slice(&tid);
            }
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
        }
        _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
    }
    Ok(Reply::data(trim(out, alloc)))
}

/// Unit attentions to deliver once a PR OUT takes effect.
type Attentions = Vec<(ItNexus, Asc)>;

/// Parameters of PERSISTENT RESERVE OUT (all service actions but REGISTER AND MOVE).
struct Params {
    key: u64,
    sa_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
}

/// The relative ports a registration with ALL_TG_PT covers.
fn target_ports(ctx: &Ctx<'_>, all: bool) -> Vec<u16> {
    if !all {
        return vec![ctx.me.rel_port];
    }
    let mut ports: Vec<u16> = ctx
        .target
        .port_groups()
        .iter()
        .flat_map(|g| g.relative_ports.iter().copied())
        .collect();
    ports.push(ctx.me.rel_port);
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The nexuses a TransportID names on the given relative ports: the port
/// it names on each of them, or the logged-in nexuses of the device it names.
fn nexuses_for(ctx: &Ctx<'_>, tid: &TransportId, ports: &[u16]) -> Vec<ItNexus> {
    match tid {
        TransportId::Port(port) => ports
            .iter()
            .map(|&rel_port| ItNexus {
                port: port.clone(),
                rel_port,
            })
            .collect(),
        TransportId::Device { .. } => ctx
            .target
            .nexuses()
            .into_iter()
            .filter(|n| tid.names(&n.port) && ports.contains(&n.rel_port))
            .collect(),
    }
}

fn register(
    ctx: &Ctx<'_>,
    st: &mut PrState,
    p: &Params,
    ignore: bool,
    data: &[u8],
    ua: &mut Attentions,
) -> Result<(), Failure> {
    let mine = st.key_of(&ctx.me);
    if p.spec_i_pt && (ignore || mine.is_some()) {
        return Err(Sense::invalid_param(20, Some(3)).into());
    }
    if !ignore && mine.unwrap_or(0) != p.key {
        return Err(Failure::Conflict);
    }
    let ports = target_ports(ctx, p.all_tg_pt);
    match mine {
        None if p.sa_key == 0 => return Ok(()),
        None => {
            let mut new: Vec<ItNexus> = ports
                .iter()
                .map(|&rel_port| ItNexus {
                    rel_port,
                    ..ctx.me.clone()
                })
                .collect();
            if p.spec_i_pt {
                let len = be32(data, 24) as usize;
                if 28 + len > data.len() {
                    return Err(Sense::param_list_length().into());
                }
                let mut off = 28;
                while off < 28 + len {
                    let (tid, l) = TransportId::parse(&data[..28 + len], off)?;
                    let named = nexuses_for(ctx, &tid, &ports);
                    if named.is_empty() || named.iter().any(|n| st.key_of(n).is_some()) {
                        return Err(Sense::invalid_param(off as u16, None).into());
                    }
                    new.extend(named);
                    off += l;
                }
            }
            for n in new {
                st.set_key(&n, p.sa_key);
            }
        }
        Some(_) if p.sa_key == 0 => {
            let res_before = st.res.clone();
            let removed = st
                .remove_where(|r| r.nexus.port == ctx.me.port && ports.contains(&r.nexus.rel_port));
            if let (Some(res), None) = (&res_before, &st.res) {
                if matches!(res.rtype, WRITE_EXCLUSIVE_RO | EXCLUSIVE_ACCESS_RO)
                    && removed.contains(&res.holder)
                {
                    for r in &st.regs {
                        ua.push((r.nexus.clone(), Asc::RESERVATIONS_RELEASED));
                    }
                }
            }
        }
        Some(_) => {
            for rel_port in ports {
                let n = ItNexus {
                    rel_port,
                    ..ctx.me.clone()
                };
                if n == ctx.me || st.key_of(&n).is_some() {
                    st.set_key(&n, p.sa_key);
                }
            }
        }
    }
    st.generation = st.generation.wrapping_add(1);
    Ok(())
}

fn check_scope_type(ctx: &Ctx<'_>) -> Result<u8, Sense> {
    let scope = ctx.cdb[2] >> 4;
    let rtype = ctx.cdb[2] & 0x0f;
    if scope != 0 {
        return Err(Sense::invalid_cdb(2, Some(7)));
    }
    if !valid_type(rtype) {
        return Err(Sense::invalid_cdb(2, Some(3)));
    }
    Ok(rtype)
}

fn preempt(
    ctx: &Ctx<'_>,
    st: &mut PrState,
    p: &Params,
    ua: &mut Attentions,
) -> Result<(), Failure> {
    let me = &ctx.me;
    match st.res.clone() {
        Some(res) if all_registrants(res.rtype) && p.sa_key == 0 => {
            let rtype = check_scope_type(ctx)?;
            let gone = st.remove_where(|r| r.nexus != *me);
            for n in gone {
                ua.push((n, Asc::REGISTRATIONS_PREEMPTED));
            }
            st.res = Some(Reservation {
                holder: me.clone(),
                rtype,
            });
        }
        Some(res) if !all_registrants(res.rtype) && st.key_of(&res.holder) == Some(p.sa_key) => {
            let rtype = check_scope_type(ctx)?;
            let gone = st.remove_where(|r| r.key == p.sa_key && r.nexus != *me);
            for n in &gone {
                ua.push((n.clone(), Asc::REGISTRATIONS_PREEMPTED));
            }
            if res.rtype != rtype {
                for r in &st.regs {
                    if r.nexus != *me && !gone.contains(&r.nexus) {
                        ua.push((r.nexus.clone(), Asc::RESERVATIONS_RELEASED));
                    }
                }
            }
            st.res = Some(Reservation {
                holder: me.clone(),
                rtype,
            });
        }
        _ => {
            if p.sa_key == 0 {
                return Err(Sense::invalid_param(8, None).into());
            }
            let gone = st.remove_where(|r| r.key == p.sa_key);
            if gone.is_empty() {
                return Err(Failure::Conflict);
            }
            for n in gone {
                if n != *me {
                    ua.push((n, Asc::REGISTRATIONS_PREEMPTED));
                }
            }
        }
    }
    st.generation = st.generation.wrapping_add(1);
    Ok(())
}

fn register_and_move(ctx: &Ctx<'_>, st: &mut PrState, data: &[u8]) -> Result<bool, Failure> {
    let key = be64(data, 0);
    let sa_key = be64(data, 8);
    let unreg = byte(data, 17) & 0x02 != 0;
    let aptpl = byte(data, 17) & 0x01 != 0;
    let rel_port = be16(data, 18);
    let tid_len = be32(data, 20) as usize;
    if st.key_of(&ctx.me) != Some(key) {
        return Err(Failure::Conflict);
    }
    let Some(res) = st.res.clone() else {
        return Err(Failure::Conflict);
    };
    if all_registrants(res.rtype) || res.holder != ctx.me {
        return Err(Failure::Conflict);
    }
    check_scope_type(ctx)?;
    if sa_key == 0 {
        return Err(Sense::invalid_param(8, None).into());
    }
    if 24 + tid_len > data.len() {
        return Err(Sense::param_list_length().into());
    }
    let (tid, _) = TransportId::parse(&data[..24 + tid_len], 24)?;
    let port = if rel_port == 0 {
        ctx.me.rel_port
    } else {
        rel_port
    };
    let dest = nexuses_for(ctx, &tid, &[port])
        .into_iter()
        .next()
        .ok_or_else(|| Sense::invalid_param(24, None))?;
    if dest == ctx.me {
        return Err(Sense::invalid_param(24, None).into());
    }
    st.set_key(&dest, sa_key);
    st.res = Some(Reservation {
        holder: dest,
        rtype: res.rtype,
    });
    if unreg {
        st.regs.retain(|r| r.nexus != ctx.me);
    }
    st.generation = st.generation.wrapping_add(1);
    Ok(aptpl)
}

/// PERSISTENT RESERVE OUT. PREEMPT AND ABORT also aborts every task of the
/// preempted I_T nexuses and completes only when none of them is running any
/// more, so a fenced initiator's in-flight writes cannot land after it.
pub(crate) async fn persistent_reserve_out(ctx: &Ctx<'_>) -> CmdResult {
    let mut preempted = Vec::new();
    let reply = pr_out_serialized(ctx, &mut preempted).await?;
    if !preempted.is_empty() {
        let n = ctx
            .lu
            .tasks
            .abort_and_drain(|n| preempted.contains(n))
            .await;
        tracing::debug!(
            lun = ctx.lu.lun,
            nexuses = preempted.len(),
            tasks = n,
            "PREEMPT AND ABORT"
        );
    }
    Ok(reply)
}

/// PERSISTENT RESERVE OUT under the LU's PR OUT lock. For PREEMPT AND ABORT,
/// the preempted nexuses (other than the issuer) are left in `preempted`.
async fn pr_out_serialized(ctx: &Ctx<'_>, preempted: &mut Vec<ItNexus>) -> CmdResult {
    let cdb = ctx.cdb;
    let sa = cdb[1] & 0x1f;
    if sa > 7 {
        return Err(Sense::invalid_cdb(1, Some(4)).into());
    }
    let len = be32(cdb, 5) as usize;
    if ctx.data.len() < len {
        return Err(Sense::param_list_length().into());
    }
    let data = &ctx.data[..len];
    let _serial = ctx.lu.pr_out.lock().await;
    let old = ctx.lu.state().pr.clone();
    let mut st = old.clone();
    let mut ua: Attentions = Vec::new();
    let aptpl;
    if sa == 7 {
        if len < 24 {
            return Err(Sense::param_list_length().into());
        }
        aptpl = register_and_move(ctx, &mut st, data)?;
    } else {
        let p = Params {
            key: be64(data, 0),
            sa_key: be64(data, 8),
            spec_i_pt: byte(data, 20) & 0x08 != 0,
            all_tg_pt: byte(data, 20) & 0x04 != 0,
            aptpl: byte(data, 20) & 0x01 != 0,
        };
        let spec_ok = p.spec_i_pt && sa == 0;
        if len != 24 && !(spec_ok && len >= 28) {
            return Err(Sense::param_list_length().into());
        }
        aptpl = p.aptpl;
        if sa != 0 && sa != 6 && p.spec_i_pt {
            return Err(Sense::invalid_param(20, Some(3)).into());
        }
        if sa != 0 && sa != 6 && p.all_tg_pt {
            return Err(Sense::invalid_param(20, Some(2)).into());
        }
        if sa != 0 && sa != 6 && st.key_of(&ctx.me) != Some(p.key) {
            return Err(Failure::Conflict);
        }
        match sa {
            0 => register(ctx, &mut st, &p, false, data, &mut ua)?,
            6 => register(ctx, &mut st, &p, true, data, &mut ua)?,
            1 => {
                let rtype = check_scope_type(ctx)?;
                match &st.res {
                    Some(r) if st.is_holder(&ctx.me) && r.rtype == rtype => {}
                    Some(_) => return Err(Failure::Conflict),
                    None => {
                        st.res = Some(Reservation {
                            holder: ctx.me.clone(),
                            rtype,
                        })
                    }
                }
            }
            2 => {
                if let Some(r) = st.res.clone() {
                    if st.is_holder(&ctx.me) {
                        let rtype = ctx.cdb[2] & 0x0f;
                        if ctx.cdb[2] >> 4 != 0 || rtype != r.rtype {
                            return Err(Sense::illegal(Asc::INVALID_RELEASE_OF_PR).into());
                        }
                        st.res = None;
                        if r.rtype != WRITE_EXCLUSIVE && r.rtype != EXCLUSIVE_ACCESS {
                            for reg in &st.regs {
                                if reg.nexus != ctx.me {
                                    ua.push((reg.nexus.clone(), Asc::RESERVATIONS_RELEASED));
                                }
                            }
                        }
                    }
                }
            }
            3 => {
                for reg in &st.regs {
                    if reg.nexus != ctx.me {
                        ua.push((reg.nexus.clone(), Asc::RESERVATIONS_PREEMPTED));
                    }
                }
                st.regs.clear();
                st.res = None;
                st.generation = st.generation.wrapping_add(1);
            }
            _ => {
                // 4 PREEMPT, 5 PREEMPT AND ABORT
                preempt(ctx, &mut st, &p, &mut ua)?;
                if sa == 5 {
                    preempted.extend(
                        ua.iter()
                            .filter(|(_, asc)| *asc == Asc::REGISTRATIONS_PREEMPTED)
                            .map(|(n, _)| n.clone()),
                    );
                }
            }
        }
    }
    // APTPL is set by the service actions that carry it; it is cleared when
    // the last registration goes.
    if matches!(sa, 0 | 6 | 7) {
        st.aptpl = aptpl;
    }
    if st.regs.is_empty() {
        st.aptpl = false;
    }
    if st.aptpl && ctx.lu.state_path.is_none() {
        return Err(Sense::invalid_param(if sa == 7 { 17 } else { 20 }, Some(0)).into());
    }
    if let Some(path) = &ctx.lu.state_path {
        if st.aptpl || old.aptpl {
            let text = st.to_text();
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                // Durably, never through a symbolic link.
                blockdev::statefile::replace(&path, text.as_bytes())
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::error!(lun = ctx.lu.lun, "persisting PR state failed: {written:?}");
                return Err(Sense::new(
                    super::sense::key::HARDWARE_ERROR,
                    Asc::INTERNAL_TARGET_FAILURE,
                )
                .into());
            }
        }
    }
    let mut lu_st = ctx.lu.state();
    lu_st.pr = st;
    for (n, asc) in ua {
        lu_st.ua.add(&n, asc);
    }
    Ok(Reply::good())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> ItNexus {
        ItNexus {
            port: InitiatorPort::iscsi("iqn.2026-01.test:init", [0x80, 0, 0, 0, 0, i]),
            rel_port: 1,
        }
    }

    #[test]
    fn text_round_trip() {
        let st = PrState {
            generation: 7,
            regs: vec![
                Registration {
                    nexus: n(1),
                    key: 0xabc,
                },
                Registration {
                    nexus: n(2),
                    key: 0xdef,
                },
            ],
            res: Some(Reservation {
                holder: n(2),
                rtype: EXCLUSIVE_ACCESS_RO,
            }),
            aptpl: true,
        };
        assert_eq!(PrState::from_text(&st.to_text()), Some(st));
        assert_eq!(PrState::from_text("garbage"), None);
        assert_eq!(
            PrState::from_text("opie-pr 1\nres 9 1 800000000001 x\n"),
            None
        );
    }

    #[test]
    fn conflict_table() {
        let mut st = PrState::default();
        st.regs.push(Registration {
            nexus: n(1),
            key: 1,
        });
        st.regs.push(Registration {
            nexus: n(2),
            key: 2,
        });
        let outsider = n(3);
        for (t, reg_read, reg_write, out_read, out_write) in [
            (WRITE_EXCLUSIVE, false, true, false, true),
            (EXCLUSIVE_ACCESS, true, true, true, true),
            (WRITE_EXCLUSIVE_RO, false, false, false, true),
            (EXCLUSIVE_ACCESS_RO, false, false, true, true),
            (WRITE_EXCLUSIVE_AR, false, false, false, true),
            (EXCLUSIVE_ACCESS_AR, false, false, true, true),
        ] {
            st.res = Some(Reservation {
                holder: n(1),
                rtype: t,
            });
            assert!(!st.conflicts(&n(1), PrClass::Write), "holder, type {t}");
            assert_eq!(st.conflicts(&n(2), PrClass::Read), reg_read, "type {t}");
            assert_eq!(st.conflicts(&n(2), PrClass::Write), reg_write, "type {t}");
            assert_eq!(st.conflicts(&outsider, PrClass::Read), out_read, "type {t}");
            assert_eq!(
                st.conflicts(&outsider, PrClass::Write),
                out_write,
                "type {t}"
            );
            assert!(!st.conflicts(&outsider, PrClass::Allowed));
        }
    }
}
