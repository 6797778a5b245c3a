//! Settings of a multipath device.

use std::time::Duration;

use crate::selector::SelectorKind;

/// How a multipath device chooses, checks, holds out and waits for paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How the next path is chosen among the best usable ones.
    pub selector: SelectorKind,
    /// How often every path is checked (a TEST UNIT READY-like call).
    pub check_interval: Duration,
    /// Longest time one attempt of an I/O (or a check) may take on a path
    /// before it counts as timed out and the path as failed. None: the
    /// path's own timeouts decide. A backstop: it must exceed the time the
    /// initiator takes to declare a cut connection dead (the iSCSI
    /// keepalive's 500 ms + 500 ms), since a timeout here costs a write a
    /// fence, and stay well below the initiator's command timeout (30 s),
    /// so I/O leaves a hung path in seconds. Default 3 s.
    pub io_timeout: Option<Duration>,
    /// How long I/O waits while no path is usable, counted from the moment
    /// the last one went; then it fails with a path-down error
    /// (`no_path_retry`).
    pub no_path_bound: Duration,
    /// Marginal-path detection: see [`Marginal`].
    pub marginal: Marginal,
    /// How many times one I/O is retried after busy answers before the busy
    /// error is returned.
    pub busy_retries: u32,
    /// Pause before a busy I/O is tried again.
    pub busy_delay: Duration,
}

/// When a flapping path is held out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marginal {
    /// Failures are counted over this window.
    pub window: Duration,
    /// A path that failed this many times within the window is marginal when
    /// it comes back.
    pub failures: u32,
    /// A marginal path is held out until it has stayed good this long.
    pub hold: Duration,
}

impl Default for Marginal {
    fn default() -> Self {
        Marginal {
            window: Duration::from_secs(60),
            failures: 3,
            hold: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            selector: SelectorKind::ServiceTime,
            check_interval: Duration::from_millis(250),
            io_timeout: Some(Duration::from_secs(3)),
            no_path_bound: Duration::from_secs(30),
            marginal: Marginal::default(),
            busy_retries: 20,
            busy_delay: Duration::from_millis(50),
        }
    }
}
