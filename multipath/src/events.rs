//! What the core tells the edge has changed, for the status channel, the
//! per-path state channel and the log.

use crate::health::PathState;

/// A change of a path's state, or of whether any path is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// Path `path` went to `state` (down: `Failed`; back: `Up`; held out
    /// after flapping: `Marginal`; gone for good: `Dead`).
    Path {
        /// Index of the path, in the order given to the device.
        path: usize,
        /// Its new state.
        state: PathState,
    },
    /// No path is usable any more: I/O queues, up to the no-path bound.
    AllPathsDown,
    /// A path is usable again after none was: queued I/O resumes.
    Resumed,
}
