//! What multipath needs of a path: the device as seen through it, a check,
//! and a fence.

use std::fmt;

use async_trait::async_trait;
use blockdev::{Result, SharedDevice};

use crate::alua::AluaState;
use crate::group::Transport;

/// One path to a disk: an iSCSI session, an AoE interface. The initiators
/// implement it.
#[async_trait]
pub trait Path: Send + Sync + fmt::Debug {
    /// The disk as seen through this path.
    fn device(&self) -> &SharedDevice;

    /// The transport the path runs over.
    fn transport(&self) -> Transport;

    /// Asks the disk through this path whether it is ready (TEST UNIT READY,
    /// an AoE Query Config) and, for a target that reports TPGS, the ALUA
    /// state of the path's port group. The default reads block 0 and reports
    /// active/optimized.
    async fn check(&self) -> Result<AluaState> {
        self.device().read(0, 1).await?;
        Ok(AluaState::ActiveOptimized)
    }

    /// Resolves once no I/O this path was given can land on the disk any
    /// more: its session reinstated (the target ends the old session's tasks
    /// first), its registration preempted and aborted, or the target's own
    /// session timeout passed. Multipath calls it before it reports a write
    /// whose attempt on this path had an unknown outcome, so that attempt
    /// cannot land over data written after the report.
    async fn fence(&self);
}
