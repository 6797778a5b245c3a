//! Paths over `FaultyDevice`s wrapping one shared memory disk, as the
//! sessions of an initiator to one ISU disk would be.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blockdev::{BlockDevice, Bytes, FaultyDevice, MemDevice, Result, SharedDevice};
use multipath::{AluaState, Config, MultipathDevice, Path, Transport};

/// A path whose faults the test controls. Its fence models the ISU ending
/// the old session's tasks when the session is reinstated: every write held
/// on the path goes on to the disk, and the fence resolves once none is
/// left.
#[derive(Debug)]
pub struct FaultyPath {
    pub faults: Arc<FaultyDevice>,
    device: SharedDevice,
    /// The ALUA state its checks report.
    pub alua: Mutex<AluaState>,
    /// Checks pass without asking the disk (a path whose TEST UNIT READY
    /// works while its I/O fails).
    pub checks_lie: AtomicBool,
    /// Checks never answer (a TEST UNIT READY stuck behind a full queue).
    pub checks_hang: AtomicBool,
    /// While set, the fence waits (the session not yet reinstated) and the
    /// writes held on the path stay held.
    pub fence_shut: AtomicBool,
}

#[async_trait]
impl Path for FaultyPath {
    fn device(&self) -> &SharedDevice {
        &self.device
    }

    fn transport(&self) -> Transport {
        Transport::Iscsi
    }

    async fn check(&self) -> Result<AluaState> {
        if self.checks_hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        if !self.checks_lie.load(Ordering::Relaxed) {
            self.device.read(0, 1).await?;
        }
        Ok(*self.alua.lock().unwrap())
    }

    async fn fence(&self) {
        while self.fence_shut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.faults.release_writes();
        while self.faults.held_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// `n` paths to one 4 MiB disk, and the multipath device over them.
pub fn device(n: usize, config: Config) -> (MultipathDevice, Vec<Arc<FaultyDevice>>) {
    let (dev, paths) = device_with_paths(n, config);
    (dev, paths.iter().map(|p| p.faults.clone()).collect())
}

/// As [`device`], with the paths themselves.
pub fn device_with_paths(n: usize, config: Config) -> (MultipathDevice, Vec<Arc<FaultyPath>>) {
    let disk: SharedDevice = Arc::new(MemDevice::with_name("disk", 4 << 20));
    let faults: Vec<Arc<FaultyDevice>> = (0..n)
        .map(|i| Arc::new(FaultyDevice::new(disk.clone(), i as u64)))
        .collect();
    let paths: Vec<Arc<FaultyPath>> = faults.iter().map(|f| faulty_path(f.clone())).collect();
    let dyn_paths = paths.iter().map(|p| p.clone() as Arc<dyn Path>).collect();
    (MultipathDevice::new(dyn_paths, config).unwrap(), paths)
}

fn faulty_path(faults: Arc<FaultyDevice>) -> Arc<FaultyPath> {
    Arc::new(FaultyPath {
        device: faults.clone() as SharedDevice,
        faults,
        alua: Mutex::new(AluaState::ActiveOptimized),
        checks_lie: AtomicBool::new(false),
        checks_hang: AtomicBool::new(false),
        fence_shut: AtomicBool::new(false),
    })
}

/// A path to `disk` with no faults injected yet.
pub fn path_to(disk: SharedDevice) -> Arc<dyn Path> {
    faulty_path(Arc::new(FaultyDevice::new(disk, 0)))
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
