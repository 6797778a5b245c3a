//! Small state files kept beside a device: a disk's identity, its persistent
//! reservations, its AoE config string, a daemon's lock file. They are read
//! and written without following symbolic links.
//!
//! A daemon running as root that opens a link planted in its state directory
//! reads or overwrites whatever the link names. So the directory is opened
//! with `O_NOFOLLOW | O_DIRECTORY` and the file below it with `O_NOFOLLOW`
//! (`openat`), a link in either place is refused with an error that says so,
//! and so is anything but a regular file with a single name (a hard link
//! would make a write land in another file). A new version is written to a
//! fresh temporary file of a unique name (`O_CREAT | O_EXCL`), synced,
//! renamed over the old one and the directory synced, so a crash leaves the
//! old content or the new one, never a torn one.

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest state file [`read`] accepts: state files are a few KiB at most.
pub const MAX_STATE_FILE: u64 = 1 << 20;

const LINK_HINT: &str =
    "opie reads and writes its state only through real files and directories; remove the link";

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Splits `path` into its directory (opened without following a link) and
/// its file name.
fn open_parent(path: &Path) -> io::Result<(File, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| refused(format!("{} does not name a file", path.display())))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir);
    match opened {
        Ok(d) => Ok((d, name)),
        Err(_) if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) => {
            Err(refused(format!(
                "directory {} is a symbolic link ({LINK_HINT})",
                dir.display()
            )))
        }
        Err(e) => Err(e),
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| refused("a file name holds a NUL byte".into()))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`, refusing a link
/// and anything but a regular file with one name.
fn open_at(dir: &File, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let c = c_name(name)?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; the
    // directory descriptor is open for the duration of the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(refused(format!("is a symbolic link ({LINK_HINT})")));
        }
        return Err(e);
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(refused("is not a regular file".into()));
    }
    if m.nlink() > 1 {
        return Err(refused(format!(
            "has {} hard links; a state file must have one name (copy it instead of linking it)",
            m.nlink()
        )));
    }
    Ok(f)
}

/// Reads the state file at `path`: `None` if it does not exist. A symbolic
/// link (in its place or as its directory), a file that is not a regular
/// one, one with other hard links, and one larger than [`MAX_STATE_FILE`]
/// are refused.
pub fn read(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let (dir, name) = match open_parent(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let f = match open_at(&dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    f.take(MAX_STATE_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_STATE_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_STATE_FILE} bytes: not a state file"),
        ));
    }
    Ok(Some(out))
}

/// Opens the state file at `path` in place: for reading and writing,
/// creating it (mode 0644) if it does not exist, when `create`; else for
/// reading, and `None` if it does not exist. Refuses what [`read`] refuses.
/// For a file that is used in place, such as a lock file.
pub fn open(path: &Path, create: bool) -> io::Result<Option<File>> {
    let (dir, name) = match open_parent(path) {
        Ok(d) => d,
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let flags = if create {
        libc::O_RDWR | libc::O_CREAT
    } else {
        libc::O_RDONLY | libc::O_NONBLOCK
    };
    match open_at(&dir, name, flags, 0o644) {
        Ok(f) => Ok(Some(f)),
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `name` in `dir` is a symbolic link (without following it).
fn is_link_at(dir: &File, name: &OsStr) -> io::Result<bool> {
    let c = c_name(name)?;
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid, writable stat buffer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

fn unlink_at(dir: &File, name: &OsStr) {
    if let Ok(c) = c_name(name) {
        // SAFETY: `c` is NUL-terminated; unlinkat never follows a link.
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    }
}

/// Replaces the state file at `path` with `contents`, atomically and
/// durably (mode 0600). A symbolic link in its place or as its directory is
/// refused, and nothing is written.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let (dir, name) = open_parent(path)?;
    if is_link_at(&dir, name)? {
        return Err(refused(format!("is a symbolic link ({LINK_HINT})")));
    }
    let (tmp, mut f) = loop {
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match open_at(
            &dir,
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        ) {
            Ok(f) => break (tmp, f),
            // Something else has that name: take the next one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let written = f
        .write_all(contents)
        .and_then(|_| f.sync_all())
        .and_then(|_| {
            let (from, to) = (c_name(&tmp)?, c_name(name)?);
            // SAFETY: both names are NUL-terminated; both refer to `dir`,
            // which stays open. renameat replaces a link, never follows it.
            let rc = unsafe {
                libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr())
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    if let Err(e) = written {
        unlink_at(&dir, &tmp);
        return Err(e);
    }
    dir.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn replace_then_read_round_trips_and_leaves_no_temporary() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state");
        assert_eq!(read(&p).unwrap(), None);
        assert_eq!(read(&t.path().join("no/such/dir/state")).unwrap(), None);
        assert!(open(&t.path().join("no/dir/lock"), false)
            .unwrap()
            .is_none());
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some(&b"two"[..]));
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_planted_link_is_refused_and_its_target_untouched() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let p = t.path().join("pr-state");
        symlink(&victim, &p).unwrap();
        for e in [
            replace(&p, b"x").unwrap_err(),
            read(&p).unwrap_err(),
            open(&p, true).unwrap_err(),
            open(&p, false).unwrap_err(),
        ] {
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling link is refused too (a write would create its target).
        let q = t.path().join("identity");
        symlink(t.path().join("nowhere"), &q).unwrap();
        assert!(replace(&q, b"x").is_err());
        assert!(open(&q, true).is_err());
        assert!(!t.path().join("nowhere").exists());
    }

    #[test]
    fn a_linked_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("aoe-config"), "theirs").unwrap();
        symlink(&elsewhere, t.path().join("disk")).unwrap();
        let p = t.path().join("disk/aoe-config");
        let e = replace(&p, b"ours").unwrap_err().to_string();
        assert!(
            e.contains("directory") && e.contains("symbolic link"),
            "{e}"
        );
        assert!(read(&p).is_err());
        assert_eq!(
            std::fs::read(elsewhere.join("aoe-config")).unwrap(),
            b"theirs"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    }

    #[test]
    fn hard_links_fifos_and_huge_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let other = t.path().join("other");
        std::fs::write(&other, "uuid=secret\n").unwrap();
        let p = t.path().join("identity");
        std::fs::hard_link(&other, &p).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        // Replacing swaps the name, leaving the other file as it was.
        replace(&p, b"mine").unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"uuid=secret\n");
        let fifo = t.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = t.path().join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_STATE_FILE + 1)
            .unwrap();
        assert!(read(&big).is_err());
    }
}
