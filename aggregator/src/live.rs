//! What a serving head has running, shared by the monitor and the control
//! API: its ISUs (from `head.toml` and added at run time), every disk it
//! reached on them (each a multipath device, with the ISU it is on), its
//! arrays with their volume pools, and the recent events. Which array uses a disk is not kept
//! here: the arrays' own member tables ([`raid::RaidArray::states`]) say it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use blockdev::{BlockDevice, DeviceIdentity};
use multipath::MultipathDevice;
use raid::{MemberView, RaidArray};
use volume::Pool;

use crate::added::{AddedError, AddedIsu, AddedIsus, Role};
use crate::config::{HeadConfig, IsuConfig, MemberRef};
use crate::events::EventLog;
use crate::pace::ReshapePace;
use crate::reach::{Isus, ReachError, Reached};
use crate::startup::ArrayUp;

/// A disk the head reached.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The ISU it is on.
    pub isu: String,
    /// Its target on the ISU, when the head looked it up by name.
    pub target: Option<String>,
    /// The disk over every path found, and its sessions.
    pub reached: Reached,
}

impl Disk {
    /// The disk's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        self.reached.device.identity()
    }

    /// The disk over every path found.
    pub fn device(&self) -> Arc<MultipathDevice> {
        self.reached.device.clone()
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        let g = self.reached.device.geometry();
        g.num_blocks * u64::from(g.block_size)
    }
}

/// An array the head serves.
#[derive(Debug, Clone)]
pub struct LiveArray {
    /// Its name in the config.
    pub name: String,
    /// The array.
    pub array: RaidArray,
    /// The ISU of each member slot's device as found at the start (for a
    /// slot whose device is missing).
    pub slot_isus: Vec<Option<String>>,
    /// The volumes carved from it.
    pub pool: Option<Pool>,
    /// The pace of its running reshape, as the monitor sees it.
    pub reshape_pace: Arc<Mutex<ReshapePace>>,
}

#[derive(Debug, Default)]
struct Known {
    added: Vec<AddedIsu>,
    disks: Vec<Disk>,
}

/// The head's live state.
#[derive(Debug)]
pub struct Live {
    cfg: HeadConfig,
    arrays: Vec<LiveArray>,
    known: Mutex<Known>,
    store: AddedIsus,
    /// The recent events.
    pub events: EventLog,
}

impl Live {
    /// The state of a head of `cfg` that brought up `up`, with the volume
    /// pool of each array by name; `added` are the ISUs added at run time
    /// (before this start too), kept in `store`.
    pub fn new(
        cfg: &HeadConfig,
        (added, store): (Vec<AddedIsu>, AddedIsus),
        up: &[ArrayUp],
        pools: Vec<(String, Pool)>,
        events: EventLog,
    ) -> Live {
        let all: Vec<IsuConfig> = cfg
            .isus
            .iter()
            .cloned()
            .chain(added.iter().map(AddedIsu::config))
            .collect();
        let isu_of = |portals: &[SocketAddr]| {
            all.iter()
                .find(|i| portals.iter().any(|p| i.portals.contains(p)))
                .map_or_else(|| "?".to_string(), |i| i.name.clone())
        };
        let mut disks: Vec<Disk> = Vec::new();
        for a in up {
            for r in &a.reached {
                if disks.iter().any(|d| d.identity() == r.device.identity()) {
                    continue;
                }
                disks.push(Disk {
                    isu: isu_of(&r.portals),
                    target: None,
                    reached: r.clone(),
                });
            }
        }
        let arrays = up
            .iter()
            .map(|a| LiveArray {
                name: a.name.clone(),
                array: a.array.clone(),
                slot_isus: a.slot_isus.clone(),
                pool: pools
                    .iter()
                    .find(|(n, _)| *n == a.name)
                    .map(|(_, p)| p.clone()),
                reshape_pace: Arc::default(),
            })
            .collect();
        Live {
            cfg: cfg.clone(),
            arrays,
            known: Mutex::new(Known { added, disks }),
            store,
            events,
        }
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The head's config.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// The arrays, in config order.
    pub fn arrays(&self) -> &[LiveArray] {
        &self.arrays
    }

    /// The array named `name`.
    pub fn array(&self, name: &str) -> Option<&LiveArray> {
        self.arrays.iter().find(|a| a.name == name)
    }

    /// The name and pool of the array that holds volume `name`.
    pub fn pool_of(&self, name: &str) -> Option<(String, volume::Pool)> {
        self.arrays.iter().find_map(|a| {
            let p = a.pool.as_ref()?;
            p.info(name).ok().map(|_| (a.name.clone(), p.clone()))
        })
    }

    /// Every ISU: the configured ones, then those added, in order.
    pub fn isus(&self) -> Vec<IsuConfig> {
        let mut all = self.cfg.isus.clone();
        all.extend(self.known().added.iter().map(AddedIsu::config));
        all
    }

    /// The ISU named `name`.
    pub fn isu(&self, name: &str) -> Option<IsuConfig> {
        self.isus().into_iter().find(|i| i.name == name)
    }

    /// Whether `name` was added at run time (not configured).
    pub fn is_added(&self, name: &str) -> bool {
        self.known().added.iter().any(|i| i.name == name)
    }

    /// Records an ISU added at run time with the disk reached on it, in
    /// the state file first (nothing is recorded when that fails).
    pub fn add_isu(&self, isu: AddedIsu, disk: Disk) -> Result<(), AddedError> {
        let mut k = self.known();
        let mut added = k.added.clone();
        added.push(isu);
        self.store.save(&added)?;
        k.added = added;
        k.disks.push(disk);
        Ok(())
    }

    /// Records what an added ISU is now for (a grow or replace gave it to
    /// `array`); nothing for a configured one.
    pub fn set_role(&self, name: &str, role: Role, array: &str) -> Result<(), AddedError> {
        let mut k = self.known();
        let mut added = k.added.clone();
        let Some(a) = added.iter_mut().find(|i| i.name == name) else {
            return Ok(());
        };
        a.role = role;
        a.array = Some(array.to_string());
        self.store.save(&added)?;
        k.added = added;
        Ok(())
    }

    /// Forgets an ISU added at run time, in the state file first; returns
    /// its disks, for the caller to log out of.
    pub fn remove_isu(&self, name: &str) -> Result<Vec<Disk>, AddedError> {
        let mut k = self.known();
        let added: Vec<AddedIsu> = k.added.iter().filter(|i| i.name != name).cloned().collect();
        self.store.save(&added)?;
        k.added = added;
        let (gone, kept) = std::mem::take(&mut k.disks)
            .into_iter()
            .partition(|d| d.isu == name);
        k.disks = kept;
        Ok(gone)
    }

    /// Every disk reached.
    pub fn disks(&self) -> Vec<Disk> {
        self.known().disks.clone()
    }

    /// The disks reached on `isu`.
    pub fn disks_of(&self, isu: &str) -> Vec<Disk> {
        self.known()
            .disks
            .iter()
            .filter(|d| d.isu == isu)
            .cloned()
            .collect()
    }

    /// The disk of identity `id`, if reached.
    pub fn disk(&self, id: &DeviceIdentity) -> Option<Disk> {
        self.known()
            .disks
            .iter()
            .find(|d| d.identity() == id)
            .cloned()
    }

    /// The ISU of member slot `view` of `a`: that of its device, or as
    /// configured.
    pub fn slot_isu(&self, a: &LiveArray, view: &MemberView) -> Option<String> {
        view.device
            .as_ref()
            .and_then(|id| self.disk(id))
            .map(|d| d.isu)
            .or_else(|| a.slot_isus.get(view.slot as usize).cloned().flatten())
    }

    /// The array that uses the disk `id` (as a member, a spare, or a
    /// replacement being copied to), if any.
    pub fn user_of(&self, id: &DeviceIdentity) -> Option<String> {
        self.arrays.iter().find_map(|a| {
            let st = a.array.states();
            let used = st.spares.contains(id)
                || st.members.iter().any(|m| {
                    m.device.as_ref() == Some(id)
                        || matches!(&m.status, raid::MemberStatus::Replacing { target, .. } if target == id)
                });
            used.then(|| a.name.clone())
        })
    }

    /// The ISUs' sessions as the config and the added ISUs give them.
    fn reacher(&self, isu: &IsuConfig) -> Result<Isus, ReachError> {
        let mut cfg = self.cfg.clone();
        cfg.isus = vec![isu.clone()];
        Isus::new(&cfg)
    }

    /// Reaches a disk of `isu` (not recorded): the one target it offers, or
    /// the one whose name is `disk` or ends in `:disk`; LUN 0.
    pub async fn reach(&self, isu: &IsuConfig, disk: Option<&str>) -> Result<Disk, String> {
        let isus = self.reacher(isu).map_err(|e| e.to_string())?;
        let targets = isus
            .targets_of(&isu.name)
            .await
            .map_err(|e| e.to_string())?;
        let picked: Vec<&String> = match disk {
            Some(d) => targets
                .iter()
                .filter(|t| *t == d || t.ends_with(&format!(":{d}")))
                .collect(),
            None => targets.iter().collect(),
        };
        let target = match picked.as_slice() {
            [t] => (*t).clone(),
            [] => {
                return Err(format!(
                    "isu {} offers no target {}",
                    isu.name,
                    disk.map_or_else(|| "at all".to_string(), |d| format!("named {d:?}"))
                ))
            }
            _ => {
                return Err(format!(
                    "isu {} offers several targets ({}): name one as {}/DISK",
                    isu.name,
                    targets.join(", "),
                    isu.name
                ))
            }
        };
        let m = MemberRef {
            isu: isu.name.clone(),
            target: target.clone(),
            lun: 0,
        };
        let r = isus.open(&m).await.map_err(|e| e.to_string())?;
        Ok(Disk {
            isu: isu.name.clone(),
            target: Some(target),
            reached: r,
        })
    }

    /// Records a disk reached on a configured ISU.
    pub fn add_disk(&self, disk: Disk) {
        self.known().disks.push(disk);
    }
}
