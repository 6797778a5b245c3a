//! `opie initiator ls`: every disk of a set of portals, grouped by its
//! identity (`multipath::group`, as the head groups paths), with its paths;
//! LUNs a head cannot use and portals or targets that failed listed apart.

use crate::output::outln;
use blockdev::DeviceIdentity;
use initiator_iscsi::Auth;
use multipath::Transport;
use serde::Serialize;

use super::discovery::discover;
use super::error::CliError;
use super::lun::{Disk, Identity, Login};
use super::portal::Portal;

/// One path to a disk.
#[derive(Debug, Clone, Serialize)]
pub struct PathInfo {
    /// The portal.
    pub portal: String,
    /// The target name.
    pub target: String,
    /// The LUN.
    pub lun: u64,
    /// `iscsi` or `aoe` (then `portal` is the local interface and the
    /// target's MAC, `target` its `eSHELF.SLOT` name, `lun` 0).
    pub transport: &'static str,
    /// `up`: logged in and the disk opened through it.
    pub state: &'static str,
}

/// One disk and its paths.
#[derive(Debug, Clone, Serialize)]
pub struct DiskPaths {
    /// Its identity.
    pub identity: Identity,
    /// Geometry and limits (through its first path).
    pub disk: Disk,
    /// Every path that reached it.
    pub paths: Vec<PathInfo>,
}

/// A LUN seen but not usable by a head.
#[derive(Debug, Clone, Serialize)]
pub struct OtherLun {
    /// The portal.
    pub portal: String,
    /// The target.
    pub target: String,
    /// The LUN.
    pub lun: u64,
    /// Why.
    pub reason: String,
}

/// A portal or target that could not be listed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The portal.
    pub portal: String,
    /// The target, when the login to it failed.
    pub target: Option<String>,
    /// What went wrong.
    pub error: String,
    /// The exit status this failure alone would give.
    pub exit_code: u8,
}

/// What `ls` found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Listing {
    /// Disks, in the order first seen.
    pub disks: Vec<DiskPaths>,
    /// LUNs a head cannot use.
    pub other_luns: Vec<OtherLun>,
    /// Portals and targets that failed.
    pub errors: Vec<Failure>,
}

fn failure(portal: &Portal, target: Option<&str>, e: &CliError) -> Failure {
    Failure {
        portal: portal.name.clone(),
        target: target.map(str::to_string),
        error: e.to_string(),
        exit_code: e.exit_code(),
    }
}

/// A path found to a disk: the disk's identity, the path's transport, the
/// disk as seen through it, and the path.
pub type FoundPath = (DeviceIdentity, Transport, Disk, PathInfo);

/// The AoE disk paths found by [`super::aoe::disks`], and its failures.
pub type AoeFound = (Vec<FoundPath>, Vec<Failure>);

/// Lists the disks behind `portals`: every target each portal reports
/// (only `only` when not empty), every LUN of each; with the AoE disks
/// `aoe` found, grouped with them by identity (an iSCSI and an AoE path to
/// one disk are shown as paths of it).
pub async fn list(
    portals: &[Portal],
    only: &[String],
    login: &Login,
    discovery_auth: &Auth,
    aoe: Option<AoeFound>,
) -> Listing {
    let mut out = Listing::default();
    let mut found: Vec<FoundPath> = Vec::new();
    for portal in portals {
        let targets = match discover(portal, &login.initiator, discovery_auth).await {
            Ok(t) => t.targets,
            Err(e) => {
                out.errors.push(failure(portal, None, &e));
                continue;
            }
        };
        for t in targets
            .iter()
            .filter(|t| only.is_empty() || only.contains(&t.name))
        {
            match login.describe(portal, &t.name, true).await {
                Err(e) => out.errors.push(failure(portal, Some(&t.name), &e)),
                Ok(luns) => {
                    for l in &luns.luns {
                        if let Some(reason) = &l.unusable {
                            out.other_luns.push(OtherLun {
                                portal: portal.name.clone(),
                                target: t.name.clone(),
                                lun: l.lun,
                                reason: reason.clone(),
                            });
                        }
                    }
                    for (lun, dev) in luns.devices {
                        let disk = luns
                            .luns
                            .iter()
                            .find(|l| l.lun == lun)
                            .and_then(|l| l.disk.clone())
                            .expect("an opened disk is described");
                        let path = PathInfo {
                            portal: portal.name.clone(),
                            target: t.name.clone(),
                            lun,
                            transport: "iscsi",
                            state: "up",
                        };
                        found.push((
                            blockdev::BlockDevice::identity(&dev).clone(),
                            Transport::Iscsi,
                            disk,
                            path,
                        ));
                    }
                }
            }
        }
    }
    if let Some((disks, failures)) = aoe {
        found.extend(disks);
        out.errors.extend(failures);
    }
    let keys: Vec<(DeviceIdentity, Transport)> =
        found.iter().map(|(id, t, _, _)| (id.clone(), *t)).collect();
    // Shown as the disk it is; whether a head may use both transports of
    // one disk together is its own configuration.
    let groups = multipath::group(&keys, true).expect("mixing allowed");
    for g in groups {
        let first = &found[g.paths[0]];
        out.disks.push(DiskPaths {
            identity: Identity::from(&g.identity),
            disk: first.2.clone(),
            paths: g.paths.iter().map(|&i| found[i].3.clone()).collect(),
        });
    }
    out
}

/// The text form.
pub fn print(l: &Listing) {
    for d in &l.disks {
        outln!(
            "disk {} serial {} ({} bytes, {} x {}{})",
            d.identity.uuid,
            d.identity.serial,
            d.disk.size_bytes,
            d.disk.num_blocks,
            d.disk.block_size,
            if d.disk.read_only { ", read-only" } else { "" }
        );
        for p in &d.paths {
            outln!(
                "  {} {} {} LUN {}: {}",
                p.transport,
                p.portal,
                p.target,
                p.lun,
                p.state
            );
        }
    }
    for o in &l.other_luns {
        outln!(
            "not usable: {} {} LUN {}: {}",
            o.portal,
            o.target,
            o.lun,
            o.reason
        );
    }
    for e in &l.errors {
        eprintln!("opie: {}", e.error);
    }
}
