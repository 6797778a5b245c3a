//! Implicit asymmetric logical unit access (SPC-4 5.16): target port groups,
//! their access states, what each state lets through, and REPORT TARGET PORT
//! GROUPS.

use super::sense::{key, Asc, Sense};
use super::ScsiError;

/// Asymmetric access state of a target port group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluaState {
    /// Active/optimized.
    ActiveOptimized,
    /// Active/non-optimized.
    ActiveNonOptimized,
    /// Standby.
    Standby,
    /// Unavailable.
    Unavailable,
    /// Transitioning between states.
    Transitioning,
    /// Offline.
    Offline,
}

impl AluaState {
    /// The ASYMMETRIC ACCESS STATE code of REPORT TARGET PORT GROUPS.
    pub fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
            AluaState::Standby => 0x2,
            AluaState::Unavailable => 0x3,
            AluaState::Offline => 0xE,
            AluaState::Transitioning => 0xF,
        }
    }
}

/// A target port group: its id, state and the relative target ports in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroup {
    /// Target port group identifier.
    pub id: u16,
    /// Current access state.
    pub state: AluaState,
    /// Relative target port identifiers (TPGTs) in the group.
    pub relative_ports: Vec<u16>,
}

/// Checks a port group list; an empty list becomes one active/optimized group 1
/// holding relative port 1 (and, implicitly, any port not listed elsewhere).
pub(crate) fn normalize_groups(groups: Vec<PortGroup>) -> Result<Vec<PortGroup>, ScsiError> {
    if groups.is_empty() {
        return Ok(vec![PortGroup {
            id: 1,
            state: AluaState::ActiveOptimized,
            relative_ports: vec![1],
        }]);
    }
    let mut ids = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for g in &groups {
        if !ids.insert(g.id) {
            return Err(ScsiError::BadPortGroups(format!("group {} twice", g.id)));
        }
        for p in &g.relative_ports {
            if *p == 0 || !ports.insert(*p) {
                return Err(ScsiError::BadPortGroups(format!(
                    "relative port {p} invalid or in two groups"
                )));
            }
        }
    }
    Ok(groups)
}

/// The group a relative port belongs to (the first group when not listed).
pub(crate) fn group_of(groups: &[PortGroup], rel_port: u16) -> Option<&PortGroup> {
    groups
        .iter()
        .find(|g| g.relative_ports.contains(&rel_port))
        .or_else(|| groups.first())
}

/// What a command may do in a non-active state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AluaClass {
    /// Allowed in every state (INQUIRY, REPORT LUNS, REQUEST SENSE, RTPG, ...).
    Always,
    /// Allowed in standby too (MODE SENSE/SELECT, PR IN/OUT, ...).
    Standby,
    /// Allowed only when active.
    Active,
}

/// Refuses a command that the port group's state does not allow.
pub(crate) fn check_access(state: AluaState, class: AluaClass) -> Result<(), Sense> {
    let refused = |asc| Err(Sense::new(key::NOT_READY, asc));
    match (state, class) {
        (_, AluaClass::Always) => Ok(()),
        (AluaState::ActiveOptimized | AluaState::ActiveNonOptimized, _) => Ok(()),
        (AluaState::Standby, AluaClass::Standby) => Ok(()),
        (AluaState::Standby, _) => refused(Asc::NOT_READY_STANDBY),
        (AluaState::Unavailable, _) => refused(Asc::NOT_READY_UNAVAILABLE),
        (AluaState::Transitioning, _) => refused(Asc::NOT_READY_TRANSITION),
        (AluaState::Offline, _) => refused(Asc::NOT_READY_OFFLINE),
    }
}

/// REPORT TARGET PORT GROUPS parameter data (length-only or extended header).
pub(crate) fn report_target_port_groups(groups: &[PortGroup], extended: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for g in groups {
        // PREF=0; implicit only: supported states AO, ANO, S, U, O, T.
        body.push(g.state.code() & 0x0f);
        body.push(0x80 | 0x40 | 0x08 | 0x04 | 0x02 | 0x01); // T_SUP O_SUP U_SUP S_SUP AN_SUP AO_SUP
        body.extend_from_slice(&g.id.to_be_bytes());
        body.push(0);
        body.push(0x02); // status code: implicit change
        body.push(0); // vendor specific
        body.push(g.relative_ports.len().min(255) as u8);
        for p in g.relative_ports.iter().take(255) {
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&p.to_be_bytes());
        }
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    if extended {
        out.extend_from_slice(&((body.len() as u32 + 4).to_be_bytes()));
        out.push(0x10); // format type 1
        out.push(0); // implicit transition time
        out.extend_from_slice(&[0, 0]);
    } else {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(&body);
    out
}
