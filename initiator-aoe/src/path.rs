//! [`AoePath`]: an [`AoeDevice`] as one path of a multipath device.

use std::sync::Arc;

use async_trait::async_trait;
use blockdev::SharedDevice;
use multipath::{AluaState, Path, Transport};

use crate::device::AoeDevice;

/// An AoE device (a target over some of a head's interfaces) as a path:
/// the check reads the IDENTIFY page again, the fence waits until no frame
/// sent through the device can still write to the disk.
#[derive(Debug, Clone)]
pub struct AoePath {
    aoe: Arc<AoeDevice>,
    device: SharedDevice,
}

impl AoePath {
    /// The path through `aoe`.
    pub fn new(aoe: Arc<AoeDevice>) -> AoePath {
        let device: SharedDevice = aoe.clone();
        AoePath { aoe, device }
    }

    /// The AoE device.
    pub fn aoe(&self) -> &Arc<AoeDevice> {
        &self.aoe
    }
}

#[async_trait]
impl Path for AoePath {
    fn device(&self) -> &SharedDevice {
        &self.device
    }

    fn transport(&self) -> Transport {
        Transport::Aoe
    }

    /// IDENTIFY through the device: the target answers, and it is still
    /// the same disk (AoE has no port groups: always active/optimized).
    async fn check(&self) -> blockdev::Result<AluaState> {
        self.aoe.check().await?;
        Ok(AluaState::ActiveOptimized)
    }

    /// No write frame of the device unfinished (answered, or given up
    /// after [`crate::Settings::give_up`]), and the stale horizon passed
    /// since the last copy of a write was sent: AoE cannot cancel a frame,
    /// so time is the only fence it has.
    async fn fence(&self) {
        self.aoe.settled().await
    }
}
