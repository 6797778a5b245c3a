//! Device events for the layers above a device: resized, gone, back.
//!
//! A device publishes its [`DeviceStatus`] on a watch channel
//! ([`BlockDevice::status`](crate::BlockDevice::status)); a subscriber sees
//! the latest status (a burst of changes is never queued up, so a slow
//! subscriber never falls behind) and compares it with what it saw before.
//! A device whose status never changes hands out a receiver whose sender is
//! already gone: `changed()` then returns an error at once, which means "no
//! more changes".

use tokio::sync::watch;

use crate::Geometry;

/// What a device is now: its shape, and whether it can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Block size and capacity now.
    pub geometry: Geometry,
    /// Whether the device can be reached (false: gone, e.g. every path down
    /// or the unit removed; I/O fails meanwhile).
    pub present: bool,
}

/// The publishing side of a device's status, kept by the device.
#[derive(Debug)]
pub struct StatusPublisher {
    tx: watch::Sender<DeviceStatus>,
}

impl StatusPublisher {
    /// A publisher starting at `geometry`, present.
    pub fn new(geometry: Geometry) -> StatusPublisher {
        let (tx, _) = watch::channel(DeviceStatus {
            geometry,
            present: true,
        });
        StatusPublisher { tx }
    }

    /// A new subscriber, seeing the current status.
    pub fn subscribe(&self) -> watch::Receiver<DeviceStatus> {
        self.tx.subscribe()
    }

    /// The status now.
    pub fn current(&self) -> DeviceStatus {
        *self.tx.borrow()
    }

    /// The capacity changed to `num_blocks`.
    pub fn resized(&self, num_blocks: u64) {
        self.tx.send_if_modified(|s| {
            let changed = s.geometry.num_blocks != num_blocks;
            s.geometry.num_blocks = num_blocks;
            changed
        });
    }

    /// The device can no longer be reached.
    pub fn gone(&self) {
        self.set_present(false);
    }

    /// The device can be reached again.
    pub fn back(&self) {
        self.set_present(true);
    }

    fn set_present(&self, present: bool) {
        self.tx.send_if_modified(|s| {
            let changed = s.present != present;
            s.present = present;
            changed
        });
    }
}

/// A receiver of a status that never changes (the default of
/// [`BlockDevice::status`](crate::BlockDevice::status)).
pub fn fixed(geometry: Geometry) -> watch::Receiver<DeviceStatus> {
    let (_, rx) = watch::channel(DeviceStatus {
        geometry,
        present: true,
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_the_latest_status() {
        let g = Geometry {
            block_size: 512,
            num_blocks: 8,
        };
        let p = StatusPublisher::new(g);
        let mut rx = p.subscribe();
        p.resized(16);
        p.gone();
        rx.changed().await.unwrap();
        let s = *rx.borrow_and_update();
        assert_eq!((s.geometry.num_blocks, s.present), (16, false));
        p.back();
        rx.changed().await.unwrap();
        assert!(rx.borrow().present);
        let mut f = fixed(g);
        assert!(f.changed().await.is_err(), "a fixed status never changes");
    }
}
