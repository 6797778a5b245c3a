//! Where `opie up` keeps an appliance: one directory holding the configs,
//! disks, state and logs of its three ISUs and its head.
//!
//! ```text
//! opie-data/
//!   opie-up.lock           held while `opie up` runs (pid inside)
//!   isu0/isu.toml          ISU 0's config; isu0/data/ its disk file and state; isu0/isu.log
//!   isu1/ ... isu2/ ...
//!   head/head.toml         the head's config; head/data/ its state; head/head.log
//! ```

use std::path::{Path, PathBuf};

use super::error::UpError;

/// The lock file of `opie up` in its data directory.
pub const UP_LOCK_FILE: &str = "opie-up.lock";

/// How many ISUs `opie up` runs.
pub const ISUS: usize = 3;

/// The paths of an appliance's data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// Whether the data directory already holds an appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No config at all: a new appliance.
    Nothing,
    /// Every config: an appliance to start again as it is.
    Everything,
}

impl Layout {
    /// The layout below `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// ISU `n`'s directory.
    pub fn isu_dir(&self, n: usize) -> PathBuf {
        self.root.join(format!("isu{n}"))
    }

    /// ISU `n`'s config file.
    pub fn isu_config(&self, n: usize) -> PathBuf {
        self.isu_dir(n).join("isu.toml")
    }

    /// ISU `n`'s log.
    pub fn isu_log(&self, n: usize) -> PathBuf {
        self.isu_dir(n).join("isu.log")
    }

    /// The head's directory.
    pub fn head_dir(&self) -> PathBuf {
        self.root.join("head")
    }

    /// The head's config file.
    pub fn head_config(&self) -> PathBuf {
        self.head_dir().join("head.toml")
    }

    /// The head's log.
    pub fn head_log(&self) -> PathBuf {
        self.head_dir().join("head.log")
    }

    /// Every config file, the ISUs' then the head's.
    pub fn configs(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = (0..ISUS).map(|n| self.isu_config(n)).collect();
        all.push(self.head_config());
        all
    }

    /// Whether the configs are all there or none is; some but not all is
    /// an error (never filled in: a new ISU would not match the head's
    /// config, nor the array on the others).
    pub fn found(&self) -> Result<Found, UpError> {
        let (present, missing): (Vec<PathBuf>, Vec<PathBuf>) =
            self.configs().into_iter().partition(|p| p.exists());
        match (present.first(), missing.first()) {
            (None, _) => Ok(Found::Nothing),
            (Some(_), None) => Ok(Found::Everything),
            (Some(p), Some(m)) => Err(UpError::Partial {
                dir: self.root.clone(),
                present: p.clone(),
                missing: m.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_none_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.found().unwrap(), Found::Nothing);
        for p in l.configs() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        assert_eq!(l.found().unwrap(), Found::Everything);
        std::fs::remove_file(l.isu_config(1)).unwrap();
        let e = l.found().unwrap_err().to_string();
        assert!(e.contains("isu1/isu.toml does not"), "{e}");
    }
}
