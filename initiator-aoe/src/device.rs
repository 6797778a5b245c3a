//! [`AoeDevice`]: an AoE target as a [`BlockDevice`], on a [`Driver`].

use std::time::Duration;

use aoe_proto::frame::{FrameError, SECTOR_SIZE};
use aoe_proto::identify::Identify;
use async_trait::async_trait;
use blockdev::{
    write_zeroes_by_writes, BlockDevice, BlockError, Bytes, DeviceIdentity, Geometry, WriteFlags,
};
use tokio::sync::oneshot;

use crate::driver::{Cmd, Driver};
use crate::settings::Settings;
use crate::target::{Request, TargetState};

/// Why an AoE device could not be opened, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A named interface could not be opened (missing, down, no rights):
    /// fix the configuration or run with CAP_NET_RAW.
    #[error("AoE interface: {0}")]
    Interface(#[from] std::io::Error),
    /// The target did not answer IDENTIFY (not there, or unreachable):
    /// check the shelf.slot and the network, then retry.
    #[error("AoE target {shelf}.{slot}: {error}")]
    Unreachable {
        /// Shelf.
        shelf: u16,
        /// Slot.
        slot: u8,
        /// What the request ended with.
        error: BlockError,
    },
    /// The target's IDENTIFY page cannot be read: not a disk to use.
    #[error("AoE target {shelf}.{slot}: bad IDENTIFY page: {error}")]
    BadIdentify {
        /// Shelf.
        shelf: u16,
        /// Slot.
        slot: u8,
        /// What is wrong with it.
        error: FrameError,
    },
}

/// An AoE target reached over raw Ethernet on the named interfaces.
#[derive(Debug)]
pub struct AoeDevice {
    driver: Driver,
    geometry: Geometry,
    identity: DeviceIdentity,
    identify: Identify,
}

impl AoeDevice {
    /// Finds target `shelf`.`slot` on `ifnames` (broadcast Query Config,
    /// waiting up to `discover_wait` for it), reads its IDENTIFY page and
    /// returns it as a device.
    pub async fn open(
        ifnames: &[String],
        shelf: u16,
        slot: u8,
        settings: Settings,
        discover_wait: Duration,
    ) -> Result<AoeDevice, OpenError> {
        let core = TargetState::new(shelf, slot, settings);
        let driver = Driver::start(ifnames, core, discover_wait)?;
        let page = call(&driver, Request::Identify)
            .await
            .map_err(|error| OpenError::Unreachable { shelf, slot, error })?;
        let identify = Identify::parse(&page).map_err(|error| OpenError::BadIdentify {
            shelf,
            slot,
            error,
        })?;
        driver.send(Cmd::Lba48(identify.lba48));
        let identity = identify
            .identity
            .clone()
            .unwrap_or_else(|| DeviceIdentity::from_name(&format!("aoe:{}", identify.serial)));
        Ok(AoeDevice {
            driver,
            geometry: Geometry {
                block_size: SECTOR_SIZE as u32,
                num_blocks: identify.sectors,
            },
            identity,
            identify,
        })
    }

    /// What the target's IDENTIFY page says.
    pub fn identify(&self) -> &Identify {
        &self.identify
    }

    async fn call(&self, req: Request) -> blockdev::Result<Bytes> {
        call(&self.driver, req).await
    }
}

async fn call(driver: &Driver, req: Request) -> blockdev::Result<Bytes> {
    let (tx, rx) = oneshot::channel();
    let gone = || BlockError::PathDown("AoE: the initiator has stopped".into());
    if !driver.send(Cmd::Submit(req, tx)) {
        return Err(gone());
    }
    rx.await.map_err(|_| gone())?
}

#[async_trait]
impl BlockDevice for AoeDevice {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        self.geometry.check_range(lba, u64::from(blocks))?;
        self.call(Request::Read {
            lba,
            sectors: blocks,
        })
        .await
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        let blocks = self.geometry.blocks_in(data.len())?;
        self.geometry.check_range(lba, blocks)?;
        self.call(Request::Write { lba, data }).await?;
        if flags.fua && self.identify.write_cache {
            self.call(Request::Flush).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> blockdev::Result<()> {
        self.call(Request::Flush).await.map(|_| ())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, _unmap: bool) -> blockdev::Result<()> {
        write_zeroes_by_writes(self, lba, blocks, 64 << 10).await
    }
}
