//! Persistent state in the data directory.
//!
//! Layout:
//! - `opie-isu.lock`: held (an OFD lock) while a daemon uses the directory, with its pid;
//! - `state/<disk>/identity`: the disk's 128-bit identity, random at first start
//!   and reused forever after (VPD 0x80 serial and 0x83 designator derive from it,
//!   so every portal and every restart shows the same LU to multipath);
//! - `state/<disk>/`: other persistent LU state (persistent reservations with APTPL).
//!
//! The data directory itself may be a symbolic link (the admin's choice), but
//! nothing below it is followed: the lock file, `state/`, `state/<disk>/` and
//! every state file must be real files and directories
//! ([`blockdev::statefile`]), so a link planted there cannot make the daemon
//! read or overwrite another file. Files are replaced atomically (a fresh
//! temporary file, fsync, rename, fsync the directory).

use std::fs::{self, File};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use blockdev::claim::{Claim, Holder, InUse};
use blockdev::{statefile, DeviceIdentity};

/// Name of the lock file in the ISU's data directory.
pub const LOCK_FILE: &str = "opie-isu.lock";
/// Name of the lock file in the head's data directory.
pub const HEAD_LOCK_FILE: &str = "opie-head.lock";

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem error on a state file, or a state file refused (a
    /// symbolic link, not a regular file or directory).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {dir} is in use by {holder}: one daemon per data directory")]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// Who holds it (pid and command line when known).
        holder: String,
    },
    /// A state file exists but cannot be understood; it is left alone.
    #[error("{path}: corrupt ({what}); fix or remove it (removing gives the disk a NEW identity)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(path: &Path, what: &str) -> StateError {
    io_err(path)(io::Error::new(
        io::ErrorKind::InvalidInput,
        what.to_string(),
    ))
}

/// The data directory, locked for this process.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: (File, Claim),
}

/// Whether `path` is a real directory (`false`: it does not exist). A
/// symbolic link or anything else in its place is refused.
fn real_dir(path: &Path) -> Result<bool, StateError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(refused(
            path,
            "is a symbolic link (opie reads and writes its state only through real files and directories; remove the link)",
        )),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(refused(path, "is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Creates `path` as a directory unless it is one; refuses a link.
fn ensure_real_dir(path: &Path) -> Result<(), StateError> {
    if real_dir(path)? {
        return Ok(());
    }
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => real_dir(path).map(|_| ()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Where `path` would be once created: its nearest existing ancestor
/// (symbolic links resolved) joined with the missing rest. Refuses it when
/// that ancestor is not a directory this process may create entries in.
pub fn creatable(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let mut missing = Vec::new();
    let mut at = abs.as_path();
    let base = loop {
        match fs::canonicalize(at) {
            Ok(c) => break c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at.file_name().unwrap_or_default().to_owned());
                at = at.parent().ok_or(e)?;
            }
            Err(e) => return Err(e),
        }
    };
    if !base.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", base.display()),
        ));
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(base.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a NUL-terminated path; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot create entries in {}: {e}", base.display()),
        ));
    }
    Ok(missing.iter().rev().fold(base, |p, m| p.join(m)))
}

/// The data directory of the opie daemon `pid`: the directory of the lock
/// file it holds open, if it can be seen in `/proc`.
pub fn data_dir_of(pid: u32) -> Option<PathBuf> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .find(|t| {
            t.file_name()
                .is_some_and(|n| n == LOCK_FILE || n == HEAD_LOCK_FILE)
        })
        .and_then(|t| t.parent().map(Path::to_path_buf))
}

/// Who holds something, for messages: pid, command and data dir of an opie.
pub fn describe_holder(h: &Holder) -> String {
    match h {
        Holder::Process { pid, .. } => match data_dir_of(*pid) {
            Some(dir) => format!("{h}, data dir {}", dir.display()),
            None => h.to_string(),
        },
        _ => h.to_string(),
    }
}

fn locked(root: &Path, holder: &Holder) -> StateError {
    StateError::Locked {
        dir: root.to_path_buf(),
        holder: holder.to_string(),
    }
}

/// Reads the identity file at `path`, if there is one.
fn load_identity(path: &Path) -> Result<Option<DeviceIdentity>, StateError> {
    let Some(bytes) = statefile::read(path).map_err(io_err(path))? else {
        return Ok(None);
    };
    let s = String::from_utf8_lossy(&bytes);
    let hex = s
        .lines()
        .find_map(|l| l.trim().strip_prefix("uuid="))
        .ok_or_else(|| StateError::Corrupt {
            path: path.to_path_buf(),
            what: "no uuid= line".into(),
        })?;
    DeviceIdentity::parse_hex(hex)
        .map(Some)
        .ok_or_else(|| StateError::Corrupt {
            path: path.to_path_buf(),
            what: format!("{hex:?} is not 32 hex digits"),
        })
}

/// The state directories and identity files of `disks` below `real`.
fn inspect_disks(real: &Path, disks: &[&str]) -> Result<(), StateError> {
    let state = real.join("state");
    if real_dir(&state)? {
        for d in disks {
            let dir = state.join(d);
            if real_dir(&dir)? {
                load_identity(&dir.join("identity"))?;
            }
        }
    }
    Ok(())
}

impl DataDir {
    /// Checks what [`DataDir::open`] and the disks' state would refuse,
    /// creating and locking nothing: the directory can be created or is
    /// one, its lock file is a real file no other process holds, and the
    /// state directories and identity files of `disks` are real and sound.
    pub fn inspect(root: &Path, disks: &[&str]) -> Result<(), StateError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused(root, "is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return creatable(root).map(|_| ()).map_err(io_err(root));
            }
            Err(e) => return Err(io_err(root)(e)),
        }
        // The directory itself may be a link (the admin's choice): resolved
        // once, so that nothing below it is.
        let real = fs::canonicalize(root).map_err(io_err(root))?;
        let lock_path = real.join(LOCK_FILE);
        if let Some(f) = statefile::open(&lock_path, false).map_err(io_err(&lock_path))? {
            if let Some(h) = Claim::probe(&f, true).map_err(io_err(&lock_path))? {
                return Err(locked(root, &h));
            }
        }
        inspect_disks(&real, disks)
    }

    /// Checks, creating nothing, that the state directories and identity
    /// files of `disks` in this (open) data directory are real and sound:
    /// what [`DataDir::inspect`] checks of them, for disks added at run time.
    pub fn inspect_disks(&self, disks: &[&str]) -> Result<(), StateError> {
        inspect_disks(&self.root, disks)
    }

    /// Creates (if needed) and locks `root` (an ISU's). Fails if another
    /// process holds it.
    pub fn open(root: &Path) -> Result<DataDir, StateError> {
        DataDir::open_locked_by(root, LOCK_FILE)
    }

    /// [`DataDir::open`] with the lock file `lock` (the head's is
    /// [`HEAD_LOCK_FILE`]).
    pub fn open_locked_by(root: &Path, lock: &str) -> Result<DataDir, StateError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        // The directory itself may be a link (the admin's choice): resolved
        // once, so that nothing below it is.
        let real = fs::canonicalize(root).map_err(io_err(root))?;
        let lock_path = real.join(lock);
        let mut lock = statefile::open(&lock_path, true)
            .map_err(io_err(&lock_path))?
            .expect("created");
        let claim = match Claim::take(&lock, &lock_path, true) {
            Ok(c) => c,
            Err(e) => {
                return Err(match InUse::of(&e) {
                    Some(u) => locked(root, &u.holder),
                    None => io_err(&lock_path)(e),
                })
            }
        };
        lock.set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| writeln!(lock, "{}", std::process::id()))
            .map_err(io_err(&lock_path))?;
        Ok(DataDir {
            root: real,
            _lock: (lock, claim),
        })
    }

    /// The directory itself, symbolic links resolved.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory of one disk (created if missing; a symbolic
    /// link there, or at `state/`, is refused).
    pub fn disk_dir(&self, disk: &str) -> Result<PathBuf, StateError> {
        let state = self.root.join("state");
        ensure_real_dir(&state)?;
        let d = state.join(disk);
        ensure_real_dir(&d)?;
        Ok(d)
    }

    /// The persisted identity of `disk`, created at random on first use.
    pub fn identity(&self, disk: &str) -> Result<DeviceIdentity, StateError> {
        let path = self.disk_dir(disk)?.join("identity");
        if let Some(id) = load_identity(&path)? {
            return Ok(id);
        }
        let id = DeviceIdentity::random();
        let text = format!(
            "# identity of opie disk {disk:?}: VPD 0x80/0x83 derive from it; keep it stable\nuuid={id}\n"
        );
        statefile::replace(&path, text.as_bytes()).map_err(io_err(&path))?;
        tracing::info!(disk, identity = %id, "created a new disk identity");
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let a = {
            let d = DataDir::open(t.path()).unwrap();
            let a = d.identity("d0").unwrap();
            assert_eq!(a, d.identity("d0").unwrap());
            assert_ne!(a, d.identity("d1").unwrap());
            a
        };
        let d = DataDir::open(t.path()).unwrap();
        assert_eq!(d.identity("d0").unwrap(), a);
    }

    #[test]
    fn inspect_creates_and_locks_nothing_and_finds_what_open_refuses() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("data");
        DataDir::inspect(&root, &["d0"]).unwrap();
        assert!(!root.exists());
        let id0 = {
            let d = DataDir::open(&root).unwrap();
            let id0 = d.identity("d0").unwrap();
            let e = DataDir::inspect(&root, &["d0"]).unwrap_err().to_string();
            assert!(e.contains("is in use by this process"), "{e}");
            id0
        };
        DataDir::inspect(&root, &["d0"]).unwrap();
        DataDir::open(&root).unwrap();
        // The data directory itself may be a link.
        let alias = t.path().join("alias");
        std::os::unix::fs::symlink(&root, &alias).unwrap();
        DataDir::inspect(&alias, &["d0"]).unwrap();
        let d = DataDir::open(&alias).unwrap();
        assert_eq!(d.identity("d0").unwrap(), id0);
        let e = DataDir::inspect(&root, &["d0"]).unwrap_err().to_string();
        assert!(e.contains("is in use by this process"), "{e}");
        drop(d);
        // A state directory that is a link, elsewhere: refused by both.
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("state/d1")).unwrap();
        let e = DataDir::inspect(&root, &["d0", "d1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("state/d1") && e.contains("symbolic link"), "{e}");
        let d = DataDir::open(&root).unwrap();
        let e = d.identity("d1").unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn creatable_resolves_links_of_the_existing_part() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("alias")).unwrap();
        assert_eq!(
            creatable(&real.join("alias/a/b.img")).unwrap(),
            real.join("a/b.img")
        );
        fs::write(real.join("file"), "").unwrap();
        assert!(creatable(&real.join("file/b.img")).is_err());
    }

    #[test]
    fn lock_excludes_a_second_user_and_corruption_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::open(t.path()).unwrap();
        let e = DataDir::open(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("is in use by this process") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        fs::write(d.disk_dir("x").unwrap().join("identity"), "uuid=zz\n").unwrap();
        let e = d.identity("x").unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
