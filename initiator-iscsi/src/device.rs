//! A logical unit behind a [`PipelinedSession`] as a [`BlockDevice`]: what
//! the head's RAID and multipath layers see of an ISU disk.
//!
//! Opening it reads what the device is: its identity (VPD 80h and 83h,
//! read by `scsi_disk::identification`), its geometry and provisioning
//! (READ CAPACITY(16)), its limits (Block Limits VPD), write protection
//! and write cache (MODE SENSE, Caching page). I/O is READ(16), WRITE(16)
//! with FUA, SYNCHRONIZE CACHE(16), WRITE SAME(16) and UNMAP. A failed
//! command's status and sense data become a [`BlockError`] through
//! `scsi_disk::sense::error_of`, the inverse of what opie's target sends,
//! so every error keeps its class across the wire. A unit attention (the
//! command was not performed) is taken in and the command sent again; a
//! CAPACITY DATA HAS CHANGED one re-reads the capacity and publishes the
//! new size on the status channel.

use async_trait::async_trait;
use blockdev::{
    BlockDevice, BlockError, Bytes, DeviceIdentity, DeviceStatus, Features, Geometry, Limits,
    StatusPublisher, WriteFlags,
};
use scsi_disk::identification::identity_from_vpd;
use scsi_disk::sense::{error_of, Sense};

use multipath::AluaState;

use crate::alua;
use crate::command::{Command, ScsiResult};
use crate::disk_commands::{self as cdb, BlockLimits};
use crate::pipelined::PipelinedSession;

/// How many unit attentions in a row one command may meet before the
/// device gives up on it (each one is a condition reported once, so a
/// healthy target runs out of them soon).
const UNIT_ATTENTION_RETRIES: usize = 8;

/// ASC/ASCQ of CAPACITY DATA HAS CHANGED.
const CAPACITY_DATA_CHANGED: (u8, u8) = (0x2a, 0x09);

/// A logical unit of a remote target, over one session.
#[derive(Debug)]
pub struct IscsiDevice {
    session: PipelinedSession,
    lun: u64,
    identity: DeviceIdentity,
    status: StatusPublisher,
    limits: BlockLimits,
    features: Features,
    read_only: bool,
    /// The target port group of the session's port, when the LU reports
    /// TPGS (standard INQUIRY) and names it (VPD 83h).
    port_group: Option<u16>,
}

/// The data-in of a command, as a buffer.
fn data(r: ScsiResult) -> Bytes {
    Bytes::from(r.data)
}

impl IscsiDevice {
    /// The logical unit `lun` of `session`: reads what it is (see the
    /// module docs). Fails when it reports no opie identity (VPD 80h/83h)
    /// or no sensible capacity.
    pub async fn open(session: PipelinedSession, lun: u64) -> Result<IscsiDevice, BlockError> {
        let mut dev = IscsiDevice {
            session,
            lun,
            identity: DeviceIdentity::from_uuid([0; 16]),
            status: StatusPublisher::new(Geometry {
                block_size: 512,
                num_blocks: 0,
            }),
            limits: BlockLimits::default(),
            features: Features::default(),
            read_only: false,
            port_group: None,
        };
        // Clears the unit attentions a new nexus starts with.
        dev.run(Command::new(lun, &cdb::test_unit_ready()), 0)
            .await?;
        let vpd = |page| Command::read(lun, &cdb::inquiry_vpd(page, 1024), 1024);
        let pages = data(dev.run(vpd(0x00), 0).await?);
        let vpd80 = data(dev.run(vpd(0x80), 0).await?);
        let vpd83 = data(dev.run(vpd(0x83), 0).await?);
        dev.identity = identity_from_vpd(&vpd80, &vpd83)
            .map_err(|e| BlockError::Failed(format!("identity: {e}")))?;
        let inquiry = Command::read(
            lun,
            &alua::inquiry(alua::INQUIRY_LEN),
            alua::INQUIRY_LEN.into(),
        );
        if alua::reports_tpgs(&dev.run(inquiry, 0).await?.data) {
            dev.port_group = alua::port_group(&vpd83);
        }
        if cdb::supported_pages(&pages).contains(&0xb0) {
            dev.limits = cdb::parse_block_limits(&data(dev.run(vpd(0xb0), 0).await?));
        }
        let capacity = dev.read_capacity().await?;
        dev.status = StatusPublisher::new(Geometry {
            block_size: capacity.block_size,
            num_blocks: capacity.num_blocks,
        });
        let caching = dev
            .run(Command::read(lun, &cdb::mode_sense_caching(), 255), 0)
            .await?;
        let (read_only, volatile_cache) = cdb::parse_caching(&caching.data);
        dev.read_only = read_only;
        dev.features = Features {
            thin: capacity.thin && dev.limits.max_unmap > 0,
            unmap_reads_zero: capacity.unmap_reads_zero,
            volatile_cache,
        };
        Ok(dev)
    }

    /// Whether the LU is ready through this session, and the ALUA state of
    /// the session's port group when the LU reports TPGS: REPORT TARGET
    /// PORT GROUPS first (allowed in every state), then TEST UNIT READY
    /// when the group is active (a standby port refuses it).
    pub async fn check_path(&self) -> Result<AluaState, BlockError> {
        let mut state = AluaState::ActiveOptimized;
        if let Some(group) = self.port_group {
            let cdb = alua::report_target_port_groups(alua::RTPG_LEN);
            let r = self
                .run(Command::read(self.lun, &cdb, alua::RTPG_LEN), 0)
                .await?;
            state = alua::state_of(&r.data, group).ok_or_else(|| {
                BlockError::Failed(format!(
                    "port group {group} not in REPORT TARGET PORT GROUPS"
                ))
            })?;
        }
        if state.rank().is_some() {
            self.run(Command::new(self.lun, &cdb::test_unit_ready()), 0)
                .await?;
        }
        Ok(state)
    }

    /// The session underneath.
    pub fn session(&self) -> &PipelinedSession {
        &self.session
    }

    async fn read_capacity(&self) -> Result<cdb::Capacity, BlockError> {
        let cmd = Command::read(self.lun, &cdb::read_capacity16(), 32);
        let r = self.send(&cmd).await?;
        error_of(r.status, &r.sense, 0)?;
        cdb::parse_capacity(&r.data)
            .ok_or_else(|| BlockError::Failed(format!("READ CAPACITY(16) data {:?}", r.data)))
    }

    /// Sends a command once; a transport failure as a block-device error.
    async fn send(&self, cmd: &Command) -> Result<ScsiResult, BlockError> {
        self.session
            .command(cmd.clone())
            .await
            .map_err(crate::Error::into_block_error)
    }

    /// Runs a command to a good status: unit attentions taken in and the
    /// command sent again, any other failure as the error it reports
    /// (`lba`: the command's first block, for medium errors).
    async fn run(&self, cmd: Command, lba: u64) -> Result<ScsiResult, BlockError> {
        for _ in 0..UNIT_ATTENTION_RETRIES {
            let r = self.send(&cmd).await?;
            if r.is_unit_attention() {
                self.unit_attention(&r.sense).await?;
                continue;
            }
            error_of(r.status, &r.sense, lba)?;
            return Ok(r);
        }
        Err(BlockError::Busy(format!(
            "{UNIT_ATTENTION_RETRIES} unit attentions in a row"
        )))
    }

    /// Takes in a unit attention's condition.
    async fn unit_attention(&self, sense: &[u8]) -> Result<(), BlockError> {
        let Some(p) = Sense::parse(sense) else {
            return Ok(());
        };
        let asc = (p.sense.asc.0, p.sense.asc.1);
        tracing::debug!(lun = self.lun, ?asc, "unit attention");
        if asc == CAPACITY_DATA_CHANGED && self.status.current().geometry.num_blocks > 0 {
            let c = self.read_capacity().await?;
            if c.block_size != self.geometry().block_size {
                return Err(BlockError::Failed(format!(
                    "the block size changed to {}",
                    c.block_size
                )));
            }
            self.status.resized(c.num_blocks);
        }
        Ok(())
    }

    /// Checks a request against the geometry and the transfer limit.
    fn check(&self, lba: u64, blocks: u64) -> Result<u32, BlockError> {
        self.geometry().check_range(lba, blocks)?;
        let max = self.limits.limits.max_transfer;
        match u32::try_from(blocks) {
            Ok(n) if max == 0 || n <= max => Ok(n),
            _ => Err(BlockError::Invalid(format!(
                "{blocks} blocks in one request (at most {max})"
            ))),
        }
    }
}

#[async_trait]
impl BlockDevice for IscsiDevice {
    fn geometry(&self) -> Geometry {
        self.status.current().geometry
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn features(&self) -> Features {
        self.features
    }

    fn limits(&self) -> Limits {
        self.limits.limits
    }

    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.status.subscribe()
    }

    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        let n = self.check(lba, u64::from(blocks))?;
        let len = n * self.geometry().block_size;
        let r = self
            .run(Command::read(self.lun, &cdb::read16(lba, n), len), lba)
            .await?;
        if r.data.len() != len as usize {
            return Err(BlockError::Medium { lba });
        }
        Ok(data(r))
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let n = self.check(lba, self.geometry().blocks_in(data.len())?)?;
        let cmd = Command::write(self.lun, &cdb::write16(lba, n, flags.fua), data);
        self.run(cmd, lba).await.map(drop)
    }

    async fn flush(&self) -> blockdev::Result<()> {
        let cmd = Command::new(self.lun, &cdb::synchronize_cache16());
        self.run(cmd, 0).await.map(drop)
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.geometry().check_range(lba, blocks)?;
        let zero = Bytes::from(vec![0u8; self.geometry().block_size as usize]);
        let per = match self.limits.max_write_same {
            0 => u64::from(u32::MAX),
            n => n.min(u64::from(u32::MAX)),
        };
        let mut done = 0;
        while done < blocks {
            let n = per.min(blocks - done) as u32;
            let at = lba + done;
            let cmd = Command::write(self.lun, &cdb::write_same16(at, n, unmap), zero.clone());
            self.run(cmd, at).await?;
            done += u64::from(n);
        }
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> blockdev::Result<()> {
        if !self.features.thin {
            return self.write_zeroes(lba, blocks, true).await;
        }
        self.geometry().check_range(lba, blocks)?;
        let per = u64::from(self.limits.max_unmap);
        let mut done = 0;
        while done < blocks {
            let n = per.min(blocks - done) as u32;
            let (c, p) = cdb::unmap(lba + done, n);
            self.run(Command::write(self.lun, &c, p.to_vec()), lba + done)
                .await?;
            done += u64::from(n);
        }
        Ok(())
    }
}
