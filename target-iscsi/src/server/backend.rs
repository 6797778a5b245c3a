//! What the server needs of the SCSI layer behind a target.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::scsi::{Command, Nexus, Response, TmfFunction};
use crate::tmf::TmfOutcome;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The SCSI target behind an iSCSI target: `scsi::ScsiTarget` implements it.
pub trait ScsiBackend: Send + Sync + 'static {
    /// Registers a command in task-set order now and returns its execution.
    fn submit(self: Arc<Self>, nexus: &Nexus, cmd: Command) -> BoxFuture<'static, Response>;
    /// Task management after the transport aborted its own tasks.
    fn task_management<'a>(
        &'a self,
        nexus: &'a Nexus,
        lun: u64,
        f: TmfFunction,
    ) -> BoxFuture<'a, TmfOutcome>;
    /// A new I_T nexus.
    fn nexus_login(&self, nexus: &Nexus);
    /// An I_T nexus is gone (logout, connection loss, reinstatement).
    fn nexus_logout(&self, nexus: &Nexus);
    /// Flushes every LU (shutdown).
    fn flush_all(&self) -> BoxFuture<'_, Result<(), String>>;
}
