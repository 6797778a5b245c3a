//! Bringing an array up: wait until enough of its members are reachable,
//! then assemble it from the members' superblocks alone (so any head with
//! the same ISUs can), or create it when no member carries a superblock
//! (the first start), never over an existing array.
//!
//! `head.toml`'s members and spares are the array's seed: they create it,
//! and at every start they find which array it is (its uuid, on their
//! superblocks). Which disks are its members then comes from the newest
//! superblock found on any LUN of any ISU, configured or added at run time
//! ([`plan`]), so a hot spare pulled in, an online replace or a grow
//! survive a restart with `head.toml` unchanged, and a retired or replaced
//! disk is never taken back.
//!
//! All arrays are waited for together: each cycle surveys the ISUs once and
//! plans every array still awaited from that survey ([`bring_up`]). The
//! wait has no timeout: a head whose ISUs are not up keeps waiting and says
//! who is missing, rather than giving up silently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blockdev::{DeviceIdentity, SharedDevice};
use raid::superblock::{SlotEntry, SlotState, Superblock, FLAG_REPLACE, RETIRED, SPARE};
use raid::{AssembleOptions, RaidArray, RaidError, SystemClock};
use tracing::{info, warn};

use crate::config::{ArrayConfig, Member, MemberRef};
use crate::reach::{Isus, Metadata, ReachError, Reached, Seen, Survey};

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
    /// The ISU of each member slot's device, where it was seen.
    pub slot_isus: Vec<Option<String>>,
    /// The background maintenance (spares, rebuild, reshape).
    pub maintenance: tokio::task::JoinHandle<()>,
    /// Whether this start created the array (it then reads zeroes: its
    /// volume table is formatted knowing that, and volumes created on it
    /// are not zeroed again).
    pub created: bool,
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
        // No stripe cache: a write is on the ISUs before its client hears
        // of it. A client that sees the head die retries its SYNCHRONIZE
        // CACHE on the restarted head, which answers it good: writes held
        // in the dead head's memory would be lost with nobody told.
        cache_blocks: 0,
        ..raid::Config::default()
    }
}

/// Which disks make up an array, decided from what a survey saw
/// ([`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No seed disk carrying a superblock was seen and a seed member was
    /// not seen: nothing can be decided yet.
    Unknown,
    /// First start: every seed member was seen and no seed disk carries a
    /// superblock: the array is created over the seed members.
    Create,
    /// An existing array, as its newest superblock describes it.
    Assemble(Assembly),
}

/// An existing array found on the ISUs ([`Plan::Assemble`]); indices are
/// into the survey's disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    /// The array's uuid.
    pub uuid: [u8; 16],
    /// The event count of its newest superblock seen: the truth.
    pub events: u64,
    /// Each slot of that superblock's member table, with the disk seen
    /// carrying its device.
    pub slots: Vec<(SlotEntry, Option<usize>)>,
    /// Disks whose superblock makes them spares of the array.
    pub spares: Vec<usize>,
    /// The replacement of a replace in progress.
    pub replacement: Option<usize>,
    /// Disks naming the array that its newest member table does not list
    /// (retired after a replace, failed and replaced by a spare): never
    /// assembled; with why.
    pub stale: Vec<(usize, String)>,
}

impl Assembly {
    /// Slots whose device was not seen and is expected (not failed).
    pub fn missing(&self) -> Vec<(u32, [u8; 16])> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (e, at))| at.is_none() && e.state != SlotState::Faulty)
            .map(|(i, (e, _))| (i as u32, e.device))
            .collect()
    }

    /// Slots the newest table marks failed.
    pub fn failed(&self) -> usize {
        self.slots
            .iter()
            .filter(|(e, _)| e.state == SlotState::Faulty)
            .count()
    }

    /// The disks to assemble from: the slots' seen, the spares, the
    /// replacement.
    pub fn disks(&self) -> Vec<usize> {
        self.slots
            .iter()
            .filter_map(|(_, at)| *at)
            .chain(self.spares.iter().copied())
            .chain(self.replacement)
            .collect()
    }
}

/// Whether `seen` is the disk the config entry `m` names.
fn is(m: &Member, seen: &Seen) -> bool {
    match m {
        Member::Lun(r) => seen.at == *r,
        Member::Identity(id) => seen.identity == *id,
    }
}

/// Decides from the disks a survey saw which make up array `a`. Its
/// `members` and `spares` are only the seed: the array is the one most
/// seed disks carrying a superblock name (ties: the newest); then every disk
/// naming that array is looked at, wherever it is, and the newest
/// superblock (highest event count) says which device is in which slot,
/// which are spares, and which is a running replace's target. A disk
/// naming the array but absent from that table is stale.
pub fn plan(a: &ArrayConfig, seen: &[Seen]) -> Plan {
    let seeds: Vec<&Seen> = seen
        .iter()
        .filter(|s| a.members.iter().chain(&a.spares).any(|m| is(m, s)))
        .collect();
    let mut votes: BTreeMap<[u8; 16], (usize, u64)> = BTreeMap::new();
    for sb in seeds.iter().filter_map(|s| s.superblock()) {
        let v = votes.entry(sb.array_uuid).or_default();
        v.0 += 1;
        v.1 = v.1.max(sb.events);
    }
    let Some((&uuid, _)) = votes.iter().max_by_key(|(_, v)| **v) else {
        // Created only over seed members all seen and read blank.
        let all_blank = a.members.iter().all(|m| {
            seen.iter()
                .any(|s| is(m, s) && s.metadata == Metadata::Blank)
        });
        return if all_blank {
            Plan::Create
        } else {
            Plan::Unknown
        };
    };
    let ours: Vec<(usize, &Superblock)> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.superblock().map(|sb| (i, sb)))
        .filter(|(_, sb)| sb.array_uuid == uuid)
        .collect();
    let newest = ours
        .iter()
        .map(|(_, sb)| *sb)
        .max_by_key(|sb| sb.events)
        .expect("a seed voted for it");
    let width = (newest.members.max(newest.reshape_members) as usize).min(newest.slots.len());
    let table = &newest.slots[..width];
    let slots = table
        .iter()
        .map(|e| {
            let at = ours
                .iter()
                .find(|(i, _)| seen[*i].identity.uuid == e.device)
                .map(|(i, _)| *i);
            (*e, at)
        })
        .collect();
    let replacing = newest.flags & FLAG_REPLACE != 0;
    let mut plan = Assembly {
        uuid,
        events: newest.events,
        slots,
        spares: Vec::new(),
        replacement: None,
        stale: Vec::new(),
    };
    for &(i, sb) in &ours {
        let id = seen[i].identity.uuid;
        if table.iter().any(|e| e.device == id) {
            continue;
        }
        if replacing && newest.replace_device == id {
            plan.replacement = Some(i);
        } else if sb.role == SPARE {
            plan.spares.push(i);
        } else if sb.role == RETIRED {
            plan.stale
                .push((i, "retired from the array when its replace finished".into()));
        } else {
            plan.stale.push((
                i,
                format!(
                    "was in slot {} at event {}; the newest member table (event {}) lists another device there: failed and replaced, or retired",
                    sb.role, sb.events, newest.events
                ),
            ));
        }
    }
    Plan::Assemble(plan)
}

/// What bringing the arrays up needs of the ISUs: a survey of every disk
/// on them, and a disk reached on every path. [`Isus`] is it; a test gives
/// a counting one.
#[async_trait::async_trait]
pub trait Surveyor: Send + Sync {
    /// Every LUN of every ISU, with its identity and superblock
    /// ([`Isus::survey`]).
    async fn survey(&self) -> Survey;
    /// The disk `m`, reached on every portal of its ISU ([`Isus::open`]).
    async fn open(&self, m: &MemberRef) -> Result<Reached, ReachError>;
}

#[async_trait::async_trait]
impl Surveyor for Isus {
    async fn survey(&self) -> Survey {
        Isus::survey(self).await
    }

    async fn open(&self, m: &MemberRef) -> Result<Reached, ReachError> {
        Isus::open(self, m).await
    }
}

/// Brings every array of `arrays` up, pushing each onto `up` as it comes
/// (so a caller that stops waiting still has those to close), and returns
/// once all are, `up` then in config order. Each cycle surveys every LUN
/// of every ISU once ([`Surveyor::survey`]) and plans every array still
/// waited for from that one survey: its members come from their
/// superblocks ([`plan`]), `a`'s members and spares are the seed that finds
/// the array (and creates it the first time). The wait has no timeout; who
/// is missing is logged every [`LOG_EVERY`].
pub async fn bring_up(
    isus: &impl Surveyor,
    arrays: &[ArrayConfig],
    up: &mut Vec<ArrayUp>,
) -> Result<(), StartError> {
    let mut waiting: Vec<Waiting> = arrays.iter().map(Waiting::new).collect();
    loop {
        let survey = isus.survey().await;
        let mut still = Vec::new();
        for mut w in waiting {
            match w.step(isus, &survey).await? {
                Some(r) => up.push(r),
                None => still.push(w),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            up.sort_by_key(|u| arrays.iter().position(|a| a.name == u.name));
            return Ok(());
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// An array waited for, and what its wait has logged.
struct Waiting<'a> {
    a: &'a ArrayConfig,
    started: tokio::time::Instant,
    last_log: Option<tokio::time::Instant>,
    degraded_since: Option<tokio::time::Instant>,
    stale_logged: bool,
    clock: Arc<SystemClock>,
}

impl<'a> Waiting<'a> {
    fn new(a: &'a ArrayConfig) -> Self {
        Waiting {
            a,
            started: tokio::time::Instant::now(),
            last_log: None,
            degraded_since: None,
            stale_logged: false,
            clock: Arc::new(SystemClock::new()),
        }
    }

    /// The array brought up from `survey` (assembled, or created on first
    /// start), or `None` while its members are awaited (who is missing
    /// logged every [`LOG_EVERY`]).
    async fn step(
        &mut self,
        isus: &impl Surveyor,
        survey: &Survey,
    ) -> Result<Option<ArrayUp>, StartError> {
        let a = self.a;
        let clock = self.clock.clone();
        let raid_err = |source| StartError::Raid {
            array: a.name.clone(),
            source,
        };
        let seen = &survey.seen;
        let now = tokio::time::Instant::now();
        let waiting: Vec<String> = match plan(a, seen) {
            Plan::Create => {
                let mut devices = Vec::new();
                let mut reached = Vec::new();
                let mut missing = Vec::new();
                for m in &a.members {
                    let at = seen
                        .iter()
                        .find(|s| is(m, s))
                        .expect("plan saw every seed member");
                    match isus.open(&at.at).await {
                        Ok(r) => {
                            info!(array = %a.name, disk = %at.at, paths = r.portals.len(), identity = %at.identity, "disk reached");
                            devices.push(r.device.clone() as SharedDevice);
                            reached.push(r);
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
                if missing.is_empty() {
                    let mut spares = Vec::new();
                    for m in &a.spares {
                        let Some(at) = seen.iter().find(|s| is(m, s)) else {
                            warn!(array = %a.name, spare = %m, "spare not reachable; going on without it");
                            continue;
                        };
                        match isus.open(&at.at).await {
                            Ok(r) => spares.push(r),
                            Err(e) => {
                                warn!(array = %a.name, spare = %m, error = %e, "spare not reachable; going on without it")
                            }
                        }
                    }
                    let n = devices.len();
                    let cfg = raid_config(a, devices[0].geometry().block_size);
                    info!(array = %a.name, members = n, chunk_bytes = a.chunk_bytes, journal = a.journal, "no member carries a superblock: creating the array");
                    let spare_devices = spares
                        .iter()
                        .map(|r| r.device.clone() as SharedDevice)
                        .collect();
                    let array = RaidArray::create(devices, spare_devices, cfg, clock.clone())
                        .await
                        .map_err(raid_err)?;
                    let slot_isus = a
                        .members
                        .iter()
                        .map(|m| seen.iter().find(|s| is(m, s)).map(|s| s.at.isu.clone()))
                        .collect();
                    reached.extend(spares);
                    return Ok(Some(up(a, array, reached, slot_isus, true)));
                }
                for r in reached {
                    let _ = r.log_out().await;
                }
                missing
            }
            Plan::Unknown => a
                .members
                .iter()
                .filter_map(|m| {
                    let why = match (seen.iter().find(|s| is(m, s)), m) {
                        (
                            Some(Seen {
                                metadata: Metadata::Unreadable(why),
                                ..
                            }),
                            _,
                        ) => {
                            format!("its superblock unread: {why}")
                        }
                        (Some(_), _) => return None,
                        (None, Member::Identity(_)) => "no LUN of the ISUs carries it".to_string(),
                        (None, Member::Lun(_)) => "not among the LUNs of its ISU".to_string(),
                    };
                    Some(format!("{m}: {}", no_path(why, &survey.unreachable)))
                })
                .collect(),
            Plan::Assemble(p) => {
                if !self.stale_logged {
                    self.stale_logged = true;
                    for (i, why) in &p.stale {
                        let s = &seen[*i];
                        warn!(
                            array = %a.name,
                            disk = %s.at,
                            identity = %s.identity,
                            "stale disk of this array, not used: {why}; to reuse it, give it to `opie isu replace --with`, `opie array grow` or as a hot spare (each rewrites its metadata), or zero its first {} KiB (both superblock copies)",
                            2 * raid::superblock::SB_BYTES / 1024
                        );
                    }
                }
                let missing = p.missing();
                let degraded_ok = a.allow_degraded_start && missing.len() == 1 && p.failed() == 0;
                let go = missing.is_empty()
                    || (degraded_ok
                        && now - *self.degraded_since.get_or_insert(now) >= DEGRADED_GRACE);
                if !degraded_ok {
                    self.degraded_since = None;
                }
                if go {
                    if let Some((slot, dev)) = missing.first() {
                        warn!(array = %a.name, slot, device = %DeviceIdentity::from_uuid(*dev), "starting degraded (allow_degraded_start)");
                    }
                    match assemble(isus, a, seen, &p, clock.clone()).await {
                        Ok(Some(r)) => return Ok(Some(r)),
                        Ok(None) => vec!["a disk seen went away before it was opened".into()],
                        Err(e) => return Err(e),
                    }
                } else {
                    missing
                        .iter()
                        .map(|(slot, dev)| {
                            format!(
                                "slot {slot}: device {}: {}",
                                DeviceIdentity::from_uuid(*dev),
                                no_path(
                                    "no LUN of the ISUs carries it".into(),
                                    &survey.unreachable
                                )
                            )
                        })
                        .collect()
                }
            }
        };
        if self.last_log.is_none_or(|t| now - t >= LOG_EVERY) {
            self.last_log = Some(now);
            warn!(
                array = %a.name,
                waited_s = (now - self.started).as_secs(),
                "waiting for members: {}",
                waiting.join(" | ")
            );
        }
        Ok(None)
    }
}

/// `no path (why; ISU: why it did not answer; ...)` for a disk waited for.
fn no_path(why: String, unreachable: &[String]) -> String {
    let mut reasons = vec![why];
    reasons.extend_from_slice(unreachable);
    format!("no path ({})", reasons.join("; "))
}

/// Opens the disks of `p` and assembles them; `None` when one of its
/// members went away meanwhile (the caller surveys again).
async fn assemble(
    isus: &impl Surveyor,
    a: &ArrayConfig,
    seen: &[Seen],
    p: &Assembly,
    clock: Arc<SystemClock>,
) -> Result<Option<ArrayUp>, StartError> {
    let mut reached = Vec::new();
    let members: Vec<usize> = p.slots.iter().filter_map(|(_, at)| *at).collect();
    for i in p.disks() {
        match isus.open(&seen[i].at).await {
            Ok(r) => {
                info!(array = %a.name, disk = %seen[i].at, paths = r.portals.len(), identity = %seen[i].identity, "disk reached");
                reached.push(r);
            }
            Err(source @ ReachError::Paths { .. }) => {
                return Err(StartError::Reach {
                    array: a.name.clone(),
                    source,
                })
            }
            Err(e) if members.contains(&i) => {
                warn!(array = %a.name, error = %e, "member went away before it was opened");
                for r in reached {
                    let _ = r.log_out().await;
                }
                return Ok(None);
            }
            Err(e) => {
                warn!(array = %a.name, error = %e, "spare not reachable; going on without it")
            }
        }
    }
    let devices: Vec<SharedDevice> = reached
        .iter()
        .map(|r| r.device.clone() as SharedDevice)
        .collect();
    let cfg = raid_config(a, devices[0].geometry().block_size);
    let (array, report) = RaidArray::assemble(devices, cfg, clock, AssembleOptions::default())
        .await
        .map_err(|source| StartError::Raid {
            array: a.name.clone(),
            source,
        })?;
    for (id, why) in &report.refused {
        warn!(array = %a.name, device = %id, "not used: {why}");
    }
    info!(
        array = %a.name,
        uuid = %DeviceIdentity::from_uuid(p.uuid),
        events = p.events,
        members = p.slots.len(),
        spares = p.spares.len(),
        stale = p.stale.len(),
        missing_slots = ?report.missing_slots,
        journal_replayed = report.journal_replayed,
        resynced_rows = report.resynced_rows,
        degraded = array.degraded(),
        "array assembled from its members' superblocks"
    );
    let slot_isus = p
        .slots
        .iter()
        .map(|(_, at)| at.map(|i| seen[i].at.isu.clone()))
        .collect();
    Ok(Some(up(a, array, reached, slot_isus, false)))
}

/// The array brought up, its maintenance started.
fn up(
    a: &ArrayConfig,
    array: RaidArray,
    reached: Vec<Reached>,
    slot_isus: Vec<Option<String>>,
    created: bool,
) -> ArrayUp {
    let maintenance = array.spawn_maintenance(Duration::from_secs(1));
    ArrayUp {
        name: a.name.clone(),
        array,
        reached,
        slot_isus,
        maintenance,
        created,
    }
}

impl Reached {
    /// The identity of the disk reached.
    pub fn device_identity(&self) -> &blockdev::DeviceIdentity {
        use blockdev::BlockDevice;
        self.device.identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemberRef;

    fn at(isu: usize) -> MemberRef {
        MemberRef {
            isu: format!("isu{isu}"),
            target: format!("iqn.x:isu{isu}:d0"),
            lun: 0,
        }
    }

    fn dev(n: u8) -> [u8; 16] {
        [n; 16]
    }

    /// A superblock of array `array` at `events` with `table` (device,
    /// state) as its member table, as written on `device` in `role`.
    fn sb(array: u8, events: u64, table: &[(u8, SlotState)], device: u8, role: u32) -> Superblock {
        Superblock {
            array_uuid: [array; 16],
            device_uuid: dev(device),
            role,
            events,
            block_size: 512,
            chunk_blocks: 64,
            members: table.len() as u32,
            region_rows: 8,
            slots: table
                .iter()
                .map(|&(d, state)| SlotEntry {
                    device: dev(d),
                    state,
                })
                .collect(),
            ..Superblock::default()
        }
    }

    fn seen(isu: usize, device: u8, superblock: Option<Superblock>) -> Seen {
        Seen {
            at: at(isu),
            identity: DeviceIdentity::from_uuid(dev(device)),
            metadata: superblock.map_or(Metadata::Blank, Metadata::Superblock),
        }
    }

    fn config(members: &[usize], spares: &[usize]) -> ArrayConfig {
        ArrayConfig {
            name: "a0".into(),
            members: members.iter().map(|&i| Member::Lun(at(i))).collect(),
            spares: spares.iter().map(|&i| Member::Lun(at(i))).collect(),
            chunk_bytes: 32768,
            spare_timeout: Duration::from_secs(3),
            member_timeout: Duration::from_secs(3),
            journal: true,
            allow_degraded_start: false,
        }
    }

    const A: SlotState = SlotState::Active;

    /// The plan of `cfg` over `seen`, which must be an assembly.
    fn assembly(cfg: &ArrayConfig, seen: &[Seen]) -> Assembly {
        match plan(cfg, seen) {
            Plan::Assemble(p) => p,
            other => panic!("not assembled: {other:?}"),
        }
    }

    #[test]
    fn blank_seeds_create_only_when_all_are_seen() {
        let cfg = config(&[0, 1, 2], &[]);
        let all = [seen(0, 10, None), seen(1, 11, None), seen(2, 12, None)];
        assert_eq!(plan(&cfg, &all), Plan::Create);
        assert_eq!(plan(&cfg, &all[..2]), Plan::Unknown);
        // A seed whose superblock could not be read is not blank.
        let mut unread = all.clone();
        unread[1].metadata = Metadata::Unreadable("unit attention".into());
        assert_eq!(plan(&cfg, &unread), Plan::Unknown);
    }

    #[test]
    fn the_newest_table_wins_over_the_seed_and_retired_disks_are_stale() {
        // Seed: isu0-2 (devices 10-12). Since then isu1's disk (11) was
        // replaced by isu3's (13), which head.toml does not name; 11 was
        // marked retired, and isu4's disk (14) is a spare added later.
        let old = [(10, A), (11, A), (12, A)];
        let new = [(10, A), (13, A), (12, A)];
        let all = [
            seen(0, 10, Some(sb(1, 9, &new, 10, 0))),
            seen(1, 11, Some(sb(1, 8, &new, 11, RETIRED))),
            seen(2, 12, Some(sb(1, 9, &new, 12, 2))),
            seen(3, 13, Some(sb(1, 9, &new, 13, 1))),
            seen(4, 14, Some(sb(1, 9, &new, 14, SPARE))),
            // Another array's disk, and a blank one.
            seen(5, 15, Some(sb(2, 50, &old, 15, 0))),
            seen(6, 16, None),
        ];
        // The seed lists the members in another order: slots still come
        // from the superblocks.
        let p = assembly(&config(&[2, 1, 0], &[]), &all);
        assert_eq!(p.uuid, [1; 16]);
        assert_eq!(p.events, 9);
        let slots: Vec<Option<usize>> = p.slots.iter().map(|(_, at)| *at).collect();
        assert_eq!(slots, [Some(0), Some(3), Some(2)]);
        assert_eq!(p.spares, [4]);
        assert_eq!(p.stale.len(), 1);
        assert_eq!(p.stale[0].0, 1);
        assert!(p.missing().is_empty());
        assert_eq!(p.disks(), [0, 3, 2, 4]);
    }

    #[test]
    fn a_failed_member_replaced_by_a_spare_is_stale_and_its_slot_not_awaited() {
        // isu1's disk (11) failed; the spare (13) rebuilt its slot. 11
        // comes back with its old superblock (role 1, event 5).
        let old = [(10, A), (11, A), (12, A)];
        let new = [(10, A), (13, A), (12, A)];
        let all = [
            seen(0, 10, Some(sb(1, 20, &new, 10, 0))),
            seen(1, 11, Some(sb(1, 5, &old, 11, 1))),
            seen(2, 12, Some(sb(1, 20, &new, 12, 2))),
            seen(3, 13, Some(sb(1, 20, &new, 13, 1))),
        ];
        let p = assembly(&config(&[0, 1, 2], &[3]), &all);
        assert_eq!(p.disks(), [0, 3, 2]);
        assert_eq!(p.stale.len(), 1);
        assert!(
            p.stale[0].1.contains("slot 1 at event 5"),
            "{}",
            p.stale[0].1
        );
        // Without the spare's ISU, slot 1 is missing; a slot marked failed
        // is not awaited.
        let p = assembly(&config(&[0, 1, 2], &[3]), &all[..3]);
        assert_eq!(p.missing(), [(1, dev(13))]);
        let failed = [(10, A), (13, SlotState::Faulty), (12, A)];
        let all = [
            seen(0, 10, Some(sb(1, 21, &failed, 10, 0))),
            seen(2, 12, Some(sb(1, 21, &failed, 12, 2))),
        ];
        let p = assembly(&config(&[0, 1, 2], &[3]), &all);
        assert!(p.missing().is_empty());
        assert_eq!(p.failed(), 1);
    }

    /// A path to an in-memory disk.
    #[derive(Debug)]
    struct MemPath(SharedDevice);

    #[async_trait::async_trait]
    impl multipath::Path for MemPath {
        fn device(&self) -> &SharedDevice {
            &self.0
        }
        fn transport(&self) -> multipath::Transport {
            multipath::Transport::Iscsi
        }
        async fn fence(&self) {}
    }

    /// ISUs of one blank in-memory disk each, that count the surveys and
    /// how often each target was contacted; `late` answers from its
    /// `late_from`th survey on only.
    struct Counting {
        disks: Vec<(MemberRef, SharedDevice)>,
        late: String,
        late_from: usize,
        surveys: std::sync::atomic::AtomicUsize,
        contacts: std::sync::Mutex<BTreeMap<String, usize>>,
    }

    #[async_trait::async_trait]
    impl Surveyor for Counting {
        async fn survey(&self) -> Survey {
            let n = 1 + self
                .surveys
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut out = Survey::default();
            for (at, d) in &self.disks {
                if at.isu == self.late && n < self.late_from {
                    out.unreachable.push(format!("{}: down", at.isu));
                    continue;
                }
                *self
                    .contacts
                    .lock()
                    .unwrap()
                    .entry(at.target.clone())
                    .or_default() += 1;
                out.seen.push(Seen {
                    at: at.clone(),
                    identity: d.identity().clone(),
                    metadata: Metadata::Blank,
                });
            }
            out
        }

        async fn open(&self, m: &MemberRef) -> Result<Reached, ReachError> {
            let (_, d) = self.disks.iter().find(|(at, _)| at == m).unwrap();
            let device = multipath::MultipathDevice::new(
                vec![Arc::new(MemPath(d.clone())) as Arc<dyn multipath::Path>],
                multipath::Config::default(),
            )
            .unwrap();
            Ok(Reached {
                device: Arc::new(device),
                portals: Vec::new(),
                paths: Vec::new(),
            })
        }
    }

    #[tokio::test]
    async fn every_array_is_planned_from_one_survey_a_cycle() {
        // Nine ISUs, three arrays of three; isu2 (a0's last member) answers
        // from the third survey on. (Arrays brought up one after the other,
        // each from surveys of its own, took five surveys here.)
        let isus = Counting {
            disks: (0..9)
                .map(|i| {
                    let d: SharedDevice =
                        Arc::new(blockdev::MemDevice::with_name(&format!("d{i}"), 4 << 20));
                    (at(i), d)
                })
                .collect(),
            late: "isu2".into(),
            late_from: 3,
            surveys: Default::default(),
            contacts: Default::default(),
        };
        let arrays: Vec<ArrayConfig> = (0..3)
            .map(|n| ArrayConfig {
                name: format!("a{n}"),
                journal: false,
                ..config(&[3 * n, 3 * n + 1, 3 * n + 2], &[])
            })
            .collect();
        let mut up = Vec::new();
        bring_up(&isus, &arrays, &mut up).await.unwrap();
        let names: Vec<&str> = up.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a0", "a1", "a2"]);
        assert!(up.iter().all(|u| u.created));
        // Three cycles (a0 waited two), one survey each, for all three
        // arrays: every target contacted once a cycle, isu2's once.
        assert_eq!(isus.surveys.load(std::sync::atomic::Ordering::SeqCst), 3);
        let contacts = isus.contacts.lock().unwrap().clone();
        for i in 0..9 {
            let want = if i == 2 { 1 } else { 3 };
            assert_eq!(contacts[&at(i).target], want, "isu{i}: {contacts:?}");
        }
        for u in up {
            u.maintenance.abort();
        }
    }

    #[test]
    fn a_grown_member_and_a_running_replace_target_are_found_anywhere() {
        let grown = [(10, A), (11, A), (12, A), (13, A)];
        // Every device carries the same version, replace flag and target.
        let replacing = |device, role| {
            let mut s = sb(1, 30, &grown, device, role);
            s.flags = FLAG_REPLACE;
            s.replace_device = dev(14);
            Some(s)
        };
        let all = [
            seen(0, 10, replacing(10, 0)),
            seen(1, 11, replacing(11, 1)),
            seen(2, 12, replacing(12, 2)),
            seen(3, 13, replacing(13, 3)),
            seen(4, 14, replacing(14, raid::superblock::REPLACEMENT)),
        ];
        let p = assembly(&config(&[0, 1, 2], &[]), &all);
        assert_eq!(p.slots.len(), 4);
        assert_eq!(p.replacement, Some(4));
        assert_eq!(p.disks(), [0, 1, 2, 3, 4]);
        assert!(p.stale.is_empty());
    }
}
