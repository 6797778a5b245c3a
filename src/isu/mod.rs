//! `opie isu serve`: open the disks of the config, export them, run until a
//! signal, then drain and flush.

mod access;
mod export;
mod preflight;
mod reload;

use crate::output::outln;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use blockdev::claim::InUse;
use blockdev::file::FileOptions;
use blockdev::{BlockDevice, BlockError, FileDevice, SharedDevice};
use tokio::signal::unix::{signal, SignalKind};

use crate::signals::shutdown_signal;
use tracing::{info, warn};

use crate::config::{DiskConfig, IsuConfig};
use crate::state::{describe_holder, DataDir, StateError};

pub use export::ExportError;

/// Why the ISU daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IsuError {
    /// The data directory or a state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// A disk could not be opened or created.
    #[error("disk {disk:?} ({path}): {message}")]
    Disk {
        /// Disk name.
        disk: String,
        /// Backing path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Another process (or another user of this one) holds a disk's backing store.
    #[error("disk {disk:?} ({path}): in use by {holder}; a backing file is served by one daemon at a time")]
    InUse {
        /// Disk name.
        disk: String,
        /// Backing path.
        path: PathBuf,
        /// Who holds it.
        holder: String,
    },
    /// Two disks of the config are one backing store, however spelled.
    #[error("disk {disk:?} ({path}) is the same backing store as disk {other:?} ({other_path}); a backing file is exported once")]
    SameStore {
        /// The later disk.
        disk: String,
        /// Its path.
        path: PathBuf,
        /// The earlier disk.
        other: String,
        /// Its path.
        other_path: PathBuf,
    },
    /// A portal could not be resolved or bound.
    #[error("portal {portal}: {message}")]
    Portal {
        /// The portal as configured.
        portal: String,
        /// What went wrong.
        message: String,
    },
    /// The iSCSI (or AoE) export failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The access policy (CHAP secrets) could not be built.
    #[error(transparent)]
    Access(#[from] access::AccessError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

/// One disk, opened.
#[derive(Debug, Clone)]
pub struct OpenDisk {
    /// Its configuration.
    pub config: DiskConfig,
    /// The device.
    pub device: SharedDevice,
    /// The same device, for a rescan of its size.
    pub file: FileDevice,
    /// Directory for its persistent LU state (PR APTPL).
    pub state_dir: PathBuf,
}

/// One iSCSI target: an IQN with its LUNs.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    /// Target name.
    pub iqn: String,
    /// TargetAlias.
    pub alias: Option<String>,
    /// Its LUNs, by number.
    pub luns: Vec<(u64, OpenDisk)>,
    /// Portal groups it is served on (None: all).
    pub portal_groups: Option<Vec<u16>>,
}

/// Prints what a config means (for `opie isu check`).
pub fn describe(cfg: &IsuConfig) {
    outln!("config {} is valid", cfg.source.display());
    outln!("data dir: {}", cfg.data_dir.display());
    outln!("base iqn: {}", cfg.base_iqn);
    outln!(
        "nop: every {:?}, timeout {:?}",
        cfg.nop_interval,
        cfg.nop_timeout
    );
    for p in &cfg.listen {
        outln!("portal: {p}");
    }
    let a = &cfg.auth;
    outln!(
        "auth: discovery {:?}, secrets {}, algorithms {:?}",
        a.discovery,
        a.secrets
            .as_ref()
            .map_or("none".to_string(), |p| p.display().to_string()),
        a.algorithms.as_slice()
    );
    for (tag, sources) in &a.portal_sources {
        let l: Vec<String> = sources.iter().map(ToString::to_string).collect();
        outln!("portal group {tag}: logins only from {}", l.join(", "));
    }
    for d in &cfg.disks {
        let size = d
            .size
            .map_or("existing size".to_string(), |s| format!("{s} bytes"));
        outln!(
            "disk {}: {} lun {} <- {} ({size}, {}-byte blocks{})",
            d.name,
            d.iqn,
            d.lun,
            d.path.display(),
            d.block_size,
            if d.read_only { ", read-only" } else { "" }
        );
        outln!(
            "  auth {:?}, initiators {}, sources {}",
            d.auth,
            d.initiators.as_ref().map_or("any".into(), |l| l.join(", ")),
            d.sources.as_ref().map_or("any".into(), |l| l
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "))
        );
    }
}

/// Opens (or, when `create`, creates) the backing store of `d`, which
/// [`preflight::run`] has checked.
fn open_disk(data: &DataDir, d: &DiskConfig, create: bool) -> Result<OpenDisk, IsuError> {
    let err = |message: String| IsuError::Disk {
        disk: d.name.clone(),
        path: d.path.clone(),
        message,
    };
    if create && d.read_only {
        info!(disk = %d.name, "creating the backing file of a read-only disk (it reads as zeroes)");
    }
    let mut identity = match &d.identity {
        Some(id) => id.clone(),
        None => data.identity(&d.name)?,
    };
    if let Some(s) = &d.serial {
        identity.serial = s.clone();
    }
    let opts = FileOptions {
        block_size: d.block_size,
        read_only: d.read_only,
        create_size: if create { d.size } else { None },
    };
    let dev = FileDevice::open(&d.path, &opts, identity).map_err(|e| match e {
        BlockError::Io(e) if InUse::of(&e).is_some() => IsuError::InUse {
            disk: d.name.clone(),
            path: d.path.clone(),
            holder: InUse::of(&e).map_or_else(String::new, |u| describe_holder(&u.holder)),
        },
        e => err(e.to_string()),
    })?;
    let g = dev.geometry();
    if g.num_blocks == 0 {
        return Err(err(format!("smaller than one {}-byte block", d.block_size)));
    }
    info!(
        disk = %d.name, iqn = %d.iqn, lun = d.lun, path = %d.path.display(),
        blocks = g.num_blocks, block_size = g.block_size, read_only = d.read_only,
        identity = %dev.identity(), serial = %dev.identity().serial,
        "disk opened"
    );
    Ok(OpenDisk {
        config: d.clone(),
        device: Arc::new(dev.clone()),
        file: dev,
        state_dir: data.disk_dir(&d.name)?,
    })
}

/// Groups disks into targets by IQN, in config order.
fn plan_targets(disks: Vec<OpenDisk>) -> Vec<TargetPlan> {
    let mut order: Vec<String> = Vec::new();
    let mut by_iqn: BTreeMap<String, TargetPlan> = BTreeMap::new();
    for d in disks {
        let t = by_iqn.entry(d.config.iqn.clone()).or_insert_with(|| {
            order.push(d.config.iqn.clone());
            TargetPlan {
                iqn: d.config.iqn.clone(),
                alias: d.config.alias.clone(),
                luns: Vec::new(),
                portal_groups: d.config.portal_groups.clone(),
            }
        });
        t.luns.push((d.config.lun, d));
    }
    order
        .into_iter()
        .filter_map(|iqn| by_iqn.remove(&iqn))
        .collect()
}

/// The `[auth.backoff]` settings that differ, as `name old -> new`.
fn backoff_changes(old: &chap::BackoffConfig, new: &chap::BackoffConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name} {a} -> {b}"));
        }
    };
    diff(
        "free_failures",
        old.free_failures.to_string(),
        new.free_failures.to_string(),
    );
    diff("base", format!("{:?}", old.base), format!("{:?}", new.base));
    diff("cap", format!("{:?}", old.cap), format!("{:?}", new.cap));
    diff(
        "quiet",
        format!("{:?}", old.quiet),
        format!("{:?}", new.quiet),
    );
    diff(
        "max_in_flight",
        old.max_in_flight.to_string(),
        new.max_in_flight.to_string(),
    );
    diff(
        "max_sources",
        old.max_sources.to_string(),
        new.max_sources.to_string(),
    );
    out
}

/// Checks, creating and locking nothing, everything `serve` would refuse
/// at startup (`opie isu check`): the same checks serve makes first.
pub fn check(cfg: &IsuConfig) -> Result<(), IsuError> {
    preflight::run(cfg).map(|_| ())
}

/// Runs the ISU until SIGTERM/SIGINT, then drains and flushes.
pub async fn serve(cfg: IsuConfig) -> Result<(), IsuError> {
    // Handlers first, so a signal during startup is not the default kill.
    let term = signal(SignalKind::terminate()).map_err(IsuError::Signals)?;
    let int = signal(SignalKind::interrupt()).map_err(IsuError::Signals)?;
    let hup = signal(SignalKind::hangup()).map_err(IsuError::Signals)?;
    // Everything `opie isu check` checks, before anything is created or locked.
    let preflight::Preflight {
        access: policy,
        portals,
        create,
    } = preflight::run(&cfg)?;
    let data = Arc::new(DataDir::open(&cfg.data_dir)?);
    info!(config = %cfg.source.display(), data_dir = %data.root().display(), "opie isu starting");
    let mut disks = Vec::new();
    for (d, create) in cfg.disks.iter().zip(create) {
        disks.push(open_disk(&data, d, create)?);
    }
    let live: reload::LiveDisks = Arc::new(Mutex::new(
        disks
            .iter()
            .map(|d| (d.config.name.clone(), d.clone()))
            .collect(),
    ));
    let aoe = match &cfg.aoe {
        Some(settings) => Some(export::start_aoe(settings, &disks)?),
        None => None,
    };
    let targets = plan_targets(disks);
    let reloads = export::Reloads {
        hup,
        data,
        live: live.clone(),
    };
    let mut result = export::run_iscsi(
        &cfg,
        portals,
        targets,
        policy,
        reloads,
        shutdown_signal(term, int),
    )
    .await;
    if let Some(aoe) = aoe {
        let stopped = aoe.shutdown().await.map_err(ExportError::from);
        if result.is_ok() {
            result = stopped;
        }
    }
    // Flush every device whatever happened: nothing written may stay volatile.
    let devices: Vec<SharedDevice> = live
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .map(|d| d.device.clone())
        .collect();
    let mut flush_failed = false;
    for dev in &devices {
        if let Err(e) = dev.flush().await {
            warn!(identity = %dev.identity(), "flush at shutdown failed: {e}");
            flush_failed = true;
        }
    }
    result?;
    if flush_failed {
        return Err(ExportError::Flush("a device failed to flush at shutdown".into()).into());
    }
    info!("all sessions drained and every disk flushed; exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::backoff_changes;
    use chap::BackoffConfig;
    use std::time::Duration;

    #[test]
    fn backoff_changes_name_only_what_differs() {
        let old = BackoffConfig::default();
        assert!(backoff_changes(&old, &old).is_empty());
        let new = BackoffConfig {
            cap: Duration::from_secs(2),
            max_in_flight: 1,
            ..old.clone()
        };
        assert_eq!(
            backoff_changes(&old, &new),
            ["cap 16s -> 2s", "max_in_flight 16 -> 1"]
        );
    }
}
