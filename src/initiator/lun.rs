//! `opie initiator login`: a target's LUNs as a head would see them:
//! REPORT LUNS and a standard INQUIRY on a probe session, each disk then
//! opened as an [`IscsiDevice`] (identity, geometry, limits, features) on
//! a session of its own. A LUN that is not an opie disk (another target's,
//! or not a disk) is still described from its VPD pages and capacity, with
//! the reason the head cannot use it.

use crate::output::{out, outln};
use blockdev::{BlockDevice, DeviceIdentity};
use initiator_iscsi::disk_commands as cdb;
use initiator_iscsi::{
    Auth, Command, IscsiDevice, PipelineConfig, PipelinedSession, ReinstateConfig, ScsiResult,
};
use scsi_disk::identification::{designators, unit_serial};
use serde::Serialize;

use super::error::CliError;
use super::portal::{login_config, Portal};

/// Peripheral device type of a direct-access block device (SPC-4).
const TYPE_DISK: u8 = 0;
/// Designator type NAA (SPC-4 table 459).
const DESIGNATOR_NAA: u8 = 3;
/// Unit attentions taken in a row before a probe command gives up.
const UA_RETRIES: usize = 8;

/// An opie disk's identity as the wire carries it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Identity {
    /// The 128-bit identity (T10 vendor designator), hex.
    pub uuid: String,
    /// The NAA type 6 designator derived from it, hex.
    pub naa: String,
    /// The unit serial number.
    pub serial: String,
}

impl From<&DeviceIdentity> for Identity {
    fn from(id: &DeviceIdentity) -> Identity {
        Identity {
            uuid: id.to_string(),
            naa: hex::encode(id.naa6()),
            serial: id.serial.clone(),
        }
    }
}

/// A disk's geometry, limits and features as [`BlockDevice`] reports them.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks.
    pub num_blocks: u64,
    /// Bytes.
    pub size_bytes: u64,
    /// Write protected.
    pub read_only: bool,
    /// Largest transfer in blocks (0: no limit stated).
    pub max_transfer: u32,
    /// Optimal transfer granularity in blocks.
    pub optimal_granularity: u32,
    /// Largest atomic write in blocks.
    pub atomic_write: u32,
    /// Thin provisioned (UNMAP supported).
    pub thin: bool,
    /// A volatile write cache (SYNCHRONIZE CACHE needed).
    pub volatile_cache: bool,
}

/// One LUN of a target.
#[derive(Debug, Clone, Serialize)]
pub struct Lun {
    /// The LUN.
    pub lun: u64,
    /// Peripheral device type (0: disk).
    pub device_type: u8,
    /// T10 vendor and product from the standard INQUIRY data.
    pub vendor: String,
    /// Product identification.
    pub product: String,
    /// The opie identity, when the LUN is an opie disk.
    pub identity: Option<Identity>,
    /// Unit serial number (VPD 80h), when reported.
    pub serial: Option<String>,
    /// NAA designators of the LU (VPD 83h), hex.
    pub naa: Vec<String>,
    /// Geometry and limits, for a disk.
    pub disk: Option<Disk>,
    /// Why a head cannot use this LUN (None: it can).
    pub unusable: Option<String>,
}

/// A target's LUNs seen through one portal.
#[derive(Debug, Serialize)]
pub struct TargetLuns {
    /// The portal logged in to.
    pub portal: String,
    /// The target.
    pub target: String,
    /// Its LUNs in REPORT LUNS order.
    pub luns: Vec<Lun>,
    /// The opened devices (not serialized), for callers that use them.
    #[serde(skip)]
    pub devices: Vec<(u64, IscsiDevice)>,
}

/// What a login needs besides the portal and the target.
#[derive(Debug, Clone)]
pub struct Login {
    /// InitiatorName.
    pub initiator: String,
    /// Authentication.
    pub auth: Auth,
}

impl Login {
    /// A pipelined session to `target` at `portal` (never reinstated: a
    /// lost connection is reported, not hidden).
    pub async fn session(
        &self,
        portal: &Portal,
        target: &str,
        queue_depth: u32,
    ) -> Result<PipelinedSession, CliError> {
        let cfg = PipelineConfig {
            queue_depth,
            ..PipelineConfig::default()
        };
        let reinstate = ReinstateConfig {
            attempts: 0,
            ..ReinstateConfig::default()
        };
        let login = login_config(&self.initiator, Some(target), &self.auth);
        PipelinedSession::connect_with(portal.addr, login, cfg, reinstate)
            .await
            .map_err(|source| CliError::Portal {
                portal: portal.name.clone(),
                target: Some(target.to_string()),
                source,
            })
    }

    /// Logs in to `target` at `portal` and describes every LUN; with
    /// `keep`, the opened disks are kept in [`TargetLuns::devices`].
    pub async fn describe(
        &self,
        portal: &Portal,
        target: &str,
        keep: bool,
    ) -> Result<TargetLuns, CliError> {
        let probe = self.session(portal, target, 4).await?;
        let failed = |lun: u64, what: String| CliError::Device {
            portal: portal.name.clone(),
            target: target.to_string(),
            lun,
            what,
        };
        let cmd = |lun, c: &[u8], len| Command::read(lun, c, len);
        let report = run(&probe, cmd(0, &cdb::report_luns(4096), 4096))
            .await
            .map_err(|e| failed(0, format!("REPORT LUNS: {e}")))?;
        let mut out = TargetLuns {
            portal: portal.name.clone(),
            target: target.to_string(),
            luns: Vec::new(),
            devices: Vec::new(),
        };
        for lun in cdb::parse_report_luns(&report.data) {
            let inquiry = run(&probe, cmd(lun, &[0x12, 0, 0, 0, 96, 0], 96))
                .await
                .map_err(|e| failed(lun, format!("INQUIRY: {e}")))?;
            let d = &inquiry.data;
            let text = |r: std::ops::Range<usize>| {
                d.get(r)
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .unwrap_or_default()
            };
            let vpd = |page| cmd(lun, &cdb::inquiry_vpd(page, 1024), 1024);
            let vpd80 = run(&probe, vpd(0x80)).await.map(|r| r.data);
            let vpd83 = run(&probe, vpd(0x83)).await.map(|r| r.data);
            let mut l = Lun {
                lun,
                device_type: d.first().map_or(0x1f, |b| b & 0x1f),
                vendor: text(8..16),
                product: text(16..32),
                identity: None,
                serial: vpd80.as_deref().ok().and_then(|p| unit_serial(p).ok()),
                naa: vpd83
                    .as_deref()
                    .ok()
                    .and_then(|p| designators(p).ok())
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| d.association == 0 && d.kind == DESIGNATOR_NAA)
                    .map(|d| hex::encode(d.value))
                    .collect(),
                disk: None,
                unusable: None,
            };
            if l.device_type != TYPE_DISK {
                l.unusable = Some(format!("not a disk (device type {:#04x})", l.device_type));
                out.luns.push(l);
                continue;
            }
            let session = self.session(portal, target, 32).await?;
            match IscsiDevice::open(session, lun).await {
                Ok(dev) => {
                    l.identity = Some(Identity::from(dev.identity()));
                    l.disk = Some(disk_of(&dev));
                    if keep {
                        out.devices.push((lun, dev));
                    }
                }
                Err(e) => {
                    l.unusable = Some(format!("cannot be opened as an opie disk: {e}"));
                    let cap = run(&probe, cmd(lun, &cdb::read_capacity16(), 32)).await;
                    if let Some(c) = cap.ok().and_then(|r| cdb::parse_capacity(&r.data)) {
                        l.disk = Some(Disk {
                            block_size: c.block_size,
                            num_blocks: c.num_blocks,
                            size_bytes: u64::from(c.block_size) * c.num_blocks,
                            read_only: false,
                            max_transfer: 0,
                            optimal_granularity: 0,
                            atomic_write: 0,
                            thin: c.thin,
                            volatile_cache: false,
                        });
                    }
                }
            }
            out.luns.push(l);
        }
        let _ = probe.logout().await;
        Ok(out)
    }
}

/// What a [`BlockDevice`] says of itself.
pub(super) fn disk_of(dev: &dyn BlockDevice) -> Disk {
    let (g, lim, f) = (dev.geometry(), dev.limits(), dev.features());
    Disk {
        block_size: g.block_size,
        num_blocks: g.num_blocks,
        size_bytes: g.bytes(),
        read_only: dev.read_only(),
        max_transfer: lim.max_transfer,
        optimal_granularity: lim.optimal_granularity,
        atomic_write: lim.atomic_write,
        thin: f.thin,
        volatile_cache: f.volatile_cache,
    }
}

/// Runs a probe command to a good status, unit attentions passed over.
pub(super) async fn run(s: &PipelinedSession, cmd: Command) -> Result<ScsiResult, String> {
    for _ in 0..UA_RETRIES {
        let r = s.command(cmd.clone()).await.map_err(|e| e.to_string())?;
        if r.is_unit_attention() {
            continue;
        }
        if !r.is_good() {
            return Err(format!(
                "status {:#04x}, sense key {:?}",
                r.status,
                r.sense_key()
            ));
        }
        return Ok(r);
    }
    Err(format!("{UA_RETRIES} unit attentions in a row"))
}

/// The text form of one target's LUNs.
pub fn print(t: &TargetLuns) {
    outln!("target {} at {}", t.target, t.portal);
    for l in &t.luns {
        out!("  LUN {}: {} {}", l.lun, l.vendor, l.product);
        if let Some(d) = &l.disk {
            out!(
                ", {} bytes ({} x {}){}",
                d.size_bytes,
                d.num_blocks,
                d.block_size,
                if d.read_only { ", read-only" } else { "" }
            );
        }
        outln!();
        if let Some(id) = &l.identity {
            outln!(
                "    identity {} serial {} naa {}",
                id.uuid,
                id.serial,
                id.naa
            );
        } else {
            if let Some(s) = &l.serial {
                outln!("    serial {s}");
            }
            for n in &l.naa {
                outln!("    naa {n}");
            }
        }
        if let Some(d) = &l.disk {
            outln!(
                "    limits: max transfer {} blocks, granularity {}, atomic {}; thin {}, volatile cache {}",
                d.max_transfer, d.optimal_granularity, d.atomic_write, d.thin, d.volatile_cache
            );
        }
        if let Some(why) = &l.unusable {
            outln!("    unusable by a head: {why}");
        }
    }
}
