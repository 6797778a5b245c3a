//! The multipath layer's errors.

use std::time::Duration;

use blockdev::{BlockError, DeviceIdentity, Geometry};

/// What went wrong in the multipath layer, and what the caller may do.
#[derive(Debug, thiserror::Error)]
pub enum MultipathError {
    /// No path was usable for the whole queueing bound: the request was not
    /// carried out (or any attempt of it was fenced); it may be retried once
    /// a path is back. Carried upward as [`BlockError::PathDown`].
    #[error("no usable path for {waited:?} (bound {bound:?})")]
    NoPath {
        /// How long the device has been without a path.
        waited: Duration,
        /// The configured bound.
        bound: Duration,
    },
    /// Every path ended with an error of class `Failed`: the device is gone
    /// for good. Carried upward as [`BlockError::Failed`].
    #[error("every path failed for good")]
    AllPathsFailed,
    /// A device needs at least one path: fix the configuration.
    #[error("a multipath device needs at least one path")]
    NoPaths,
    /// A path reaches another disk than the first: it must not join the
    /// device; fix the grouping.
    #[error("path {index} reaches disk {found}, not {expected}")]
    IdentityMismatch {
        /// Index of the offending path.
        index: usize,
        /// Identity of the first path.
        expected: DeviceIdentity,
        /// Identity of the offending path.
        found: DeviceIdentity,
    },
    /// A path reports another shape than the first: it must not join the
    /// device until both agree (rescan the paths).
    #[error("path {index} has geometry {found:?}, not {expected:?}")]
    GeometryMismatch {
        /// Index of the offending path.
        index: usize,
        /// Geometry of the first path.
        expected: Geometry,
        /// Geometry of the offending path.
        found: Geometry,
    },
    /// Paths of different transports reach one disk but mixing is not
    /// allowed: allow it or leave one transport out.
    #[error("disk {identity} is reached over both iSCSI and AoE, and mixing is not allowed")]
    MixedTransports {
        /// The disk reached both ways.
        identity: DeviceIdentity,
    },
}

impl From<MultipathError> for BlockError {
    fn from(e: MultipathError) -> BlockError {
        match e {
            MultipathError::NoPath { .. } => BlockError::PathDown(e.to_string()),
            MultipathError::AllPathsFailed => BlockError::Failed(e.to_string()),
            MultipathError::NoPaths
            | MultipathError::IdentityMismatch { .. }
            | MultipathError::GeometryMismatch { .. }
            | MultipathError::MixedTransports { .. } => BlockError::Invalid(e.to_string()),
        }
    }
}
