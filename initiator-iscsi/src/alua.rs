//! What the initiator learns of asymmetric access (ALUA, SPC-4 5.16): does
//! the logical unit report target port groups (TPGS in standard INQUIRY),
//! which group the session's target port is in (VPD 83h), and that group's
//! state (REPORT TARGET PORT GROUPS), as a [`multipath::AluaState`].

use multipath::AluaState;
use scsi_disk::identification::designators;

/// Allocation length of the standard INQUIRY the device sends.
pub const INQUIRY_LEN: u16 = 96;

/// Allocation length of REPORT TARGET PORT GROUPS: room for many groups.
pub const RTPG_LEN: u32 = 4096;

/// Standard INQUIRY, up to `len` bytes.
pub fn inquiry(len: u16) -> [u8; 6] {
    let l = len.to_be_bytes();
    [0x12, 0, 0, l[0], l[1], 0]
}

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN, 0Ah), length-only header.
pub fn report_target_port_groups(len: u32) -> [u8; 12] {
    let l = len.to_be_bytes();
    [0xa3, 0x0a, 0, 0, 0, 0, l[0], l[1], l[2], l[3], 0, 0]
}

/// Whether standard INQUIRY data reports target port group support
/// (TPGS, byte 5 bits 4-5, not zero).
pub fn reports_tpgs(inquiry: &[u8]) -> bool {
    inquiry.get(5).is_some_and(|b| b & 0x30 != 0)
}

/// The target port group of the port a Device Identification page (83h)
/// was read through: its designator of type 5, associated with the target
/// port.
pub fn port_group(vpd83: &[u8]) -> Option<u16> {
    designators(vpd83)
        .ok()?
        .into_iter()
        .find(|d| d.association == 1 && d.kind == 5 && d.value.len() == 4)
        .map(|d| u16::from_be_bytes([d.value[2], d.value[3]]))
}

/// The state of group `group` in REPORT TARGET PORT GROUPS data (either
/// header format); None when the data does not list it.
pub fn state_of(rtpg: &[u8], group: u16) -> Option<AluaState> {
    let head = rtpg.get(..4)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    // Extended header (format type 1): 8 bytes, its length counts 4 of them.
    let (mut at, end) = match rtpg.get(4) {
        Some(b) if b & 0x70 == 0x10 => (8, 4 + len),
        _ => (4, 4 + len),
    };
    let end = end.min(rtpg.len());
    while at + 8 <= end {
        let d = &rtpg[at..at + 8];
        if u16::from_be_bytes([d[2], d[3]]) == group {
            return Some(state_from_code(d[0] & 0x0f));
        }
        at += 8 + 4 * usize::from(d[7]);
    }
    None
}

/// An ASYMMETRIC ACCESS STATE code as multipath's state; codes SPC-4
/// reserves count as unavailable.
fn state_from_code(code: u8) -> AluaState {
    match code {
        0x0 => AluaState::ActiveOptimized,
        0x1 => AluaState::ActiveNonOptimized,
        0x2 => AluaState::Standby,
        0xe => AluaState::Offline,
        0xf => AluaState::Transitioning,
        _ => AluaState::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RTPG data: groups (id, state, relative ports), extended or not.
    fn rtpg(groups: &[(u16, u8, &[u16])], extended: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, state, ports) in groups {
            body.extend_from_slice(&[*state, 0xdf]);
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&[0, 2, 0, ports.len() as u8]);
            for p in *ports {
                body.extend_from_slice(&[0, 0]);
                body.extend_from_slice(&p.to_be_bytes());
            }
        }
        let mut out = Vec::new();
        if extended {
            out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            out.extend_from_slice(&[0x10, 0, 0, 0]);
        } else {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        }
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn the_state_of_the_paths_group_is_found_in_either_format() {
        let groups: &[(u16, u8, &[u16])] = &[(1, 0x0, &[1, 2]), (2, 0x2, &[3]), (7, 0x1, &[])];
        for extended in [false, true] {
            let d = rtpg(groups, extended);
            assert_eq!(state_of(&d, 1), Some(AluaState::ActiveOptimized));
            assert_eq!(state_of(&d, 2), Some(AluaState::Standby));
            assert_eq!(state_of(&d, 7), Some(AluaState::ActiveNonOptimized));
            assert_eq!(state_of(&d, 3), None);
            // Cut short: what is whole is read, nothing past it.
            assert_eq!(state_of(&d[..d.len() - 8], 7), None);
        }
        assert_eq!(state_of(&[0, 0], 1), None);
        assert_eq!(state_from_code(0xe), AluaState::Offline);
        assert_eq!(state_from_code(0x5), AluaState::Unavailable);
    }

    #[test]
    fn tpgs_and_the_port_group_are_read_from_inquiry_data() {
        assert!(reports_tpgs(&[0, 0, 6, 2, 91, 0x18]));
        assert!(!reports_tpgs(&[0, 0, 6, 2, 91, 0x08]));
        assert!(!reports_tpgs(&[0, 0]));
        // An NAA designator of the LU, then relative port 3 and group 9.
        let mut page = vec![0, 0x83, 0, 0];
        page.extend_from_slice(&[1, 0x03, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        page.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0, 0, 3]);
        page.extend_from_slice(&[0x51, 0x95, 0, 4, 0, 0, 0, 9]);
        page[3] = (page.len() - 4) as u8;
        assert_eq!(port_group(&page), Some(9));
        assert_eq!(port_group(&page[..page.len() - 8]), None);
    }
}
