//! The readable form of the head's answers: aligned tables.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use control::status::{
    ArrayStatus, BackupEntry, Event, IsuStatus, LastBackup, Progress, VolumeStatus,
};
use control::{Reply, Status, TaskInfo, TaskState};

fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A task's kind as on the wire (`array-scrub`).
pub fn kind(t: &TaskInfo) -> String {
    kebab(&t.kind)
}

fn eta(secs: Option<u64>) -> String {
    secs.map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
        .unwrap_or_else(|| "-".into())
}

fn when(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

/// Columns padded to their widest cell, two spaces apart.
fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, &mut headers.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn progress(p: &Option<Progress>) -> String {
    match p {
        Some(p) => format!(
            "{} {}/s eta {}",
            percent(p.fraction),
            size(p.rate_bytes_per_sec),
            eta(p.eta_secs)
        ),
        None => "-".into(),
    }
}

fn isus(out: &mut String, isus: &[IsuStatus]) {
    let rows: Vec<Vec<String>> = isus
        .iter()
        .map(|i| {
            let paths = i
                .paths
                .iter()
                .map(|p| {
                    format!(
                        "{} {} (io {} err {})",
                        p.name,
                        kebab(&p.state),
                        p.stats.completed,
                        p.stats.errors
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![i.name.clone(), kebab(&i.state), paths]
        })
        .collect();
    table(out, &["ISU", "STATE", "PATHS"], &rows);
}

fn arrays(out: &mut String, arrays: &[ArrayStatus]) {
    let rows: Vec<Vec<String>> = arrays
        .iter()
        .map(|a| {
            let members = a
                .members
                .iter()
                .map(|m| format!("{}:{} {} {}", m.isu, m.disk, size(m.size), kebab(&m.state)))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                a.name.clone(),
                kebab(&a.state),
                progress(&a.progress),
                size(a.capacity),
                size(a.wasted),
                members,
            ]
        })
        .collect();
    table(
        out,
        &[
            "ARRAY", "STATE", "PROGRESS", "CAPACITY", "WASTED", "MEMBERS",
        ],
        &rows,
    );
}

fn volumes(out: &mut String, volumes: &[VolumeStatus]) {
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            let exports = v
                .exports
                .iter()
                .map(|e| {
                    format!(
                        "{} lun {}{}",
                        e.target,
                        e.lun,
                        if e.read_only { " ro" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![v.name.clone(), v.array.clone(), size(v.size), exports]
        })
        .collect();
    table(out, &["VOLUME", "ARRAY", "SIZE", "EXPORTS"], &rows);
}

/// Tasks as a table.
fn tasks(out: &mut String, tasks: &[TaskInfo]) {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let outcome = match (&t.result, &t.error) {
                (Some(r), _) => r.clone(),
                (None, Some(e)) => format!("{}: {}", e.code().as_str(), e.message()),
                (None, None) => String::new(),
            };
            vec![
                t.id.to_string(),
                kebab(&t.kind),
                t.target.clone(),
                kebab(&t.state),
                percent(t.progress),
                when(t.started_unix_ms),
                eta(t.eta_secs),
                outcome,
            ]
        })
        .collect();
    table(
        out,
        &[
            "TASK", "KIND", "TARGET", "STATE", "PROGRESS", "STARTED", "ETA", "OUTCOME",
        ],
        &rows,
    );
}

fn events(out: &mut String, events: &[Event]) {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                when(e.unix_ms),
                kebab(&e.level),
                e.subject.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    table(out, &["TIME", "LEVEL", "SUBJECT", "EVENT"], &rows);
}

/// Backups in a target as a table.
fn backups(out: &mut String, target: &str, list: &[BackupEntry]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.volume.clone(),
                when(b.created * 1000),
                size(b.size),
                b.parent.clone().unwrap_or_else(|| "full".into()),
                format!("{}/{}/{}", b.chunks, b.chunks_read, b.chunks_uploaded),
            ]
        })
        .collect();
    let _ = writeln!(out, "target {target}: {} backup(s)", list.len());
    table(
        out,
        &[
            "ID",
            "VOLUME",
            "CREATED",
            "SIZE",
            "PARENT",
            "CHUNKS/READ/UPLOADED",
        ],
        &rows,
    );
}

/// The last backup of each volume.
fn last_backups(out: &mut String, list: &[LastBackup]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.volume.clone(),
                b.target.clone(),
                when(b.unix_ms),
                b.id.clone().unwrap_or_else(|| "-".into()),
                size(b.size),
                b.result.clone(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "VOLUME",
            "BACKUP TARGET",
            "LAST RUN",
            "ID",
            "SIZE",
            "RESULT",
        ],
        &rows,
    );
}

fn status(out: &mut String, s: &Status) {
    isus(out, &s.isus);
    out.push('\n');
    arrays(out, &s.arrays);
    out.push('\n');
    volumes(out, &s.volumes);
    if !s.tasks.is_empty() {
        out.push('\n');
        tasks(out, &s.tasks);
    }
    if !s.backups.is_empty() {
        out.push('\n');
        last_backups(out, &s.backups);
    }
    if !s.events.is_empty() {
        out.push('\n');
        events(out, &s.events);
    }
}

/// One line about a task, for plain progress output and `--wait`'s end.
pub fn task_line(t: &TaskInfo) -> String {
    let mut l = format!(
        "task {} {} {}: {}",
        t.id,
        kebab(&t.kind),
        t.target,
        kebab(&t.state)
    );
    match t.state {
        TaskState::Running | TaskState::Cancelling => {
            let _ = write!(l, " {}", percent(t.progress));
            if let Some(s) = t.eta_secs {
                let _ = write!(l, " eta {}", eta(Some(s)));
            }
            if let Some(d) = &t.detail {
                let _ = write!(l, " ({d})");
            }
        }
        TaskState::Done => {
            if let Some(r) = &t.result {
                let _ = write!(l, ": {r}");
            }
        }
        TaskState::Failed | TaskState::Cancelled => {
            if let Some(e) = &t.error {
                let _ = write!(l, ": {}: {}", e.code().as_str(), e.message());
            }
        }
    }
    l
}

/// The readable form of a reply.
pub fn reply(r: &Reply) -> String {
    let mut out = String::new();
    match r {
        Reply::Status(s) => status(&mut out, s),
        Reply::Done { message } => {
            out.push_str(message);
            out.push('\n');
        }
        Reply::Task(t) => {
            out.push_str(&task_line(t));
            out.push('\n');
        }
        Reply::Tasks { tasks: list } => tasks(&mut out, list),
        Reply::Backups {
            target,
            backups: list,
        } => backups(&mut out, target, list),
    }
    out
}
