//! Link cuts under load, and what each did: when the link went down, when
//! multipath took its path out of use, when it came back.

use std::time::Duration;

use multipath::{MultipathDevice, PathState};
use tokio::time::Instant;

use super::Net;

/// One cut of one link.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    /// The link (and path) cut.
    pub link: usize,
    /// When it went down.
    pub down: Instant,
    /// When multipath took the path out of use, if it did while the link
    /// was down.
    pub failed: Option<Instant>,
    /// When the link came back.
    pub up: Instant,
}

/// Cuts `link` for `down_for`, noting when multipath saw it.
pub async fn cut(net: &Net, dev: &MultipathDevice, link: usize, down_for: Duration) -> Cut {
    let mut states = dev.path_states();
    let down = Instant::now();
    net.set_link(link, false);
    let seen = tokio::time::timeout(down_for, async {
        states
            .wait_for(|s| matches!(s[link], PathState::Failed { .. } | PathState::Dead))
            .await
            .is_ok()
    })
    .await;
    let failed = matches!(seen, Ok(true)).then(Instant::now);
    tokio::time::sleep_until(down + down_for).await;
    net.set_link(link, true);
    Cut {
        link,
        down,
        failed,
        up: Instant::now(),
    }
}

/// Waits until every path is up again (at most `limit`); whether they are.
pub async fn all_up(dev: &MultipathDevice, limit: Duration) -> bool {
    let mut states = dev.path_states();
    let up = async {
        states
            .wait_for(|s| s.iter().all(|p| *p == PathState::Up))
            .await
            .is_ok()
    };
    matches!(tokio::time::timeout(limit, up).await, Ok(true))
}

/// A small xorshift generator for the schedule, seeded by the caller.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

/// Percentile `p` (0..=100) of `sorted`.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1]
}

/// The load average line of the machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}
