//! [`AoeDevice`]: an AoE target as a [`BlockDevice`], on a [`Driver`].

use std::time::Duration;

use crate::driver::{AttachError, Driver, Target};
use crate::settings::Settings;
use crate::target::{Request, TargetState};
use aoe_proto::frame::{FrameError, SECTOR_SIZE};
use aoe_proto::identify::Identify;
use async_trait::async_trait;
use blockdev::{
    write_zeroes_by_writes, BlockDevice, BlockError, Bytes, DeviceIdentity, Geometry, WriteFlags,
};

/// Why an AoE device could not be opened, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A named interface could not be opened (missing, down, no rights):
    /// fix the configuration or run with CAP_NET_RAW.
    #[error("AoE interface: {0}")]
    Interface(#[from] std::io::Error),
    /// The target cannot be attached to the driver (see [`AttachError`]).
    #[error(transparent)]
    Attach(#[from] AttachError),
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
    target: Target,
    shelf: u16,
    slot: u8,
    geometry: Geometry,
    identity: DeviceIdentity,
    identify: Identify,
}

impl AoeDevice {
    /// Finds target `shelf`.`slot` on `ifnames` (broadcast Query Config,
    /// waiting up to `discover_wait` for it), reads its IDENTIFY page and
    /// returns it as a device, on a driver of its own.
    pub async fn open(
        ifnames: &[String],
        shelf: u16,
        slot: u8,
        settings: Settings,
        discover_wait: Duration,
    ) -> Result<AoeDevice, OpenError> {
        let driver = Driver::open(ifnames)?;
        Self::attach(&driver, &[], shelf, slot, settings, discover_wait).await
    }

    /// As [`AoeDevice::open`], on `driver`'s sockets (shared with every
    /// device attached to it), using its interfaces named in `ifnames` (all
    /// of them when empty).
    pub async fn attach(
        driver: &Driver,
        ifnames: &[String],
        shelf: u16,
        slot: u8,
        settings: Settings,
        discover_wait: Duration,
    ) -> Result<AoeDevice, OpenError> {
        let core = TargetState::new(shelf, slot, settings);
        let target = driver.attach(core, ifnames, discover_wait).await?;
        let identify = read_identify(&target, shelf, slot).await?;
        target.set_lba48(identify.lba48);
        let identity = identify
            .identity
            .clone()
            .unwrap_or_else(|| DeviceIdentity::from_name(&format!("aoe:{}", identify.serial)));
        Ok(AoeDevice {
            target,
            shelf,
            slot,
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

    /// Reads the IDENTIFY page again (the path check): an error if the
    /// target does not answer, `Failed` if another disk answers in its place.
    pub async fn check(&self) -> blockdev::Result<()> {
        let (shelf, slot) = (self.shelf, self.slot);
        let now = read_identify(&self.target, shelf, slot)
            .await
            .map_err(|e| match e {
                OpenError::Unreachable { error, .. } => error,
                e => BlockError::Failed(e.to_string()),
            })?;
        if now.identity != self.identify.identity || now.serial != self.identify.serial {
            return Err(BlockError::Failed(format!(
                "AoE target {shelf}.{slot}: another disk answers (serial {})",
                now.serial
            )));
        }
        Ok(())
    }

    /// Resolves once no frame sent through this device can still write to
    /// the target: no write unfinished, and the stale horizon passed since
    /// the last copy of a write was sent.
    pub async fn settled(&self) {
        self.target.settled().await
    }

    async fn call(&self, req: Request) -> blockdev::Result<Bytes> {
        self.target.call(req).await
    }
}

async fn read_identify(target: &Target, shelf: u16, slot: u8) -> Result<Identify, OpenError> {
    let page = target
        .call(Request::Identify)
        .await
        .map_err(|error| OpenError::Unreachable { shelf, slot, error })?;
    Identify::parse(&page).map_err(|error| OpenError::BadIdentify { shelf, slot, error })
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

    /// FLUSH CACHE when the IDENTIFY page says a volatile write cache is
    /// enabled; else every answered write is durable already and nothing is
    /// sent (vblade, for one, refuses FLUSH CACHE with ABRT).
    async fn flush(&self) -> blockdev::Result<()> {
        if !self.identify.write_cache {
            return Ok(());
        }
        self.call(Request::Flush).await.map(|_| ())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, _unmap: bool) -> blockdev::Result<()> {
        write_zeroes_by_writes(self, lba, blocks, 64 << 10).await
    }
}
