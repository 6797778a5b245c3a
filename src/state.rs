//! Persistent state in the data directory.
//!
//! Layout:
//! - `opie-isu.lock`: held (flock) while a daemon uses the directory, with its pid;
//! - `state/<disk>/identity`: the disk's 128-bit identity, random at first start
//!   and reused forever after (VPD 0x80 serial and 0x83 designator derive from it,
//!   so every portal and every restart shows the same LU to multipath);
//! - `state/<disk>/`: other persistent LU state (persistent reservations with APTPL).
//!
//! Files are replaced atomically (write, fsync, rename, fsync the directory).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use blockdev::DeviceIdentity;

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem error on a state file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {dir} is in use by another opie process{pid}")]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// " (pid N)" when known.
        pid: String,
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

/// The data directory, locked for this process.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

/// Writes `contents` to `path` atomically and durably.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl DataDir {
    /// Creates (if needed) and locks `root`. Fails if another process holds it.
    pub fn open(root: &Path) -> Result<DataDir, StateError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let lock_path = root.join("opie-isu.lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut s = String::new();
                let _ = lock.read_to_string(&mut s);
                let pid = s.trim();
                return Err(StateError::Locked {
                    dir: root.to_path_buf(),
                    pid: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            return Err(io_err(&lock_path)(e));
        }
        lock.set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| writeln!(lock, "{}", std::process::id()))
            .map_err(io_err(&lock_path))?;
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory of one disk (created if missing).
    pub fn disk_dir(&self, disk: &str) -> Result<PathBuf, StateError> {
        let d = self.root.join("state").join(disk);
        fs::create_dir_all(&d).map_err(io_err(&d))?;
        Ok(d)
    }

    /// The persisted identity of `disk`, created at random on first use.
    pub fn identity(&self, disk: &str) -> Result<DeviceIdentity, StateError> {
        let path = self.disk_dir(disk)?.join("identity");
        match fs::read_to_string(&path) {
            Ok(s) => {
                let hex = s
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("uuid="))
                    .ok_or_else(|| StateError::Corrupt {
                        path: path.clone(),
                        what: "no uuid= line".into(),
                    })?;
                DeviceIdentity::parse_hex(hex).ok_or_else(|| StateError::Corrupt {
                    path: path.clone(),
                    what: format!("{hex:?} is not 32 hex digits"),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = DeviceIdentity::random();
                let text = format!(
                    "# identity of opie disk {disk:?}: VPD 0x80/0x83 derive from it; keep it stable\nuuid={id}\n"
                );
                write_atomic(&path, text.as_bytes())?;
                tracing::info!(disk, identity = %id, "created a new disk identity");
                Ok(id)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
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
    fn lock_excludes_a_second_user_and_corruption_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let d = DataDir::open(t.path()).unwrap();
        let e = DataDir::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another opie process"), "{e}");
        fs::write(d.disk_dir("x").unwrap().join("identity"), "uuid=zz\n").unwrap();
        let e = d.identity("x").unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
