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

use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

use blockdev::claim::{self, Claim};
use target_iscsi::access::Access;
use tracing::debug;

use super::{access, ExportError, IsuError};
use crate::config::{DiskConfig, IsuConfig};
use crate::portal::BoundPortal;
use crate::state::{self, DataDir};

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
    let mut stores: Vec<(&DiskConfig, Store)> = Vec::new();
    let mut create = Vec::new();
    for d in &cfg.disks {
        let store = backing_store(d)?;
        if let Some((other, _)) = stores.iter().find(|(_, s)| s.same(&store)) {
            return Err(IsuError::SameStore {
                disk: d.name.clone(),
                path: d.path.clone(),
                other: other.name.clone(),
                other_path: other.path.clone(),
            });
        }
        create.push(matches!(store, Store::New(_)));
        stores.push((d, store));
        persisted_state(cfg, d)?;
    }
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

/// The backing store of `d` as serve will open or create it.
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
    // Opened as serve opens it, so permissions and read-only media show here.
    let mut f = OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(&d.path)
        .map_err(|e| err(e.to_string()))?;
    let bytes = f.seek(SeekFrom::End(0)).map_err(|e| err(e.to_string()))?;
    if bytes < u64::from(d.block_size) {
        return Err(err(format!("smaller than one {}-byte block", d.block_size)));
    }
    if let Some(holder) = Claim::probe(&f, !d.read_only).map_err(|e| err(e.to_string()))? {
        return Err(IsuError::InUse {
            disk: d.name.clone(),
            path: d.path.clone(),
            holder: state::describe_holder(&holder),
        });
    }
    debug!(disk = %d.name, path = %d.path.display(), bytes, "backing store checked");
    Ok(Store::Existing(meta))
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
