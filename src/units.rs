//! `opie systemd install`: writes the systemd units of the ISU and the head
//! (`dist/systemd/`, built into the binary) with this binary's path and the
//! config directory filled in, then has systemd re-read its units.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Subcommand};

use crate::output::{out, outln};

/// The units, by file name, as templates.
const UNITS: [(&str, &str); 2] = [
    (
        "opie-isu.service",
        include_str!("../dist/systemd/opie-isu.service"),
    ),
    (
        "opie-head.service",
        include_str!("../dist/systemd/opie-head.service"),
    ),
];

/// `opie systemd ...`.
#[derive(Debug, Subcommand)]
pub enum SystemdCommand {
    /// Write opie-isu.service and opie-head.service, then `systemctl
    /// daemon-reload` (enable and start them with systemctl).
    Install(InstallArgs),
    /// Print the units as `install` would write them.
    Print(Filled),
}

/// What fills the templates.
#[derive(Debug, Args)]
pub struct Filled {
    /// The opie binary the units run [default: this one].
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Where isu.toml and head.toml live.
    #[arg(long, value_name = "DIR", default_value = "/etc/opie")]
    config_dir: PathBuf,
}

/// `opie systemd install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    filled: Filled,
    /// Where the units go.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Do not run `systemctl daemon-reload` afterwards.
    #[arg(long)]
    no_reload: bool,
}

/// Why the units could not be written.
#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    /// The binary's own path is unknown (give `--bin`).
    #[error("cannot tell this binary's path ({0}): give --bin")]
    OwnPath(std::io::Error),
    /// A path that cannot go into a unit file as it is.
    #[error("{0}: a path in a unit must be absolute and free of spaces, '%', '$' and quotes")]
    Unsafe(PathBuf),
    /// Writing a unit failed.
    #[error("{path}: {err}")]
    Write {
        /// The unit file.
        path: PathBuf,
        /// What failed.
        err: std::io::Error,
    },
    /// `systemctl daemon-reload` failed.
    #[error("systemctl daemon-reload: {0}")]
    Reload(String),
}

/// Runs an `opie systemd` command: exit 0, or 1 with the error.
pub fn run(cmd: SystemdCommand) -> ExitCode {
    let r = match cmd {
        SystemdCommand::Install(a) => install(&a),
        SystemdCommand::Print(f) => print(&f),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opie: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(f: &Filled) -> Result<(), UnitsError> {
    for (name, text) in filled(f)? {
        outln!("# {name}");
        out!("{text}");
    }
    Ok(())
}

fn install(a: &InstallArgs) -> Result<(), UnitsError> {
    let units = filled(&a.filled)?;
    fs::create_dir_all(&a.unit_dir).map_err(|err| UnitsError::Write {
        path: a.unit_dir.clone(),
        err,
    })?;
    for (name, text) in &units {
        let path = a.unit_dir.join(name);
        write_unit(&path, text).map_err(|err| UnitsError::Write {
            path: path.clone(),
            err,
        })?;
        outln!("wrote {}", path.display());
    }
    // Only where systemd runs (sd_booted's test); elsewhere the units wait
    // for the next boot.
    if !a.no_reload && Path::new("/run/systemd/system").is_dir() {
        let st = Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .map_err(|e| UnitsError::Reload(e.to_string()))?;
        if !st.success() {
            return Err(UnitsError::Reload(st.to_string()));
        }
        outln!("systemctl daemon-reload: done");
    }
    outln!(
        "next: write {0}/isu.toml and/or {0}/head.toml, then `systemctl enable --now opie-isu` (or opie-head)",
        a.filled.config_dir.display()
    );
    Ok(())
}

/// The units with the binary's path and the config directory filled in.
fn filled(f: &Filled) -> Result<Vec<(&'static str, String)>, UnitsError> {
    let bin = match &f.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(UnitsError::OwnPath)?,
    };
    let bin = unit_path(&bin)?;
    let conf = unit_path(&f.config_dir)?;
    Ok(UNITS
        .iter()
        .map(|(name, t)| (*name, t.replace("@OPIE@", bin).replace("@CONF@", conf)))
        .collect())
}

/// `p` as it may stand in a unit's command line unquoted: absolute, and
/// without the characters systemd would expand or split on.
fn unit_path(p: &Path) -> Result<&str, UnitsError> {
    let s = p.to_str().ok_or_else(|| UnitsError::Unsafe(p.into()))?;
    let bad = |c: char| c.is_whitespace() || matches!(c, '%' | '$' | '"' | '\'' | '\\' | ';');
    if !p.is_absolute() || s.contains(bad) {
        return Err(UnitsError::Unsafe(p.into()));
    }
    Ok(s)
}

/// Writes a unit as the project writes its state files (atomically and
/// durably, refusing a symbolic link in its place), then makes it readable
/// to all as unit files are.
fn write_unit(path: &Path, text: &str) -> std::io::Result<()> {
    blockdev::statefile::replace(path, text.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_everywhere() {
        let f = Filled {
            bin: Some("/usr/local/bin/opie".into()),
            config_dir: "/etc/opie".into(),
        };
        for (name, text) in filled(&f).unwrap() {
            assert!(!text.contains('@'), "{name} keeps a placeholder");
            assert!(text.contains("ExecStart=/usr/local/bin/opie "), "{name}");
            assert!(text.contains("--config /etc/opie/"), "{name}");
            assert!(text.contains("Type=notify"), "{name}");
            assert!(text.contains("WatchdogSec="), "{name}");
        }
    }

    #[test]
    fn paths_systemd_would_expand_are_refused() {
        for p in [
            "relative/opie",
            "/opt/my opie",
            "/opt/%i/opie",
            "/opt/$X/opie",
        ] {
            let f = Filled {
                bin: Some(p.into()),
                config_dir: "/etc/opie".into(),
            };
            assert!(matches!(filled(&f), Err(UnitsError::Unsafe(_))), "{p}");
        }
    }
}
