//! The logical units of a target, changed while it serves.
//!
//! Readers take a snapshot (an `Arc` of the whole map) and let the lock go at
//! once, so no lock is held across I/O, and a unit removed while a command
//! runs lives on in that command's snapshot until the command is done.
//! Writers copy the map, change the copy and swap it in, one at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::lu::LogicalUnit;
use super::ScsiError;

/// Logical units by number.
pub(crate) type Units = BTreeMap<u64, Arc<LogicalUnit>>;

/// Highest LUN + 1 the target addresses (SAM flat space, 14 bits).
pub(crate) const LUN_LIMIT: u64 = 16384;

/// The current map of a target's logical units.
#[derive(Debug, Default)]
pub(crate) struct LuMap {
    current: RwLock<Arc<Units>>,
    /// Serialises writers, so two changes never race to swap.
    update: Mutex<()>,
}

impl LuMap {
    /// The map now: a snapshot that later changes do not touch.
    pub(crate) fn snapshot(&self) -> Arc<Units> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The unit with this number now.
    pub(crate) fn get(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lun)
            .cloned()
    }

    /// Checks that `lun` may be added to `units`.
    pub(crate) fn check_new(units: &Units, lun: u64) -> Result<(), ScsiError> {
        if lun >= LUN_LIMIT {
            return Err(ScsiError::LunOutOfRange(lun));
        }
        if units.contains_key(&lun) {
            return Err(ScsiError::DuplicateLun(lun));
        }
        Ok(())
    }

    /// Adds a unit; returns the units that were there before it.
    pub(crate) fn insert(&self, lun: u64, lu: Arc<LogicalUnit>) -> Result<Arc<Units>, ScsiError> {
        let _one = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        Self::check_new(&old, lun)?;
        let mut new = Units::clone(&old);
        new.insert(lun, lu);
        self.swap(new);
        Ok(old)
    }

    /// Removes a unit; returns it and the units left.
    pub(crate) fn remove(&self, lun: u64) -> Option<(Arc<LogicalUnit>, Arc<Units>)> {
        let _one = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        let mut new = Units::clone(&self.snapshot());
        let lu = new.remove(&lun)?;
        let left = self.swap(new);
        Some((lu, left))
    }

    fn swap(&self, units: Units) -> Arc<Units> {
        let units = Arc::new(units);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = units.clone();
        units
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use blockdev::{BlockDevice, DeviceIdentity, FaultyDevice, MemDevice, SharedDevice};
    use bytes::Bytes;

    use crate::sense::{key, Asc};
    use crate::{status, Command, InitiatorPort, LuConfig, Nexus, Response, ScsiTarget, TaskAttr};

    const TUR: [u8; 6] = [0; 6];
    const REPORT_LUNS: [u8; 12] = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];

    fn nexus(id: u64) -> Nexus {
        Nexus {
            id,
            initiator: InitiatorPort::iscsi("iqn.2026-01.test:init", [0x80, 0, 0, 0, 0, id as u8]),
            relative_port: 1,
        }
    }

    fn lu(dev: SharedDevice) -> LuConfig {
        LuConfig {
            device: dev,
            read_only: false,
            state_path: None,
        }
    }

    fn mem(name: &str) -> SharedDevice {
        Arc::new(MemDevice::new(512, 64, DeviceIdentity::from_name(name)))
    }

    async fn run(t: &Arc<ScsiTarget>, n: &Nexus, lun: u64, cdb: &[u8], data: &[u8]) -> Response {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        t.submit(
            n,
            Command {
                lun,
                cdb: Bytes::from(c),
                data_out: Bytes::copy_from_slice(data),
                expected_in: 4096,
                tag: 7,
                attr: TaskAttr::Simple,
                data_in_from_file: false,
            },
        )
        .await
    }

    /// (sense key, ASC, ASCQ) of a CHECK CONDITION, or None for GOOD.
    async fn outcome(t: &Arc<ScsiTarget>, n: &Nexus, lun: u64, cdb: &[u8]) -> Option<(u8, Asc)> {
        let r = run(t, n, lun, cdb, &[]).await;
        if r.status == status::GOOD {
            return None;
        }
        assert_eq!(r.status, status::CHECK_CONDITION);
        let s = r.sense.expect("sense");
        Some((s[2] & 0x0f, Asc(s[12], s[13])))
    }

    async fn luns(t: &Arc<ScsiTarget>, n: &Nexus) -> Vec<u8> {
        let r = run(t, n, 0, &REPORT_LUNS, &[]).await;
        assert_eq!(r.status, status::GOOD);
        r.data_in[8..].chunks(8).map(|l| l[1]).collect()
    }

    /// A target with LUN 0 and two logged-in nexuses whose POWER ON
    /// attentions are consumed.
    async fn target_with_two_nexuses(dev: SharedDevice) -> (Arc<ScsiTarget>, Nexus, Nexus) {
        let t = ScsiTarget::new("iqn.2026-01.test:t", vec![(0, lu(dev))], vec![]).expect("target");
        let (a, b) = (nexus(1), nexus(2));
        for n in [&a, &b] {
            assert!(t.nexus_login(n).is_empty());
            assert_eq!(
                outcome(&t, n, 0, &TUR).await,
                Some((key::UNIT_ATTENTION, Asc::POWER_ON_RESET))
            );
        }
        (t, a, b)
    }

    #[tokio::test]
    async fn an_added_lun_is_reported_with_an_attention_on_every_nexus() {
        let (t, a, b) = target_with_two_nexuses(mem("d0")).await;
        t.add_lun(1, lu(mem("d1"))).expect("add");
        assert!(matches!(
            t.add_lun(1, lu(mem("d2"))),
            Err(crate::ScsiError::DuplicateLun(1))
        ));
        // Every nexus meets the change on the unit it already used.
        for n in [&a, &b] {
            assert_eq!(
                outcome(&t, n, 0, &TUR).await,
                Some((key::UNIT_ATTENTION, Asc::REPORTED_LUNS_DATA_CHANGED))
            );
            assert_eq!(outcome(&t, n, 0, &TUR).await, None);
        }
        assert_eq!(luns(&t, &a).await, [0, 1]);
        // The new unit serves at once and starts without an attention.
        assert_eq!(outcome(&t, &a, 1, &TUR).await, None);
    }

    #[tokio::test]
    async fn report_luns_clears_the_inventory_attention_of_its_nexus_only() {
        let (t, a, b) = target_with_two_nexuses(mem("d0")).await;
        t.add_lun(1, lu(mem("d1"))).expect("add");
        t.add_lun(2, lu(mem("d2"))).expect("add");
        assert_eq!(luns(&t, &a).await, [0, 1, 2]);
        assert_eq!(outcome(&t, &a, 0, &TUR).await, None);
        assert_eq!(outcome(&t, &a, 1, &TUR).await, None);
        assert_eq!(
            outcome(&t, &b, 0, &TUR).await,
            Some((key::UNIT_ATTENTION, Asc::REPORTED_LUNS_DATA_CHANGED))
        );
        assert_eq!(
            outcome(&t, &b, 1, &TUR).await,
            Some((key::UNIT_ATTENTION, Asc::REPORTED_LUNS_DATA_CHANGED))
        );
    }

    #[tokio::test]
    async fn a_removed_lun_finishes_its_commands_then_is_not_supported() {
        let inner: SharedDevice = Arc::new(MemDevice::new(512, 64, DeviceIdentity::from_name("s")));
        let slow = Arc::new(FaultyDevice::new(inner.clone(), 1));
        let (t, a, b) = target_with_two_nexuses(mem("d0")).await;
        t.add_lun(1, lu(slow.clone())).expect("add");
        slow.hold_next_writes(1);
        let write10 = [0x2A, 0, 0, 0, 0, 4, 0, 0, 1, 0];
        let t2 = t.clone();
        let a2 = a.clone();
        let write = tokio::spawn(async move { run(&t2, &a2, 1, &write10, &[0x5A; 512]).await });
        while slow.held_writes() == 0 {
            tokio::task::yield_now().await;
        }
        let removed = t.remove_lun(1).expect("unit 1");
        assert!(t.remove_lun(1).is_none());
        // New commands find no unit, at once, while the old write runs on.
        assert_eq!(
            outcome(&t, &b, 1, &TUR).await,
            Some((key::ILLEGAL_REQUEST, Asc::LUN_NOT_SUPPORTED))
        );
        assert_eq!(luns(&t, &b).await, [0]);
        let mut waiting = tokio::spawn(removed.wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the removal waits for the write");
        assert!(!write.is_finished());
        slow.release_writes();
        assert_eq!(write.await.expect("write").status, status::GOOD);
        let dev = (&mut waiting).await.expect("removal");
        assert_eq!(dev.identity(), slow.identity());
        assert_eq!(inner.read(4, 1).await.expect("read")[..], [0x5A; 512][..]);
        // The nexus that did not ask REPORT LUNS meets the change on LUN 0.
        assert_eq!(
            outcome(&t, &a, 0, &TUR).await,
            Some((key::UNIT_ATTENTION, Asc::REPORTED_LUNS_DATA_CHANGED))
        );
    }
}
