//! The head's configuration file (`head.toml`): parsing and validation.
//!
//! Parsing is strict (unknown keys are errors) and every error names the
//! file and the key's path (`array[0].members[2].lun`) with what is wrong.
//! The README's "Config reference (`head.toml`)" documents every key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blockdev::DeviceIdentity;

use iscsi_proto::name::check_iscsi_name;
use serde::Deserialize;
use target_iscsi::access::{AuthMethod, Cidr};

use crate::portal::{Host, PortalSpec};
use crate::units::{Interval, Size};

/// Data directory used when the file names none, relative to its directory:
/// the control API's default, so `opie status` run beside `head.toml` finds
/// the head's socket.
pub const DEFAULT_DATA_DIR: &str = control::DEFAULT_DATA_DIR;

/// A configuration error: the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read: fix the path or its permissions.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is unknown, missing, of the wrong type, or its value is not
    /// acceptable: fix the file.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key's path, e.g. `array[0].members[1].lun`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    head: RawHead,
    #[serde(default)]
    isu: Vec<RawIsu>,
    #[serde(default)]
    array: Vec<RawArray>,
    #[serde(default)]
    volume: Vec<RawVolume>,
    #[serde(default)]
    export: Vec<RawExport>,
    #[serde(default)]
    backup: crate::backup_config::RawBackup,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    data_dir: Option<PathBuf>,
    initiator: String,
    listen: Vec<String>,
    secrets: Option<PathBuf>,
    #[serde(default)]
    strict_secrets: bool,
    nop_interval: Option<Interval>,
    nop_timeout: Option<Interval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsu {
    name: String,
    portals: Vec<String>,
    #[serde(default)]
    aoe: Vec<String>,
    secrets: Option<PathBuf>,
    session_horizon: Option<Interval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, untagged)]
enum RawMember {
    Lun {
        isu: String,
        target: String,
        #[serde(default)]
        lun: u64,
    },
    Identity {
        identity: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArray {
    name: String,
    members: Vec<RawMember>,
    #[serde(default)]
    spares: Vec<RawMember>,
    chunk: Option<Size>,
    spare_timeout: Option<Interval>,
    member_timeout: Option<Interval>,
    #[serde(default = "yes")]
    journal: bool,
    #[serde(default)]
    allow_degraded_start: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: String,
    array: String,
    size: Option<Size>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawMethod {
    None,
    Chap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    volume: String,
    iqn: String,
    alias: Option<String>,
    auth: Option<RawMethod>,
    initiators: Option<Vec<String>>,
    sources: Option<Vec<String>>,
    #[serde(default)]
    read_only: bool,
}

// ---- the validated configuration -----------------------------------------

/// A listening portal of the head: its address and its TPGT, which is also
/// its ALUA target port group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenPortal {
    /// As written, `HOST:PORT[,TPGT]`.
    pub spec: PortalSpec,
}

/// One ISU the head logs in to.
#[derive(Debug, Clone)]
pub struct IsuConfig {
    /// Its name in this file.
    pub name: String,
    /// Its iSCSI portals (addresses; port 3260 unless given).
    pub portals: Vec<SocketAddr>,
    /// AoE interfaces it is reached on (not used yet: iSCSI only).
    pub aoe: Vec<String>,
    /// The CHAP secrets file for its targets (the ISU's own format: the
    /// head logs in as the first `chap` user of the target's entry and
    /// checks the target's `mutual` credential when there is one).
    pub secrets: Option<PathBuf>,
    /// How long after a lost connection the ISU has surely ended the
    /// session's commands (its nop_interval + nop_timeout, with margin): a
    /// write left in doubt on a dead path is reported failed only then.
    pub session_horizon: Duration,
}

/// Which disk a member (or spare) of an array is: a LUN of a target of an ISU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// The ISU's name.
    pub isu: String,
    /// The target's IQN.
    pub target: String,
    /// The LUN.
    pub lun: u64,
}

impl std::fmt::Display for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.isu, self.target, self.lun)
    }
}

/// A member (or spare) as configured: where it is, or what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// A given LUN of a given ISU.
    Lun(MemberRef),
    /// Whichever LUN of the configured ISUs carries this identity (found
    /// by SendTargets, REPORT LUNS and the identity VPD pages).
    Identity(DeviceIdentity),
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Lun(m) => m.fmt(f),
            Member::Identity(id) => write!(f, "identity {id}"),
        }
    }
}

/// One RAID5 array.
#[derive(Debug, Clone)]
pub struct ArrayConfig {
    /// Its name in this file.
    pub name: String,
    /// Its seed members: the array is created over them, in this slot
    /// order, on the first start; later they only identify the array (its
    /// uuid on their superblocks), and its members are what its newest
    /// superblock lists, wherever they are ([`crate::startup::plan`]).
    pub members: Vec<Member>,
    /// Its hot spares at creation (seed, as `members`).
    pub spares: Vec<Member>,
    /// Chunk size in bytes (a multiple of the members' block size).
    pub chunk_bytes: u64,
    /// How long a failed member waits before a spare replaces it.
    pub spare_timeout: Duration,
    /// How long a member may answer only transient errors before it is failed.
    pub member_timeout: Duration,
    /// The write-through journal that closes the write hole.
    pub journal: bool,
    /// Start with one member missing once all the others are reachable.
    pub allow_degraded_start: bool,
}

/// One volume: a part of an array that exports serve.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Its name.
    pub name: String,
    /// The array it is carved from.
    pub array: String,
    /// Its size in bytes (None: the whole array).
    pub size: Option<u64>,
}

/// One iSCSI target of the head.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// The volume it serves as LUN 0.
    pub volume: String,
    /// Its target name.
    pub iqn: String,
    /// TargetAlias.
    pub alias: Option<String>,
    /// Authentication of logins.
    pub auth: AuthMethod,
    /// Initiator names allowed (None: any).
    pub initiators: Option<Vec<String>>,
    /// Source addresses allowed (None: any).
    pub sources: Option<Vec<Cidr>>,
    /// Export write-protected.
    pub read_only: bool,
}

/// The whole head configuration, validated.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// The file it was read from.
    pub source: PathBuf,
    /// State directory (lock, persistent reservations).
    pub data_dir: PathBuf,
    /// The head's initiator name towards the ISUs.
    pub initiator: String,
    /// Where the head serves its exports.
    pub listen: Vec<ListenPortal>,
    /// CHAP secrets of the exports (the ISU's format).
    pub secrets: Option<PathBuf>,
    /// Refuse a secrets file readable by group or others.
    pub strict_secrets: bool,
    /// NOP-In interval towards the head's initiators.
    pub nop_interval: Duration,
    /// NOP-In timeout.
    pub nop_timeout: Duration,
    /// The ISUs.
    pub isus: Vec<IsuConfig>,
    /// The arrays.
    pub arrays: Vec<ArrayConfig>,
    /// The volumes.
    pub volumes: Vec<VolumeConfig>,
    /// The exports.
    pub exports: Vec<ExportConfig>,
    /// Backup targets, schedules and retention (`[backup]`).
    pub backup: crate::backup_config::BackupConfig,
}

/// Parses `ADDR[:PORT]` of an ISU portal (a literal address; port 3260
/// unless given).
pub fn isu_portal(s: &str) -> Result<SocketAddr, String> {
    let spec = PortalSpec::parse(s)?;
    if spec.tpgt != 1 || s.contains(',') {
        return Err(format!("{s:?}: an ISU portal has no TPGT"));
    }
    match spec.host {
        Host::Ip(ip) => Ok(SocketAddr::new(ip, spec.port)),
        Host::Name(_) => spec
            .resolve()?
            .first()
            .map(|b| b.listen)
            .ok_or_else(|| format!("{s:?} resolves to no address")),
    }
}

/// Checks an ISU, array or volume name: 1-64 of `a-z 0-9 - .`.
pub fn name_ok(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!("{n:?}: a name is 1-64 of a-z 0-9 - ."))
    }
}

impl HeadConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<HeadConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        HeadConfig::parse(&text, path)
    }

    /// Parses and validates `text`, read from `path` (relative paths in it
    /// are relative to `path`'s directory).
    pub fn parse(text: &str, path: &Path) -> Result<HeadConfig, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let de = toml::Deserializer::new(text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => "(top level)".to_string(),
                p => p,
            };
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let message = match line {
                Some(l) => format!("{} (line {l})", inner.message().trim_end()),
                None => inner.message().trim_end().to_string(),
            };
            invalid(key, message)
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &Path| dir.join(p);
        let h = raw.head;
        check_iscsi_name(&h.initiator).map_err(|m| invalid("head.initiator".into(), m))?;
        if h.listen.is_empty() {
            return Err(invalid("head.listen".into(), "no portal given".into()));
        }
        let mut listen = Vec::new();
        let mut tags = BTreeSet::new();
        for (i, s) in h.listen.iter().enumerate() {
            let key = format!("head.listen[{i}]");
            let mut spec = PortalSpec::parse(s).map_err(|m| invalid(key.clone(), m))?;
            if !s.contains(',') {
                // Each portal its own portal group unless told otherwise.
                spec.tpgt = u16::try_from(i + 1).unwrap_or(u16::MAX);
            }
            if !tags.insert(spec.tpgt) {
                return Err(invalid(
                    key,
                    format!("TPGT {} is used by another portal", spec.tpgt),
                ));
            }
            listen.push(ListenPortal { spec });
        }
        let mut isus: Vec<IsuConfig> = Vec::new();
        for (i, r) in raw.isu.into_iter().enumerate() {
            let key = |k: &str| format!("isu[{i}].{k}");
            name_ok(&r.name).map_err(|m| invalid(key("name"), m))?;
            if isus.iter().any(|o| o.name == r.name) {
                return Err(invalid(key("name"), format!("{:?} named twice", r.name)));
            }
            if r.portals.is_empty() {
                return Err(invalid(key("portals"), "no portal given".into()));
            }
            let mut portals = Vec::new();
            for (j, p) in r.portals.iter().enumerate() {
                portals
                    .push(isu_portal(p).map_err(|m| invalid(format!("isu[{i}].portals[{j}]"), m))?);
            }
            isus.push(IsuConfig {
                name: r.name,
                portals,
                aoe: r.aoe,
                secrets: r.secrets.as_deref().map(rel),
                session_horizon: r.session_horizon.map_or(Duration::from_secs(30), |d| d.0),
            });
        }
        let member = |key: String, m: RawMember| -> Result<Member, ConfigError> {
            match m {
                RawMember::Lun { isu, target, lun } => {
                    if !isus.iter().any(|i| i.name == isu) {
                        return Err(invalid(
                            format!("{key}.isu"),
                            format!("no [[isu]] named {isu:?}"),
                        ));
                    }
                    check_iscsi_name(&target).map_err(|e| invalid(format!("{key}.target"), e))?;
                    Ok(Member::Lun(MemberRef { isu, target, lun }))
                }
                RawMember::Identity { identity } => DeviceIdentity::parse_hex(&identity)
                    .map(Member::Identity)
                    .ok_or_else(|| {
                        invalid(
                            format!("{key}.identity"),
                            format!("{identity:?} is not 32 hex digits"),
                        )
                    }),
            }
        };
        let mut arrays: Vec<ArrayConfig> = Vec::new();
        let mut used: Vec<(Member, String)> = Vec::new();
        for (i, r) in raw.array.into_iter().enumerate() {
            let key = |k: &str| format!("array[{i}].{k}");
            name_ok(&r.name).map_err(|m| invalid(key("name"), m))?;
            if arrays.iter().any(|o| o.name == r.name) {
                return Err(invalid(key("name"), format!("{:?} named twice", r.name)));
            }
            if r.members.len() < 3 {
                return Err(invalid(
                    key("members"),
                    format!("RAID5 needs at least 3 members, got {}", r.members.len()),
                ));
            }
            let mut members = Vec::new();
            let mut spares = Vec::new();
            let lists = [
                ("members", r.members, &mut members),
                ("spares", r.spares, &mut spares),
            ];
            for (list, raws, out) in lists {
                for (j, m) in raws.into_iter().enumerate() {
                    let k = format!("array[{i}].{list}[{j}]");
                    let m = member(k.clone(), m)?;
                    if let Some((_, at)) = used.iter().find(|(o, _)| *o == m) {
                        return Err(invalid(k, format!("{m} is already {at}")));
                    }
                    used.push((m.clone(), k));
                    out.push(m);
                }
            }
            let chunk_bytes = r.chunk.map_or(64 * 1024, |s| s.0);
            if chunk_bytes == 0 || chunk_bytes % 512 != 0 || chunk_bytes > 16 << 20 {
                return Err(invalid(
                    key("chunk"),
                    format!("{chunk_bytes} bytes: a chunk is a multiple of 512 bytes, at most 16M"),
                ));
            }
            arrays.push(ArrayConfig {
                name: r.name,
                members,
                spares,
                chunk_bytes,
                spare_timeout: r.spare_timeout.map_or(Duration::from_secs(60), |d| d.0),
                member_timeout: r.member_timeout.map_or(Duration::from_secs(30), |d| d.0),
                journal: r.journal,
                allow_degraded_start: r.allow_degraded_start,
            });
        }
        let mut volumes: Vec<VolumeConfig> = Vec::new();
        for (i, r) in raw.volume.into_iter().enumerate() {
            let key = |k: &str| format!("volume[{i}].{k}");
            name_ok(&r.name).map_err(|m| invalid(key("name"), m))?;
            if volumes.iter().any(|o| o.name == r.name) {
                return Err(invalid(key("name"), format!("{:?} named twice", r.name)));
            }
            if !arrays.iter().any(|a| a.name == r.array) {
                return Err(invalid(
                    key("array"),
                    format!("no [[array]] named {:?}", r.array),
                ));
            }
            volumes.push(VolumeConfig {
                name: r.name,
                array: r.array,
                size: r.size.map(|s| s.0),
            });
        }
        let mut exports: Vec<ExportConfig> = Vec::new();
        for (i, r) in raw.export.into_iter().enumerate() {
            let key = |k: &str| format!("export[{i}].{k}");
            if !volumes.iter().any(|v| v.name == r.volume) {
                return Err(invalid(
                    key("volume"),
                    format!("no [[volume]] named {:?}", r.volume),
                ));
            }
            check_iscsi_name(&r.iqn).map_err(|m| invalid(key("iqn"), m))?;
            if exports.iter().any(|o| o.iqn == r.iqn) {
                return Err(invalid(key("iqn"), format!("{:?} exported twice", r.iqn)));
            }
            let sources = match r.sources {
                None => None,
                Some(l) => Some(
                    l.iter()
                        .enumerate()
                        .map(|(j, s)| {
                            s.parse::<Cidr>()
                                .map_err(|m| invalid(format!("export[{i}].sources[{j}]"), m))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let auth = match r.auth {
                None | Some(RawMethod::None) => AuthMethod::None,
                Some(RawMethod::Chap) => {
                    if h.secrets.is_none() {
                        return Err(invalid(key("auth"), "\"chap\" needs head.secrets".into()));
                    }
                    AuthMethod::Chap
                }
            };
            exports.push(ExportConfig {
                volume: r.volume,
                iqn: r.iqn,
                alias: r.alias,
                auth,
                initiators: r.initiators,
                sources,
                read_only: r.read_only,
            });
        }
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        let backup = crate::backup_config::parse(raw.backup, dir, &names)
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(HeadConfig {
            backup,
            source: path.to_path_buf(),
            data_dir: rel(h.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR))),
            initiator: h.initiator,
            listen,
            secrets: h.secrets.as_deref().map(rel),
            strict_secrets: h.strict_secrets,
            nop_interval: h.nop_interval.map_or(Duration::from_secs(5), |d| d.0),
            nop_timeout: h.nop_timeout.map_or(Duration::from_secs(10), |d| d.0),
            isus,
            arrays,
            volumes,
            exports,
        })
    }

    /// The ISU named `name`.
    pub fn isu(&self, name: &str) -> Option<&IsuConfig> {
        self.isus.iter().find(|i| i.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[head]
initiator = "iqn.2026-01.org.opie:head1"
listen = ["127.0.0.1:3262", "127.0.0.2:3262"]

[[isu]]
name = "isu1"
portals = ["127.0.0.1:3261", "127.0.0.2"]

[[isu]]
name = "isu2"
portals = ["127.0.0.1:3263"]

[[array]]
name = "a0"
members = [
  { isu = "isu1", target = "iqn.2026-01.org.opie:isu1:d0" },
  { isu = "isu2", target = "iqn.2026-01.org.opie:isu2:d0", lun = 1 },
  { identity = "000102030405060708090a0b0c0d0e0f" },
]
chunk = "32K"
allow_degraded_start = true

[[volume]]
name = "v0"
array = "a0"

[[export]]
volume = "v0"
iqn = "iqn.2026-01.org.opie:head1:v0"
sources = ["127.0.0.0/8"]
"#;

    fn err(text: &str) -> String {
        HeadConfig::parse(text, Path::new("head.toml"))
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_good_file_reads_with_its_defaults() {
        let c = HeadConfig::parse(GOOD, Path::new("/etc/opie/head.toml")).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/opie/head-data"));
        let tags: Vec<u16> = c.listen.iter().map(|l| l.spec.tpgt).collect();
        assert_eq!(tags, [1, 2], "each portal its own group");
        assert_eq!(c.isus[0].portals[1], "127.0.0.2:3260".parse().unwrap());
        let a = &c.arrays[0];
        assert_eq!(a.chunk_bytes, 32 * 1024);
        assert!(a.journal && a.allow_degraded_start);
        assert_eq!(
            a.members[1],
            Member::Lun(MemberRef {
                isu: "isu2".into(),
                target: "iqn.2026-01.org.opie:isu2:d0".into(),
                lun: 1
            })
        );
        assert!(matches!(a.members[2], Member::Identity(_)));
        assert_eq!(c.exports[0].auth, AuthMethod::None);
    }

    #[test]
    fn every_error_names_the_key_path() {
        let e = err(&GOOD.replace("chunk = \"32K\"", "chunk = \"32K\"\nchunks = 1"));
        assert!(
            e.starts_with("head.toml: array[0].chunks: unknown field `chunks`"),
            "{e}"
        );
        let e = err(&GOOD.replace("lun = 1", "lun = \"one\""));
        assert!(e.starts_with("head.toml: array[0].members[1]"), "{e}");
        let e = err(&GOOD.replace("isu = \"isu2\", target", "isu = \"isu9\", target"));
        assert!(
            e.contains("array[0].members[1].isu: no [[isu]] named \"isu9\""),
            "{e}"
        );
        let e = err(&GOOD.replace("\"127.0.0.2\"]", "\"127.0.0.2:x\"]"));
        assert!(e.contains("isu[0].portals[1]:"), "{e}");
        let e = err(&GOOD.replace("array = \"a0\"", "array = \"a1\""));
        assert!(
            e.contains("volume[0].array: no [[array]] named \"a1\""),
            "{e}"
        );
        let e = err(&GOOD.replace("127.0.0.0/8", "127.0.0.1/8"));
        assert!(e.contains("export[0].sources[0]:"), "{e}");
        let e = err(&GOOD.replace("iqn.2026-01.org.opie:head1:v0", "IQN.x"));
        assert!(e.contains("export[0].iqn:"), "{e}");
        let e = err(&GOOD.replace("chunk = \"32K\"", "chunk = 1000"));
        assert!(e.contains("array[0].chunk: 1000 bytes"), "{e}");
        let e = err(&GOOD.replace("sources = [\"127.0.0.0/8\"]", "auth = \"chap\""));
        assert!(
            e.contains("export[0].auth: \"chap\" needs head.secrets"),
            "{e}"
        );
        let e = err(&GOOD.replace("\"127.0.0.2:3262\"]", "\"127.0.0.2:3262,1\"]"));
        assert!(
            e.contains("head.listen[1]: TPGT 1 is used by another portal"),
            "{e}"
        );
    }

    #[test]
    fn a_disk_is_in_one_array_once() {
        let twice = GOOD.replace(
            "{ identity = \"000102030405060708090a0b0c0d0e0f\" }",
            "{ isu = \"isu1\", target = \"iqn.2026-01.org.opie:isu1:d0\", lun = 0 }",
        );
        let e = err(&twice);
        assert!(e.contains("array[0].members[2]: isu1:iqn.2026-01.org.opie:isu1:d0/0 is already array[0].members[0]"), "{e}");
    }
}
