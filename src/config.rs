//! The ISU configuration file (`isu.toml`): parsing and validation.
//!
//! Parsing is strict (unknown keys are errors) and every error names the
//! file, the key and what is wrong with the value. See the README for the
//! reference of every key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blockdev::DeviceIdentity;
use chap::{AlgorithmList, BackoffConfig};
use serde::Deserialize;
use target_iscsi::access::{AuthMethod, Cidr};
use target_iscsi::server::LoginLimits;

use aggregator::portal::PortalSpec;
use aggregator::units::{Interval, Size};

/// Data directory used when neither the file nor `--data-dir` names one,
/// relative to the config file's directory.
pub const DEFAULT_DATA_DIR: &str = "opie-data";

/// A configuration error, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A value is syntactically fine but not acceptable.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The config file (or `command line`).
        path: PathBuf,
        /// Which key, e.g. `disk "db".size` or `--listen`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    isu: RawIsu,
    #[serde(default)]
    disk: Vec<RawDisk>,
    aoe: Option<RawAoe>,
    auth: Option<RawAuth>,
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawMethod {
    None,
    Chap,
}

impl From<RawMethod> for AuthMethod {
    fn from(m: RawMethod) -> AuthMethod {
        match m {
            RawMethod::None => AuthMethod::None,
            RawMethod::Chap => AuthMethod::Chap,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    secrets: Option<PathBuf>,
    #[serde(default)]
    strict_secrets: bool,
    algorithms: Option<Vec<String>>,
    discovery: Option<RawMethod>,
    targets: Option<RawMethod>,
    backoff: Option<RawBackoff>,
    #[serde(default)]
    portal: Vec<RawPortalAcl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    free_failures: Option<u32>,
    base: Option<Interval>,
    cap: Option<Interval>,
    quiet: Option<Interval>,
    max_in_flight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortalAcl {
    tag: u16,
    sources: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIsu {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    base_iqn: String,
    nop_interval: Option<Interval>,
    nop_timeout: Option<Interval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: String,
    path: Option<PathBuf>,
    size: Option<Size>,
    #[serde(default)]
    read_only: bool,
    block_size: Option<u32>,
    lun: Option<u64>,
    iqn: Option<String>,
    alias: Option<String>,
    serial: Option<String>,
    identity: Option<String>,
    portal_groups: Option<Vec<u16>>,
    aoe: Option<RawDiskAoe>,
    auth: Option<RawMethod>,
    initiators: Option<Vec<String>>,
    sources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAoe {
    interfaces: Vec<String>,
    shelf: u16,
    buffer_count: Option<u16>,
    #[serde(default)]
    mac_mask: Vec<String>,
    #[serde(default)]
    write_back: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiskAoe {
    slot: u8,
    mac_mask: Option<Vec<String>>,
    config_string: Option<String>,
}

// ---- the validated configuration ------------------------------------------

/// Command-line values that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`, repeated: replaces `isu.listen` entirely.
    pub listen: Vec<String>,
    /// `--data-dir`: replaces `isu.data_dir` (relative to the working directory).
    pub data_dir: Option<PathBuf>,
}

/// A validated ISU configuration.
#[derive(Debug, Clone)]
pub struct IsuConfig {
    /// The file it came from.
    pub source: PathBuf,
    /// Directory holding backing files (by default) and persistent state.
    pub data_dir: PathBuf,
    /// Portals to listen on.
    pub listen: Vec<PortalSpec>,
    /// Base of the default target names (`<base_iqn>:<disk name>`).
    pub base_iqn: String,
    /// Interval of target-initiated NOP-In pings (zero: none).
    pub nop_interval: Duration,
    /// How long to wait for the NOP-Out answer before dropping the connection.
    pub nop_timeout: Duration,
    /// The disks, in file order.
    pub disks: Vec<DiskConfig>,
    /// The `[aoe]` table, if AoE export is wanted.
    pub aoe: Option<AoeSettings>,
    /// The `[auth]` table: secrets, algorithms, discovery and portal policy.
    pub auth: AuthSettings,
    /// The `[limits]` table: connections that have not logged in yet.
    pub limits: LoginLimits,
    /// The command-line overrides it was loaded with (applied again on reload).
    pub overrides: Overrides,
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// The CHAP secrets file (absolute after resolution against the config's directory).
    pub secrets: Option<PathBuf>,
    /// Refuse a secrets file readable by group or others (else: a warning).
    pub strict_secrets: bool,
    /// CHAP algorithms allowed, in preference order.
    pub algorithms: AlgorithmList,
    /// Authentication of discovery sessions.
    pub discovery: AuthMethod,
    /// Source-address allow-lists per portal group tag.
    pub portal_sources: BTreeMap<u16, Vec<Cidr>>,
    /// Slow-down of repeated login failures per source.
    pub backoff: BackoffConfig,
}

/// One exported disk.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Name, unique in the file; names the state directory and the default IQN.
    pub name: String,
    /// Target name this disk is a LUN of.
    pub iqn: String,
    /// TargetAlias reported at login.
    pub alias: Option<String>,
    /// Backing file or block device (absolute after resolution against the data dir).
    pub path: PathBuf,
    /// Size to create the sparse file with (and to check an existing file against).
    pub size: Option<u64>,
    /// Export read-only.
    pub read_only: bool,
    /// Logical block size.
    pub block_size: u32,
    /// Logical unit number in its target.
    pub lun: u64,
    /// Serial number override (VPD 0x80), else derived from the persisted identity.
    pub serial: Option<String>,
    /// Identity override (32 hex digits), else the persisted random one.
    pub identity: Option<DeviceIdentity>,
    /// Target portal groups the disk's target is served on (None: all).
    pub portal_groups: Option<Vec<u16>>,
    /// AoE export of this disk.
    pub aoe: Option<DiskAoeSettings>,
    /// Authentication of the disk's target.
    pub auth: AuthMethod,
    /// Initiator IQNs allowed to log in to the disk's target (None: any).
    pub initiators: Option<Vec<String>>,
    /// Source addresses allowed to log in to the disk's target (None: any).
    pub sources: Option<Vec<Cidr>>,
}

/// A MAC address.
pub type Mac = [u8; 6];

/// The `[aoe]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AoeSettings {
    /// Interfaces AoE is served on (never others).
    pub interfaces: Vec<String>,
    /// Shelf (major) address of this ISU.
    pub shelf: u16,
    /// Frames the target accepts at once (Query Config buffer count); None: the AoE target's default.
    pub buffer_count: Option<u16>,
    /// Default MAC mask list (empty: every initiator).
    pub mac_mask: Vec<Mac>,
    /// Acknowledge writes before they are durable (unsafe on power loss).
    pub write_back: bool,
}

/// A `[disk.aoe]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAoeSettings {
    /// Slot (minor) address.
    pub slot: u8,
    /// MAC mask list of this disk (None: the `[aoe]` default).
    pub mac_mask: Option<Vec<Mac>>,
    /// Initial config string.
    pub config_string: Option<String>,
}

pub use iscsi_proto::name::check_iscsi_name;

fn check_disk_name(name: &str) -> Result<(), String> {
    // The head's name rule, and a disk's name starts with a letter or digit.
    let ok =
        aggregator::config::name_ok(name).is_ok() && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid disk name (1 to 64 of a-z 0-9 '-' '.', starting with a letter or digit; it becomes part of the IQN and of file names)"
        ))
    }
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut m = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16)
            .ok()
            .filter(|_| p.len() == 2)
            .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(m)
}

impl fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} lun {})", self.name, self.iqn, self.lun)
    }
}

impl IsuConfig {
    /// Reads, parses and validates `path`, applying the command-line overrides.
    pub fn load(path: &Path, ov: &Overrides) -> Result<IsuConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, ov)
    }

    /// Parses and validates config text; `path` is used for messages and to
    /// resolve a relative `data_dir`.
    pub fn parse(text: &str, path: &Path, ov: &Overrides) -> Result<IsuConfig, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };

        // [isu]
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let data_dir = match &ov.data_dir {
            Some(d) => d.clone(),
            None => {
                let d = raw
                    .isu
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                if d.as_os_str().is_empty() {
                    return Err(invalid("isu.data_dir".into(), "must not be empty".into()));
                }
                if d.is_absolute() {
                    d
                } else {
                    base_dir.join(d)
                }
            }
        };
        check_iscsi_name(&raw.isu.base_iqn).map_err(|m| invalid("isu.base_iqn".into(), m))?;

        let (listen_src, listen_key): (&[String], &str) = if ov.listen.is_empty() {
            (&raw.isu.listen, "isu.listen")
        } else {
            (&ov.listen, "--listen")
        };
        if listen_src.is_empty() {
            return Err(invalid(
                "isu.listen".into(),
                "no portal to listen on (e.g. listen = [\"0.0.0.0:3260\"], or --listen)".into(),
            ));
        }
        let mut listen = Vec::new();
        for (i, s) in listen_src.iter().enumerate() {
            let p = PortalSpec::parse(s).map_err(|m| invalid(format!("{listen_key}[{i}]"), m))?;
            if listen.contains(&p) {
                return Err(invalid(
                    format!("{listen_key}[{i}]"),
                    format!("portal {s:?} is listed twice"),
                ));
            }
            listen.push(p);
        }
        let tpgts: BTreeSet<u16> = listen.iter().map(|p| p.tpgt).collect();

        let nop_interval = raw.isu.nop_interval.map_or(Duration::from_secs(5), |i| i.0);
        let nop_timeout = raw.isu.nop_timeout.map_or(Duration::from_secs(10), |i| i.0);
        if !nop_interval.is_zero() && nop_timeout.is_zero() {
            return Err(invalid(
                "isu.nop_timeout".into(),
                "must be more than 0 while nop_interval pings are on".into(),
            ));
        }

        // [aoe]
        let aoe = match &raw.aoe {
            None => None,
            Some(a) => {
                if a.interfaces.is_empty() {
                    return Err(invalid(
                        "aoe.interfaces".into(),
                        "name at least one interface (AoE is served only where you say)".into(),
                    ));
                }
                for (i, n) in a.interfaces.iter().enumerate() {
                    if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
                        return Err(invalid(
                            format!("aoe.interfaces[{i}]"),
                            format!("{n:?} is not a network interface name"),
                        ));
                    }
                }
                if a.shelf == 0xffff {
                    return Err(invalid(
                        "aoe.shelf".into(),
                        "65535 is the broadcast shelf; use 0..=65534".into(),
                    ));
                }
                let buffer_count = a.buffer_count;
                if buffer_count == Some(0) {
                    return Err(invalid(
                        "aoe.buffer_count".into(),
                        "must be at least 1".into(),
                    ));
                }
                let mut mac_mask = Vec::new();
                for (i, m) in a.mac_mask.iter().enumerate() {
                    mac_mask
                        .push(parse_mac(m).map_err(|e| invalid(format!("aoe.mac_mask[{i}]"), e))?);
                }
                Some(AoeSettings {
                    interfaces: a.interfaces.clone(),
                    shelf: a.shelf,
                    buffer_count,
                    mac_mask,
                    write_back: a.write_back,
                })
            }
        };

        // [auth]
        let auth = parse_auth(raw.auth.as_ref(), base_dir, &tpgts, &invalid)?;
        let limits = parse_limits(raw.limits.as_ref(), &invalid)?;
        let default_method = raw
            .auth
            .as_ref()
            .and_then(|a| a.targets)
            .map_or(AuthMethod::None, AuthMethod::from);

        // [[disk]]
        if raw.disk.is_empty() {
            return Err(invalid(
                "disk".into(),
                "no [[disk]] entries: nothing to export".into(),
            ));
        }
        let mut disks = Vec::new();
        let mut names = BTreeSet::new();
        let mut paths = BTreeMap::new();
        let mut luns: BTreeMap<(String, u64), String> = BTreeMap::new();
        let mut aliases: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut slots = BTreeMap::new();
        for (i, d) in raw.disk.iter().enumerate() {
            check_disk_name(&d.name).map_err(|m| invalid(format!("disk[{i}].name"), m))?;
            let key = |k: &str| format!("disk {:?}.{k}", d.name);
            if !names.insert(d.name.clone()) {
                return Err(invalid(
                    key("name"),
                    "another [[disk]] has this name".into(),
                ));
            }
            let iqn = d
                .iqn
                .clone()
                .unwrap_or_else(|| format!("{}:{}", raw.isu.base_iqn, d.name));
            check_iscsi_name(&iqn).map_err(|m| invalid(key("iqn"), m))?;
            let rel = d
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.img", d.name)));
            if rel.as_os_str().is_empty() {
                return Err(invalid(key("path"), "must not be empty".into()));
            }
            let full = if rel.is_absolute() {
                rel
            } else {
                data_dir.join(rel)
            };
            if let Some(other) = paths.insert(full.clone(), d.name.clone()) {
                return Err(invalid(
                    key("path"),
                    format!(
                        "{} is already the backing store of disk {other:?}",
                        full.display()
                    ),
                ));
            }
            let block_size = d.block_size.unwrap_or(512);
            if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
                return Err(invalid(
                    key("block_size"),
                    format!("{block_size} is not a power of two in 512..=65536"),
                ));
            }
            if let Some(Size(sz)) = d.size {
                if sz == 0 {
                    return Err(invalid(key("size"), "must be more than 0".into()));
                }
                if sz % u64::from(block_size) != 0 {
                    return Err(invalid(
                        key("size"),
                        format!("{sz} bytes is not a multiple of the block size {block_size}"),
                    ));
                }
            }
            let lun = d.lun.unwrap_or(0);
            if lun > 16383 {
                return Err(invalid(
                    key("lun"),
                    format!("{lun} is beyond the flat addressing range 0..=16383"),
                ));
            }
            if let Some(other) = luns.insert((iqn.clone(), lun), d.name.clone()) {
                return Err(invalid(
                    key("lun"),
                    format!("target {iqn} already has LUN {lun} (disk {other:?}); give one of them another lun"),
                ));
            }
            match aliases.get(&iqn) {
                Some(a) if d.alias.is_some() && a.is_some() && *a != d.alias => {
                    return Err(invalid(
                        key("alias"),
                        format!(
                            "target {iqn} already has alias {:?}",
                            a.as_deref().unwrap_or("")
                        ),
                    ))
                }
                _ => {
                    let prev = aliases.get(&iqn).cloned().flatten();
                    aliases.insert(iqn.clone(), prev.or_else(|| d.alias.clone()));
                }
            }
            if let Some(a) = &d.alias {
                if a.is_empty() || a.len() > 255 || a.chars().any(|c| c.is_control()) {
                    return Err(invalid(
                        key("alias"),
                        "must be 1 to 255 printable characters".into(),
                    ));
                }
            }
            if let Some(s) = &d.serial {
                if !blockdev::DeviceIdentity::is_valid_serial(s) {
                    return Err(invalid(
                        key("serial"),
                        format!("{s:?}: use 1 to 20 printable ASCII characters without spaces"),
                    ));
                }
            }
            let identity = match &d.identity {
                None => None,
                Some(h) => Some(DeviceIdentity::parse_hex(h).ok_or_else(|| {
                    invalid(key("identity"), format!("{h:?} is not 32 hex digits"))
                })?),
            };
            if let Some(groups) = &d.portal_groups {
                if groups.is_empty() {
                    return Err(invalid(
                        key("portal_groups"),
                        "an empty list would hide the disk; leave the key out to serve it on every portal".into(),
                    ));
                }
                if let Some(g) = groups.iter().find(|g| !tpgts.contains(g)) {
                    return Err(invalid(
                        key("portal_groups"),
                        format!("no portal has tag {g} (portal group tags in use: {tpgts:?})"),
                    ));
                }
            }
            let aoe_disk = match &d.aoe {
                None => None,
                Some(a) => {
                    let Some(settings) = &aoe else {
                        return Err(invalid(
                            key("aoe"),
                            "AoE export needs an [aoe] table (interfaces, shelf)".into(),
                        ));
                    };
                    if block_size != 512 {
                        return Err(invalid(
                            key("aoe"),
                            format!("AoE serves 512-byte sectors; this disk has block_size = {block_size}"),
                        ));
                    }
                    if a.slot == 0xff {
                        return Err(invalid(
                            key("aoe.slot"),
                            "255 is the broadcast slot; use 0..=254".into(),
                        ));
                    }
                    if let Some(other) = slots.insert(a.slot, d.name.clone()) {
                        return Err(invalid(
                            key("aoe.slot"),
                            format!(
                                "shelf {} slot {} is already disk {other:?}",
                                settings.shelf, a.slot
                            ),
                        ));
                    }
                    if a.config_string.as_ref().is_some_and(|c| c.len() > 1024) {
                        return Err(invalid(
                            key("aoe.config_string"),
                            "longer than the AoE limit of 1024 bytes".into(),
                        ));
                    }
                    let mac_mask =
                        match &a.mac_mask {
                            None => None,
                            Some(l) => {
                                let mut v = Vec::new();
                                for (j, m) in l.iter().enumerate() {
                                    v.push(parse_mac(m).map_err(|e| {
                                        invalid(key(&format!("aoe.mac_mask[{j}]")), e)
                                    })?);
                                }
                                Some(v)
                            }
                        };
                    Some(DiskAoeSettings {
                        slot: a.slot,
                        mac_mask,
                        config_string: a.config_string.clone(),
                    })
                }
            };
            let initiators = match &d.initiators {
                None => None,
                Some(l) => {
                    for (j, n) in l.iter().enumerate() {
                        check_iscsi_name(&n.to_ascii_lowercase())
                            .map_err(|m| invalid(key(&format!("initiators[{j}]")), m))?;
                    }
                    Some(l.clone())
                }
            };
            let sources = match &d.sources {
                None => None,
                Some(l) => Some(
                    parse_cidrs(l).map_err(|(j, m)| invalid(key(&format!("sources[{j}]")), m))?,
                ),
            };
            disks.push(DiskConfig {
                name: d.name.clone(),
                iqn,
                alias: d.alias.clone(),
                path: full,
                size: d.size.map(|s| s.0),
                read_only: d.read_only,
                block_size,
                lun,
                serial: d.serial.clone(),
                identity,
                portal_groups: d.portal_groups.clone(),
                aoe: aoe_disk,
                auth: d.auth.map_or(default_method, AuthMethod::from),
                initiators,
                sources,
            });
        }
        // Disks sharing a target must agree on where it is served.
        let mut groups_of: BTreeMap<&str, &Option<Vec<u16>>> = BTreeMap::new();
        for d in &disks {
            if let Some(g) = groups_of.insert(&d.iqn, &d.portal_groups) {
                if g != &d.portal_groups {
                    return Err(invalid(
                        format!("disk {:?}.portal_groups", d.name),
                        format!("differs from another disk of target {}", d.iqn),
                    ));
                }
            }
        }
        // ... and on who may log in to it.
        let mut policy_of: BTreeMap<&str, &DiskConfig> = BTreeMap::new();
        for d in &disks {
            if let Some(o) = policy_of.insert(&d.iqn, d) {
                if o.auth != d.auth || o.initiators != d.initiators || o.sources != d.sources {
                    return Err(invalid(
                        format!("disk {:?}.auth/initiators/sources", d.name),
                        format!(
                            "differs from disk {:?} of the same target {}; disks of one target share its access policy",
                            o.name, d.iqn
                        ),
                    ));
                }
            }
        }
        if auth.secrets.is_none()
            && (auth.discovery == AuthMethod::Chap
                || disks.iter().any(|d| d.auth == AuthMethod::Chap))
        {
            return Err(invalid(
                "auth.secrets".into(),
                "CHAP is required somewhere but no secrets file is named".into(),
            ));
        }
        // Fill in aliases agreed per target.
        for d in &mut disks {
            d.alias = aliases.get(&d.iqn).cloned().flatten();
        }
        Ok(IsuConfig {
            source: path.to_path_buf(),
            data_dir,
            listen,
            base_iqn: raw.isu.base_iqn,
            nop_interval,
            nop_timeout,
            disks,
            aoe,
            auth,
            limits,
            overrides: ov.clone(),
        })
    }
}

fn parse_cidrs(l: &[String]) -> Result<Vec<Cidr>, (usize, String)> {
    l.iter()
        .enumerate()
        .map(|(i, s)| s.parse::<Cidr>().map_err(|m| (i, m)))
        .collect()
}

fn parse_auth(
    raw: Option<&RawAuth>,
    base_dir: &Path,
    tpgts: &BTreeSet<u16>,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<AuthSettings, ConfigError> {
    let Some(a) = raw else {
        return Ok(AuthSettings::default());
    };
    let secrets = a.secrets.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            base_dir.join(p)
        }
    });
    let algorithms = match &a.algorithms {
        None => AlgorithmList::default(),
        Some(names) => AlgorithmList::from_names(names)
            .map_err(|e| invalid("auth.algorithms".into(), e.to_string()))?,
    };
    let mut backoff = BackoffConfig::default();
    if let Some(b) = &a.backoff {
        if let Some(n) = b.free_failures {
            backoff.free_failures = n;
        }
        if let Some(i) = b.base {
            backoff.base = i.0;
        }
        if let Some(i) = b.cap {
            backoff.cap = i.0;
        }
        if let Some(i) = b.quiet {
            backoff.quiet = i.0;
        }
        if let Some(n) = b.max_in_flight {
            if n == 0 {
                return Err(invalid(
                    "auth.backoff.max_in_flight".into(),
                    "must be at least 1".into(),
                ));
            }
            backoff.max_in_flight = n;
        }
        if backoff.cap < backoff.base {
            return Err(invalid(
                "auth.backoff.cap".into(),
                "must not be less than auth.backoff.base".into(),
            ));
        }
    }
    let mut portal_sources = BTreeMap::new();
    for (i, p) in a.portal.iter().enumerate() {
        if !tpgts.contains(&p.tag) {
            return Err(invalid(
                format!("auth.portal[{i}].tag"),
                format!(
                    "no portal has tag {} (portal group tags in use: {tpgts:?})",
                    p.tag
                ),
            ));
        }
        let l = parse_cidrs(&p.sources)
            .map_err(|(j, m)| invalid(format!("auth.portal[{i}].sources[{j}]"), m))?;
        if portal_sources.insert(p.tag, l).is_some() {
            return Err(invalid(
                format!("auth.portal[{i}].tag"),
                format!("portal group {} is listed twice", p.tag),
            ));
        }
    }
    Ok(AuthSettings {
        secrets,
        strict_secrets: a.strict_secrets,
        algorithms,
        discovery: a.discovery.map_or(AuthMethod::None, AuthMethod::from),
        portal_sources,
        backoff,
    })
}

// ---- [limits] ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    login_idle_timeout: Option<Interval>,
    max_pending_logins: Option<usize>,
    max_pending_logins_per_source: Option<usize>,
}

fn parse_limits(
    raw: Option<&RawLimits>,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<LoginLimits, ConfigError> {
    let mut l = LoginLimits::default();
    let Some(r) = raw else {
        return Ok(l);
    };
    if let Some(i) = r.login_idle_timeout {
        if i.0.is_zero() {
            return Err(invalid(
                "limits.login_idle_timeout".into(),
                "must be more than 0".into(),
            ));
        }
        l.idle_timeout = i.0;
    }
    for (key, value, field) in [
        (
            "max_pending_logins",
            r.max_pending_logins,
            &mut l.max_pending,
        ),
        (
            "max_pending_logins_per_source",
            r.max_pending_logins_per_source,
            &mut l.max_pending_per_source,
        ),
    ] {
        match value {
            Some(0) => {
                return Err(invalid(
                    format!("limits.{key}"),
                    "must be at least 1".into(),
                ))
            }
            Some(n) => *field = n,
            None => {}
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IsuConfig, ConfigError> {
        IsuConfig::parse(text, Path::new("/etc/opie/isu.toml"), &Overrides::default())
    }

    const BASE: &str =
        "[isu]\nbase_iqn = \"iqn.2026-01.org.example:isu1\"\nlisten = [\"127.0.0.1:3260\"]\n";

    #[test]
    fn minimal_and_defaults() {
        let c = parse(&format!("{BASE}[[disk]]\nname = \"d0\"\nsize = \"1G\"\n")).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/opie/opie-data"));
        let d = &c.disks[0];
        assert_eq!(d.iqn, "iqn.2026-01.org.example:isu1:d0");
        assert_eq!(d.path, Path::new("/etc/opie/opie-data/d0.img"));
        assert_eq!(
            (d.size, d.block_size, d.lun, d.read_only),
            (Some(1 << 30), 512, 0, false)
        );
        assert_eq!(c.nop_interval, Duration::from_secs(5));
    }

    #[test]
    fn overrides_replace_listen_and_data_dir() {
        let ov = Overrides {
            listen: vec!["[::1]:4000,3".into()],
            data_dir: Some("rel".into()),
        };
        let c = IsuConfig::parse(
            &format!("{BASE}[[disk]]\nname = \"d0\"\nsize = 4096\n"),
            Path::new("x/isu.toml"),
            &ov,
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("rel"));
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.listen[0].tpgt, 3);
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = err(&format!("{BASE}[[disk]]\nname = \"d0\"\nsize = \"1X\"\n"));
        assert!(
            e.starts_with("/etc/opie/isu.toml: ") && e.contains("unknown unit"),
            "{e}"
        );
        let e = err(&format!("{BASE}[[disk]]\nname = \"d0\"\nsize = 1000\n"));
        assert!(
            e.contains("disk \"d0\".size") && e.contains("multiple of the block size"),
            "{e}"
        );
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"d0\"\nblock_size = 1000\n"
        ));
        assert!(e.contains("disk \"d0\".block_size"), "{e}");
        let e = err(&format!("{BASE}[[disk]]\nname = \"Bad_Name\"\n"));
        assert!(e.contains("disk[0].name"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\n[[disk]]\nname = \"a\"\n"
        ));
        assert!(e.contains("another [[disk]]"), "{e}");
        let e = err(&format!("{BASE}[[disk]]\nname = \"a\"\nsise = 1\n"));
        assert!(e.contains("unknown field `sise`"), "{e}");
        let e = err("[isu]\nbase_iqn = \"IQN.bad\"\nlisten=[\"1.2.3.4\"]\n[[disk]]\nname=\"a\"\n");
        assert!(e.contains("isu.base_iqn"), "{e}");
        let e = err(
            "[isu]\nbase_iqn = \"iqn.2026-01.org.x\"\nlisten=[\"::1\"]\n[[disk]]\nname=\"a\"\n",
        );
        assert!(e.contains("isu.listen[0]") && e.contains("brackets"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\nportal_groups = [2]\n"
        ));
        assert!(e.contains("no portal has tag 2"), "{e}");
        let e = err(&format!("{BASE}[[disk]]\nname = \"a\"\n[[disk]]\nname = \"b\"\niqn = \"iqn.2026-01.org.example:isu1:a\"\n"));
        assert!(e.contains("already has LUN 0"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\n[disk.aoe]\nslot = 1\n"
        ));
        assert!(e.contains("needs an [aoe] table"), "{e}");
        let e = err(BASE);
        assert!(e.contains("no [[disk]]"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\nserial = \"has space\"\n"
        ));
        assert!(e.contains("disk \"a\".serial"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\nidentity = \"12\"\n"
        ));
        assert!(e.contains("32 hex digits"), "{e}");
    }

    #[test]
    fn luns_of_one_target_and_aoe() {
        let c = parse(&format!(
            "{BASE}[aoe]\ninterfaces = [\"eth1\"]\nshelf = 7\nmac_mask = [\"02:00:00:00:00:01\"]\n\
             [[disk]]\nname = \"a\"\niqn = \"iqn.2026-01.org.example:t\"\nalias = \"T\"\n[disk.aoe]\nslot = 1\n\
             [[disk]]\nname = \"b\"\niqn = \"iqn.2026-01.org.example:t\"\nlun = 1\n"
        ))
        .unwrap();
        assert_eq!(c.disks[1].alias.as_deref(), Some("T"));
        let a = c.aoe.unwrap();
        assert_eq!((a.shelf, a.buffer_count, a.mac_mask[0][5]), (7, None, 1));
        assert_eq!(c.disks[0].aoe.as_ref().unwrap().slot, 1);
    }

    #[test]
    fn auth_policy() {
        let c = parse(&format!(
            "{BASE}[auth]\nsecrets = \"s.toml\"\nalgorithms = [\"sha3-256\", \"md5\"]\ndiscovery = \"chap\"\n\
             [auth.backoff]\nfree_failures = 0\nbase = \"10ms\"\ncap = \"1s\"\nmax_in_flight = 3\n\
             [[auth.portal]]\ntag = 1\nsources = [\"10.0.0.0/8\", \"fd00::/8\"]\n\
             [[disk]]\nname = \"a\"\nauth = \"chap\"\ninitiators = [\"iqn.2026-01.org.example:i\"]\nsources = [\"192.0.2.7\"]\n\
             [[disk]]\nname = \"b\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.auth.secrets.as_deref(),
            Some(Path::new("/etc/opie/s.toml"))
        );
        assert_eq!(c.auth.discovery, AuthMethod::Chap);
        assert_eq!(c.auth.algorithms.as_slice().len(), 2);
        assert_eq!(c.auth.backoff.free_failures, 0);
        assert_eq!(c.auth.backoff.max_in_flight, 3);
        assert_eq!(c.auth.backoff.cap, Duration::from_secs(1));
        assert_eq!(c.auth.portal_sources[&1].len(), 2);
        assert_eq!(c.disks[0].auth, AuthMethod::Chap);
        assert_eq!(
            c.disks[0].sources.as_ref().unwrap()[0].to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(c.disks[1].auth, AuthMethod::None);
        assert!(c.disks[1].initiators.is_none());

        let e = err(&format!("{BASE}[[disk]]\nname = \"a\"\nauth = \"chap\"\n"));
        assert!(e.contains("auth.secrets"), "{e}");
        let e = err(&format!(
            "{BASE}[auth]\nalgorithms = [\"md4\"]\n[[disk]]\nname = \"a\"\n"
        ));
        assert!(e.contains("auth.algorithms") && e.contains("md4"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\nsources = [\"10.0.0.1/8\"]\n"
        ));
        assert!(e.contains("disk \"a\".sources[0]"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\nauth = \"kerberos\"\n"
        ));
        assert!(e.contains("kerberos"), "{e}");
        let e = err(&format!(
            "{BASE}[auth]\n[[auth.portal]]\ntag = 9\nsources = [\"10.0.0.0/8\"]\n[[disk]]\nname = \"a\"\n"
        ));
        assert!(e.contains("auth.portal[0].tag"), "{e}");
        let e = err(&format!(
            "{BASE}[[disk]]\nname = \"a\"\niqn = \"iqn.2026-01.org.example:t\"\ninitiators = [\"iqn.2026-01.org.example:i\"]\n\
             [[disk]]\nname = \"b\"\niqn = \"iqn.2026-01.org.example:t\"\nlun = 1\n"
        ));
        assert!(e.contains("share its access policy"), "{e}");
    }

    #[test]
    fn login_limits() {
        let base = "[isu]\nbase_iqn = \"iqn.2026-01.org.opie:x\"\nlisten = [\"127.0.0.1:3260\"]\n\
                    [[disk]]\nname = \"a\"\nsize = 4096\n";
        let c = parse(base).unwrap();
        assert_eq!(c.limits, LoginLimits::default());
        let c = parse(&format!(
            "{base}[limits]\nlogin_idle_timeout = \"2s\"\nmax_pending_logins = 100\n\
             max_pending_logins_per_source = 10\n"
        ))
        .unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(
            (c.limits.max_pending, c.limits.max_pending_per_source),
            (100, 10)
        );
        let e = err(&format!(
            "{base}[limits]\nmax_pending_logins_per_source = 0\n"
        ));
        assert!(
            e.contains("limits.max_pending_logins_per_source: must be at least 1"),
            "{e}"
        );
        let e = err(&format!("{base}[limits]\nlogin_idle_timeout = 0\n"));
        assert!(
            e.contains("limits.login_idle_timeout: must be more than 0"),
            "{e}"
        );
        assert!(err(&format!("{base}[limits]\nlogin_timeout = 1\n")).contains("unknown field"));
    }
}
