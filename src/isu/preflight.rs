//! The checks `opie isu serve` makes before it creates or locks anything,
//! which are all that `opie isu check` does: what one refuses, the other
//! does too, from the same code.
//!
//! Checked, in order: the access policy (secrets file, credentials); the
//! data directory (creatable or a directory, lock file not held and not a
//! link, state directories and identity files real and sound); each disk's
//! backing store (exists as a regular file of the configured size or a block
//! device, can be opened as serve will open it, no other process holds it,
//! or can be created: never under `/dev`), and that no two disks are one
//! store however their paths are spelled (relative or absolute, symbolic or
//! hard links, two nodes of one block device); each disk's persisted
//! reservations and AoE state; the portals (resolve, and bind: a port held
//! by another process or an address not on this host is found here); the
//! AoE interfaces.
//!
//! A SIGHUP reload checks the disks it adds with the same code
//! ([`disk_stores`]), against the disks already served.

use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use blockdev::claim::{self, Claim};
use target_iscsi::access::Access;
use tracing::debug;

use super::{access, ExportError, IsuError};
use crate::config::{DiskConfig, IsuConfig};
use crate::state::{self, DataDir};
use aggregator::portal::BoundPortal;

/// What serve needs from the checks.
#[derive(Debug)]
pub struct Preflight {
    /// The access policy, built from the config and the secrets file.
    pub access: Access,
    /// Every address to listen on.
    pub portals: Vec<BoundPortal>,
    /// Per disk, in config order: whether its backing file is to be created.
    pub create: Vec<bool>,
}

/// How a checked disk is to be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    /// Its backing file is to be created.
    pub create: bool,
    /// Its store is one a served disk holds and gives up first (the disk
    /// moves to another LUN or target): it can be opened only after that.
    pub after_release: bool,
}

/// A disk served now, whose store the disks checked must not share.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// Its configuration.
    pub disk: &'a DiskConfig,
    /// It gives its store up before the checked disks are opened.
    pub released: bool,
}

/// A disk's backing store, to tell two spellings of one store apart.
enum Store {
    /// It exists: its `stat`.
    Existing(Metadata),
    /// It is to be created at this resolved path.
    New(PathBuf),
}

impl Store {
    fn same(&self, other: &Store) -> bool {
        match (self, other) {
            (Store::Existing(a), Store::Existing(b)) => claim::same_store(a, b),
            (Store::New(a), Store::New(b)) => a == b,
            _ => false,
        }
    }
}

/// Runs every check (see the module docs); the first failure is returned.
pub fn run(cfg: &IsuConfig) -> Result<Preflight, IsuError> {
    let access = access::build(cfg)?;
    let names: Vec<&str> = cfg.disks.iter().map(|d| d.name.as_str()).collect();
    DataDir::inspect(&cfg.data_dir, &names)?;
    let disks: Vec<&DiskConfig> = cfg.disks.iter().collect();
    let create = disk_stores(cfg, &disks, &[])?
        .into_iter()
        .map(|o| o.create)
        .collect();
    let portals = resolve_portals(cfg)?;
    for p in &portals {
        // Bound and let go at once: what serve's bind would meet.
        std::net::TcpListener::bind(p.listen).map_err(|e| IsuError::Portal {
            portal: p.listen.to_string(),
            message: format!("cannot listen: {e}"),
        })?;
    }
    if let Some(aoe) = &cfg.aoe {
        for name in &aoe.interfaces {
            let known = std::ffi::CString::new(name.as_bytes())
                // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
                .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
                .unwrap_or(false);
            if !known {
                return Err(ExportError::Aoe(target_aoe::AoeError::Interface {
                    name: name.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no such interface"),
                })
                .into());
            }
        }
    }
    Ok(Preflight {
        access,
        portals,
        create,
    })
}

/// Checks the backing stores of `disks` as serve will open or create them:
/// each is sound, none is the store of another, nor of a `served` disk
/// unless that one gives it up first, none is held by another process; and
/// their persisted state. Returns how to open each, in order.
pub fn disk_stores(
    cfg: &IsuConfig,
    disks: &[&DiskConfig],
    served: &[Served<'_>],
) -> Result<Vec<Opening>, IsuError> {
    let same_store = |d: &DiskConfig, other: &DiskConfig| IsuError::SameStore {
        disk: d.name.clone(),
        path: d.path.clone(),
        other: other.name.clone(),
        other_path: other.path.clone(),
    };
    let mut held: Vec<(Served<'_>, Store)> = Vec::new();
    for s in served {
        // A served store exists (it is open); one gone since is no clash.
        if let Ok(m) = fs::metadata(&s.disk.path) {
            held.push((*s, Store::Existing(m)));
        }
    }
    let mut stores: Vec<(&DiskConfig, Store)> = Vec::new();
    let mut out = Vec::new();
    for &d in disks {
        let store = backing_store(d)?;
        if let Some((other, _)) = stores.iter().find(|(_, s)| s.same(&store)) {
            return Err(same_store(d, other));
        }
        let after_release = match held.iter().find(|(_, s)| s.same(&store)) {
            Some((s, _)) if s.released => true,
            Some((s, _)) => return Err(same_store(d, s.disk)),
            None => false,
        };
        if !after_release {
            probe_holder(d)?;
        }
        out.push(Opening {
            create: matches!(store, Store::New(_)),
            after_release,
        });
        stores.push((d, store));
        persisted_state(cfg, d)?;
    }
    Ok(out)
}

/// The backing store of `d` as serve will open or create it (who else
/// holds it is [`probe_holder`]'s).
fn backing_store(d: &DiskConfig) -> Result<Store, IsuError> {
    let err = |message: String| IsuError::Disk {
        disk: d.name.clone(),
        path: d.path.clone(),
        message,
    };
    let meta = match fs::metadata(&d.path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if d.size.is_none() {
                return Err(err(
                    "does not exist and the disk has no size to create it with".into(),
                ));
            }
            let at =
                state::creatable(&d.path).map_err(|e| err(format!("cannot be created: {e}")))?;
            // `at` has every link of the existing part resolved.
            if at.starts_with("/dev") {
                return Err(err(
                    "does not exist, and opie never creates files under /dev: is the device missing, or its name misspelled?".into(),
                ));
            }
            return Ok(Store::New(at));
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if meta.is_file() {
        if let Some(want) = d.size {
            if meta.len() != want {
                return Err(err(format!(
                    "the file is {} bytes but the config says size = {want}; \
                     fix the size (opie never resizes or truncates a disk)",
                    meta.len()
                )));
            }
        }
    } else if !meta.file_type().is_block_device() {
        return Err(err(
            "is neither a regular file nor a block device".to_string()
        ));
    }
    let mut f = open_as_served(d).map_err(|e| err(e.to_string()))?;
    let bytes = f.seek(SeekFrom::End(0)).map_err(|e| err(e.to_string()))?;
    if bytes < u64::from(d.block_size) {
        return Err(err(format!("smaller than one {}-byte block", d.block_size)));
    }
    debug!(disk = %d.name, path = %d.path.display(), bytes, "backing store checked");
    Ok(Store::Existing(meta))
}

/// Opens the existing store of `d` as serve opens it, so permissions and
/// read-only media show.
fn open_as_served(d: &DiskConfig) -> io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(&d.path)
}

/// Refuses the existing store of `d` when another process (or another disk
/// of this one) holds it.
fn probe_holder(d: &DiskConfig) -> Result<(), IsuError> {
    let err = |e: io::Error| IsuError::Disk {
        disk: d.name.clone(),
        path: d.path.clone(),
        message: e.to_string(),
    };
    let f = match open_as_served(d) {
        Ok(f) => f,
        // To be created: nobody holds it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    if let Some(holder) = Claim::probe(&f, !d.read_only).map_err(err)? {
        return Err(IsuError::InUse {
            disk: d.name.clone(),
            path: d.path.clone(),
            holder: state::describe_holder(&holder),
        });
    }
    Ok(())
}

/// The disk's persisted reservations and AoE state, read as the targets
/// will read them at start.
fn persisted_state(cfg: &IsuConfig, d: &DiskConfig) -> Result<(), IsuError> {
    let dir = cfg.data_dir.join("state").join(&d.name);
    scsi_disk::check_pr_state(&dir.join("pr-state")).map_err(|source| ExportError::Scsi {
        iqn: d.iqn.clone(),
        source,
    })?;
    if d.aoe.is_some() {
        let config = dir.join("aoe-config");
        let access = target_aoe::state::access_path(&config);
        let loaded = target_aoe::state::load_config(&config)
            .map_err(|source| (config, source))
            .and_then(|_| {
                target_aoe::state::load_access(&access, &[])
                    .map(|_| ())
                    .map_err(|source| (access, source))
            });
        if let Err((path, source)) = loaded {
            return Err(ExportError::Aoe(target_aoe::AoeError::State { path, source }).into());
        }
    }
    Ok(())
}

/// Resolves every portal; two portals on one address are refused.
fn resolve_portals(cfg: &IsuConfig) -> Result<Vec<BoundPortal>, IsuError> {
    let mut out: Vec<BoundPortal> = Vec::new();
    for p in &cfg.listen {
        let bound = p.resolve().map_err(|message| IsuError::Portal {
            portal: p.to_string(),
            message,
        })?;
        for b in bound {
            if out.iter().any(|o| o.listen == b.listen) {
                return Err(IsuError::Portal {
                    portal: p.to_string(),
                    message: format!("{} is already bound by another portal", b.listen),
                });
            }
            out.push(b);
        }
    }
    Ok(out)
}
