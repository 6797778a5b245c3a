//! The exported targets, changed while the server runs.
//!
//! Each target gets an id when it is added, never reused, which is what a
//! login and its session hold (the login core's target index): a session
//! of a removed target can never be mistaken for one of a target added
//! later under the same name. Readers take a snapshot of the list; writers
//! copy it, change the copy and swap it in, one at a time.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::{ServerError, TargetConfig};

/// A target in the list, with its id.
#[derive(Debug, Clone)]
pub(super) struct Exported {
    /// Its id: the target index of its logins and sessions.
    pub id: usize,
    /// What it is.
    pub cfg: TargetConfig,
}

#[derive(Debug, Default)]
struct List {
    targets: Vec<Exported>,
    next_id: usize,
}

/// The exported targets.
#[derive(Debug, Default)]
pub(super) struct Targets {
    current: RwLock<Arc<Vec<Exported>>>,
    /// Serialises writers; holds the next id.
    update: Mutex<usize>,
}

impl Targets {
    /// The list `initial` (whose names must differ).
    pub fn new(initial: Vec<TargetConfig>) -> Result<Targets, ServerError> {
        let t = Targets::default();
        for cfg in initial {
            t.add(cfg)?;
        }
        Ok(t)
    }

    /// The targets now.
    pub fn snapshot(&self) -> Arc<Vec<Exported>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The target named `iqn` (names compare without regard to case).
    pub fn by_name(&self, iqn: &str) -> Option<Exported> {
        self.snapshot()
            .iter()
            .find(|t| t.cfg.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }

    /// The target with this id, unless it was removed.
    pub fn by_id(&self, id: usize) -> Option<Exported> {
        self.snapshot().iter().find(|t| t.id == id).cloned()
    }

    /// Adds a target; a second one of the same name is refused.
    pub fn add(&self, cfg: TargetConfig) -> Result<usize, ServerError> {
        self.change(|list| {
            if list
                .targets
                .iter()
                .any(|t| t.cfg.iqn.eq_ignore_ascii_case(&cfg.iqn))
            {
                return Err(ServerError::Config(format!(
                    "target {} configured twice",
                    cfg.iqn
                )));
            }
            let id = list.next_id;
            list.next_id += 1;
            list.targets.push(Exported { id, cfg });
            Ok(id)
        })
    }

    /// Removes the target named `iqn`; returns it.
    pub fn remove(&self, iqn: &str) -> Option<Exported> {
        self.change(|list| {
            let at = list
                .targets
                .iter()
                .position(|t| t.cfg.iqn.eq_ignore_ascii_case(iqn))?;
            Some(list.targets.remove(at))
        })
    }

    /// Replaces the alias and the portal groups of the target named `iqn`
    /// (for logins from now on); false if there is none.
    pub fn update(&self, iqn: &str, alias: Option<String>, portals: Option<Vec<u16>>) -> bool {
        self.change(|list| {
            let Some(t) = list
                .targets
                .iter_mut()
                .find(|t| t.cfg.iqn.eq_ignore_ascii_case(iqn))
            else {
                return false;
            };
            t.cfg.alias = alias;
            t.cfg.portals = portals;
            true
        })
    }

    /// Runs `f` on a copy of the list, which then replaces the list.
    fn change<R>(&self, f: impl FnOnce(&mut List) -> R) -> R {
        let mut next_id = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list = List {
            targets: Vec::clone(&self.snapshot()),
            next_id: *next_id,
        };
        let r = f(&mut list);
        *next_id = list.next_id;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(list.targets);
        r
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use blockdev::{DeviceIdentity, MemDevice};
    use scsi_disk::{LuConfig, ScsiTarget};

    /// A target of one small memory LUN.
    pub(in crate::server) fn target(iqn: &str) -> TargetConfig {
        let lu = LuConfig {
            device: Arc::new(MemDevice::new(512, 8, DeviceIdentity::from_name(iqn))),
            read_only: false,
            state_path: None,
        };
        TargetConfig {
            iqn: iqn.into(),
            alias: None,
            scsi: ScsiTarget::new(iqn, vec![(0, lu)], vec![]).expect("scsi"),
            portals: None,
        }
    }

    #[test]
    fn ids_are_never_reused_and_names_are_unique() {
        let t =
            Targets::new(vec![target("iqn.2026-01.t:a"), target("iqn.2026-01.t:b")]).expect("list");
        let a = t.by_name("IQN.2026-01.T:A").expect("a").id;
        assert!(t.add(target("iqn.2026-01.t:a")).is_err());
        let removed = t.remove("iqn.2026-01.t:a").expect("removed");
        assert_eq!(removed.id, a);
        assert!(t.by_id(a).is_none() && t.by_name("iqn.2026-01.t:a").is_none());
        let again = t.add(target("iqn.2026-01.t:a")).expect("added again");
        assert_ne!(
            again, a,
            "a session of the old target never finds the new one"
        );
        assert!(t.update("iqn.2026-01.t:b", Some("bee".into()), Some(vec![2])));
        let b = t.by_name("iqn.2026-01.t:b").expect("b");
        assert_eq!(
            (b.cfg.alias.as_deref(), b.cfg.portals),
            (Some("bee"), Some(vec![2]))
        );
        assert!(!t.update("iqn.2026-01.t:zz", None, None));
        let names: Vec<String> = t.snapshot().iter().map(|e| e.cfg.iqn.clone()).collect();
        assert_eq!(names, ["iqn.2026-01.t:b", "iqn.2026-01.t:a"]);
    }
}
