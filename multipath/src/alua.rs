//! ALUA target port group states, as an input to path selection.
//!
//! A target that reports TPGS tells, per target port group, how well a path
//! through it serves the logical unit (SPC-4 6.37, REPORT TARGET PORT
//! GROUPS). Multipath prefers active/optimized paths, falls back to
//! active/non-optimized ones, and never sends I/O through the others.

/// Asymmetric access state of the port group a path goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AluaState {
    /// Active/optimized: the preferred paths. Also what a path to a target
    /// without TPGS is taken to be.
    #[default]
    ActiveOptimized,
    /// Active/non-optimized: used only when no optimized path is usable.
    ActiveNonOptimized,
    /// Standby: answers only management commands; not used for I/O.
    Standby,
    /// Unavailable: not used for I/O.
    Unavailable,
    /// Offline: not used for I/O.
    Offline,
    /// Transitioning between states: not used until it settles.
    Transitioning,
}

impl AluaState {
    /// Preference rank for I/O, lower first; None: not used for I/O.
    pub fn rank(self) -> Option<u8> {
        match self {
            AluaState::ActiveOptimized => Some(0),
            AluaState::ActiveNonOptimized => Some(1),
            AluaState::Standby
            | AluaState::Unavailable
            | AluaState::Offline
            | AluaState::Transitioning => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimized_before_non_optimized_and_standby_never() {
        assert!(AluaState::ActiveOptimized.rank() < AluaState::ActiveNonOptimized.rank());
        assert_eq!(AluaState::Standby.rank(), None);
        assert_eq!(AluaState::Transitioning.rank(), None);
        assert_eq!(AluaState::default(), AluaState::ActiveOptimized);
    }
}
