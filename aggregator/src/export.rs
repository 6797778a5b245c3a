//! The head's iSCSI targets: one per `[[export]]`, its volume as LUN 0,
//! served with the same SCSI emulation and target as the ISU's disks. The
//! logical unit's identity (VPD 80h/83h) is the volume's, derived from its
//! uuid in the volume table on the array, so it is the same on every head
//! portal and after every restart. Each listening portal is its own ALUA
//! target port group, active/optimized.

use std::collections::HashMap;
use std::path::PathBuf;

use blockdev::SharedDevice;
use chap::{AuthenticatorConfig, SecretsStore};
use scsi_disk::{AluaState, LuConfig, PortGroup, ScsiError, ScsiTarget};
use target_iscsi::access::{Access, AuthMethod, TargetAccess};
use target_iscsi::server::{Portal, ServerConfig, TargetConfig};

use crate::config::{ExportConfig, HeadConfig};

/// Why the exports could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A SCSI target could not be built: a bug or a bad PR state file.
    #[error("export {iqn}: {source}")]
    Scsi {
        /// The target.
        iqn: String,
        /// Why.
        source: ScsiError,
    },
    /// The secrets file is unreadable or malformed: fix it.
    #[error("head.secrets: {0}")]
    Secrets(#[from] chap::ChapError),
    /// A listening portal does not resolve: fix `head.listen`.
    #[error("head.listen {portal}: {message}")]
    Portal {
        /// The portal.
        portal: String,
        /// Why.
        message: String,
    },
    /// An export requires CHAP but the secrets file has no entry for it.
    #[error("export {0} requires CHAP but head.secrets has no [target.\"{0}\"] credentials")]
    NoCredentials(String),
}

/// The ALUA port groups: one per listening portal, numbered by its TPGT.
pub fn port_groups(cfg: &HeadConfig) -> Vec<PortGroup> {
    cfg.listen
        .iter()
        .map(|l| PortGroup {
            id: l.spec.tpgt,
            state: AluaState::ActiveOptimized,
            relative_ports: vec![l.spec.tpgt],
        })
        .collect()
}

/// The target of export `e` serving `device`; persistent reservations
/// kept in `state_dir`.
pub fn target(
    cfg: &HeadConfig,
    e: &ExportConfig,
    device: SharedDevice,
    state_dir: Option<PathBuf>,
) -> Result<TargetConfig, ExportError> {
    let lu = LuConfig {
        device,
        read_only: e.read_only,
        state_path: state_dir.map(|d| d.join("pr-state")),
    };
    let scsi = ScsiTarget::new(&e.iqn, vec![(0, lu)], port_groups(cfg)).map_err(|source| {
        ExportError::Scsi {
            iqn: e.iqn.clone(),
            source,
        }
    })?;
    Ok(TargetConfig {
        iqn: e.iqn.clone(),
        alias: e.alias.clone(),
        scsi,
        portals: None,
    })
}

/// Who may log in to which export (CHAP from `head.secrets`).
pub fn access(cfg: &HeadConfig) -> Result<Access, ExportError> {
    let secrets = match &cfg.secrets {
        Some(p) => SecretsStore::load(p, cfg.strict_secrets)?,
        None => SecretsStore::default(),
    };
    let mut targets = HashMap::new();
    for e in &cfg.exports {
        if e.auth == AuthMethod::Chap
            && !secrets
                .target_names()
                .any(|n| n.eq_ignore_ascii_case(&e.iqn))
        {
            return Err(ExportError::NoCredentials(e.iqn.clone()));
        }
        targets.insert(
            e.iqn.clone(),
            TargetAccess {
                auth: e.auth,
                initiators: e.initiators.clone(),
                sources: e.sources.clone(),
            },
        );
    }
    Ok(Access {
        discovery: AuthMethod::None,
        targets,
        portal_sources: HashMap::new(),
        secrets,
        chap: AuthenticatorConfig::default(),
    })
}

/// The server's configuration: portals, targets, access.
pub fn server_config(
    cfg: &HeadConfig,
    targets: Vec<TargetConfig>,
) -> Result<ServerConfig, ExportError> {
    let mut portals = Vec::new();
    for l in &cfg.listen {
        let bound = l.spec.resolve().map_err(|message| ExportError::Portal {
            portal: l.spec.to_string(),
            message,
        })?;
        portals.extend(bound.into_iter().map(|b| Portal {
            listen: b.listen,
            advertise: b.advertise,
            tpgt: b.tpgt,
        }));
    }
    Ok(ServerConfig {
        portals,
        targets,
        nop_interval: cfg.nop_interval,
        nop_timeout: cfg.nop_timeout,
        access: access(cfg)?,
        ..ServerConfig::default()
    })
}
