//! The adapter between the ISU plan and the iSCSI target crate: everything
//! that touches `target_iscsi`'s server and SCSI APIs is here.

use std::future::Future;
use std::sync::Arc;

use scsi_disk::{LuConfig, ScsiError, ScsiTarget};
use target_iscsi::access::Access;
use target_iscsi::server::{Portal, Server, ServerConfig, ServerError, TargetConfig};
use tracing::info;

use target_aoe::{AoeConfig, AoeDisk, AoeDiskConfig, AoeServer};

use crate::config::{AoeSettings, IsuConfig, Mac};
use aggregator::portal::BoundPortal;

use super::reload::{self, LiveDisks, Reloader};
use super::{OpenDisk, TargetPlan};
use crate::state::DataDir;

/// Errors of the export layer.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A SCSI target could not be built from its disks.
    #[error("target {iqn}: {source}")]
    Scsi {
        /// Target name.
        iqn: String,
        /// Cause.
        source: ScsiError,
    },
    /// The iSCSI server failed (bind, or flush at shutdown).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The AoE server failed to start or to stop cleanly.
    #[error(transparent)]
    Aoe(#[from] target_aoe::AoeError),
    /// Flushing at shutdown failed.
    #[error("flush: {0}")]
    Flush(String),
}

/// The logical unit of a disk.
pub fn lu_config(d: &OpenDisk) -> LuConfig {
    LuConfig {
        device: d.device.clone(),
        read_only: d.config.read_only,
        state_path: Some(d.state_dir.join("pr-state")),
    }
}

/// Builds the SCSI target of a plan entry.
pub fn target_config(t: TargetPlan) -> Result<TargetConfig, ExportError> {
    let luns = t.luns.iter().map(|(lun, d)| (*lun, lu_config(d))).collect();
    // No explicit ALUA groups: every portal is in group 1, active/optimized.
    let scsi = ScsiTarget::new(&t.iqn, luns, Vec::new()).map_err(|source| ExportError::Scsi {
        iqn: t.iqn.clone(),
        source,
    })?;
    Ok(TargetConfig {
        iqn: t.iqn,
        alias: t.alias,
        scsi,
        portals: t.portal_groups,
    })
}

/// What the SIGHUP reloads of a running server work with.
pub struct Reloads {
    /// The SIGHUP stream.
    pub hup: tokio::signal::unix::Signal,
    /// The locked data directory.
    pub data: Arc<DataDir>,
    /// The disks served.
    pub live: LiveDisks,
}

/// Serves `targets` on `portals` until `shutdown` resolves, then drains and
/// flushes (the server does both).
pub async fn run_iscsi(
    cfg: &IsuConfig,
    portals: Vec<BoundPortal>,
    targets: Vec<TargetPlan>,
    access: Access,
    reloads: Reloads,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ExportError> {
    let n_targets = targets.len();
    let server = Server::bind(ServerConfig {
        portals: portals
            .into_iter()
            .map(|p| Portal {
                listen: p.listen,
                advertise: p.advertise,
                tpgt: p.tpgt,
            })
            .collect(),
        targets: targets
            .into_iter()
            .map(target_config)
            .collect::<Result<_, _>>()?,
        nop_interval: cfg.nop_interval,
        nop_timeout: cfg.nop_timeout,
        access,
        backoff: cfg.auth.backoff.clone(),
        login_limits: cfg.limits.clone(),
        ..ServerConfig::default()
    })
    .await?;
    let reload = tokio::spawn(reload::on_sighup(
        reloads.hup,
        Reloader {
            cfg: cfg.clone(),
            data: reloads.data,
            live: reloads.live,
            access: server.access_handle(),
            targets: server.targets_handle(),
        },
    ));
    for a in server.local_addrs() {
        info!(portal = %a, "listening");
    }
    info!(targets = n_targets, "serving");
    crate::service::ready(&serving_status(n_targets, &server.local_addrs()));
    let result = server.run(shutdown).await;
    reload.abort();
    result?;
    Ok(())
}

/// The status line systemd shows for a serving ISU.
pub(crate) fn serving_status(targets: usize, portals: &[std::net::SocketAddr]) -> String {
    let portals: Vec<String> = portals.iter().map(ToString::to_string).collect();
    format!("serving {targets} targets on {}", portals.join(" "))
}

fn mac_text(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Starts the AoE server for the disks that have a `[disk.aoe]` table.
/// Must be called inside the runtime (the AoE disk workers are tasks).
pub fn start_aoe(settings: &AoeSettings, disks: &[OpenDisk]) -> Result<AoeServer, ExportError> {
    let cfg = AoeConfig {
        interfaces: settings.interfaces.clone(),
        shelf: settings.shelf,
        buffer_count: settings.buffer_count,
        mac_mask: settings.mac_mask.iter().map(mac_text).collect(),
        write_back: settings.write_back,
    };
    let mut aoe_disks = Vec::new();
    for d in disks {
        let Some(a) = &d.config.aoe else { continue };
        info!(
            disk = %d.config.name,
            address = %format!("e{}.{}", settings.shelf, a.slot),
            interfaces = ?settings.interfaces,
            "exporting over AoE"
        );
        aoe_disks.push(AoeDisk {
            config: AoeDiskConfig {
                slot: a.slot,
                mac_mask: a
                    .mac_mask
                    .as_ref()
                    .map(|l| l.iter().map(mac_text).collect()),
                config_string: a.config_string.clone(),
            },
            device: d.device.clone(),
            state_path: d.state_dir.join("aoe-config"),
        });
    }
    Ok(AoeServer::start(&cfg, aoe_disks)?)
}
