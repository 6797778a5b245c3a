//! An iSCSI session to a logical unit as one path of a multipath device.

use std::sync::Arc;

use async_trait::async_trait;
use blockdev::{BlockError, SharedDevice};
use multipath::{AluaState, Path, Transport};

use crate::device::IscsiDevice;

/// A logical unit over one session, as a [`multipath::Path`]: the check
/// is [`IscsiDevice::check_path`] (TEST UNIT READY, and the ALUA state of the
/// session's port group when the LU reports TPGS), the fence
/// [`PipelinedSession::settled`](crate::PipelinedSession::settled). Its
/// session should fail fast ([`FailoverConfig::multipath`](crate::FailoverConfig::multipath)),
/// so that commands come back within the keepalive's bound while it is
/// reinstated, and multipath sends them on another path.
#[derive(Debug, Clone)]
pub struct IscsiPath {
    iscsi: Arc<IscsiDevice>,
    device: SharedDevice,
}

impl IscsiPath {
    /// `device` as a path.
    pub fn new(device: IscsiDevice) -> IscsiPath {
        let iscsi = Arc::new(device);
        IscsiPath {
            device: iscsi.clone(),
            iscsi,
        }
    }

    /// The logical unit, with its session.
    pub fn iscsi(&self) -> &Arc<IscsiDevice> {
        &self.iscsi
    }
}

#[async_trait]
impl Path for IscsiPath {
    fn device(&self) -> &SharedDevice {
        &self.device
    }

    fn transport(&self) -> Transport {
        Transport::Iscsi
    }

    async fn check(&self) -> Result<AluaState, BlockError> {
        self.iscsi.check_path().await
    }

    async fn fence(&self) {
        self.iscsi.session().settled().await
    }
}
