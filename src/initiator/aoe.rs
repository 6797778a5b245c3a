//! AoE in `opie initiator discover|ls` (`--aoe IFACE`): a Query Config
//! broadcast on the named interfaces lists every target that answers, and
//! `ls` opens each one as the head does (IDENTIFY through one shared
//! driver), so an AoE disk's paths are grouped by identity with its iSCSI
//! paths. Needs root (raw sockets).

use crate::output::outln;
use std::collections::BTreeMap;
use std::time::Duration;

use blockdev::BlockDevice;
use initiator_aoe::{AoeDevice, Driver, Found, Settings};
use multipath::Transport;
use serde::Serialize;

use super::error::{CliError, EXIT_UNREACHABLE};
use super::listing::{AoeFound, Failure, PathInfo};
use super::lun::disk_of;

/// One AoE target that answered Query Config.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AoeTarget {
    /// Its name as the Linux `aoe` driver gives it: `eSHELF.SLOT`.
    pub name: String,
    /// Shelf (major) address.
    pub shelf: u16,
    /// Slot (minor) address.
    pub slot: u8,
    /// The MACs it answered from, by local interface.
    pub interfaces: BTreeMap<String, Vec<String>>,
    /// Frames it takes at once.
    pub buffer_count: u16,
    /// Firmware version.
    pub firmware: u16,
    /// Most sectors per ATA frame it takes.
    pub max_sectors: u8,
    /// Its config string (lossy UTF-8).
    pub config: String,
}

impl From<&Found> for AoeTarget {
    fn from(f: &Found) -> AoeTarget {
        AoeTarget {
            name: format!("e{}.{}", f.shelf, f.slot),
            shelf: f.shelf,
            slot: f.slot,
            interfaces: f
                .macs
                .iter()
                .map(|(i, m)| (i.clone(), m.iter().map(ToString::to_string).collect()))
                .collect(),
            buffer_count: f.buffer_count,
            firmware: f.firmware,
            max_sectors: f.max_sectors,
            config: String::from_utf8_lossy(&f.config).into_owned(),
        }
    }
}

/// What a Query Config broadcast on `ifaces` found within `wait`.
#[derive(Debug, Clone, Serialize)]
pub struct AoeDiscovery {
    /// The interfaces asked.
    pub aoe_interfaces: Vec<String>,
    /// The targets that answered, by shelf and slot.
    pub aoe_targets: Vec<AoeTarget>,
}

fn open_driver(ifaces: &[String]) -> Result<Driver, CliError> {
    Driver::open(ifaces).map_err(|source| CliError::Aoe {
        interfaces: ifaces.join(","),
        source,
    })
}

/// Broadcasts Query Config on `ifaces` and lists who answers within `wait`.
pub async fn discover(ifaces: &[String], wait: Duration) -> Result<AoeDiscovery, CliError> {
    let driver = open_driver(ifaces)?;
    let found = driver.discover(wait).await;
    Ok(AoeDiscovery {
        aoe_interfaces: ifaces.to_vec(),
        aoe_targets: found.iter().map(AoeTarget::from).collect(),
    })
}

/// The disks behind the AoE targets on `ifaces`: each target opened
/// (IDENTIFY), with one path per interface and MAC it answered from; a
/// target that cannot be opened is a failure of its own.
pub async fn disks(ifaces: &[String], wait: Duration) -> Result<AoeFound, CliError> {
    let driver = open_driver(ifaces)?;
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for f in driver.discover(wait).await {
        let t = AoeTarget::from(&f);
        match AoeDevice::attach(&driver, &[], f.shelf, f.slot, Settings::default(), wait).await {
            Err(e) => failures.push(Failure {
                portal: ifaces.join(","),
                target: Some(t.name.clone()),
                error: format!("AoE target {}: {e}", t.name),
                exit_code: EXIT_UNREACHABLE,
            }),
            Ok(dev) => {
                let disk = disk_of(&dev);
                for (iface, macs) in &t.interfaces {
                    for mac in macs {
                        let path = PathInfo {
                            portal: format!("{iface} {mac}"),
                            target: t.name.clone(),
                            lun: 0,
                            transport: "aoe",
                            state: "up",
                        };
                        found.push((dev.identity().clone(), Transport::Aoe, disk.clone(), path));
                    }
                }
            }
        }
    }
    Ok((found, failures))
}

/// The text form of a discovery.
pub fn print(d: &AoeDiscovery) {
    outln!("AoE on {}", d.aoe_interfaces.join(", "));
    if d.aoe_targets.is_empty() {
        outln!("  (no target answered Query Config)");
    }
    for t in &d.aoe_targets {
        outln!(
            "  {} (buffers {}, firmware {:#x}, {} sectors per frame{})",
            t.name,
            t.buffer_count,
            t.firmware,
            t.max_sectors,
            if t.config.is_empty() {
                String::new()
            } else {
                format!(", config {:?}", t.config)
            }
        );
        for (iface, macs) in &t.interfaces {
            outln!("    via {iface} from {}", macs.join(", "));
        }
    }
}
