//! The adapter between the ISU plan and the iSCSI target crate: everything
//! that touches `target_iscsi`'s server and SCSI APIs is here.

use std::future::Future;

use crate::config::IsuConfig;
use crate::portal::BoundPortal;

use super::TargetPlan;

/// Errors of the export layer.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// This build has no iSCSI server yet.
    #[error(
        "this build of opie has no iSCSI target server yet (target-iscsi's server is not merged)"
    )]
    IscsiUnavailable,
    /// AoE was asked for but this build cannot serve it.
    #[error(
        "the config asks for AoE export ([aoe] / [disk.aoe]) but this build has no AoE target yet"
    )]
    AoeUnavailable,
    /// Flushing at shutdown failed.
    #[error("flush: {0}")]
    Flush(String),
}

/// Serves `targets` on `portals` until `shutdown` resolves, then drains.
pub async fn run_iscsi(
    _cfg: &IsuConfig,
    _portals: Vec<BoundPortal>,
    _targets: Vec<TargetPlan>,
    _shutdown: impl Future<Output = ()>,
) -> Result<(), ExportError> {
    Err(ExportError::IscsiUnavailable)
}
