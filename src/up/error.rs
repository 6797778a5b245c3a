//! Why `opie up` stopped, by what the user can do about it.

use std::path::PathBuf;

/// Why `opie up` could not bring the appliance up, or stopped it.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A config file (ours, or as the user edited it) does not load: fix
    /// it (exit status 2).
    #[error("{0}")]
    Config(String),
    /// A command-line flag disagrees with the configs already in the data
    /// directory: drop the flag or edit the file (exit status 2).
    #[error("{0}")]
    Flags(String),
    /// The data directory cannot be used (not writable, a file in its
    /// place) or another `opie up` holds it.
    #[error(transparent)]
    DataDir(#[from] crate::state::StateError),
    /// The data directory cannot be created or used (a file in its
    /// place, no permission): choose another with --data-dir.
    #[error("cannot use {dir} as the data directory: {source} (--data-dir chooses another)")]
    DataDirUnusable {
        /// The directory as given.
        dir: PathBuf,
        /// Why.
        source: crate::state::StateError,
    },
    /// Some of the configs are there and some are missing: restore them or
    /// remove the data directory to start over.
    #[error("{dir}: {present} exists but {missing} does not; restore it, or remove {dir} to start over (this loses the data)")]
    Partial {
        /// The data directory.
        dir: PathBuf,
        /// A config that exists.
        present: PathBuf,
        /// A config that is missing.
        missing: PathBuf,
    },
    /// A file of the data directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A portal is already taken (another target, another `opie up`):
    /// choose another port or stop the other program.
    #[error("cannot listen on {addr} ({what}): {source}; stop what listens there, or {fix}")]
    PortInUse {
        /// The address.
        addr: std::net::SocketAddr,
        /// Whose portal it is.
        what: String,
        /// How to choose another port.
        fix: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// A portal's host name does not resolve.
    #[error("{config}: {message}")]
    Portal {
        /// The config that names it.
        config: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A daemon could not be started.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// Which daemon.
        name: String,
        /// The error.
        source: std::io::Error,
    },
    /// A daemon exited while the appliance was running (or starting).
    #[error("{name} (pid {pid}) exited unexpectedly ({status}); its log is {log}{tail}")]
    ChildDied {
        /// Which daemon.
        name: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log, ready to print.
        tail: String,
    },
    /// Signal handlers could not be installed, or the runtime not started.
    #[error("cannot start: {0}")]
    Runtime(std::io::Error),
    /// A daemon did not stop cleanly when asked to.
    #[error("{name} (pid {pid}) did not stop cleanly ({status}); its log is {log}")]
    StopFailed {
        /// Which daemon.
        name: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
    },
}

impl UpError {
    /// The exit status: 2 for what the configs or flags say, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpError::Config(_) | UpError::Flags(_) => 2,
            _ => 1,
        }
    }
}
