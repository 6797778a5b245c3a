//! The head's monitor: every period it drives each array's maintenance
//! ([`raid::RaidArray::maintain`]: a hot spare pulled in once a member has
//! been failed for the array's spare timeout, rebuild and replace copies
//! advanced for up to half the period, as is a running reshape), then
//! looks at the arrays' and paths' states (cheap calls, no I/O) and records
//! each change as an event: members failing, suspended, rebuilding and back in sync,
//! rebuilds starting and ending, spares pulled in, paths going down and
//! coming back.
//!
//! The comparison of two looks is sans-I/O ([`Watcher`]); [`run`] is the
//! tokio loop around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use control::status::EventLevel;
use raid::{ArrayHealth, ArrayStatus, MaintenanceReport, MemberStatus};

use crate::live::Live;

/// A member slot's state, as compared between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Active,
    Suspended,
    Failed,
    Rebuilding,
    Replacing,
}

fn kind(s: &MemberStatus) -> SlotKind {
    match s {
        MemberStatus::Active => SlotKind::Active,
        MemberStatus::Suspended { .. } => SlotKind::Suspended,
        MemberStatus::Failed { .. } => SlotKind::Failed,
        MemberStatus::Rebuilding { .. } => SlotKind::Rebuilding,
        MemberStatus::Replacing { .. } => SlotKind::Replacing,
    }
}

/// An event to record: its level and message (the subject is the array's
/// or the ISU's name, given with it).
pub type Change = (EventLevel, String, String);

/// What the monitor saw last of each array and path.
#[derive(Debug, Default)]
pub struct Watcher {
    arrays: HashMap<String, (ArrayHealth, Vec<SlotKind>)>,
    paths: HashMap<String, bool>,
    reachable: HashMap<(String, u32), u32>,
}

/// Looks in a row a failed member's disk must be reachable on every path
/// before it is taken back.
const BACK_AFTER: u32 = 2;

impl Watcher {
    /// Whether failed member `slot` of `array`, whose disk is `reachable`
    /// (every path up) at this look, is to be taken back now: once it has
    /// been reachable for [`BACK_AFTER`] looks in a row (a flapping ISU is
    /// not taken back at every blip).
    pub fn member_back(&mut self, array: &str, slot: u32, reachable: bool) -> bool {
        let n = self.reachable.entry((array.to_string(), slot)).or_default();
        *n = if reachable { *n + 1 } else { 0 };
        if *n >= BACK_AFTER {
            *n = 0;
            return true;
        }
        false
    }

    /// The changes of array `name` since the last look, given its state
    /// `st` now, what the last maintenance did, and `isu_of(slot)` to name
    /// a slot's ISU.
    pub fn array(
        &mut self,
        name: &str,
        st: &ArrayStatus,
        report: Option<&MaintenanceReport>,
        isu_of: impl Fn(u32) -> String,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let ev = |level, message: String| (level, name.to_string(), message);
        if let Some(r) = report {
            if let Some(slot) = r.spare_activated {
                out.push(ev(
                    EventLevel::Warn,
                    format!(
                        "hot spare pulled into slot {slot} ({}); rebuilding",
                        isu_of(slot)
                    ),
                ));
            }
        }
        let now: Vec<SlotKind> = st.members.iter().map(|m| kind(&m.status)).collect();
        let before = self.arrays.get(name).cloned();
        for (slot, k) in now.iter().enumerate() {
            let slot = slot as u32;
            let was = before
                .as_ref()
                .and_then(|(_, b)| b.get(slot as usize).copied());
            if was == Some(*k) {
                continue;
            }
            let isu = isu_of(slot);
            let (level, what) = match (was, k) {
                (None, SlotKind::Active) => continue,
                (_, SlotKind::Failed) => (EventLevel::Warn, "failed or missing".to_string()),
                (_, SlotKind::Suspended) => (EventLevel::Warn, "suspended".to_string()),
                (_, SlotKind::Rebuilding) => {
                    let p = st.rebuild.filter(|r| r.slot == slot);
                    let what = match p {
                        Some(p) if p.bitmap_only => "resync started (regions written while away)",
                        _ => "rebuild started",
                    };
                    (EventLevel::Info, what.to_string())
                }
                (_, SlotKind::Replacing) => (EventLevel::Info, "replace started".to_string()),
                (Some(SlotKind::Rebuilding), SlotKind::Active) => {
                    (EventLevel::Info, "rebuild finished; in sync".to_string())
                }
                (Some(SlotKind::Replacing), SlotKind::Active) => (
                    EventLevel::Info,
                    "replace finished; the new disk holds the slot".to_string(),
                ),
                (_, SlotKind::Active) => (EventLevel::Info, "back in sync".to_string()),
            };
            out.push(ev(level, format!("slot {slot} ({isu}): {what}")));
        }
        let health_was = before.as_ref().map(|(h, _)| *h);
        if health_was != Some(st.health) {
            let members = now
                .iter()
                .map(|k| format!("{k:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", ");
            let (level, what) = match st.health {
                ArrayHealth::Clean => (EventLevel::Info, "array healthy"),
                ArrayHealth::Replacing => (EventLevel::Info, "array replacing a member"),
                ArrayHealth::Reshaping => (EventLevel::Info, "array reshaping"),
                ArrayHealth::Rebuilding => (EventLevel::Warn, "array rebuilding"),
                ArrayHealth::Degraded => (EventLevel::Warn, "array degraded"),
                ArrayHealth::Failed => (EventLevel::Error, "array failed"),
            };
            out.push(ev(level, format!("{what} (members: {members})")));
        }
        self.arrays.insert(name.to_string(), (st.health, now));
        out
    }

    /// The change of path `path` of ISU `isu` (up or not) since the last
    /// look; a path's first look is no change unless it is down.
    pub fn path(&mut self, isu: &str, path: &str, up: bool) -> Option<Change> {
        let was = self.paths.insert(format!("{isu} {path}"), up);
        if was == Some(up) || (was.is_none() && up) {
            return None;
        }
        Some(if up {
            (EventLevel::Info, isu.to_string(), format!("path {path} up"))
        } else {
            (
                EventLevel::Warn,
                isu.to_string(),
                format!("path {path} down"),
            )
        })
    }
}

/// Calls [`raid::RaidArray::maintain`] until a running rebuild or replace
/// has had `until` (each call copies one checkpoint's worth of rows, or
/// what the array's rate limit allows) or makes no progress; the spare
/// pulled in and the ends reached meanwhile are all in the report.
async fn maintain(
    array: &raid::RaidArray,
    until: tokio::time::Instant,
) -> Result<MaintenanceReport, raid::RaidError> {
    let mut all = MaintenanceReport::default();
    loop {
        let r = array.maintain().await?;
        all.spare_activated = all.spare_activated.or(r.spare_activated);
        all.rows_rebuilt += r.rows_rebuilt;
        all.rows_copied += r.rows_copied;
        all.rebuild_finished |= r.rebuild_finished;
        all.replace_finished |= r.replace_finished;
        all.rebuild = r.rebuild;
        all.replace = r.replace;
        let running = all.rebuild.is_some() || all.replace.is_some();
        let moved = r.rows_rebuilt + r.rows_copied > 0;
        if !running || !moved || tokio::time::Instant::now() >= until {
            return Ok(all);
        }
    }
}

/// Takes back a failed member whose disk is reachable again (its ISU came
/// back): [`raid::RaidArray::re_add`], which resyncs only the regions
/// written while it was away. Not while a rebuild or reshape runs (one at
/// a time), nor once a spare has taken its slot (re_add refuses it).
async fn take_back(live: &Live, a: &crate::live::LiveArray, w: &mut Watcher) {
    let st = a.array.states();
    if st.rebuild.is_some() || st.reshape.is_some() {
        return;
    }
    for m in &st.members {
        let (MemberStatus::Failed { .. }, Some(id)) = (&m.status, &m.device) else {
            continue;
        };
        let Some(disk) = live.disk(id) else { continue };
        let paths = disk.reached.device.paths();
        let reachable =
            !paths.is_empty() && paths.iter().all(|p| p.state == multipath::PathState::Up);
        if !w.member_back(&a.name, m.slot, reachable) {
            continue;
        }
        match a.array.re_add(disk.device()).await {
            Ok(()) => live.events.record(
                EventLevel::Info,
                &a.name,
                format!(
                    "slot {} ({}): reachable again; taken back",
                    m.slot, disk.isu
                ),
            ),
            Err(e) => {
                tracing::warn!(array = %a.name, slot = m.slot, error = %e, "a member reachable again was not taken back")
            }
        }
        return;
    }
}

/// Drives the arrays' maintenance and records their changes every
/// `period`, until aborted. A rebuild onto a hot spare it pulled in runs as
/// a `rebuild` task in `tasks`, so `status` and `opie task` show it.
pub async fn run(live: Arc<Live>, tasks: control::Tasks, period: Duration) {
    let mut w = Watcher::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for a in live.arrays() {
            let budget = tokio::time::Instant::now() + period / 2;
            let report = maintain(&a.array, budget).await.map_err(|e| {
                tracing::warn!(array = %a.name, error = %e, "maintenance failed; retried next tick");
            });
            let report = report.ok();
            if let Some(slot) = report.as_ref().and_then(|r| r.spare_activated) {
                let array = a.array.clone();
                let name = a.name.clone();
                tasks.spawn(
                    control::TaskKind::Rebuild,
                    a.name.clone(),
                    move |h| async move {
                        crate::follow::rebuild(&array, slot, &h).await?;
                        Ok(format!("slot {slot} of {name} rebuilt onto its hot spare"))
                    },
                );
            }
            // A running reshape: windows for up to half the period.
            let budget = tokio::time::Instant::now() + period / 2;
            while a.array.states().reshape.is_some() && tokio::time::Instant::now() < budget {
                if let Err(e) = a.array.reshape_step().await {
                    tracing::warn!(array = %a.name, error = %e, "reshape step failed; retried next tick");
                    break;
                }
            }
            take_back(&live, a, &mut w).await;
            let st = a.array.states();
            a.reshape_pace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .note(st.reshape.map(|r| r.done_rows), std::time::Instant::now());
            let isu_of = |slot: u32| {
                st.members
                    .get(slot as usize)
                    .and_then(|v| live.slot_isu(a, v))
                    .unwrap_or_else(|| "?".into())
            };
            for (level, subject, message) in w.array(&a.name, &st, report.as_ref(), isu_of) {
                live.events.record(level, &subject, message);
            }
        }
        for d in live.disks() {
            for (p, addr) in d.reached.device.paths().iter().zip(&d.reached.portals) {
                let up = matches!(p.state, multipath::PathState::Up);
                if let Some((level, subject, message)) =
                    w.path(&d.isu, &format!("iscsi {addr}"), up)
                {
                    live.events.record(level, &subject, message);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockdev::DeviceIdentity;
    use raid::MemberView;

    fn status(health: ArrayHealth, slots: &[MemberStatus]) -> ArrayStatus {
        ArrayStatus {
            health,
            degraded: health != ArrayHealth::Clean,
            members: slots
                .iter()
                .enumerate()
                .map(|(i, s)| MemberView {
                    slot: i as u32,
                    device: Some(DeviceIdentity::from_name(&format!("d{i}"))),
                    status: s.clone(),
                })
                .collect(),
            spares: vec![],
            capacity_blocks: 0,
            rebuild: None,
            replace: None,
            reshape: None,
        }
    }

    fn messages(c: &[Change]) -> Vec<String> {
        c.iter().map(|(_, s, m)| format!("{s}: {m}")).collect()
    }

    #[test]
    fn a_failure_a_spare_and_its_rebuild_are_each_one_event() {
        let mut w = Watcher::default();
        let isu = |s: u32| format!("isu{s}");
        let a = MemberStatus::Active;
        let first = w.array(
            "a0",
            &status(ArrayHealth::Clean, &[a.clone(), a.clone(), a.clone()]),
            None,
            isu,
        );
        assert_eq!(
            messages(&first),
            ["a0: array healthy (members: active, active, active)"]
        );
        let same = w.array(
            "a0",
            &status(ArrayHealth::Clean, &[a.clone(), a.clone(), a.clone()]),
            None,
            isu,
        );
        assert!(same.is_empty());
        let failed = MemberStatus::Failed {
            since: Duration::ZERO,
        };
        let c = w.array(
            "a0",
            &status(ArrayHealth::Degraded, &[a.clone(), failed, a.clone()]),
            None,
            isu,
        );
        assert_eq!(
            messages(&c),
            [
                "a0: slot 1 (isu1): failed or missing",
                "a0: array degraded (members: active, failed, active)"
            ]
        );
        let report = MaintenanceReport {
            spare_activated: Some(1),
            ..MaintenanceReport::default()
        };
        let rebuilding = MemberStatus::Rebuilding {
            done_rows: 0,
            total_rows: 10,
        };
        let c = w.array(
            "a0",
            &status(ArrayHealth::Rebuilding, &[a.clone(), rebuilding, a.clone()]),
            Some(&report),
            isu,
        );
        assert_eq!(
            messages(&c),
            [
                "a0: hot spare pulled into slot 1 (isu1); rebuilding",
                "a0: slot 1 (isu1): rebuild started",
                "a0: array rebuilding (members: active, rebuilding, active)"
            ]
        );
        let c = w.array(
            "a0",
            &status(ArrayHealth::Clean, &[a.clone(), a.clone(), a]),
            None,
            isu,
        );
        assert_eq!(
            messages(&c),
            [
                "a0: slot 1 (isu1): rebuild finished; in sync",
                "a0: array healthy (members: active, active, active)"
            ]
        );
    }

    #[test]
    fn a_member_is_taken_back_after_two_reachable_looks_in_a_row() {
        let mut w = Watcher::default();
        assert!(!w.member_back("a0", 1, true));
        assert!(!w.member_back("a0", 1, false));
        assert!(!w.member_back("a0", 1, true));
        assert!(!w.member_back("a0", 2, true));
        assert!(w.member_back("a0", 1, true));
        assert!(!w.member_back("a0", 1, true));
    }

    #[test]
    fn paths_report_going_down_and_coming_back_once() {
        let mut w = Watcher::default();
        assert_eq!(w.path("isu0", "iscsi 127.0.0.1:1", true), None);
        let down = w.path("isu0", "iscsi 127.0.0.1:1", false).unwrap();
        assert_eq!(down.0, EventLevel::Warn);
        assert_eq!(down.2, "path iscsi 127.0.0.1:1 down");
        assert_eq!(w.path("isu0", "iscsi 127.0.0.1:1", false), None);
        let up = w.path("isu0", "iscsi 127.0.0.1:1", true).unwrap();
        assert_eq!(up.2, "path iscsi 127.0.0.1:1 up");
        // A path down at the first look is reported.
        assert!(w.path("isu1", "iscsi 127.0.0.1:2", false).is_some());
    }
}
