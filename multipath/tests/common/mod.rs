//! Paths over `FaultyDevice`s wrapping one shared memory disk, as the
//! sessions of an initiator to one ISU disk would be.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use blockdev::{BlockDevice, Bytes, FaultyDevice, MemDevice, SharedDevice};
use multipath::{Config, MultipathDevice, Path, Transport};

/// A path whose faults the test controls. Its fence models the ISU ending
/// the old session's tasks when the session is reinstated: every write held
/// on the path goes on to the disk, and the fence resolves once none is
/// left.
#[derive(Debug)]
pub struct FaultyPath {
    pub faults: Arc<FaultyDevice>,
    device: SharedDevice,
}

#[async_trait]
impl Path for FaultyPath {
    fn device(&self) -> &SharedDevice {
        &self.device
    }

    fn transport(&self) -> Transport {
        Transport::Iscsi
    }

    async fn fence(&self) {
        self.faults.release_writes();
        while self.faults.held_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// `n` paths to one 4 MiB disk, and the multipath device over them.
pub fn device(n: usize, config: Config) -> (MultipathDevice, Vec<Arc<FaultyDevice>>) {
    let disk: SharedDevice = Arc::new(MemDevice::with_name("disk", 4 << 20));
    let faults: Vec<Arc<FaultyDevice>> = (0..n)
        .map(|i| Arc::new(FaultyDevice::new(disk.clone(), i as u64)))
        .collect();
    let paths: Vec<Arc<dyn Path>> = faults
        .iter()
        .map(|f| {
            Arc::new(FaultyPath {
                faults: f.clone(),
                device: f.clone() as SharedDevice,
            }) as Arc<dyn Path>
        })
        .collect();
    (MultipathDevice::new(paths, config).unwrap(), faults)
}

/// Block `lba` of generation `generation`: every byte says both, so a
/// misplaced or stale block shows.
pub fn stamp(lba: u64, generation: u8) -> Bytes {
    let mut b = vec![generation; 512];
    b[..8].copy_from_slice(&lba.to_be_bytes());
    Bytes::from(b)
}

/// Asserts that `blocks` blocks at `lba` hold generation `generation`.
pub async fn verify(dev: &MultipathDevice, lba: u64, blocks: u32, generation: u8) {
    let data = dev.read(lba, blocks).await.unwrap();
    for (i, block) in data.chunks(512).enumerate() {
        assert_eq!(
            block,
            &stamp(lba + i as u64, generation)[..],
            "block {}",
            lba + i as u64
        );
    }
}
