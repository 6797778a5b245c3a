//! The socket's place on disk: a directory only its owner can enter
//! (0700), the socket itself 0600, a stale socket of a dead daemon
//! replaced, a live one refused.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the control socket could not be set up, by what the operator may do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory is not private to the daemon's user: fix its
    /// owner or mode (0700), or choose another.
    #[error("control socket directory {path}: {why}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A running daemon serves on this socket: stop it, or give this one
    /// another data directory.
    #[error("control socket {path} is in use by a running daemon")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something other than a socket is in the way: remove it.
    #[error("{path} exists and is not a socket; remove it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or setting up failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes sure `dir` is a directory of ours that nobody else can enter:
/// creates it 0700 if missing (its parents too), refuses a symbolic link,
/// another owner, or any group or other permission.
pub(crate) fn private_directory(dir: &Path) -> Result<(), ServerError> {
    let unsafe_dir = |why: String| ServerError::UnsafeDirectory {
        path: dir.to_owned(),
        why,
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
            // The umask may have taken bits away, never added any; set the
            // mode exactly anyway.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
            fs::symlink_metadata(dir).map_err(io_err(dir))?
        }
        Err(e) => return Err(io_err(dir)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    if meta.uid() != euid() {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by the daemon's uid {}",
            meta.uid(),
            euid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "has mode {mode:04o}; it must be 0700 (owner only)"
        )));
    }
    Ok(())
}

/// Binds the socket at `path` in a private directory, mode 0600. A socket
/// left by a dead daemon (nobody accepts on it) is replaced; one a daemon
/// still serves is refused.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    private_directory(dir)?;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(ServerError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(_) => fs::remove_file(path).map_err(io_err(path))?,
        },
        Ok(_) => {
            return Err(ServerError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err(path))?;
    // Nobody else can enter the directory, so nobody can connect before
    // the mode is set.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    listener.set_nonblocking(true).map_err(io_err(path))?;
    Ok(listener)
}
