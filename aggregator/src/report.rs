//! The head's `status`, filled from live state: each ISU with its paths
//! (state and counters of the multipath devices), each array from its
//! member table ([`raid::RaidArray::states`]) and [`raid::RaidArray::size_report`],
//! the volumes of each array's table with their exports, and the recent
//! events. The control
//! server adds the tasks; the control handler the last backup of each volume.

use blockdev::BlockDevice;
use control::status::{
    ArrayState, ArrayStatus, ExportStatus, IsuState, IsuStatus, MemberState, MemberStatus,
    PathState, PathStats, PathStatus, Progress, Status, VolumeStatus,
};
use raid::{ArrayHealth, MemberStatus as Slot};

use crate::live::{Disk, Live, LiveArray};

/// The whole status of the head.
pub async fn status(live: &Live) -> Status {
    let mut arrays = Vec::new();
    for a in live.arrays() {
        arrays.push(array(live, a).await);
    }
    Status {
        isus: isus(live),
        volumes: volumes(live),
        arrays,
        tasks: Vec::new(),
        events: live.events.list(),
        backups: Vec::new(),
    }
}

fn path_state(s: multipath::PathState) -> PathState {
    match s {
        multipath::PathState::Up => PathState::Up,
        multipath::PathState::Marginal { .. } => PathState::Marginal,
        multipath::PathState::Failed { .. } | multipath::PathState::Dead => PathState::Down,
    }
}

/// Every path of `disks`, one per portal (the counters of the disks
/// reached through it summed, its state the worst of theirs).
fn paths(disks: &[Disk]) -> Vec<PathStatus> {
    let mut out: Vec<PathStatus> = Vec::new();
    for d in disks {
        for (p, addr) in d.reached.device.paths().iter().zip(&d.reached.portals) {
            let name = format!("iscsi {addr}");
            let state = path_state(p.state);
            let i = out.iter().position(|o| o.name == name).unwrap_or_else(|| {
                out.push(PathStatus {
                    name,
                    state,
                    stats: PathStats::default(),
                });
                out.len() - 1
            });
            let o = &mut out[i];
            if state != PathState::Up && o.state != PathState::Down {
                o.state = state;
            }
            o.stats.completed += p.stats.completed;
            o.stats.bytes += p.stats.bytes;
            o.stats.errors += p.stats.errors;
            o.stats.failed_over += p.stats.failed_over;
            o.stats.in_flight += u64::from(p.stats.in_flight);
        }
    }
    out
}

fn isus(live: &Live) -> Vec<IsuStatus> {
    let views: Vec<(Option<String>, bool)> = live
        .arrays()
        .iter()
        .flat_map(|a| {
            a.array.states().members.into_iter().map(move |m| {
                let suspended = matches!(m.status, Slot::Suspended { .. });
                (live.slot_isu(a, &m), suspended)
            })
        })
        .collect();
    live.isus()
        .into_iter()
        .map(|i| {
            let disks = live.disks_of(&i.name);
            let paths = paths(&disks);
            let in_use = disks.iter().any(|d| live.user_of(d.identity()).is_some())
                || views.iter().any(|(isu, _)| isu.as_deref() == Some(&i.name));
            let state = if views
                .iter()
                .any(|(isu, s)| *s && isu.as_deref() == Some(&i.name))
            {
                IsuState::Suspended
            } else if !in_use {
                IsuState::Unassigned
            } else if paths.iter().all(|p| p.state != PathState::Up) {
                IsuState::Down
            } else if paths.iter().any(|p| p.state != PathState::Up) {
                IsuState::Degraded
            } else {
                IsuState::Up
            };
            IsuStatus {
                name: i.name,
                state,
                paths,
            }
        })
        .collect()
}

fn progress(
    done: u64,
    total: u64,
    rows_per_sec: f64,
    row_bytes: u64,
    eta: Option<std::time::Duration>,
) -> Progress {
    Progress {
        fraction: if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).min(1.0)
        },
        rate_bytes_per_sec: (rows_per_sec * row_bytes as f64) as u64,
        eta_secs: eta.map(|d| d.as_secs()),
    }
}

async fn array(live: &Live, a: &LiveArray) -> ArrayStatus {
    let st = a.array.states();
    let sizes = a.array.size_report().await;
    let layout = a.array.layout().await;
    let bs = u64::from(a.array.geometry().block_size);
    // Bytes a rebuild or copy writes per row: one chunk.
    let chunk = u64::from(layout.chunk_blocks) * bs;
    let size_of = |id: &blockdev::DeviceIdentity| live.disk(id).map_or(0, |d| d.size());
    let mut members = Vec::new();
    for v in &st.members {
        let state = match v.status {
            Slot::Active | Slot::Replacing { .. } => MemberState::InSync,
            Slot::Suspended { .. } => MemberState::Missing,
            Slot::Failed { .. } if v.device.is_none() => MemberState::Missing,
            Slot::Failed { .. } => MemberState::Failed,
            Slot::Rebuilding { .. } => MemberState::Syncing,
        };
        members.push(MemberStatus {
            isu: live.slot_isu(a, v).unwrap_or_else(|| "?".into()),
            disk: v
                .device
                .as_ref()
                .map_or_else(|| "-".into(), |d| d.to_string()),
            size: v.device.as_ref().map_or(0, size_of),
            state,
        });
        if let Slot::Replacing { target, .. } = &v.status {
            members.push(MemberStatus {
                isu: live.disk(target).map_or_else(|| "?".into(), |d| d.isu),
                disk: target.to_string(),
                size: size_of(target),
                state: MemberState::Syncing,
            });
        }
    }
    for s in &st.spares {
        members.push(MemberStatus {
            isu: live.disk(s).map_or_else(|| "?".into(), |d| d.isu),
            disk: s.to_string(),
            size: size_of(s),
            state: MemberState::Spare,
        });
    }
    let state = match st.health {
        ArrayHealth::Clean => ArrayState::Clean,
        ArrayHealth::Replacing => ArrayState::Replacing,
        ArrayHealth::Reshaping => ArrayState::Reshaping,
        ArrayHealth::Rebuilding => ArrayState::Rebuilding,
        ArrayHealth::Degraded | ArrayHealth::Failed => ArrayState::Degraded,
    };
    let progress = match state {
        ArrayState::Rebuilding => st
            .rebuild
            .map(|r| progress(r.done_rows, r.total_rows, r.rows_per_sec, chunk, r.eta)),
        ArrayState::Replacing => st
            .replace
            .map(|r| progress(r.done_rows, r.total_rows, r.rows_per_sec, chunk, r.eta)),
        ArrayState::Reshaping => st.reshape.map(|r| {
            let (rate, eta) = a
                .reshape_pace
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rate(r.done_rows, r.total_rows, std::time::Instant::now());
            progress(r.done_rows, r.total_rows, rate, chunk, eta)
        }),
        ArrayState::Clean | ArrayState::Degraded => None,
    };
    ArrayStatus {
        name: a.name.clone(),
        state,
        progress,
        members,
        chunk_size: chunk,
        capacity: sizes.capacity_blocks * bs,
        wasted: sizes.wasted_blocks * bs,
    }
}

/// The volumes in each array's table, and their exports.
fn volumes(live: &Live) -> Vec<VolumeStatus> {
    let cfg = live.config();
    let mut out = Vec::new();
    for a in live.arrays() {
        let Some(pool) = &a.pool else { continue };
        let bs = u64::from(a.array.geometry().block_size);
        for v in pool.list() {
            out.push(VolumeStatus {
                exports: cfg
                    .exports
                    .iter()
                    .filter(|e| e.volume == v.name)
                    .map(|e| ExportStatus {
                        target: e.iqn.clone(),
                        lun: 0,
                        read_only: e.read_only,
                    })
                    .collect(),
                name: v.name,
                array: a.name.clone(),
                size: v.size_blocks * bs,
            });
        }
    }
    out
}
