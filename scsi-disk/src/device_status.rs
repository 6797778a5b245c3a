//! A logical unit follows its device's status events
//! ([`blockdev::BlockDevice::status`]: resized, gone, back) instead of
//! polling the geometry: a resize raises CAPACITY DATA HAS CHANGED on every
//! I_T nexus of the target (SBC-4 4.9), a disappearance and a return are
//! logged.
//!
//! Each change is handled once, by whichever comes first: the unit's watcher
//! task, woken by the event, or the next command to the unit, which checks
//! the channel's version (an atomic load) before it looks at unit
//! attentions. So a command that arrives after a resize always sees the
//! attention, however the tasks are scheduled.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use blockdev::DeviceStatus;
use tokio::sync::watch;

use super::lu::LogicalUnit;
use super::sense::Asc;
use super::ItNexus;
use super::ScsiTarget;

/// The status a logical unit has handled, and the channel of the next ones.
#[derive(Debug)]
pub(crate) struct StatusFollower {
    inner: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    rx: watch::Receiver<DeviceStatus>,
    last: DeviceStatus,
}

impl StatusFollower {
    /// Starts from the device's status now.
    pub(crate) fn new(mut rx: watch::Receiver<DeviceStatus>) -> Self {
        let last = *rx.borrow_and_update();
        StatusFollower {
            inner: Mutex::new(Seen { rx, last }),
        }
    }

    /// Handles a status change not handled yet, if there is one: on a
    /// resize every nexus of `nexuses()` gets CAPACITY DATA HAS CHANGED.
    /// Cheap when nothing changed (no geometry is read).
    pub(crate) fn handle(
        &self,
        target: &str,
        lu: &LogicalUnit,
        nexuses: impl FnOnce() -> Vec<ItNexus>,
    ) {
        let (old, now) = {
            let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if !s.rx.has_changed().unwrap_or(false) {
                return;
            }
            let now = *s.rx.borrow_and_update();
            let old = std::mem::replace(&mut s.last, now);
            if old.geometry.num_blocks != now.geometry.num_blocks {
                // Raised before the lock is let go: a command that finds the
                // change handled also finds the attention queued.
                lu.add_ua_to(nexuses().iter(), Asc::CAPACITY_DATA_CHANGED);
            }
            (old, now)
        };
        if old.geometry.num_blocks != now.geometry.num_blocks {
            tracing::info!(
                target,
                lun = lu.lun,
                from = old.geometry.num_blocks,
                to = now.geometry.num_blocks,
                "capacity changed; CAPACITY DATA HAS CHANGED raised on every nexus"
            );
        }
        match (old.present, now.present) {
            (true, false) => tracing::warn!(target, lun = lu.lun, "device gone"),
            (false, true) => tracing::info!(target, lun = lu.lun, "device back"),
            _ => {}
        }
    }

    /// A second receiver of the same channel, for the watcher task.
    fn subscribe(&self) -> watch::Receiver<DeviceStatus> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rx
            .clone()
    }
}

/// Starts the watcher task of `lu`, a unit of `target` (inside a tokio
/// runtime; outside one, changes are handled by the next command only). The
/// task ends when the device's channel closes or the unit or the target is
/// dropped, and is aborted when the unit is.
pub(crate) fn follow(target: &Arc<ScsiTarget>, lu: &Arc<LogicalUnit>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut rx = lu.status.subscribe();
    let (target, unit): (Weak<ScsiTarget>, Weak<LogicalUnit>) =
        (Arc::downgrade(target), Arc::downgrade(lu));
    let task = rt.spawn(async move {
        while rx.changed().await.is_ok() {
            let (Some(t), Some(lu)) = (target.upgrade(), unit.upgrade()) else {
                return;
            };
            lu.status.handle(t.name(), &lu, || t.nexuses());
        }
    });
    lu.set_watcher(task.abort_handle());
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use blockdev::{
        BlockDevice, Bytes, DeviceIdentity, DeviceStatus, Geometry, MemDevice, StatusPublisher,
        WriteFlags,
    };
    use tokio::sync::watch;

    use crate::sense::{key, Asc};
    use crate::{status, Command, InitiatorPort, LuConfig, Nexus, ScsiTarget, TaskAttr};

    /// A memory device that can grow up to its backing size and publishes
    /// each resize, as a file device does on a rescan.
    #[derive(Debug)]
    struct Growable {
        mem: MemDevice,
        blocks: AtomicU64,
        status: StatusPublisher,
    }

    impl Growable {
        fn new(blocks: u64, room: u64) -> Self {
            let mem = MemDevice::new(512, room, DeviceIdentity::from_name("g"));
            let g = Geometry {
                block_size: 512,
                num_blocks: blocks,
            };
            Growable {
                mem,
                blocks: AtomicU64::new(blocks),
                status: StatusPublisher::new(g),
            }
        }

        fn resize(&self, blocks: u64) {
            self.blocks.store(blocks, Ordering::Release);
            self.status.resized(blocks);
        }
    }

    #[async_trait]
    impl BlockDevice for Growable {
        fn geometry(&self) -> Geometry {
            Geometry {
                block_size: 512,
                num_blocks: self.blocks.load(Ordering::Acquire),
            }
        }
        fn identity(&self) -> &DeviceIdentity {
            self.mem.identity()
        }
        fn status(&self) -> watch::Receiver<DeviceStatus> {
            self.status.subscribe()
        }
        async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
            self.geometry().check_range(lba, u64::from(blocks))?;
            self.mem.read(lba, blocks).await
        }
        async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
            self.mem.write(lba, data, flags).await
        }
        async fn flush(&self) -> blockdev::Result<()> {
            Ok(())
        }
        async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
            self.mem.write_zeroes(lba, blocks, unmap).await
        }
    }

    fn nexus(id: u64) -> Nexus {
        Nexus {
            id,
            initiator: InitiatorPort::iscsi("iqn.2026-01.test:init", [0x80, 0, 0, 0, 0, id as u8]),
            relative_port: 1,
        }
    }

    async fn run(t: &Arc<ScsiTarget>, n: &Nexus, cdb: &[u8]) -> crate::Response {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        let cmd = Command {
            lun: 0,
            cdb: Bytes::from(c),
            data_out: Bytes::new(),
            expected_in: 4096,
            tag: 1,
            attr: TaskAttr::Simple,
            data_in_from_file: false,
        };
        t.submit(n, cmd).await
    }

    fn asc(r: &crate::Response) -> Option<(u8, Asc)> {
        let s = r.sense.as_ref()?;
        Some((s[2] & 0x0f, Asc(s[12], s[13])))
    }

    fn target_over(dev: &Arc<Growable>) -> Arc<ScsiTarget> {
        let cfg = LuConfig {
            device: dev.clone(),
            read_only: false,
            state_path: None,
        };
        ScsiTarget::new("iqn.2026-01.test:t", vec![(0, cfg)], vec![]).expect("target")
    }

    const TUR: [u8; 6] = [0; 6];
    const READ_CAPACITY_16: [u8; 16] = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];

    fn capacity(r: &crate::Response) -> u64 {
        assert_eq!(r.status, status::GOOD);
        u64::from_be_bytes(r.data_in[..8].try_into().expect("8 bytes")) + 1
    }

    #[tokio::test]
    async fn a_resize_event_raises_capacity_changed_on_every_nexus_once() {
        let dev = Arc::new(Growable::new(64, 256));
        let t = target_over(&dev);
        let (a, b) = (nexus(1), nexus(2));
        for n in [&a, &b] {
            assert!(t.nexus_login(n).is_empty());
            assert_eq!(
                asc(&run(&t, n, &TUR).await),
                Some((key::UNIT_ATTENTION, Asc::POWER_ON_RESET))
            );
        }
        assert_eq!(capacity(&run(&t, &a, &READ_CAPACITY_16).await), 64);
        dev.resize(200);
        for n in [&a, &b] {
            assert_eq!(
                asc(&run(&t, n, &TUR).await),
                Some((key::UNIT_ATTENTION, Asc::CAPACITY_DATA_CHANGED))
            );
            assert_eq!(run(&t, n, &TUR).await.status, status::GOOD);
            assert_eq!(capacity(&run(&t, n, &READ_CAPACITY_16).await), 200);
        }
        // The same size again is no change.
        dev.resize(200);
        assert_eq!(run(&t, &a, &TUR).await.status, status::GOOD);
    }

    #[tokio::test]
    async fn the_watcher_raises_the_attention_without_a_command() {
        let dev = Arc::new(Growable::new(64, 256));
        let t = target_over(&dev);
        let a = nexus(1);
        assert!(t.nexus_login(&a).is_empty());
        let lu = t.lu(0).expect("lu 0");
        lu.state().ua.pop(&crate::ItNexus::of(&a));
        dev.resize(100);
        // The watcher task alone queues it (no command reaches the unit).
        while !lu
            .state()
            .ua
            .is_pending(&crate::ItNexus::of(&a), Asc::CAPACITY_DATA_CHANGED)
        {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_geometry_change_without_an_event_raises_nothing() {
        // Capacity is no longer polled: a device that changes its geometry
        // without publishing it (which breaks the device contract) goes
        // unnoticed instead of costing a geometry read per command.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dev = Arc::new(Growable::new(64, 256));
            let t = target_over(&dev);
            let a = nexus(1);
            assert!(t.nexus_login(&a).is_empty());
            run(&t, &a, &TUR).await;
            dev.blocks.store(128, Ordering::Release);
            assert_eq!(run(&t, &a, &TUR).await.status, status::GOOD);
        });
    }
}
