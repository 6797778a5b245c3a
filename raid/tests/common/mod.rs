//! Shared helpers of the RAID integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, Bytes, FaultyDevice, MemDevice, SharedDevice};
use raid::{AssembleOptions, Config, ManualClock, RaidArray};

/// Member devices: fault injectors over memory disks.
pub struct Rig {
    pub faulty: Vec<Arc<FaultyDevice>>,
    pub clock: Arc<ManualClock>,
    pub cfg: Config,
}

pub const BS: usize = 512;

pub fn small_config() -> Config {
    Config {
        chunk_blocks: 4,
        region_rows: 4,
        journal_blocks: 0,
        max_members: 8,
        cache_blocks: 64,
        spare_timeout: Duration::from_secs(30),
        rebuild_rows_per_sec: None,
        checkpoint_rows: 8,
        reshape_step_rows: 4,
        member_timeout: Duration::from_secs(10),
        tag_cache_bytes: 1 << 20,
    }
}

impl Rig {
    /// `n` devices of `blocks` blocks each.
    pub fn new(n: usize, blocks: u64, cfg: Config) -> Rig {
        let faulty = (0..n).map(|i| Self::device(i, blocks)).collect();
        Rig {
            faulty,
            clock: Arc::new(ManualClock::new()),
            cfg,
        }
    }

    pub fn device(i: usize, blocks: u64) -> Arc<FaultyDevice> {
        let mem: SharedDevice = Arc::new(MemDevice::new(
            BS as u32,
            blocks,
            blockdev::DeviceIdentity::from_name(&format!("disk{i}-{blocks}-{}", rand_tag())),
        ));
        Arc::new(FaultyDevice::new(mem, i as u64 + 1))
    }

    pub fn add_device(&mut self, blocks: u64) -> Arc<FaultyDevice> {
        let d = Self::device(self.faulty.len(), blocks);
        self.faulty.push(d.clone());
        d
    }

    /// Index in `faulty` of the device in member slot `slot` of `a`.
    pub fn index_of(&self, a: &RaidArray, slot: u32) -> usize {
        let id = a.member_identities()[slot as usize]
            .clone()
            .expect("slot holds a member");
        self.faulty
            .iter()
            .position(|f| f.identity() == &id)
            .expect("member is one of the rig's devices")
    }

    pub fn shared(&self, i: usize) -> SharedDevice {
        self.faulty[i].clone()
    }

    pub fn all(&self) -> Vec<SharedDevice> {
        self.faulty
            .iter()
            .map(|f| f.clone() as SharedDevice)
            .collect()
    }

    pub async fn create(&self, members: usize) -> RaidArray {
        let m = (0..members).map(|i| self.shared(i)).collect();
        RaidArray::create(m, vec![], self.cfg.clone(), self.clock.clone())
            .await
            .expect("create")
    }

    /// Assembles from every device, with the assembly report.
    pub async fn assemble_report(
        &self,
        force: bool,
    ) -> raid::Result<(RaidArray, raid::AssemblyReport)> {
        RaidArray::assemble(
            self.all(),
            self.cfg.clone(),
            self.clock.clone(),
            AssembleOptions { force },
        )
        .await
    }

    /// An array over the first `n` devices, filled with version 1 and flushed.
    pub async fn filled(&self, n: usize) -> (RaidArray, Vec<Option<u64>>) {
        let a = self.create(n).await;
        let cap = a.geometry().num_blocks;
        a.write(0, blocks(0, cap, 1), blockdev::WriteFlags::NONE)
            .await
            .unwrap();
        a.flush().await.unwrap();
        (a, vec![Some(1); cap as usize])
    }

    pub async fn assemble(&self, force: bool) -> raid::Result<RaidArray> {
        RaidArray::assemble(
            self.all(),
            self.cfg.clone(),
            self.clock.clone(),
            AssembleOptions { force },
        )
        .await
        .map(|(a, _)| a)
    }
}

fn rand_tag() -> u64 {
    rand::random()
}

/// A block filled with a pattern derived from `(lba, version)`.
pub fn pattern(lba: u64, version: u64) -> Vec<u8> {
    let mut v = vec![0u8; BS];
    let mut x =
        lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ 1;
    for c in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    v
}

pub fn blocks(lba: u64, n: u64, version: u64) -> Bytes {
    Bytes::from(
        (lba..lba + n)
            .flat_map(|b| pattern(b, version))
            .collect::<Vec<u8>>(),
    )
}

/// Reads the whole volume and compares it with `model` (None: zeroes).
pub async fn check_all(a: &RaidArray, model: &[Option<u64>]) {
    let cap = a.geometry().num_blocks;
    assert!(cap as usize >= model.len());
    let data = a.read(0, model.len() as u32).await.expect("read back");
    for (lba, want) in model.iter().enumerate() {
        let got = &data[lba * BS..(lba + 1) * BS];
        let exp = match want {
            Some(v) => pattern(lba as u64, *v),
            None => vec![0; BS],
        };
        assert!(
            got == &exp[..],
            "block {lba}: wrong content (want version {want:?})"
        );
    }
}

/// Crashes `f`: of the blocks written since its last flush, those `keep`
/// picks keep their last version, the others revert to their durable content.
pub async fn crash_keeping(f: &FaultyDevice, keep: impl Fn(u64) -> bool) {
    f.crash_with(|lba, versions| if keep(lba) { versions - 1 } else { 0 })
        .await
        .unwrap();
}

/// Crashes every device of `rig`, keeping of the blocks written since its
/// last flush those in `order` (the others revert to their durable
/// content), and on the devices whose bit is set in `torn` only the first
/// `cut` of them: a crash that tore those devices' writes at `cut`.
pub async fn crash_tearing(rig: &Rig, torn: u32, order: &[u64], cut: usize) {
    for (m, f) in rig.faulty.iter().enumerate() {
        let kept = if torn & (1 << m) != 0 {
            &order[..cut]
        } else {
            order
        };
        crash_keeping(f, |b| kept.contains(&b)).await;
    }
}

/// Scrubs `a` and asserts that it found nothing to repair: data and parity
/// were consistent everywhere.
pub async fn assert_scrub_clean(a: &RaidArray) {
    let r = a.scrub().await.expect("scrub");
    assert_eq!(
        (r.data_repaired, r.parity_repaired, r.unrecoverable),
        (0, 0, 0),
        "{r:?}"
    );
}

/// Writes that go on in a task of their own until stopped, each `pick(v)`
/// = `(lba, blocks)` of version `v` (from 2 on), recorded in its own copy
/// of the model.
pub struct BackgroundWriter {
    written: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Option<u64>>>,
}

impl BackgroundWriter {
    pub fn spawn(
        a: &RaidArray,
        mut model: Vec<Option<u64>>,
        pick: impl Fn(u64) -> (u64, u64) + Send + 'static,
    ) -> BackgroundWriter {
        use std::sync::atomic::Ordering;
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (a, written, stop) = (a.clone(), written.clone(), stop.clone());
            tokio::spawn(async move {
                let mut v = 2;
                while !stop.load(Ordering::SeqCst) {
                    let (lba, n) = pick(v);
                    let fua = blockdev::WriteFlags { fua: v % 5 == 0 };
                    a.write(lba, blocks(lba, n, v), fua).await.expect("write");
                    model[lba as usize..(lba + n) as usize].fill(Some(v));
                    written.fetch_add(1, Ordering::SeqCst);
                    v += 1;
                    tokio::task::yield_now().await;
                }
                model
            })
        };
        BackgroundWriter {
            written,
            stop,
            task,
        }
    }

    /// Waits until `n` more writes have been acknowledged.
    pub async fn wait(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let until = self.written.load(Ordering::SeqCst) + n;
        while self.written.load(Ordering::SeqCst) < until {
            tokio::task::yield_now().await;
        }
    }

    /// Stops the writes; returns the model with every write acknowledged.
    pub async fn stop(self) -> Vec<Option<u64>> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("writer")
    }
}
