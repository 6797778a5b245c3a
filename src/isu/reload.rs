//! SIGHUP: re-read the config file (with the same command-line overrides)
//! and the secrets file, and apply them to the running daemon:
//!
//! - the access policy (auth, initiators, sources, secrets, algorithms,
//!   portal allow-lists) and the login backoff settings, for new logins
//!   (each source's failure history is kept);
//! - disks added: checked as at startup (backing store, another disk's or
//!   process' claim, persisted state), opened, and exported as LUNs of
//!   their targets (new targets are added); every session of a target
//!   whose LUN set changes gets REPORTED LUNS DATA HAS CHANGED;
//! - disks removed: their LUNs leave their targets (a target left without
//!   LUNs leaves the server and its sessions end), their commands in flight
//!   run to their end, then the device is flushed and its claim released;
//! - a disk whose export changes (path, target, LUN, block size, read-only,
//!   identity, serial) is removed and added again;
//! - disks kept are rescanned: a backing file or device that grew (or
//!   shrank) is adopted and every session gets CAPACITY DATA HAS CHANGED.
//!   A `size` that no longer matches an existing file is an error, as at
//!   startup (grow the file, then set the new size). An AoE export keeps
//!   the size it started with until restart;
//! - target aliases and portal groups, for new logins.
//!
//! A file that does not load, a policy that does not build, a new disk
//! that fails its checks or cannot be opened, a changed `data_dir`, or a
//! change to a disk exported over AoE (AoE exports change only at restart)
//! refuses the reload as a whole, before anything changes: it is logged
//! and everything stays as it was. Portals, `[limits]`, the NOP settings and
//! `[aoe]` are read at start only; a change to them is logged and ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::{Arc, Mutex, PoisonError};

use blockdev::BlockDevice;
use target_iscsi::server::{AccessHandle, TargetsHandle};
use tracing::{error, info, warn};

use super::export;
use super::preflight::{self, Served};
use super::{access, open_disk, plan_targets, OpenDisk};
use crate::config::{DiskConfig, IsuConfig};
use crate::state::DataDir;

/// The disks served now, by name (shared with `serve`, which flushes them
/// at shutdown).
pub type LiveDisks = Arc<Mutex<BTreeMap<String, OpenDisk>>>;

/// What a reload works on.
pub struct Reloader {
    /// The config in force (its disks: those served).
    pub cfg: IsuConfig,
    /// The locked data directory.
    pub data: Arc<DataDir>,
    /// The disks served.
    pub live: LiveDisks,
    /// The iSCSI server's access policy.
    pub access: AccessHandle,
    /// The iSCSI server's targets.
    pub targets: TargetsHandle,
}

/// Applies the config file on every SIGHUP (see the module docs).
pub async fn on_sighup(mut hup: tokio::signal::unix::Signal, mut r: Reloader) {
    while hup.recv().await.is_some() {
        crate::service::reloading();
        match r.reload().await {
            Ok(summary) => {
                info!(config = %r.cfg.source.display(), "SIGHUP: config applied: {summary}");
                crate::service::ready("serving; the last SIGHUP's config was applied");
            }
            Err(e) => {
                warn!(
                    config = %r.cfg.source.display(),
                    "SIGHUP: {e}; config refused as a whole: disks, targets, access policy and backoff settings stay as they were"
                );
                crate::service::ready(
                    "serving; the last SIGHUP's config was refused (see the log)",
                );
            }
        }
    }
}

/// Whether two configs of one disk export it the same way (so it stays
/// served as it is).
fn same_export(a: &DiskConfig, b: &DiskConfig) -> bool {
    (
        &a.path,
        &a.iqn,
        a.lun,
        a.block_size,
        a.read_only,
        &a.identity,
        &a.serial,
        &a.aoe,
    ) == (
        &b.path,
        &b.iqn,
        b.lun,
        b.block_size,
        b.read_only,
        &b.identity,
        &b.serial,
        &b.aoe,
    )
}

/// The disks of two configs, by what a reload does with them.
struct Changes<'a> {
    removed: Vec<&'a DiskConfig>,
    added: Vec<&'a DiskConfig>,
    kept: Vec<&'a DiskConfig>,
}

impl<'a> Changes<'a> {
    fn between(old: &'a IsuConfig, new: &'a IsuConfig) -> Changes<'a> {
        let find = |cfg: &'a IsuConfig, name: &str| cfg.disks.iter().find(|d| d.name == name);
        let mut c = Changes {
            removed: Vec::new(),
            added: Vec::new(),
            kept: Vec::new(),
        };
        for d in &old.disks {
            if !find(new, &d.name).is_some_and(|n| same_export(d, n)) {
                c.removed.push(d);
            }
        }
        for d in &new.disks {
            match find(old, &d.name) {
                Some(o) if same_export(o, d) => c.kept.push(d),
                _ => c.added.push(d),
            }
        }
        c
    }
}

/// TargetAlias and portal groups of each target of `cfg` (its first disk's).
fn target_settings(cfg: &IsuConfig) -> BTreeMap<&str, (&Option<String>, &Option<Vec<u16>>)> {
    let mut m = BTreeMap::new();
    for d in &cfg.disks {
        m.entry(d.iqn.as_str())
            .or_insert((&d.alias, &d.portal_groups));
    }
    m
}

/// A `size` that an existing regular file no longer has, as at startup.
fn check_size(d: &DiskConfig) -> Result<(), String> {
    let (Some(want), Ok(meta)) = (d.size, fs::metadata(&d.path)) else {
        return Ok(());
    };
    if meta.is_file() && meta.len() != want {
        return Err(format!(
            "disk {:?} ({}): the file is {} bytes but the config says size = {want}; \
             grow the file first, then set its new size (opie never resizes or truncates a disk)",
            d.name,
            d.path.display(),
            meta.len()
        ));
    }
    Ok(())
}

/// The settings read at start only that differ, by name.
fn start_only_changes(old: &IsuConfig, new: &IsuConfig) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.listen != new.listen {
        v.push("listen");
    }
    if (old.nop_interval, old.nop_timeout) != (new.nop_interval, new.nop_timeout) {
        v.push("nop_interval/nop_timeout");
    }
    if old.limits != new.limits {
        v.push("[limits]");
    }
    if old.aoe != new.aoe {
        v.push("[aoe]");
    }
    v
}

impl Reloader {
    fn disk(&self, name: &str) -> Option<OpenDisk> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// One reload: every check first, then the changes (see the module docs).
    async fn reload(&mut self) -> Result<String, String> {
        let new =
            IsuConfig::load(&self.cfg.source, &self.cfg.overrides).map_err(|e| e.to_string())?;
        let policy = access::build(&new).map_err(|e| e.to_string())?;
        if new.data_dir != self.cfg.data_dir {
            return Err(format!(
                "data_dir changed from {} to {}; it cannot change while the daemon runs",
                self.cfg.data_dir.display(),
                new.data_dir.display()
            ));
        }
        let c = Changes::between(&self.cfg, &new);
        if let Some(d) = c.removed.iter().chain(&c.added).find(|d| d.aoe.is_some()) {
            return Err(format!(
                "disk {:?} is exported over AoE and would be added, removed or changed; AoE exports change only at restart",
                d.name
            ));
        }
        let removed: BTreeSet<&str> = c.removed.iter().map(|d| d.name.as_str()).collect();
        let served: Vec<Served<'_>> = self
            .cfg
            .disks
            .iter()
            .map(|d| Served {
                disk: d,
                released: removed.contains(d.name.as_str()),
            })
            .collect();
        let names: Vec<&str> = c.added.iter().map(|d| d.name.as_str()).collect();
        self.data.inspect_disks(&names).map_err(|e| e.to_string())?;
        let openings =
            preflight::disk_stores(&new, &c.added, &served).map_err(|e| e.to_string())?;
        for d in &c.kept {
            check_size(d)?;
        }
        let mut opened = Vec::new();
        let mut deferred = Vec::new();
        for (d, o) in c.added.iter().zip(openings) {
            if o.after_release {
                deferred.push((*d, o.create));
            } else {
                opened.push(open_disk(&self.data, d, o.create).map_err(|e| e.to_string())?);
            }
        }

        // Everything checked: from here on the reload applies.
        let mut summary = Vec::new();
        self.access.set(policy);
        let old_backoff = self.access.set_backoff(new.auth.backoff.clone());
        let backoff = super::backoff_changes(&old_backoff, &new.auth.backoff);
        summary.push(if backoff.is_empty() {
            "access policy reloaded for new logins".to_string()
        } else {
            format!(
                "access policy reloaded for new logins; backoff settings changed ({}; failure history kept)",
                backoff.join(", ")
            )
        });
        self.remove(&c.removed, &new).await;
        if !c.removed.is_empty() {
            summary.push(format!("removed {}", names_of(&c.removed)));
        }
        let mut failed = BTreeSet::new();
        for (d, create) in deferred {
            match open_disk(&self.data, d, create) {
                Ok(o) => opened.push(o),
                Err(e) => {
                    error!(disk = %d.name, "SIGHUP: {e}; the disk is not served");
                    failed.insert(d.name.clone());
                }
            }
        }
        let added: Vec<&DiskConfig> = c
            .added
            .iter()
            .copied()
            .filter(|d| !failed.contains(&d.name))
            .collect();
        self.add(opened, &mut failed);
        if !added.is_empty() {
            summary.push(format!("added {}", names_of(&added)));
        }
        let (old_t, new_t) = (target_settings(&self.cfg), target_settings(&new));
        for (iqn, (alias, portals)) in &new_t {
            if old_t.get(iqn).is_some_and(|o| o != &(*alias, *portals)) {
                self.targets
                    .update(iqn, (*alias).clone(), (*portals).clone());
                summary.push(format!("target {iqn}: alias and portal groups updated"));
            }
        }
        for d in &c.kept {
            let Some(o) = self.disk(&d.name) else {
                continue;
            };
            let before = o.file.geometry().num_blocks;
            match o.file.rescan() {
                Ok(now) if now != before => {
                    if d.aoe.is_some() {
                        warn!(disk = %d.name, "SIGHUP: resized for iSCSI; its AoE export keeps the size it started with until restart");
                    }
                    summary.push(format!(
                        "disk {:?} resized from {before} to {now} blocks",
                        d.name
                    ))
                }
                Ok(_) => {}
                Err(e) => warn!(disk = %d.name, "SIGHUP: rescan failed: {e}"),
            }
        }
        let ignored = start_only_changes(&self.cfg, &new);
        if !ignored.is_empty() {
            warn!(
                "SIGHUP: {} changed but are read at start only; restart to apply them",
                ignored.join(", ")
            );
        }
        let mut new = new;
        new.disks.retain(|d| !failed.contains(&d.name));
        self.cfg = new;
        Ok(summary.join("; "))
    }

    /// Takes the `removed` disks out of their targets (or their targets out
    /// of the server, when `new` keeps none of a target's disks), waits for
    /// their commands, flushes them and lets them go.
    async fn remove(&self, removed: &[&DiskConfig], new: &IsuConfig) {
        let kept_targets: BTreeSet<&str> = new.disks.iter().map(|d| d.iqn.as_str()).collect();
        let mut gone_targets = BTreeSet::new();
        for d in removed {
            let Some(disk) = self.disk(&d.name) else {
                continue;
            };
            if !kept_targets.contains(d.iqn.as_str()) {
                if gone_targets.insert(d.iqn.as_str()) {
                    if let Some(r) = self.targets.remove(&d.iqn) {
                        drop(r.wait().await);
                    }
                }
            } else if let Some(r) = self.targets.get(&d.iqn).and_then(|t| t.remove_lun(d.lun)) {
                drop(r.wait().await);
            }
            if let Err(e) = disk.device.flush().await {
                error!(disk = %d.name, "SIGHUP: flushing the removed disk failed: {e}");
            }
            self.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&d.name);
            info!(disk = %d.name, iqn = %d.iqn, lun = d.lun, "disk removed");
        }
    }

    /// Exports the `opened` disks: LUNs of their targets, new targets
    /// added. A disk that cannot be exported is logged, put in `failed` and
    /// let go.
    fn add(&self, opened: Vec<OpenDisk>, failed: &mut BTreeSet<String>) {
        let mut live = Vec::new();
        for plan in plan_targets(opened) {
            if let Some(scsi) = self.targets.get(&plan.iqn) {
                for (lun, d) in plan.luns {
                    match scsi.add_lun(lun, export::lu_config(&d)) {
                        Ok(()) => live.push(d),
                        Err(e) => {
                            error!(disk = %d.config.name, "SIGHUP: {e}; the disk is not served");
                            failed.insert(d.config.name.clone());
                        }
                    }
                }
                continue;
            }
            let disks: Vec<OpenDisk> = plan.luns.iter().map(|(_, d)| d.clone()).collect();
            let iqn = plan.iqn.clone();
            let added = export::target_config(plan)
                .map_err(|e| e.to_string())
                .and_then(|t| self.targets.add(t).map_err(|e| e.to_string()));
            match added {
                Ok(()) => live.extend(disks),
                Err(e) => {
                    error!(target = %iqn, "SIGHUP: {e}; its disks are not served");
                    failed.extend(disks.iter().map(|d| d.config.name.clone()));
                }
            }
        }
        let mut m = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        for d in live {
            m.insert(d.config.name.clone(), d);
        }
    }
}

fn names_of(disks: &[&DiskConfig]) -> String {
    disks
        .iter()
        .map(|d| format!("{:?} ({} lun {})", d.name, d.iqn, d.lun))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Overrides;

    fn parse(disks: &str) -> IsuConfig {
        let text = format!(
            "[isu]\nbase_iqn = \"iqn.2026-01.org.example:isu1\"\nlisten = [\"127.0.0.1:3260\"]\n{disks}"
        );
        IsuConfig::parse(
            &text,
            Path::new("/etc/opie/isu.toml"),
            &Overrides::default(),
        )
        .expect("config")
    }

    fn names(v: &[&DiskConfig]) -> Vec<String> {
        v.iter().map(|d| d.name.clone()).collect()
    }

    #[test]
    fn a_changed_export_is_a_removal_and_an_addition() {
        let old = parse(
            "[[disk]]\nname = \"a\"\nsize = \"1M\"\n\
             [[disk]]\nname = \"b\"\nsize = \"1M\"\niqn = \"iqn.2026-01.org.example:t\"\n\
             [[disk]]\nname = \"c\"\nsize = \"1M\"\n\
             [[disk]]\nname = \"d\"\nsize = \"1M\"\n",
        );
        // a: same export, other access and size (kept: a resize, not a
        // change); b: another LUN; c: gone; d: read-only now; e: new.
        let new = parse(
            "[[disk]]\nname = \"a\"\nsize = \"2M\"\ninitiators = [\"iqn.2026-01.x:y\"]\nalias = \"A\"\n\
             [[disk]]\nname = \"b\"\nsize = \"1M\"\niqn = \"iqn.2026-01.org.example:t\"\nlun = 3\n\
             [[disk]]\nname = \"d\"\nsize = \"1M\"\nread_only = true\n\
             [[disk]]\nname = \"e\"\nsize = \"1M\"\n",
        );
        let c = Changes::between(&old, &new);
        assert_eq!(names(&c.kept), ["a"]);
        assert_eq!(names(&c.removed), ["b", "c", "d"]);
        assert_eq!(names(&c.added), ["b", "d", "e"]);
        let t = target_settings(&new);
        assert_eq!(
            t["iqn.2026-01.org.example:isu1:a"],
            (&Some("A".to_string()), &None)
        );
        assert!(start_only_changes(&old, &new).is_empty());
    }

    #[test]
    fn a_size_the_file_no_longer_has_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let img = dir.path().join("a.img");
        fs::write(&img, vec![0u8; 4096]).expect("file");
        let cfg = parse(&format!(
            "[[disk]]\nname = \"a\"\npath = \"{}\"\nsize = 4096\n",
            img.display()
        ));
        assert!(check_size(&cfg.disks[0]).is_ok());
        let cfg = parse(&format!(
            "[[disk]]\nname = \"a\"\npath = \"{}\"\nsize = 8192\n",
            img.display()
        ));
        let e = check_size(&cfg.disks[0]).expect_err("stale size");
        assert!(
            e.contains("the file is 4096 bytes but the config says size = 8192"),
            "{e}"
        );
    }
}
