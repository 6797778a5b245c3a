//! Per-target persisted state: the Query Config string, and the MAC mask
//! list and reservations as changed over the wire.
//!
//! The config string file holds the raw string (at most 1024 bytes). The
//! access file (the config string file's name plus `.access`) holds one line
//! per MAC: `configured`, the mask list of the configuration the edits were
//! made to; `mask`, the mask list in effect; `reserve`, the reservation list.
//! Both files are replaced atomically: write a temporary file next to it,
//! fsync it, rename it over the old one and fsync the directory, so a crash
//! leaves the old or the new state, never a torn one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aoe_proto::frame::{Mac, MAX_CONFIG_STRING};

use crate::target::Access;

/// Reads the persisted config string; a missing file is an empty string.
pub fn load_config(path: &Path) -> io::Result<Vec<u8>> {
    match blockdev::statefile::read(path) {
        Ok(Some(v)) if v.len() > MAX_CONFIG_STRING => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: config string of {} bytes exceeds {MAX_CONFIG_STRING}",
                path.display(),
                v.len()
            ),
        )),
        Ok(v) => Ok(v.unwrap_or_default()),
        Err(e) => Err(e),
    }
}

/// Durably replaces the persisted config string.
pub fn save_config(path: &Path, config: &[u8]) -> io::Result<()> {
    replace_file(path, config)
}

/// Where the access lists of the target whose config string is at
/// `config_path` are persisted.
pub fn access_path(config_path: &Path) -> PathBuf {
    let mut name = config_path.file_name().unwrap_or_default().to_os_string();
    name.push(".access");
    config_path.with_file_name(name)
}

/// Reads the persisted access lists. `None` when there are none, or when
/// they were edited from a different configured mask list than `configured`
/// (the admin changed the configuration since: it wins).
pub fn load_access(path: &Path, configured: &[Mac]) -> io::Result<Option<Access>> {
    let text = match blockdev::statefile::read(path)? {
        Some(t) => String::from_utf8_lossy(&t).into_owned(),
        None => return Ok(None),
    };
    let bad = |line: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: bad line {line:?}", path.display()),
        )
    };
    let (mut was_configured, mut access) = (Vec::new(), Access::default());
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, mac) = line.split_once(' ').ok_or_else(|| bad(line))?;
        let mac: Mac = mac.trim().parse().map_err(|_| bad(line))?;
        match key {
            "configured" => was_configured.push(mac),
            "mask" => access.mask.push(mac),
            "reserve" => access.reservations.push(mac),
            _ => return Err(bad(line)),
        }
    }
    let mut now = configured.to_vec();
    now.sort();
    now.dedup();
    was_configured.sort();
    was_configured.dedup();
    if was_configured != now {
        access.mask = now;
    }
    Ok(Some(access))
}

/// Durably replaces the persisted access lists.
pub fn save_access(path: &Path, configured: &[Mac], access: &Access) -> io::Result<()> {
    let mut text =
        String::from("# AoE MAC mask list and reservations, written by opie; do not edit\n");
    let lines = [
        ("configured", configured),
        ("mask", &access.mask[..]),
        ("reserve", &access.reservations[..]),
    ];
    for (key, macs) in lines {
        for m in macs {
            text.push_str(&format!("{key} {m}\n"));
        }
    }
    replace_file(path, text.as_bytes())
}

fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    // A fresh temporary file, fsync, rename, fsync of the directory; never
    // through a symbolic link.
    blockdev::statefile::replace(path, contents)
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
        // Nothing but the file itself: no temporary left behind.
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
        fs::write(&p, vec![b'x'; MAX_CONFIG_STRING + 1]).unwrap();
        assert!(load_config(&p).is_err());
    }

    #[test]
    fn access_lists_round_trip_unless_the_configured_mask_changed() {
        let dir = tempfile::tempdir().unwrap();
        let p = access_path(&dir.path().join("e1.1.config"));
        assert_eq!(p.file_name().unwrap(), "e1.1.config.access");
        let mac = |b: u8| Mac([2, 0, 0, 0, 0, b]);
        assert_eq!(load_access(&p, &[mac(1)]).unwrap(), None);
        let edited = Access {
            mask: vec![mac(1), mac(2)],
            reservations: vec![mac(9)],
        };
        save_access(&p, &[mac(1)], &edited).unwrap();
        assert_eq!(load_access(&p, &[mac(1)]).unwrap(), Some(edited));
        // The admin changed mac_mask in the configuration: it wins, the
        // reservation stays.
        let after = load_access(&p, &[mac(3)]).unwrap().unwrap();
        assert_eq!(after.mask, vec![mac(3)]);
        assert_eq!(after.reservations, vec![mac(9)]);
        fs::write(&p, "mask nonsense\n").unwrap();
        assert!(load_access(&p, &[]).is_err());
    }
}
