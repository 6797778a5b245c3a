//! Claims that keep a backing file to one user at a time.
//!
//! Two writers on one file (two daemons, or one file exported twice under two
//! names) each cache and order their own writes and corrupt each other's
//! data. A [`Claim`] is an open-file-description lock (`F_OFD_SETLK`) on the
//! whole file: exclusive for a writer, shared for a reader, so readers may
//! share a file but nobody shares it with a writer. It lives as long as the
//! descriptor it was taken on, in this process or any other, and dies with
//! the process however it ends. A writable block device is also opened with
//! `O_EXCL`, the kernel's exclusive claim, which refuses a device that is
//! mounted, part of an md or device-mapper array, or claimed through another
//! device node of the same device.
//!
//! When a claim is refused, [`InUse`] names the holder: OFD locks record no
//! owner (`F_OFD_GETLK` and `/proc/locks` give pid -1), so the holder is found
//! by scanning `/proc/*/fd` for descriptors of the same file that hold a lock
//! (`lock:` in their `fdinfo`); for a block device also its mount points and
//! its holders in sysfs. [`Claim::probe`] tells who would stop a claim
//! without taking one (for `opie isu check`).

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A held claim on a backing file (see the module docs). The OFD lock lives
/// on the descriptor it was taken on, so keep that open as long as this.
#[derive(Debug)]
pub struct Claim {
    /// The `O_EXCL` descriptor of a writable block device.
    _exclusive: Option<File>,
}

/// Who stops a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A process holding a lock on the file (possibly this one).
    Process {
        /// Its pid.
        pid: u32,
        /// Its command line, as `ps` shows it.
        command: String,
    },
    /// A block device mounted as a file system.
    Mounted(PathBuf),
    /// A block device claimed by the kernel: members of md, LVM or other
    /// device-mapper devices (the holders' names, e.g. `dm-0`).
    Kernel(Vec<String>),
    /// Some process or kernel user that could not be identified.
    Unknown,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Process { pid, .. } if *pid == std::process::id() => {
                write!(f, "this process (pid {pid})")
            }
            Holder::Process { pid, command } => write!(f, "pid {pid} ({command})"),
            Holder::Mounted(at) => write!(f, "a file system mounted at {}", at.display()),
            Holder::Kernel(by) => write!(f, "the kernel (held by {})", by.join(", ")),
            Holder::Unknown => f.write_str("another process (not identified)"),
        }
    }
}

/// A backing file claimed by someone else. Carried inside the
/// `io::Error` (kind `ResourceBusy`) that [`Claim::take`] returns; get it
/// back with [`InUse::of`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} is in use by {holder}", path.display())]
pub struct InUse {
    /// The file as it was named.
    pub path: PathBuf,
    /// Who holds it.
    pub holder: Holder,
}

impl InUse {
    /// The claim refusal inside `e`, if that is what `e` is.
    pub fn of(e: &io::Error) -> Option<&InUse> {
        e.get_ref()?.downcast_ref::<InUse>()
    }

    fn into_error(self) -> io::Error {
        io::Error::new(io::ErrorKind::ResourceBusy, self)
    }
}

fn ofd_lock(file: &File, cmd: libc::c_int, write: bool) -> io::Result<libc::flock> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct
    // (start 0, length 0: the whole file; pid 0, as OFD locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl reads and (for F_OFD_GETLK) writes one `flock`, valid
    // for the call, on a descriptor we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if rc == 0 {
        Ok(fl)
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Claim {
    /// Claims `file`, opened at `path`: for writing (`write`) or for reading.
    /// Fails with an `io::Error` of kind `ResourceBusy` holding an [`InUse`]
    /// when someone else holds it.
    pub fn take(file: &File, path: &Path, write: bool) -> io::Result<Claim> {
        match ofd_lock(file, libc::F_OFD_SETLK, write) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                let holder = find_holder(file, write)?.unwrap_or(Holder::Unknown);
                return Err(InUse {
                    path: path.to_path_buf(),
                    holder,
                }
                .into_error());
            }
            Err(e) => return Err(e),
        }
        let meta = file.metadata()?;
        let exclusive = if write && meta.file_type().is_block_device() {
            let opened = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
                .open(path);
            match opened {
                Ok(f) if f.metadata()?.rdev() == meta.rdev() => Some(f),
                Ok(_) => {
                    return Err(io::Error::other(format!(
                        "{} was replaced by another device while being opened",
                        path.display()
                    )))
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let holder = block_holder(&meta)?.unwrap_or(Holder::Unknown);
                    return Err(InUse {
                        path: path.to_path_buf(),
                        holder,
                    }
                    .into_error());
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        Ok(Claim {
            _exclusive: exclusive,
        })
    }

    /// Who would stop [`Claim::take`] on `file` now,
    /// found without taking anything: a conflicting lock, and for a block
    /// device also a mount, a kernel holder, or a lock taken through
    /// another node of the same device. `None`: nobody.
    pub fn probe(file: &File, write: bool) -> io::Result<Option<Holder>> {
        let fl = ofd_lock(file, libc::F_OFD_GETLK, write)?;
        if fl.l_type != libc::F_UNLCK as libc::c_short {
            return Ok(Some(find_holder(file, write)?.unwrap_or(Holder::Unknown)));
        }
        let meta = file.metadata()?;
        if meta.file_type().is_block_device() {
            if let Some(h) = find_holder(file, write)? {
                return Ok(Some(h));
            }
            if write {
                return block_holder(&meta);
            }
        }
        Ok(None)
    }
}

/// Whether two `stat`s are the same backing store: the same inode, or for
/// block devices the same device whatever node names it.
pub fn same_store(a: &Metadata, b: &Metadata) -> bool {
    if a.file_type().is_block_device() && b.file_type().is_block_device() {
        a.rdev() == b.rdev()
    } else {
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }
}

/// The mode of the locks a `fdinfo` file lists: Some(true) for a write
/// lock, Some(false) for read locks only, None for none.
fn fdinfo_lock(text: &str) -> Option<bool> {
    let mut any = None;
    for l in text.lines().filter(|l| l.starts_with("lock:")) {
        let write = l.split_whitespace().any(|w| w == "WRITE");
        any = Some(any.unwrap_or(false) || write);
    }
    any
}

/// A process (other than through `file` itself) holding a lock on the same
/// store as `file` that conflicts with a claim for `write`.
fn find_holder(file: &File, write: bool) -> io::Result<Option<Holder>> {
    let me = file.metadata()?;
    let own_fd = (std::process::id(), file.as_raw_fd());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Ok(None);
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if !same_store(&me, &m) {
                continue;
            }
            let n = fd.file_name();
            if (pid, n.to_str().and_then(|s| s.parse().ok()).unwrap_or(-1)) == own_fd {
                continue;
            }
            let info =
                std::fs::read_to_string(p.path().join("fdinfo").join(&n)).unwrap_or_default();
            match fdinfo_lock(&info) {
                Some(holds_write) if holds_write || write => {
                    let command = command_line(&p.path());
                    return Ok(Some(Holder::Process { pid, command }));
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

/// The command line of the process whose `/proc` directory is `proc`, as
/// `ps` shows it.
fn command_line(proc: &Path) -> String {
    std::fs::read(proc.join("cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The kernel user of a block device: a mount, or holders in sysfs.
fn block_holder(meta: &Metadata) -> io::Result<Option<Holder>> {
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    let id = format!("{major}:{minor}");
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        // Fields: mount id, parent id, major:minor, root, mount point, ...
        for l in mounts.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() > 4 && f[2] == id {
                return Ok(Some(Holder::Mounted(PathBuf::from(f[4]))));
            }
        }
    }
    let holders = std::fs::read_dir(format!("/sys/dev/block/{id}/holders"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !holders.is_empty() {
        return Ok(Some(Holder::Kernel(holders)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &Path, write: bool) -> File {
        OpenOptions::new().read(true).write(write).open(p).unwrap()
    }

    #[test]
    fn a_writer_excludes_everyone_and_readers_share() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let a = open(&p, true);
        let claim = Claim::take(&a, &p, true).unwrap();
        // Another open file description, even in this process, is refused,
        // and the refusal names the holder.
        for write in [true, false] {
            let b = open(&p, write);
            let e = Claim::take(&b, &p, write).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
            let in_use = InUse::of(&e).expect("an InUse");
            assert_eq!(
                in_use.holder,
                Holder::Process {
                    pid: std::process::id(),
                    command: command_line(Path::new("/proc/self")),
                }
            );
            assert!(e.to_string().contains("this process"), "{e}");
            assert!(Claim::probe(&b, write).unwrap().is_some());
        }
        // A hard link is the same file.
        let link = t.path().join("link.img");
        std::fs::hard_link(&p, &link).unwrap();
        assert!(Claim::take(&open(&link, true), &link, true).is_err());
        drop(claim);
        drop(a);
        // Gone with its descriptor.
        let b = open(&p, false);
        assert_eq!(Claim::probe(&b, true).unwrap(), None);
        let r1 = Claim::take(&b, &p, false).unwrap();
        let c = open(&p, false);
        let r2 = Claim::take(&c, &p, false).unwrap();
        let e = Claim::take(&open(&p, true), &p, true).unwrap_err();
        assert!(InUse::of(&e).is_some(), "{e}");
        drop((r1, r2));
    }

    #[test]
    fn probing_takes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let a = open(&p, false);
        assert_eq!(Claim::probe(&a, true).unwrap(), None);
        // Nothing was left behind by the probe: a writer still gets it.
        let b = open(&p, true);
        let _claim = Claim::take(&b, &p, true).unwrap();
    }

    #[test]
    fn fdinfo_lock_lines() {
        assert_eq!(fdinfo_lock("pos:\t0\nflags:\t02\n"), None);
        assert_eq!(
            fdinfo_lock("pos:\t0\nlock:\t1: OFDLCK ADVISORY  READ -1 fe:00:1 0 EOF\n"),
            Some(false)
        );
        assert_eq!(
            fdinfo_lock("lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:1 0 EOF\n"),
            Some(true)
        );
    }
}
