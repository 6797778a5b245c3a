//! The adapter between the ISU plan and the iSCSI target crate: everything
//! that touches `target_iscsi`'s server and SCSI APIs is here.

use std::future::Future;

use target_iscsi::scsi::{LuConfig, ScsiError, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, ServerError, TargetConfig};
use tracing::info;

use crate::config::IsuConfig;
use crate::portal::BoundPortal;

use super::TargetPlan;

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
    /// AoE was asked for but this build cannot serve it.
    #[error(
        "the config asks for AoE export ([aoe] / [disk.aoe]) but this build has no AoE target yet"
    )]
    AoeUnavailable,
    /// Flushing at shutdown failed.
    #[error("flush: {0}")]
    Flush(String),
}

/// Builds one SCSI target per plan entry.
fn scsi_targets(targets: Vec<TargetPlan>) -> Result<Vec<TargetConfig>, ExportError> {
    let mut out = Vec::new();
    for t in targets {
        let luns = t
            .luns
            .iter()
            .map(|(lun, d)| {
                let cfg = LuConfig {
                    device: d.device.clone(),
                    read_only: d.config.read_only,
                    state_path: Some(d.state_dir.join("pr-state")),
                };
                (*lun, cfg)
            })
            .collect();
        // No explicit ALUA groups: every portal is in group 1, active/optimized.
        let scsi =
            ScsiTarget::new(&t.iqn, luns, Vec::new()).map_err(|source| ExportError::Scsi {
                iqn: t.iqn.clone(),
                source,
            })?;
        out.push(TargetConfig {
            iqn: t.iqn,
            alias: t.alias,
            scsi,
            portals: t.portal_groups,
        });
    }
    Ok(out)
}

/// Serves `targets` on `portals` until `shutdown` resolves, then drains and
/// flushes (the server does both).
pub async fn run_iscsi(
    cfg: &IsuConfig,
    portals: Vec<BoundPortal>,
    targets: Vec<TargetPlan>,
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
        targets: scsi_targets(targets)?,
        nop_interval: cfg.nop_interval,
        nop_timeout: cfg.nop_timeout,
        ..ServerConfig::default()
    })
    .await?;
    for a in server.local_addrs() {
        info!(portal = %a, "listening");
    }
    info!(targets = n_targets, "serving");
    server.run(shutdown).await?;
    Ok(())
}
