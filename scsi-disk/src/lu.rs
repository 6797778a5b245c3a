//! One logical unit: its device, task set, range locks and the state that
//! SCSI commands share (unit attentions, mode parameters, reservations,
//! sanitize, copy results).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use blockdev::{Geometry, SharedDevice};

use super::device_status::StatusFollower;
use super::mode::ModeState;
use super::order::{RangeLocks, TaskSet};
use super::pr::PrState;
use super::sense::Asc;
use super::ua::UnitAttentions;
use super::xcopy::CopyResults;
use super::{ItNexus, LuConfig, ScsiError};

/// Sanitize progress of a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SanitizeStatus {
    /// No sanitize operation.
    #[default]
    Idle,
    /// Running; the fraction done is `done / 65536`.
    Running { done: u16 },
    /// The last sanitize failed; only a new sanitize (or EXIT FAILURE MODE) clears it.
    Failed,
}

/// State shared by the commands of one LU, under one short-held lock.
#[derive(Debug)]
pub(crate) struct LuState {
    pub ua: UnitAttentions,
    pub mode: ModeState,
    /// Per nexus with a MODE PARAMETERS CHANGED attention still pending: the
    /// parameters it last saw. Restoring them withdraws the attention.
    pub mode_seen: HashMap<ItNexus, ModeState>,
    /// Holder of a RESERVE(6)/RESERVE(10) reservation.
    pub reserve: Option<ItNexus>,
    pub pr: PrState,
    pub sanitize: SanitizeStatus,
    /// Nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT set.
    pub prevent: HashSet<ItNexus>,
    pub copies: CopyResults,
}

/// A logical unit.
#[derive(Debug)]
pub(crate) struct LogicalUnit {
    pub lun: u64,
    pub device: SharedDevice,
    pub read_only: bool,
    pub state_path: Option<PathBuf>,
    pub tasks: Arc<TaskSet>,
    pub ranges: Arc<RangeLocks>,
    /// Serialises PERSISTENT RESERVE OUT, including persisting APTPL state.
    pub pr_out: tokio::sync::Mutex<()>,
    /// The device status last handled (resizes raise unit attentions).
    pub status: StatusFollower,
    /// The task that follows the device's status events, if one runs.
    watcher: Mutex<Option<tokio::task::AbortHandle>>,
    st: Mutex<LuState>,
}

impl LogicalUnit {
    pub(crate) fn new(lun: u64, cfg: LuConfig) -> Result<Self, ScsiError> {
        let read_only = cfg.read_only || cfg.device.read_only();
        let pr = match &cfg.state_path {
            Some(p) => PrState::load(p)?,
            None => PrState::default(),
        };
        let wce = cfg.device.features().volatile_cache;
        Ok(LogicalUnit {
            lun,
            read_only,
            state_path: cfg.state_path,
            tasks: Arc::new(TaskSet::default()),
            ranges: Arc::new(RangeLocks::default()),
            pr_out: tokio::sync::Mutex::new(()),
            status: StatusFollower::new(cfg.device.status()),
            watcher: Mutex::new(None),
            st: Mutex::new(LuState {
                ua: UnitAttentions::default(),
                mode: ModeState::new(wce),
                mode_seen: HashMap::new(),
                reserve: None,
                pr,
                sanitize: SanitizeStatus::Idle,
                prevent: HashSet::new(),
                copies: CopyResults::default(),
            }),
            device: cfg.device,
        })
    }

    /// Locks the shared state (never held across an await).
    pub(crate) fn state(&self) -> MutexGuard<'_, LuState> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Current geometry.
    pub(crate) fn geometry(&self) -> Geometry {
        self.device.geometry()
    }

    /// Whether medium-modifying commands are refused now (read-only LU or SWP set).
    pub(crate) fn write_protected(&self) -> bool {
        self.read_only || self.state().mode.swp
    }

    /// Queues a unit attention for each of `nexuses`.
    pub(crate) fn add_ua_to<'a>(&self, nexuses: impl Iterator<Item = &'a ItNexus>, asc: Asc) {
        let mut st = self.state();
        for n in nexuses {
            st.ua.add(n, asc);
        }
    }

    /// A new I_T nexus: POWER ON, RESET OR BUS DEVICE RESET OCCURRED.
    pub(crate) fn nexus_login(&self, n: &ItNexus) {
        let mut st = self.state();
        st.ua.clear(n);
        st.ua.add(n, Asc::POWER_ON_RESET);
    }

    /// I_T nexus loss: RESERVE(6) reservations and PREVENT of that nexus end.
    pub(crate) fn nexus_loss(&self, n: &ItNexus) {
        let mut st = self.state();
        if st.reserve.as_ref() == Some(n) {
            st.reserve = None;
        }
        st.prevent.remove(n);
        st.ua.clear(n);
        st.mode_seen.remove(n);
    }

    /// LOGICAL UNIT RESET (also part of a target reset): RESERVE(6) is
    /// released, PREVENT cleared, mode parameters return to their defaults
    /// (none can be saved), and every nexus gets BUS DEVICE RESET FUNCTION
    /// OCCURRED (SAM-5 6.3.3). Persistent reservations survive.
    pub(crate) fn reset(&self, all: &[ItNexus]) {
        let mut st = self.state();
        st.reserve = None;
        st.prevent.clear();
        st.mode = st.mode.defaults();
        st.mode_seen.clear();
        for n in all {
            st.ua.add(n, Asc::BUS_DEVICE_RESET);
        }
    }

    /// Keeps the handle of the watcher task, which is aborted with the unit.
    pub(crate) fn set_watcher(&self, task: tokio::task::AbortHandle) {
        let old = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }
}

impl Drop for LogicalUnit {
    fn drop(&mut self) {
        let task = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}
