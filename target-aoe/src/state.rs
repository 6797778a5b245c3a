//! Per-target persisted state: the Query Config string.
//!
//! The file holds the raw config string (at most 1024 bytes). It is replaced
//! atomically: write a temporary file next to it, fsync it, rename it over the
//! old one and fsync the directory, so a crash leaves the old or the new string,
//! never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::frame::MAX_CONFIG_STRING;

/// Reads the persisted config string; a missing file is an empty string.
pub fn load_config(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(v) if v.len() > MAX_CONFIG_STRING => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: config string of {} bytes exceeds {MAX_CONFIG_STRING}",
                path.display(),
                v.len()
            ),
        )),
        Ok(v) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Durably replaces the persisted config string.
pub fn save_config(path: &Path, config: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let tmp = temp_path(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(config)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/e1.1.config");
        assert_eq!(load_config(&p).unwrap(), b"");
        save_config(&p, b"host=a").unwrap();
        assert_eq!(load_config(&p).unwrap(), b"host=a");
        save_config(&p, b"").unwrap();
        assert_eq!(load_config(&p).unwrap(), b"");
        assert!(!temp_path(&p).exists());
        fs::write(&p, vec![b'x'; MAX_CONFIG_STRING + 1]).unwrap();
        assert!(load_config(&p).is_err());
    }
}
