//! The `[backup]` part of `head.toml`: targets (`[[backup.target]]`),
//! schedules (`[[backup.schedule]]`), retention (`[backup.retention]`) and
//! the run's settings, parsed and checked with key paths like the rest of
//! the file. The S3 credentials are named here and read from the backup
//! secrets file only when a target is opened (never logged).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{Interval, Size};

pub use backup::Retention;

/// `[backup]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackup {
    secrets: Option<PathBuf>,
    reserve: Option<Size>,
    grace: Option<Interval>,
    rate_limit: Option<String>,
    #[serde(default)]
    target: Vec<RawTarget>,
    #[serde(default)]
    schedule: Vec<RawSchedule>,
    #[serde(default)]
    retention: Retention,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    dir: Option<PathBuf>,
    s3: Option<RawS3>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: String,
    bucket: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default)]
    prefix: String,
    credentials: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    volumes: Vec<String>,
    target: Option<String>,
    every: Option<Interval>,
    daily: Option<String>,
    full_every: Option<u32>,
}

/// Where a target keeps its backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPlace {
    /// A local directory (relative paths from `head.toml`'s directory).
    Dir(PathBuf),
    /// A bucket of an S3-compatible store.
    S3 {
        /// Endpoint URL (`https://...`; plain `http://` only to loopback).
        endpoint: String,
        /// Bucket.
        bucket: String,
        /// Region.
        region: String,
        /// Key prefix inside the bucket (empty: the bucket's root).
        prefix: String,
        /// The name of the credentials in the backup secrets file.
        credentials: String,
    },
}

/// One `[[backup.target]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// Its name, as `opie backup --to` gives it.
    pub name: String,
    /// Where it is.
    pub place: TargetPlace,
}

/// When a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every interval since the previous run of this schedule.
    Every(Duration),
    /// Once a day at this UTC time, seconds after midnight.
    Daily(u32),
}

/// One `[[backup.schedule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// The volumes backed up together (one consistency group).
    pub volumes: Vec<String>,
    /// The target's name.
    pub target: String,
    /// When.
    pub when: When,
    /// Every N-th run of the schedule is full (1: always); the others are
    /// incremental. 0: never full after the first.
    pub full_every: u32,
}

/// The validated `[backup]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// The file holding the S3 credentials: `[credentials.NAME]` tables
    /// with `access_key` and `secret_key`.
    pub secrets: Option<PathBuf>,
    /// The copy-on-write reserve of each snapshot, in bytes.
    pub reserve: u64,
    /// How old an unreferenced chunk must be before GC deletes it (longer
    /// than the longest backup run).
    pub grace: Duration,
    /// The targets; the first is the default.
    pub targets: Vec<TargetConfig>,
    /// The schedules.
    pub schedules: Vec<ScheduleConfig>,
    /// What `opie backup prune` keeps of each volume.
    pub retention: Retention,
    /// `backup.rate_limit`: the bytes per second a run reads from a
    /// snapshot (every run, scheduled or not, unless `opie backup run
    /// --rate-limit` gives its own); `None`: unlimited.
    pub rate_limit: Option<u64>,
}

/// The snapshot reserve when `backup.reserve` is not given.
pub const DEFAULT_RESERVE: u64 = 64 << 20;
/// The GC grace when `backup.grace` is not given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            secrets: None,
            reserve: DEFAULT_RESERVE,
            grace: DEFAULT_GRACE,
            targets: Vec::new(),
            schedules: Vec::new(),
            retention: Retention::default(),
            rate_limit: None,
        }
    }
}

impl BackupConfig {
    /// The target named `name`, or the first one when `None`.
    pub fn target(&self, name: Option<&str>) -> Option<&TargetConfig> {
        match name {
            Some(n) => self.targets.iter().find(|t| t.name == n),
            None => self.targets.first(),
        }
    }
}

/// Parses `HH:MM` (UTC) into seconds after midnight.
fn daily(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?}: write a UTC time as \"HH:MM\"");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

/// Checks `raw`; `dir` is `head.toml`'s directory, `volumes` the names of
/// the configured volumes. An error is the key path (under `backup.`) and
/// what is wrong.
pub(crate) fn parse(
    raw: RawBackup,
    dir: &Path,
    volumes: &[&str],
) -> Result<BackupConfig, (String, String)> {
    let mut targets: Vec<TargetConfig> = Vec::new();
    for (i, t) in raw.target.into_iter().enumerate() {
        let key = |k: &str| format!("backup.target[{i}].{k}");
        crate::config::name_ok(&t.name).map_err(|m| (key("name"), m))?;
        if targets.iter().any(|o| o.name == t.name) {
            return Err((key("name"), format!("{:?} named twice", t.name)));
        }
        let place = match (t.dir, t.s3) {
            (Some(d), None) => TargetPlace::Dir(dir.join(d)),
            (None, Some(s)) => {
                let loopback = ["http://127.", "http://localhost", "http://[::1]"]
                    .iter()
                    .any(|p| s.endpoint.starts_with(p));
                if !s.endpoint.starts_with("https://") && !loopback {
                    return Err((
                        key("s3.endpoint"),
                        format!(
                            "{:?}: use https:// (plain http only to loopback)",
                            s.endpoint
                        ),
                    ));
                }
                if raw.secrets.is_none() {
                    return Err((
                        key("s3.credentials"),
                        "needs backup.secrets, the file holding the credentials".into(),
                    ));
                }
                TargetPlace::S3 {
                    endpoint: s.endpoint,
                    bucket: s.bucket,
                    region: s.region,
                    prefix: s.prefix.trim_matches('/').to_string(),
                    credentials: s.credentials,
                }
            }
            _ => {
                return Err((
                    key("dir"),
                    "give exactly one of dir = \"...\" and s3 = { ... }".into(),
                ))
            }
        };
        targets.push(TargetConfig {
            name: t.name,
            place,
        });
    }
    let mut schedules = Vec::new();
    for (i, s) in raw.schedule.into_iter().enumerate() {
        let key = |k: &str| format!("backup.schedule[{i}].{k}");
        if s.volumes.is_empty() {
            return Err((key("volumes"), "no volume given".into()));
        }
        for (j, v) in s.volumes.iter().enumerate() {
            if !volumes.contains(&v.as_str()) {
                return Err((
                    format!("backup.schedule[{i}].volumes[{j}]"),
                    format!("no [[volume]] named {v:?}"),
                ));
            }
        }
        let target = match &s.target {
            Some(t) if targets.iter().any(|o| &o.name == t) => t.clone(),
            Some(t) => return Err((key("target"), format!("no [[backup.target]] named {t:?}"))),
            None => targets
                .first()
                .map(|t| t.name.clone())
                .ok_or_else(|| (key("target"), "no [[backup.target]] configured".into()))?,
        };
        let when = match (s.every, s.daily) {
            (Some(e), None) if e.0 >= Duration::from_secs(1) => When::Every(e.0),
            (Some(_), None) => return Err((key("every"), "at least 1s".into())),
            (None, Some(d)) => When::Daily(daily(&d).map_err(|m| (key("daily"), m))?),
            _ => {
                return Err((
                    key("every"),
                    "give exactly one of every = \"6h\" and daily = \"HH:MM\"".into(),
                ))
            }
        };
        schedules.push(ScheduleConfig {
            volumes: s.volumes,
            target,
            when,
            full_every: s.full_every.unwrap_or(7),
        });
    }
    let rate_limit = match &raw.rate_limit {
        Some(r) => {
            Some(crate::units::parse_rate(r).map_err(|m| ("backup.rate_limit".to_string(), m))?)
        }
        None => None,
    };
    Ok(BackupConfig {
        rate_limit,
        secrets: raw.secrets.map(|p| dir.join(p)),
        reserve: raw.reserve.map_or(DEFAULT_RESERVE, |s| s.0),
        grace: raw.grace.map_or(DEFAULT_GRACE, |g| g.0),
        targets,
        schedules,
        retention: raw.retention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<BackupConfig, (String, String)> {
        #[derive(Deserialize)]
        struct F {
            backup: RawBackup,
        }
        let f: F = toml::from_str(text).map_err(|e| ("toml".into(), e.to_string()))?;
        parse(f.backup, Path::new("/etc/opie"), &["v0", "v1"])
    }

    #[test]
    fn targets_schedules_and_retention_read_with_their_defaults() {
        let c = parse_text(
            r#"
[backup]
secrets = "backup-secrets.toml"
[[backup.target]]
name = "local"
dir = "backups"
[[backup.target]]
name = "s3"
s3 = { endpoint = "https://s3.example", bucket = "b", prefix = "/opie/", credentials = "main" }
[[backup.schedule]]
volumes = ["v0", "v1"]
every = "6h"
[[backup.schedule]]
volumes = ["v1"]
target = "s3"
daily = "02:30"
full_every = 1
[backup.retention]
keep_last = 3
keep_daily = 7
"#,
        )
        .unwrap();
        assert_eq!(
            c.secrets.as_deref(),
            Some(Path::new("/etc/opie/backup-secrets.toml"))
        );
        assert_eq!(
            c.targets[0].place,
            TargetPlace::Dir("/etc/opie/backups".into())
        );
        assert!(
            matches!(&c.targets[1].place, TargetPlace::S3 { prefix, region, .. } if prefix == "opie" && region == "us-east-1")
        );
        assert_eq!(c.schedules[0].target, "local");
        assert_eq!(
            c.schedules[0].when,
            When::Every(Duration::from_secs(6 * 3600))
        );
        assert_eq!(c.schedules[0].full_every, 7);
        assert_eq!(c.schedules[1].when, When::Daily(2 * 3600 + 30 * 60));
        assert_eq!(c.retention.keep_last, 3);
        assert_eq!(c.retention.keep_daily, 7);
        assert_eq!(c.reserve, DEFAULT_RESERVE);
        assert_eq!(c.rate_limit, None);
        assert_eq!(c.target(None).unwrap().name, "local");
    }

    #[test]
    fn rate_limit_reads_as_bytes_per_second() {
        let c = parse_text("[backup]\nrate_limit = \"100MiB/s\"\n").unwrap();
        assert_eq!(c.rate_limit, Some(100 << 20));
        let e = parse_text("[backup]\nrate_limit = \"fast\"\n").unwrap_err();
        assert_eq!(e.0, "backup.rate_limit", "{e:?}");
    }

    #[test]
    fn errors_name_the_key_path() {
        let base = "[[backup.target]]\nname = \"t\"\ndir = \"d\"\n";
        let e = parse_text(&format!(
            "{base}[[backup.schedule]]\nvolumes = [\"v9\"]\nevery = \"1h\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.0, "backup.schedule[0].volumes[0]", "{e:?}");
        let e = parse_text(&format!(
            "{base}[[backup.schedule]]\nvolumes = [\"v0\"]\ndaily = \"25:00\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.0, "backup.schedule[0].daily", "{e:?}");
        let e = parse_text(&format!(
            "{base}[[backup.schedule]]\nvolumes = [\"v0\"]\ntarget = \"x\"\nevery = \"1h\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.0, "backup.schedule[0].target", "{e:?}");
        let e = parse_text("[[backup.target]]\nname = \"t\"\n").unwrap_err();
        assert_eq!(e.0, "backup.target[0].dir", "{e:?}");
        let e = parse_text("[[backup.target]]\nname = \"t\"\ns3 = { endpoint = \"http://10.0.0.1\", bucket = \"b\", credentials = \"c\" }\n").unwrap_err();
        assert_eq!(e.0, "backup.target[0].s3.endpoint", "{e:?}");
        let e = parse_text("[[backup.target]]\nname = \"t\"\ns3 = { endpoint = \"https://s3\", bucket = \"b\", credentials = \"c\" }\n").unwrap_err();
        assert_eq!(e.0, "backup.target[0].s3.credentials", "{e:?}");
    }
}
