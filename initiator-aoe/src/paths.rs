//! The paths to one target: every pair of a local interface and a MAC the
//! target answered from, and the choice of path for each transmission.
//!
//! Frames go round-robin over the healthy paths. A path whose frames time
//! out [`Settings::failing_after`] times in a row is failing: it is steered
//! around while any other path can carry the frame, and probed with a Query
//! Config every [`Settings::probe_interval`]; any reply on it (to a probe,
//! or a late one to a frame) makes it healthy again. A retransmission goes
//! to another path than the copy it replaces when there is one.

use std::time::Instant;

use aoe_proto::frame::{max_sectors_in, Mac};

use crate::settings::Settings;

/// A local interface the initiator sends on, as the edge names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// The edge's index of the interface (handed back in each transmit).
    pub id: usize,
    /// The interface's MAC (source of frames).
    pub mac: Mac,
    /// The interface MTU (bytes after the Ethernet header).
    pub mtu: usize,
}

impl Interface {
    /// Most sectors one ATA frame carries within this MTU.
    pub fn max_sectors(&self) -> u8 {
        max_sectors_in(self.mtu)
    }
}

/// Index of a path in its [`Paths`].
pub type PathId = usize;

/// One path: a local interface and a target MAC.
#[derive(Debug, Clone)]
pub struct Path {
    /// The local side.
    pub local: Interface,
    /// The target's MAC on this path.
    pub remote: Mac,
    /// Most sectors per frame on this path: the target's word (Query
    /// Config) and the local MTU's, whichever is less.
    pub max_sectors: u8,
    timeouts_in_a_row: u32,
    next_probe: Option<Instant>,
    /// Frames sent on this path.
    pub sent: u64,
    /// Replies received on this path (to frames and to Query Configs).
    pub answered: u64,
    /// Retransmit timeouts on this path.
    pub timeouts: u64,
}

impl Path {
    /// Whether the path is being steered around.
    pub fn failing(&self, s: &Settings) -> bool {
        self.timeouts_in_a_row >= s.failing_after.max(1)
    }
}

/// The paths to one target.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    paths: Vec<Path>,
    cursor: usize,
}

impl Paths {
    /// Adds the path (`local`, `remote`), or updates its sector limit; the
    /// target said it takes `max_sectors` per frame there.
    pub fn learn(&mut self, local: Interface, remote: Mac, max_sectors: u8) -> PathId {
        let max_sectors = max_sectors.min(local.max_sectors()).max(1);
        if let Some(i) = self.find(local.id, remote) {
            self.paths[i].max_sectors = max_sectors;
            return i;
        }
        self.paths.push(Path {
            local,
            remote,
            max_sectors,
            timeouts_in_a_row: 0,
            next_probe: None,
            sent: 0,
            answered: 0,
            timeouts: 0,
        });
        self.paths.len() - 1
    }

    /// The path over local interface `iface` to `remote`.
    pub fn find(&self, iface: usize, remote: Mac) -> Option<PathId> {
        self.paths
            .iter()
            .position(|p| p.local.id == iface && p.remote == remote)
    }

    /// Every path.
    pub fn all(&self) -> &[Path] {
        &self.paths
    }

    /// The path `id`.
    pub fn get(&self, id: PathId) -> &Path {
        &self.paths[id]
    }

    /// Most sectors a frame may carry on every path (None: no path yet).
    pub fn max_sectors(&self) -> Option<u8> {
        self.paths.iter().map(|p| p.max_sectors).min()
    }

    /// Picks the path for a frame of `sectors` sectors, avoiding `avoid`
    /// (the path of the copy it replaces) and failing paths when it can.
    pub fn pick(&mut self, s: &Settings, sectors: u32, avoid: Option<PathId>) -> Option<PathId> {
        let n = self.paths.len();
        // Three passes, each less choosy: healthy and not `avoid`; healthy;
        // any path that carries the frame.
        for pass in 0..3 {
            for k in 0..n {
                let i = (self.cursor + k) % n;
                let p = &self.paths[i];
                let ok = u32::from(p.max_sectors) >= sectors
                    && (pass == 2 || !p.failing(s))
                    && (pass != 0 || Some(i) != avoid);
                if ok {
                    self.cursor = (i + 1) % n;
                    return Some(i);
                }
            }
        }
        None
    }

    /// A frame was sent on `id`.
    pub fn on_send(&mut self, id: PathId) {
        self.paths[id].sent += 1;
    }

    /// A reply arrived on `id`: the path works.
    pub fn on_reply(&mut self, id: PathId) {
        let p = &mut self.paths[id];
        p.answered += 1;
        p.timeouts_in_a_row = 0;
        p.next_probe = None;
    }

    /// A frame sent on `id` timed out at `now`.
    pub fn on_timeout(&mut self, s: &Settings, id: PathId, now: Instant) {
        let p = &mut self.paths[id];
        p.timeouts += 1;
        p.timeouts_in_a_row += 1;
        if p.failing(s) && p.next_probe.is_none() {
            p.next_probe = Some(now);
        }
    }

    /// The failing paths due for a probe at `now`; each is scheduled for
    /// its next one.
    pub fn due_probes(&mut self, s: &Settings, now: Instant) -> Vec<PathId> {
        let mut due = Vec::new();
        for (i, p) in self.paths.iter_mut().enumerate() {
            if p.next_probe.is_some_and(|t| t <= now) {
                p.next_probe = Some(now + s.probe_interval);
                due.push(i);
            }
        }
        due
    }

    /// When the next probe is due.
    pub fn next_probe(&self) -> Option<Instant> {
        self.paths.iter().filter_map(|p| p.next_probe).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(id: usize, mtu: usize) -> Interface {
        Interface {
            id,
            mac: Mac([2, 0, 0, 0, 0, id as u8]),
            mtu,
        }
    }

    #[test]
    fn round_robin_over_every_path_and_jumbo_limits() {
        let s = Settings::default();
        let mut p = Paths::default();
        let a = p.learn(iface(0, 1500), Mac([4; 6]), 255);
        let b = p.learn(iface(1, 9000), Mac([5; 6]), 255);
        assert_eq!(p.get(a).max_sectors, 2);
        assert_eq!(p.get(b).max_sectors, 17);
        assert_eq!(p.max_sectors(), Some(2));
        let picks: Vec<_> = (0..4).map(|_| p.pick(&s, 2, None).unwrap()).collect();
        assert_eq!(picks, [a, b, a, b]);
        // A frame only the jumbo path carries.
        assert_eq!(p.pick(&s, 17, None), Some(b));
        assert_eq!(p.pick(&s, 18, None), None);
    }

    #[test]
    fn a_failing_path_is_steered_around_probed_and_restored_by_a_reply() {
        let s = Settings::default();
        let t0 = Instant::now();
        let mut p = Paths::default();
        let a = p.learn(iface(0, 1500), Mac([4; 6]), 2);
        let b = p.learn(iface(0, 1500), Mac([5; 6]), 2);
        for _ in 0..s.failing_after {
            p.on_timeout(&s, a, t0);
        }
        assert!(p.get(a).failing(&s));
        assert!((0..6).all(|_| p.pick(&s, 1, None) == Some(b)));
        // Even a retransmission that would rather avoid b goes there.
        assert_eq!(p.pick(&s, 1, Some(b)), Some(b));
        assert_eq!(p.due_probes(&s, t0), vec![a]);
        assert_eq!(p.due_probes(&s, t0), Vec::<PathId>::new());
        assert_eq!(p.next_probe(), Some(t0 + s.probe_interval));
        p.on_reply(a);
        assert!(!p.get(a).failing(&s));
        assert_eq!(p.next_probe(), None);
        // When every path fails, they are still used.
        for _ in 0..s.failing_after {
            p.on_timeout(&s, a, t0);
            p.on_timeout(&s, b, t0);
        }
        assert!(p.pick(&s, 1, None).is_some());
    }

    #[test]
    fn a_retransmission_avoids_the_path_of_its_first_copy() {
        let s = Settings::default();
        let mut p = Paths::default();
        let a = p.learn(iface(0, 1500), Mac([4; 6]), 2);
        let b = p.learn(iface(1, 1500), Mac([4; 6]), 2);
        for _ in 0..5 {
            assert_eq!(p.pick(&s, 1, Some(a)), Some(b));
            assert_eq!(p.pick(&s, 1, Some(b)), Some(a));
        }
    }
}
