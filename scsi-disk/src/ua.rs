//! Unit attention conditions, queued per I_T nexus (SAM-5 5.14, SPC-4 7.5).

use std::collections::HashMap;

use super::sense::Asc;
use super::ItNexus;

/// Pending unit attentions of one logical unit, per I_T nexus.
#[derive(Debug, Default)]
pub(crate) struct UnitAttentions {
    pending: HashMap<ItNexus, Vec<Asc>>,
}

/// Capacity of one nexus' queue; older conditions beyond it are dropped.
const MAX_PENDING: usize = 16;

impl UnitAttentions {
    /// Queues a condition for `n`. A reset condition (ASC 0x29) supersedes
    /// everything queued before it; duplicates are not queued twice.
    pub(crate) fn add(&mut self, n: &ItNexus, asc: Asc) {
        let q = self.pending.entry(n.clone()).or_default();
        if asc.0 == 0x29 {
            q.clear();
        }
        if q.contains(&asc) {
            return;
        }
        if q.len() >= MAX_PENDING {
            q.remove(0);
        }
        q.push(asc);
    }

    /// Takes the oldest pending condition of `n`.
    pub(crate) fn pop(&mut self, n: &ItNexus) -> Option<Asc> {
        let q = self.pending.get_mut(n)?;
        let first = (!q.is_empty()).then(|| q.remove(0));
        if q.is_empty() {
            self.pending.remove(n);
        }
        first
    }

    /// Whether `asc` is queued for `n` and not yet reported.
    pub(crate) fn is_pending(&self, n: &ItNexus, asc: Asc) -> bool {
        self.pending.get(n).is_some_and(|q| q.contains(&asc))
    }

    /// Withdraws a queued, not yet reported `asc` of `n` (the event it
    /// announced has been undone before the initiator could see it).
    pub(crate) fn withdraw(&mut self, n: &ItNexus, asc: Asc) {
        if let Some(q) = self.pending.get_mut(n) {
            q.retain(|a| *a != asc);
            if q.is_empty() {
                self.pending.remove(n);
            }
        }
    }

    /// Drops every condition of `n`.
    pub(crate) fn clear(&mut self, n: &ItNexus) {
        self.pending.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(i: u8) -> ItNexus {
        ItNexus {
            port: crate::InitiatorPort::iscsi("iqn.x", [i; 6]),
            rel_port: 1,
        }
    }

    #[test]
    fn reset_supersedes_and_fifo_otherwise() {
        let mut u = UnitAttentions::default();
        let a = nexus(1);
        u.add(&a, Asc::MODE_PARAMETERS_CHANGED);
        u.add(&a, Asc::RESERVATIONS_PREEMPTED);
        u.add(&a, Asc::RESERVATIONS_PREEMPTED);
        assert_eq!(u.pop(&a), Some(Asc::MODE_PARAMETERS_CHANGED));
        u.add(&a, Asc::BUS_DEVICE_RESET);
        assert_eq!(u.pop(&a), Some(Asc::BUS_DEVICE_RESET));
        assert_eq!(u.pop(&a), None);
        assert_eq!(u.pop(&nexus(2)), None);
    }

    #[test]
    fn withdraw_removes_only_that_condition() {
        let mut u = UnitAttentions::default();
        let a = nexus(1);
        u.add(&a, Asc::MODE_PARAMETERS_CHANGED);
        u.add(&a, Asc::RESERVATIONS_PREEMPTED);
        assert!(u.is_pending(&a, Asc::MODE_PARAMETERS_CHANGED));
        u.withdraw(&a, Asc::MODE_PARAMETERS_CHANGED);
        assert!(!u.is_pending(&a, Asc::MODE_PARAMETERS_CHANGED));
        assert_eq!(u.pop(&a), Some(Asc::RESERVATIONS_PREEMPTED));
        u.add(&a, Asc::MODE_PARAMETERS_CHANGED);
        u.withdraw(&a, Asc::MODE_PARAMETERS_CHANGED);
        assert_eq!(u.pop(&a), None);
    }
}
