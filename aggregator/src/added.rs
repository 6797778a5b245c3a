//! The ISUs the admin added at run time (`opie isu add`), kept in the head's
//! data directory (`isus.toml`) so that a restart still knows them: a hot
//! spare added stays a spare, and an array grown onto an added ISU finds
//! that member's portals at the next start.
//!
//! The file is versioned and replaced atomically (a fresh temporary file,
//! fsync, rename, fsync of the directory: [`blockdev::statefile`]), mode
//! 0600. It holds no secret: an ISU is added without CHAP. A file that does
//! not parse or has another version stops the head at the start, naming
//! the file; it is never ignored. An entry whose name `head.toml` also
//! configures is dropped at the start (`head.toml` wins), with a warning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::IsuConfig;

/// The file's name in the head's data directory.
pub const FILE: &str = "isus.toml";
/// The version this head writes and reads.
pub const VERSION: u32 = 1;

/// Why the added ISUs could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AddedError {
    /// The file could not be read or replaced (permissions, a symbolic
    /// link in its place, a full disk).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse: restore it, or remove it to forget every
    /// ISU added at run time (then add them again).
    #[error("{}: not a valid state file of added ISUs: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file was written by another version of the head.
    #[error("{}: version {found}, this head reads version {VERSION} only", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: u32,
    },
}

/// What an added ISU is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Added and not used by any array.
    Unassigned,
    /// Added as a hot spare of its `array`.
    Spare,
    /// Given to its `array` by a grow or a replace.
    Member,
}

/// An ISU added at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedIsu {
    /// Its name.
    pub name: String,
    /// Its iSCSI portals.
    pub portals: Vec<SocketAddr>,
    /// Its AoE interfaces (none: the head adds ISUs over iSCSI only).
    #[serde(default)]
    pub aoe: Vec<String>,
    /// What it was added for (the arrays' superblocks are the truth; this
    /// is what the admin asked).
    pub role: Role,
    /// The array it is a spare or member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<String>,
}

impl AddedIsu {
    /// The ISU as the head reaches it (no CHAP, the default session
    /// horizon).
    pub fn config(&self) -> IsuConfig {
        IsuConfig {
            name: self.name.clone(),
            portals: self.portals.clone(),
            aoe: self.aoe.clone(),
            secrets: None,
            session_horizon: initiator_iscsi::DEFAULT_SESSION_HORIZON,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    version: u32,
    #[serde(default)]
    isu: Vec<AddedIsu>,
}

/// Just the version, read first so that a file of another version is
/// named as such rather than as malformed.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The state file of the added ISUs.
#[derive(Debug, Clone)]
pub struct AddedIsus {
    path: PathBuf,
}

impl AddedIsus {
    /// The file of the head whose data directory is `data_dir`.
    pub fn in_dir(data_dir: &Path) -> AddedIsus {
        AddedIsus {
            path: data_dir.join(FILE),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ISUs added, in the order they were; none when there is no file.
    pub fn load(&self) -> Result<Vec<AddedIsu>, AddedError> {
        let Some(bytes) =
            blockdev::statefile::read(&self.path).map_err(|source| AddedError::Io {
                path: self.path.clone(),
                source,
            })?
        else {
            return Ok(Vec::new());
        };
        let corrupt = |message: String| AddedError::Corrupt {
            path: self.path.clone(),
            message,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let v: VersionOnly = toml::from_str(text).map_err(|e| corrupt(e.message().to_string()))?;
        if v.version != VERSION {
            return Err(AddedError::Version {
                path: self.path.clone(),
                found: v.version,
            });
        }
        let c: Contents = toml::from_str(text).map_err(|e| corrupt(e.message().to_string()))?;
        for (i, a) in c.isu.iter().enumerate() {
            crate::config::name_ok(&a.name).map_err(|e| corrupt(format!("isu[{i}]: {e}")))?;
            if a.portals.is_empty() {
                return Err(corrupt(format!("isu[{i}] {:?}: no portal", a.name)));
            }
            if (a.role == Role::Unassigned) != a.array.is_none() {
                return Err(corrupt(format!(
                    "isu[{i}] {:?}: a spare or member names its array, an unassigned ISU none",
                    a.name
                )));
            }
            if c.isu[..i].iter().any(|o| o.name == a.name) {
                return Err(corrupt(format!("isu[{i}]: {:?} twice", a.name)));
            }
        }
        Ok(c.isu)
    }

    /// Replaces the file with `isus` (atomically, mode 0600).
    pub fn save(&self, isus: &[AddedIsu]) -> Result<(), AddedError> {
        let text = toml::to_string(&Contents {
            version: VERSION,
            isu: isus.to_vec(),
        })
        .map_err(|e| AddedError::Corrupt {
            path: self.path.clone(),
            message: format!("cannot be written: {e}"),
        })?;
        let text = format!(
            "# The ISUs added to this head at run time (`opie isu add`); written by the head.\n{text}"
        );
        blockdev::statefile::replace(&self.path, text.as_bytes()).map_err(|source| AddedError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn isu(name: &str, role: Role, array: Option<&str>) -> AddedIsu {
        AddedIsu {
            name: name.into(),
            portals: vec!["127.0.0.1:3261".parse().unwrap()],
            aoe: Vec::new(),
            role,
            array: array.map(str::to_string),
        }
    }

    #[test]
    fn saved_isus_load_back_in_order_from_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = AddedIsus::in_dir(dir.path());
        assert!(f.load().unwrap().is_empty());
        let isus = vec![
            isu("isu5", Role::Spare, Some("a0")),
            isu("isu6", Role::Unassigned, None),
            isu("isu7", Role::Member, Some("a0")),
        ];
        f.save(&isus).unwrap();
        assert_eq!(f.load().unwrap(), isus);
        let mode = std::fs::metadata(f.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        f.save(&isus[1..]).unwrap();
        assert_eq!(f.load().unwrap(), isus[1..]);
    }

    #[test]
    fn a_corrupt_or_other_version_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = AddedIsus::in_dir(dir.path());
        std::fs::write(f.path(), "version = 1\n[[isu]]\nname = \"x\"\n").unwrap();
        let e = f.load().unwrap_err().to_string();
        assert!(e.contains("isus.toml") && e.contains("not a valid"), "{e}");
        std::fs::write(f.path(), "garbage[").unwrap();
        assert!(matches!(f.load(), Err(AddedError::Corrupt { .. })));
        std::fs::write(f.path(), "version = 2\n").unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, AddedError::Version { found: 2, .. }), "{e}");
    }
}
