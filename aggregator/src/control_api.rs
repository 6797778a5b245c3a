//! The head's answers on its control socket ([`control::Handler`]):
//! `status` from live state, and the operations on ISUs and arrays. Short
//! operations answer `done`; long ones (resume's resync, replace, grow,
//! scrub) start a task that follows the array's own progress, which the
//! monitor drives. Volumes are created, grown and deleted in the array's
//! volume table (`volume::Pool`). Errors by what the caller may do: an unknown name is
//! `not-found`, a request the state contradicts (RAID refusing it) is
//! `conflict`, a malformed one `invalid`, an ISU that cannot be reached
//! `unavailable`.

use std::sync::Arc;

use control::status::EventLevel;
use control::{ControlError, Handler, Peer, Reply, Request, TaskKind, Tasks};
use raid::{MemberStatus, RaidError, ResumeReport};

use crate::added::{AddedError, AddedIsu, Role};
use crate::backup_ops::{self, RestoreTo};
use crate::backup_run::Backups;
use crate::backup_task;
use crate::config::{isu_portal, name_ok, IsuConfig};
use crate::follow;
use crate::live::{Disk, Live, LiveArray};
use crate::report;

/// The head's control handler.
pub struct HeadControl {
    live: Arc<Live>,
    tasks: Tasks,
    backups: Arc<Backups>,
}

impl HeadControl {
    /// The handler of the head `live`, running its long operations in
    /// `tasks` (the registry the server answers `task.*` from), its
    /// backups by `backups`.
    pub fn new(live: Arc<Live>, tasks: Tasks, backups: Arc<Backups>) -> Self {
        HeadControl {
            live,
            tasks,
            backups,
        }
    }
}

/// What RAID's refusal means to the caller.
fn raid_error(what: &str, e: RaidError) -> ControlError {
    let m = format!("{what}: {e}");
    match e {
        RaidError::Config(_) | RaidError::Assembly(_) => ControlError::Conflict(m),
        RaidError::Member { .. } | RaidError::Failed(_) => ControlError::Unavailable(m),
        _ => ControlError::Internal(m),
    }
}

/// The state file of the added ISUs could not be written.
fn state_error(e: AddedError) -> ControlError {
    ControlError::Internal(format!("the added ISUs' state file: {e}"))
}

fn not_found_isu(isu: &str) -> ControlError {
    ControlError::NotFound(format!("no ISU {isu:?}"))
}

fn not_found_array(array: &str) -> ControlError {
    ControlError::NotFound(format!("no array {array:?}"))
}

/// The member slots of `isu` in every array, with their state.
fn slots_of(live: &Live, isu: &str) -> Vec<(LiveArray, u32, MemberStatus)> {
    live.arrays()
        .iter()
        .flat_map(|a| {
            a.array
                .states()
                .members
                .into_iter()
                .filter(|m| live.slot_isu(a, m).as_deref() == Some(isu))
                .map(|m| (a.clone(), m.slot, m.status))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[async_trait::async_trait]
impl Handler for HeadControl {
    async fn handle(&self, request: Request, _peer: Peer) -> Result<Reply, ControlError> {
        match request {
            Request::Status => {
                let mut s = report::status(&self.live).await;
                s.backups = self.backups.last();
                Ok(Reply::Status(s))
            }
            Request::IsuSuspend { isu } => self.suspend(&isu).await,
            Request::IsuResume { isu } => self.resume(&isu).await,
            Request::IsuReplace { isu, with } => self.replace(&isu, &with).await,
            Request::IsuAdd {
                isu,
                portals,
                aoe_interfaces,
                spare_for,
            } => self.add(isu, portals, aoe_interfaces, spare_for).await,
            Request::IsuRemove { isu } => self.remove(&isu).await,
            Request::ArrayCreate { .. } => Err(ControlError::Unavailable(
                "arrays are created from head.toml: add an [[array]] there and restart the head"
                    .into(),
            )),
            Request::ArrayGrow { array, members } => self.grow(&array, &members).await,
            Request::ArrayScrub { array } => self.scrub(&array),
            Request::VolumeCreate {
                volume,
                array,
                size,
            } => self.volume_create(&volume, &array, size).await,
            Request::VolumeGrow { volume, size } => self.volume_grow(&volume, size).await,
            Request::VolumeDelete { volume } => self.volume_delete(&volume).await,
            Request::BackupRun {
                volumes,
                target,
                full,
                rate_limit,
            } => {
                self.backups.check(&volumes, target.as_deref())?;
                Ok(Reply::Task(backup_task::spawn_run(
                    self.backups.clone(),
                    &self.tasks,
                    volumes,
                    target,
                    full,
                    rate_limit,
                )))
            }
            Request::BackupList { volume, target } => {
                let (target, list) = self
                    .backups
                    .list(volume.as_deref(), target.as_deref())
                    .await?;
                Ok(Reply::Backups {
                    target,
                    backups: list.iter().map(backup_ops::entry).collect(),
                })
            }
            Request::BackupVerify { id, target } => Ok(Reply::Task(backup_task::spawn_verify(
                self.backups.clone(),
                &self.tasks,
                id,
                target,
            ))),
            Request::BackupRestore {
                id,
                target,
                to_volume,
                array,
                to_file,
            } => {
                let to = match (to_volume, to_file) {
                    (Some(name), None) => RestoreTo::Volume { name, array },
                    (None, Some(path)) => RestoreTo::File(path),
                    _ => {
                        return Err(ControlError::Invalid(
                            "give exactly one of to_volume and to_file".into(),
                        ))
                    }
                };
                self.backups.check_restore(&to)?;
                Ok(Reply::Task(backup_task::spawn_restore(
                    self.backups.clone(),
                    &self.tasks,
                    id,
                    target,
                    to,
                )))
            }
            Request::BackupPrune { target, dry_run } => Ok(Reply::Task(backup_task::spawn_prune(
                self.backups.clone(),
                &self.tasks,
                target,
                dry_run,
            ))),
            Request::TaskGet { .. } | Request::TaskList | Request::TaskCancel { .. } => Err(
                ControlError::Internal("task requests are the server's".into()),
            ),
        }
    }
}

impl HeadControl {
    fn known_isu(&self, isu: &str) -> Result<IsuConfig, ControlError> {
        self.live.isu(isu).ok_or_else(|| not_found_isu(isu))
    }

    fn array(&self, name: &str) -> Result<LiveArray, ControlError> {
        self.live
            .array(name)
            .cloned()
            .ok_or_else(|| not_found_array(name))
    }

    /// `isu.suspend`: every active member slot of the ISU suspended.
    async fn suspend(&self, isu: &str) -> Result<Reply, ControlError> {
        self.known_isu(isu)?;
        let slots: Vec<_> = slots_of(&self.live, isu)
            .into_iter()
            .filter(|(_, _, s)| matches!(s, MemberStatus::Active))
            .collect();
        if slots.is_empty() {
            return Err(ControlError::Conflict(format!(
                "isu {isu} holds no active array member"
            )));
        }
        let mut done = Vec::new();
        for (a, slot, _) in slots {
            a.array
                .suspend(slot)
                .await
                .map_err(|e| raid_error(&format!("suspend slot {slot} of {}", a.name), e))?;
            self.live.events.record(
                EventLevel::Warn,
                isu,
                format!(
                    "suspended for maintenance: slot {slot} of {} serves degraded",
                    a.name
                ),
            );
            done.push(format!("slot {slot} of {}", a.name));
        }
        Ok(Reply::Done {
            message: format!("isu {isu} suspended ({})", done.join(", ")),
        })
    }

    /// `isu.resume`: each suspended slot of the ISU resumed with its own
    /// disk; a task follows the resync of what was written meanwhile.
    async fn resume(&self, isu: &str) -> Result<Reply, ControlError> {
        self.known_isu(isu)?;
        let slots: Vec<_> = slots_of(&self.live, isu)
            .into_iter()
            .filter(|(_, _, s)| matches!(s, MemberStatus::Suspended { .. }))
            .collect();
        let Some((a, slot, _)) = slots.into_iter().next() else {
            return Err(ControlError::Conflict(format!(
                "isu {isu} is not suspended"
            )));
        };
        let view = a.array.states().members[slot as usize].clone();
        // The slot's own disk; after a restart (assembly keeps a suspended
        // member out) a disk of the ISU no array uses, which resume checks
        // is the slot's.
        let disk = match view.device.as_ref().and_then(|id| self.live.disk(id)) {
            Some(d) => d,
            None => self
                .live
                .disks_of(isu)
                .into_iter()
                .find(|d| self.live.user_of(d.identity()).is_none())
                .ok_or_else(|| {
                    ControlError::Unavailable(format!(
                        "the disk of slot {slot} of {} is not reached on {isu}",
                        a.name
                    ))
                })?,
        };
        let r = a
            .array
            .resume(slot, disk.device())
            .await
            .map_err(|e| raid_error(&format!("resume slot {slot} of {}", a.name), e))?;
        let message = resume_message(isu, &a.name, &r);
        self.live
            .events
            .record(EventLevel::Info, isu, format!("resumed: {message}"));
        let info = self
            .tasks
            .spawn(TaskKind::IsuResume, isu, move |h| async move {
                follow::rebuild(&a.array, slot, &h).await?;
                Ok(message)
            });
        Ok(Reply::Task(info))
    }

    /// `isu.replace`: the ISU's active member copied onto a disk of `with`
    /// (added, unassigned) while it serves; a task follows the copy.
    async fn replace(&self, isu: &str, with: &str) -> Result<Reply, ControlError> {
        self.known_isu(isu)?;
        let new = self.free_disk(with).await?;
        let slots: Vec<_> = slots_of(&self.live, isu)
            .into_iter()
            .filter(|(_, _, s)| matches!(s, MemberStatus::Active))
            .collect();
        let (a, slot) = match slots.as_slice() {
            [(a, slot, _)] => (a.clone(), *slot),
            [] => {
                return Err(ControlError::Conflict(format!(
                    "isu {isu} holds no active array member to replace"
                )))
            }
            _ => {
                return Err(ControlError::Conflict(format!(
                    "isu {isu} holds several array members; replace one ISU disk at a time is not supported"
                )))
            }
        };
        a.array
            .replace(slot, new.device())
            .await
            .map_err(|e| raid_error(&format!("replace slot {slot} of {}", a.name), e))?;
        self.live
            .set_role(&new.isu, Role::Member, &a.name)
            .map_err(state_error)?;
        let id = new.identity().clone();
        let (isu, with) = (isu.to_string(), with.to_string());
        let info = self.tasks.spawn(TaskKind::IsuReplace, isu.clone(), move |h| async move {
            loop {
                let st = a.array.states();
                let m = &st.members[slot as usize];
                match &m.status {
                    MemberStatus::Replacing {
                        done_rows,
                        total_rows,
                        ..
                    } => h.progress(*done_rows as f64 / (*total_rows).max(1) as f64),
                    _ if m.device.as_ref() == Some(&id) => {
                        if matches!(m.status, MemberStatus::Active) {
                            return Ok(format!(
                                "isu {isu} replaced by {with} in slot {slot} of {}",
                                a.name
                            ));
                        }
                        // The old member failed during the copy: the new
                        // disk is being rebuilt in its place.
                    }
                    _ => {
                        return Err(ControlError::Conflict(format!(
                            "the replace of slot {slot} of {} ended without {with}'s disk in it (it failed?)",
                            a.name
                        )))
                    }
                }
                tokio::time::sleep(follow::EVERY).await;
            }
        });
        Ok(Reply::Task(info))
    }

    /// A disk of member spec `spec` (`ISU` or `ISU/DISK`) that no array
    /// uses: one reached already, else reached now.
    async fn free_disk(&self, spec: &str) -> Result<Disk, ControlError> {
        let (isu, disk) = match spec.split_once('/') {
            Some((i, d)) => (i, Some(d)),
            None => (spec, None),
        };
        let cfg = self.known_isu(isu)?;
        let matches = |d: &Disk| {
            disk.is_none_or(|want| {
                d.identity().to_string() == want
                    || d.target
                        .as_deref()
                        .is_some_and(|t| t == want || t.ends_with(&format!(":{want}")))
            })
        };
        let known: Vec<Disk> = self
            .live
            .disks_of(isu)
            .into_iter()
            .filter(|d| matches(d))
            .collect();
        if let Some(d) = known
            .iter()
            .find(|d| self.live.user_of(d.identity()).is_none())
        {
            return Ok(d.clone());
        }
        if !known.is_empty() && disk.is_some() {
            return Err(ControlError::Conflict(format!(
                "{spec} is in use by array {}",
                self.live.user_of(known[0].identity()).unwrap_or_default()
            )));
        }
        let d = self
            .live
            .reach(&cfg, disk)
            .await
            .map_err(ControlError::Unavailable)?;
        if let Some(user) = self.live.user_of(d.identity()) {
            return Err(ControlError::Conflict(format!(
                "{spec} is in use by array {user}"
            )));
        }
        self.live.add_disk(d.clone());
        Ok(d)
    }

    /// `isu.add`: the ISU reached on its portals (its one disk), kept
    /// unassigned or made a hot spare of `spare_for`.
    async fn add(
        &self,
        isu: String,
        portals: Vec<String>,
        aoe: Vec<String>,
        spare_for: Option<String>,
    ) -> Result<Reply, ControlError> {
        name_ok(&isu).map_err(ControlError::Invalid)?;
        if !aoe.is_empty() {
            return Err(ControlError::Invalid(
                "the head reaches ISUs over iSCSI only; give --portal".into(),
            ));
        }
        if portals.is_empty() {
            return Err(ControlError::Invalid(format!("isu {isu}: no portal given")));
        }
        if self.live.isu(&isu).is_some() {
            return Err(ControlError::Conflict(format!(
                "an ISU {isu:?} exists already"
            )));
        }
        let array = spare_for.as_deref().map(|a| self.array(a)).transpose()?;
        let portals = portals
            .iter()
            .map(|p| isu_portal(p).map_err(ControlError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let cfg = IsuConfig {
            name: isu.clone(),
            portals,
            aoe: Vec::new(),
            secrets: None,
            session_horizon: initiator_iscsi::DEFAULT_SESSION_HORIZON,
        };
        let disk = self
            .live
            .reach(&cfg, None)
            .await
            .map_err(ControlError::Unavailable)?;
        if let Some(user) = self.live.user_of(disk.identity()) {
            return Err(ControlError::Conflict(format!(
                "isu {isu}'s disk {} is in array {user} already",
                disk.identity()
            )));
        }
        if let Some(a) = &array {
            a.array
                .add_spare(disk.device())
                .await
                .map_err(|e| raid_error(&format!("add a spare to {}", a.name), e))?;
        }
        let id = disk.identity().clone();
        let entry = AddedIsu {
            name: isu.clone(),
            portals: cfg.portals,
            aoe: Vec::new(),
            role: if array.is_some() {
                Role::Spare
            } else {
                Role::Unassigned
            },
            array: array.as_ref().map(|a| a.name.clone()),
        };
        self.live.add_isu(entry, disk).map_err(state_error)?;
        let message = match &array {
            Some(a) => format!(
                "isu {isu} added; its disk {id} is a hot spare of {}",
                a.name
            ),
            None => format!("isu {isu} added, unassigned; its disk {id}"),
        };
        self.live.events.record(EventLevel::Info, &isu, &message);
        Ok(Reply::Done { message })
    }

    /// `isu.remove`: an added ISU no array uses is logged out of and
    /// forgotten.
    async fn remove(&self, isu: &str) -> Result<Reply, ControlError> {
        self.known_isu(isu)?;
        if !self.live.is_added(isu) {
            return Err(ControlError::Conflict(format!(
                "isu {isu} is configured in head.toml; remove it there"
            )));
        }
        if let Some(user) = self
            .live
            .disks_of(isu)
            .iter()
            .find_map(|d| self.live.user_of(d.identity()))
        {
            return Err(ControlError::Conflict(format!(
                "isu {isu} is in use by array {user}"
            )));
        }
        for d in self.live.remove_isu(isu).map_err(state_error)? {
            let _ = d.reached.log_out().await;
        }
        self.live.events.record(EventLevel::Info, isu, "removed");
        Ok(Reply::Done {
            message: format!("isu {isu} removed"),
        })
    }

    /// `array.grow`: a reshape onto each new member in turn (the first
    /// started before answering, so a refusal is the answer), as a task.
    async fn grow(&self, array: &str, members: &[String]) -> Result<Reply, ControlError> {
        let a = self.array(array)?;
        if members.is_empty() {
            return Err(ControlError::Invalid("no member given".into()));
        }
        let mut disks = Vec::new();
        for m in members {
            disks.push(self.free_disk(m).await?);
        }
        a.array
            .grow(disks[0].device())
            .await
            .map_err(|e| raid_error(&format!("grow {array}"), e))?;
        for d in &disks {
            self.live
                .set_role(&d.isu, Role::Member, array)
                .map_err(state_error)?;
        }
        let n = disks.len();
        let info = self
            .tasks
            .spawn(TaskKind::ArrayGrow, array, move |h| async move {
                for (i, d) in disks.iter().enumerate() {
                    if i > 0 {
                        a.array
                            .grow(d.device())
                            .await
                            .map_err(|e| raid_error(&format!("grow {}", a.name), e))?;
                    }
                    while let Some(r) = a.array.states().reshape {
                        let f = r.done_rows as f64 / r.total_rows.max(1) as f64;
                        h.progress((i as f64 + f) / n as f64);
                        tokio::time::sleep(follow::EVERY).await;
                    }
                }
                let st = a.array.states();
                let g = blockdev::BlockDevice::geometry(&a.array);
                Ok(format!(
                    "{} grown to {} members; capacity {} bytes",
                    a.name,
                    st.members.len(),
                    g.num_blocks * u64::from(g.block_size)
                ))
            });
        Ok(Reply::Task(info))
    }

    /// `array.scrub`: the whole array read and its parity checked and
    /// repaired, as a task.
    fn scrub(&self, array: &str) -> Result<Reply, ControlError> {
        let a = self.array(array)?;
        let info = self.tasks.spawn(TaskKind::ArrayScrub, array, move |_h| async move {
            let r = a
                .array
                .scrub()
                .await
                .map_err(|e| raid_error(&format!("scrub {}", a.name), e))?;
            Ok(format!(
                "scrubbed {} rows ({} skipped): {} data and {} parity blocks repaired, {} unrecoverable",
                r.rows, r.skipped_rows, r.data_repaired, r.parity_repaired, r.unrecoverable
            ))
        });
        Ok(Reply::Task(info))
    }
}

/// What the volume layer's refusal means to the caller.
fn volume_error(what: &str, e: volume::VolumeError) -> ControlError {
    use volume::VolumeError as V;
    let m = format!("{what}: {e}");
    match e {
        V::InvalidName(_) | V::InvalidSize(_) => ControlError::Invalid(m),
        V::NotFound(_) => ControlError::NotFound(m),
        V::Exists(_)
        | V::InUse { .. }
        | V::Deleting(_)
        | V::NoSpace { .. }
        | V::TableFull(_)
        | V::ReadOnly => ControlError::Conflict(m),
        V::Device(_) => ControlError::Unavailable(m),
        _ => ControlError::Internal(m),
    }
}

impl HeadControl {
    /// The pool of `array`.
    fn pool(&self, array: &str) -> Result<volume::Pool, ControlError> {
        self.array(array)?.pool.ok_or_else(|| {
            ControlError::Unavailable(format!("array {array:?} has no volume table open"))
        })
    }

    /// The array and pool that hold volume `name`.
    fn pool_of(&self, name: &str) -> Result<(String, volume::Pool), ControlError> {
        self.live
            .pool_of(name)
            .ok_or_else(|| ControlError::NotFound(format!("no volume {name:?}")))
    }

    /// `volume.create`: a new volume in the array's table (not exported:
    /// exports are `head.toml`'s).
    async fn volume_create(
        &self,
        name: &str,
        array: &str,
        size: u64,
    ) -> Result<Reply, ControlError> {
        let pool = self.pool(array)?;
        if self.pool_of(name).is_ok() {
            return Err(ControlError::Conflict(format!(
                "a volume {name:?} exists already"
            )));
        }
        let info = pool
            .create(name, size)
            .await
            .map_err(|e| volume_error(&format!("create volume {name}"), e))?;
        let message = format!(
            "volume {name} created on {array}: {} blocks, identity {}",
            info.size_blocks, info.identity
        );
        self.live.events.record(EventLevel::Info, name, &message);
        Ok(Reply::Done { message })
    }

    /// `volume.grow`: online; an exported volume reports its new capacity
    /// to its clients.
    async fn volume_grow(&self, name: &str, size: u64) -> Result<Reply, ControlError> {
        let (array, pool) = self.pool_of(name)?;
        let info = pool
            .grow(name, size)
            .await
            .map_err(|e| volume_error(&format!("grow volume {name}"), e))?;
        let message = format!(
            "volume {name} on {array} grown to {} blocks",
            info.size_blocks
        );
        self.live.events.record(EventLevel::Info, name, &message);
        Ok(Reply::Done { message })
    }

    /// `volume.delete`: refused while exported (open).
    async fn volume_delete(&self, name: &str) -> Result<Reply, ControlError> {
        let (array, pool) = self.pool_of(name)?;
        pool.delete(name)
            .await
            .map_err(|e| volume_error(&format!("delete volume {name}"), e))?;
        let message = format!("volume {name} deleted from {array}");
        self.live.events.record(EventLevel::Info, name, &message);
        Ok(Reply::Done { message })
    }
}

fn resume_message(isu: &str, array: &str, r: &ResumeReport) -> String {
    format!(
        "isu {isu}: resynced {} of {} rows ({} blocks) of slot {} of {array}",
        r.rows_to_resync, r.total_rows, r.blocks_to_resync, r.slot
    )
}
