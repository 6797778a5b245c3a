//! Bringing an array up: wait until enough of its members are reachable,
//! then assemble it from the members' superblocks alone (so any head with
//! the same ISUs can), or create it when no member carries a superblock
//! (the first start), never over an existing array.
//!
//! The wait has no timeout: a head whose ISUs are not up keeps waiting and
//! says who is missing, rather than giving up silently.

use std::sync::Arc;
use std::time::Duration;

use blockdev::SharedDevice;
use raid::{AssembleOptions, RaidArray, RaidError, SystemClock};
use tracing::{info, warn};

use crate::config::ArrayConfig;
use crate::reach::{Isus, ReachError, Reached};

/// Pause between two attempts to reach the missing members.
const RETRY: Duration = Duration::from_secs(1);
/// How often the members still missing are logged while waiting.
const LOG_EVERY: Duration = Duration::from_secs(15);
/// With `allow_degraded_start`, how long the last missing member is waited
/// for once all the others are there.
const DEGRADED_GRACE: Duration = Duration::from_secs(10);
/// Journal size per member, in rows of the array.
const JOURNAL_ROWS: u64 = 32;

/// Why an array could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A member's ISU is misconfigured (secrets, paths to different
    /// disks): fix the config or the ISU.
    #[error("array {array:?}: {source}")]
    Reach {
        /// The array.
        array: String,
        /// Why.
        source: ReachError,
    },
    /// The members do not assemble (stale or foreign members, too many
    /// missing, dirty and degraded without a journal) or cannot be
    /// created: see the message; nothing was written over them.
    #[error("array {array:?}: {source}")]
    Raid {
        /// The array.
        array: String,
        /// What the RAID engine refused.
        source: RaidError,
    },
    /// Some members carry a superblock and others, reachable, do not: the
    /// head never creates over an existing array; assemble refused it.
    #[error("array {array:?}: {message}")]
    Refused {
        /// The array.
        array: String,
        /// Why.
        message: String,
    },
}

/// An array brought up, with the devices it runs on.
#[derive(Debug)]
pub struct ArrayUp {
    /// Its name in the config.
    pub name: String,
    /// The array.
    pub array: RaidArray,
    /// Its members and spares as reached (their paths).
    pub reached: Vec<Reached>,
    /// The background maintenance (spares, rebuild, reshape).
    pub maintenance: tokio::task::JoinHandle<()>,
}

fn raid_config(a: &ArrayConfig, block_size: u32) -> raid::Config {
    let chunk_blocks = u32::try_from(a.chunk_bytes / u64::from(block_size)).unwrap_or(u32::MAX);
    let members = a.members.len() as u64;
    raid::Config {
        chunk_blocks,
        journal_blocks: if a.journal {
            JOURNAL_ROWS * members * u64::from(chunk_blocks)
        } else {
            0
        },
        spare_timeout: a.spare_timeout,
        member_timeout: a.member_timeout,
        ..raid::Config::default()
    }
}

/// Waits until enough members of `a` are reachable, then assembles it (or
/// creates it on first start) and starts its maintenance.
pub async fn bring_up(isus: &Isus, a: &ArrayConfig) -> Result<ArrayUp, StartError> {
    let n = a.members.len();
    let mut members: Vec<Option<Reached>> = vec![None; n];
    let started = tokio::time::Instant::now();
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut degraded_since: Option<tokio::time::Instant> = None;
    loop {
        let mut missing = Vec::new();
        for (m, slot) in a.members.iter().zip(members.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match isus.open_member(m).await {
                Ok(r) => {
                    info!(array = %a.name, member = %m, paths = r.portals.len(), identity = %r.device_identity(), "member reached");
                    *slot = Some(r);
                }
                Err(e @ ReachError::Unreachable { .. }) => missing.push(e.to_string()),
                Err(source) => {
                    return Err(StartError::Reach {
                        array: a.name.clone(),
                        source,
                    })
                }
            }
        }
        let now = tokio::time::Instant::now();
        if missing.is_empty() {
            break;
        }
        if a.allow_degraded_start && missing.len() == 1 {
            let since = *degraded_since.get_or_insert(now);
            if now - since >= DEGRADED_GRACE {
                // Only an existing array starts degraded: a new one is
                // created over all its members.
                if any_superblock(members.iter().flatten()).await {
                    warn!(array = %a.name, missing = %missing[0], "starting degraded (allow_degraded_start)");
                    break;
                }
            }
        }
        if last_log.is_none_or(|t| now - t >= LOG_EVERY) {
            last_log = Some(now);
            let need = if a.allow_degraded_start { n - 1 } else { n };
            warn!(
                array = %a.name,
                reachable = n - missing.len(),
                need,
                waited_s = (now - started).as_secs(),
                "waiting for members: {}",
                missing.join(" | ")
            );
        }
        tokio::time::sleep(RETRY).await;
    }
    let mut spares = Vec::new();
    for s in &a.spares {
        match isus.open_member(s).await {
            Ok(r) => spares.push(r),
            Err(e) => {
                warn!(array = %a.name, spare = %s, error = %e, "spare not reachable; going on without it")
            }
        }
    }
    let reached: Vec<Reached> = members.into_iter().flatten().collect();
    let devices: Vec<SharedDevice> = reached
        .iter()
        .map(|r| r.device.clone() as SharedDevice)
        .collect();
    let spare_devices: Vec<SharedDevice> = spares
        .iter()
        .map(|r| r.device.clone() as SharedDevice)
        .collect();
    let block_size = devices[0].geometry().block_size;
    let cfg = raid_config(a, block_size);
    let raid_err = |source| StartError::Raid {
        array: a.name.clone(),
        source,
    };
    let existing = any_superblock(reached.iter().chain(&spares)).await;
    let clock = Arc::new(SystemClock::new());
    let array = if !existing && devices.len() == n {
        info!(array = %a.name, members = n, chunk_bytes = a.chunk_bytes, journal = a.journal, "no member carries a superblock: creating the array");
        RaidArray::create(devices, spare_devices, cfg, clock)
            .await
            .map_err(raid_err)?
    } else if !existing {
        return Err(StartError::Refused {
            array: a.name.clone(),
            message: "no member carries a superblock and one is missing: an array is created only over all its members".into(),
        });
    } else {
        let all: Vec<SharedDevice> = devices.into_iter().chain(spare_devices).collect();
        let (array, report) = RaidArray::assemble(all, cfg, clock, AssembleOptions::default())
            .await
            .map_err(raid_err)?;
        for (id, why) in &report.refused {
            warn!(array = %a.name, device = %id, "not used: {why}");
        }
        info!(
            array = %a.name,
            missing_slots = ?report.missing_slots,
            journal_replayed = report.journal_replayed,
            resynced_rows = report.resynced_rows,
            degraded = array.degraded(),
            "array assembled from its members' superblocks"
        );
        array
    };
    let maintenance = array.spawn_maintenance(Duration::from_secs(1));
    let mut reached = reached;
    reached.extend(spares);
    Ok(ArrayUp {
        name: a.name.clone(),
        array,
        reached,
        maintenance,
    })
}

/// Whether any of `devices` carries a superblock (of any array).
async fn any_superblock(devices: impl Iterator<Item = &Reached>) -> bool {
    for r in devices {
        let d: SharedDevice = r.device.clone();
        if raid::superblock::read_newest(&d).await.is_ok() {
            return true;
        }
    }
    false
}

impl Reached {
    /// The identity of the disk reached.
    pub fn device_identity(&self) -> &blockdev::DeviceIdentity {
        use blockdev::BlockDevice;
        self.device.identity()
    }
}
