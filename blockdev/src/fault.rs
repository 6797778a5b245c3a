//! A fault-injecting wrapper around any block device, for tests.
//!
//! It injects what real disks and networks do to data: I/O errors on chosen
//! ranges, going offline, latency and latency spikes, silent bit flips on the
//! medium, misdirected writes (acknowledged, but landing at another address),
//! lost writes (acknowledged, never written), torn writes (only some blocks
//! land), and power loss: with a volatile cache enabled, [`FaultyDevice::crash`]
//! keeps, drops or tears every write that was not flushed, block by block,
//! as a disk's cache may. It can also hold writes until the test releases
//! them ([`FaultyDevice::hold_next_writes`]), as I/O stuck in a slow disk or
//! on a network: such a write goes on when its future is dropped.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    BlockDevice, BlockError, DeviceIdentity, DeviceStatus, Extent, Features, Geometry, Limits,
    Result, SharedDevice, WriteFlags,
};

/// How a torn write reports itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TearReport {
    /// The write claims success although only part of it landed.
    Ack,
    /// The write fails with [`BlockError::WriteFault`].
    Error,
}

/// Counters of what was injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Reads failed on purpose.
    pub read_errors: u64,
    /// Writes failed on purpose.
    pub write_errors: u64,
    /// Writes acknowledged at a wrong address.
    pub misdirected: u64,
    /// Writes acknowledged but dropped.
    pub lost: u64,
    /// Writes of which only a prefix landed.
    pub torn: u64,
    /// Unflushed blocks reverted by `crash`.
    pub crash_reverted_blocks: u64,
    /// Flushes that reached the device (counted, not injected).
    pub flushes: u64,
}

/// How a device is down.
#[derive(Debug, Clone, Copy)]
enum Down {
    /// Failed for good.
    Failed,
    /// Its path is cut.
    Path,
}

#[derive(Debug, Default)]
struct State {
    offline: Option<Down>,
    read_fail: Vec<Range<u64>>,
    write_fail: Vec<Range<u64>>,
    latency: Duration,
    spike: Option<(f64, Duration)>,
    misdirect: Vec<i64>,
    lose: u32,
    /// Writes still to be held (see [`FaultyDevice::hold_next_writes`]).
    hold: u32,
    tear: Option<(u64, TearReport)>,
    /// Volatile cache model: for each block written since the last flush, its
    /// durable content followed by every value written since.
    volatile: Option<BTreeMap<u64, Vec<Bytes>>>,
    stats: FaultStats,
}

/// A block device that misbehaves on request. See the module docs.
#[derive(Debug)]
pub struct FaultyDevice {
    inner: SharedDevice,
    state: Mutex<State>,
    rng: Mutex<StdRng>,
    /// Held writes that have not landed yet.
    held: Arc<AtomicUsize>,
    /// Bumped by [`FaultyDevice::release_writes`]; held writes wait for it.
    release: tokio::sync::watch::Sender<u64>,
}

fn overlaps(ranges: &[Range<u64>], lba: u64, blocks: u64) -> Option<u64> {
    ranges
        .iter()
        .filter(|r| r.start < lba + blocks && lba < r.end)
        .map(|r| r.start.max(lba))
        .min()
}

impl FaultyDevice {
    /// Wraps `inner`; no faults are active until asked for. `seed` drives every
    /// random choice (latency spikes, crash outcomes), so runs are repeatable.
    pub fn new(inner: SharedDevice, seed: u64) -> Self {
        FaultyDevice {
            inner,
            state: Mutex::new(State::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            held: Arc::new(AtomicUsize::new(0)),
            release: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &SharedDevice {
        &self.inner
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Makes every operation fail with [`BlockError::Failed`], as a device
    /// that died (or stop failing).
    pub fn set_offline(&self, offline: bool) {
        self.st().offline = offline.then_some(Down::Failed);
    }

    /// Makes every operation fail with [`BlockError::PathDown`], as a cut
    /// path (or stop failing): nothing is carried out meanwhile.
    pub fn set_path_down(&self, down: bool) {
        self.st().offline = down.then_some(Down::Path);
    }

    /// Reads touching `range` fail with [`BlockError::Medium`].
    pub fn fail_reads(&self, range: Range<u64>) {
        self.st().read_fail.push(range);
    }

    /// Writes touching `range` fail with [`BlockError::WriteFault`] without writing anything.
    pub fn fail_writes(&self, range: Range<u64>) {
        self.st().write_fail.push(range);
    }

    /// Removes every injected error range, pending misdirection, loss and tear.
    pub fn clear_faults(&self) {
        let mut s = self.st();
        s.read_fail.clear();
        s.write_fail.clear();
        s.misdirect.clear();
        s.lose = 0;
        s.tear = None;
        s.offline = None;
    }

    /// Delays every operation by `base`, and with probability `spike.0` by `spike.1` more.
    pub fn set_latency(&self, base: Duration, spike: Option<(f64, Duration)>) {
        let mut s = self.st();
        s.latency = base;
        s.spike = spike;
    }

    /// The next write is acknowledged but lands `offset` blocks away from its
    /// address (clamped to the device).
    pub fn misdirect_next_write(&self, offset: i64) {
        self.st().misdirect.push(offset);
    }

    /// The next `n` writes are acknowledged but never written.
    pub fn lose_next_writes(&self, n: u32) {
        self.st().lose += n;
    }

    /// The next `n` writes are held until [`FaultyDevice::release_writes`]:
    /// each waits in a task of its own and then goes to the wrapped device
    /// (no other fault applies to it). Dropping the future of a held write
    /// does not stop it, as with I/O a disk or a remote target already has,
    /// and nothing orders it against later writes: a backend that breaks the
    /// cancellation rule of [`BlockDevice`], for testing that the layers
    /// above never drop writes they must account for.
    pub fn hold_next_writes(&self, n: u32) {
        self.st().hold += n;
    }

    /// Lets every held write go to the wrapped device.
    pub fn release_writes(&self) {
        self.release.send_modify(|g| *g += 1);
    }

    /// Held writes that have not landed yet (a held write counts from the
    /// moment it reaches the device until the wrapped device has written it).
    pub fn held_writes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Holds the write if one is to be held: its result, once released.
    async fn held(&self, lba: u64, data: &Bytes, flags: WriteFlags) -> Option<Result<()>> {
        {
            let mut s = self.st();
            if s.hold == 0 {
                return None;
            }
            s.hold -= 1;
        }
        let mut released = self.release.subscribe();
        let generation = *released.borrow_and_update();
        let (inner, held, data) = (self.inner.clone(), self.held.clone(), data.clone());
        held.fetch_add(1, Ordering::AcqRel);
        let write = tokio::spawn(async move {
            let _ = released.wait_for(|g| *g > generation).await;
            let r = inner.write(lba, data, flags).await;
            held.fetch_sub(1, Ordering::AcqRel);
            r
        });
        Some(
            write
                .await
                .unwrap_or_else(|e| Err(BlockError::Io(std::io::Error::other(e)))),
        )
    }

    /// The next write lands only its first `keep_blocks` blocks.
    pub fn tear_next_write(&self, keep_blocks: u64, report: TearReport) {
        self.st().tear = Some((keep_blocks, report));
    }

    /// Flips one bit of the stored block `lba`, silently (bit rot on the medium).
    pub async fn flip_bit(&self, lba: u64, bit: usize) -> Result<()> {
        let data = self.inner.read(lba, 1).await?;
        let mut m = BytesMut::from(&data[..]);
        let bit = bit % (m.len() * 8);
        m[bit / 8] ^= 1 << (bit % 8);
        self.inner.write(lba, m.freeze(), WriteFlags::FUA).await
    }

    /// Turns the volatile write cache model on: from now on, writes not yet
    /// flushed (and not FUA) can be lost or torn by [`FaultyDevice::crash`].
    pub fn enable_volatile_cache(&self) {
        let mut s = self.st();
        if s.volatile.is_none() {
            s.volatile = Some(BTreeMap::new());
        }
    }

    /// Number of blocks written since the last flush (volatile model only).
    pub fn unflushed_blocks(&self) -> usize {
        self.st().volatile.as_ref().map_or(0, |v| v.len())
    }

    /// Simulates power loss: every block written since the last flush ends up
    /// holding its durable content or any one of the values written to it since,
    /// chosen at random per block (so writes are lost or torn). Faults stay armed.
    pub async fn crash(&self) -> Result<()> {
        self.crash_with(|_, versions| {
            let mut rng = self.rng.lock().unwrap();
            // Bias towards extremes: all landed, or nothing landed.
            match rng.gen_range(0..4) {
                0 => 0,
                1 => versions - 1,
                _ => rng.gen_range(0..versions),
            }
        })
        .await
    }

    /// [`FaultyDevice::crash`] with the outcome chosen by the caller: for
    /// every block written since the last flush, `pick(lba, versions)` says
    /// which version it keeps, 0 being its durable content and
    /// `versions - 1` the last one written (out-of-range picks keep the last).
    pub async fn crash_with(&self, mut pick: impl FnMut(u64, usize) -> usize) -> Result<()> {
        let pending = match self.st().volatile.as_mut() {
            Some(v) => std::mem::take(v),
            None => return Ok(()),
        };
        let mut reverted = 0;
        for (lba, history) in pending {
            let pick = pick(lba, history.len()).min(history.len() - 1);
            if pick != history.len() - 1 {
                reverted += 1;
                self.inner
                    .write(lba, history[pick].clone(), WriteFlags::FUA)
                    .await?;
            }
        }
        self.st().stats.crash_reverted_blocks += reverted;
        Ok(())
    }

    /// What has been injected so far.
    pub fn stats(&self) -> FaultStats {
        self.st().stats
    }

    async fn delay(&self) {
        let (base, spike) = {
            let s = self.st();
            (s.latency, s.spike)
        };
        let mut d = base;
        if let Some((p, extra)) = spike {
            if self.rng.lock().unwrap().gen_bool(p.clamp(0.0, 1.0)) {
                d += extra;
            }
        }
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn check_offline(&self) -> Result<()> {
        match self.st().offline {
            Some(Down::Failed) => Err(BlockError::Failed("fault injected".into())),
            Some(Down::Path) => Err(BlockError::PathDown("fault injected".into())),
            None => Ok(()),
        }
    }

    /// Records the pre-write content of blocks about to change (volatile model).
    async fn remember(&self, lba: u64, data: &Bytes) -> Result<()> {
        let bs = self.geometry().block_size as usize;
        let blocks = (data.len() / bs) as u64;
        let missing: Vec<u64> = match self.st().volatile.as_ref() {
            None => return Ok(()),
            Some(v) => (lba..lba + blocks).filter(|b| !v.contains_key(b)).collect(),
        };
        let mut old = Vec::with_capacity(missing.len());
        for b in missing {
            old.push((b, self.inner.read(b, 1).await?));
        }
        let mut s = self.st();
        if let Some(v) = s.volatile.as_mut() {
            for (b, d) in old {
                v.entry(b).or_insert_with(|| vec![d]);
            }
            for i in 0..blocks {
                let blk = data.slice(i as usize * bs..(i as usize + 1) * bs);
                v.get_mut(&(lba + i)).expect("recorded above").push(blk);
            }
        }
        Ok(())
    }

    fn forget(&self, lba: u64, blocks: u64) {
        if let Some(v) = self.st().volatile.as_mut() {
            for b in lba..lba + blocks {
                v.remove(&b);
            }
        }
    }
}

#[async_trait]
impl BlockDevice for FaultyDevice {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    /// The inner device's limits: the faults it injects break them on
    /// purpose (a torn write may tear an "atomic" one).
    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    /// The inner device's status: a resize or a disappearance below reaches
    /// the layers above the fault injector as it would without it.
    fn status(&self) -> tokio::sync::watch::Receiver<DeviceStatus> {
        self.inner.status()
    }

    fn features(&self) -> Features {
        let mut f = self.inner.features();
        if self.st().volatile.is_some() {
            f.volatile_cache = true;
        }
        f
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes> {
        self.delay().await;
        self.check_offline()?;
        {
            let mut s = self.st();
            if let Some(bad) = overlaps(&s.read_fail, lba, u64::from(blocks)) {
                s.stats.read_errors += 1;
                return Err(BlockError::Medium { lba: bad });
            }
        }
        self.inner.read(lba, blocks).await
    }

    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> Result<()> {
        self.delay().await;
        self.check_offline()?;
        if let Some(r) = self.held(lba, &data, flags).await {
            return r;
        }
        let g = self.geometry();
        let blocks = g.blocks_in(data.len())?;
        g.check_range(lba, blocks)?;
        enum Act {
            Fail(u64),
            Lose,
            Misdirect(u64),
            Tear(u64, TearReport),
            Normal,
        }
        let act = {
            let mut s = self.st();
            if let Some(bad) = overlaps(&s.write_fail, lba, blocks) {
                s.stats.write_errors += 1;
                Act::Fail(bad)
            } else if s.lose > 0 {
                s.lose -= 1;
                s.stats.lost += 1;
                Act::Lose
            } else if !s.misdirect.is_empty() {
                let off = s.misdirect.remove(0);
                s.stats.misdirected += 1;
                let max = g.num_blocks - blocks;
                Act::Misdirect((lba as i64 + off).clamp(0, max as i64) as u64)
            } else if let Some((keep, rep)) = s.tear.take() {
                s.stats.torn += 1;
                Act::Tear(keep.min(blocks), rep)
            } else {
                Act::Normal
            }
        };
        let bs = g.block_size as usize;
        let (at, data, result) = match act {
            Act::Fail(bad) => return Err(BlockError::WriteFault { lba: bad }),
            Act::Lose => return Ok(()),
            Act::Misdirect(to) => (to, data, Ok(())),
            Act::Tear(keep, rep) => {
                let res = match rep {
                    TearReport::Ack => Ok(()),
                    TearReport::Error => Err(BlockError::WriteFault { lba: lba + keep }),
                };
                (lba, data.slice(..keep as usize * bs), res)
            }
            Act::Normal => (lba, data, Ok(())),
        };
        if !data.is_empty() {
            if flags.fua {
                self.inner.write(at, data.clone(), flags).await?;
                self.forget(at, (data.len() / bs) as u64);
            } else {
                self.remember(at, &data).await?;
                self.inner.write(at, data, flags).await?;
            }
        }
        result
    }

    async fn flush(&self) -> Result<()> {
        self.delay().await;
        self.check_offline()?;
        self.inner.flush().await?;
        let mut st = self.st();
        st.stats.flushes += 1;
        if let Some(v) = st.volatile.as_mut() {
            v.clear();
        }
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
        self.delay().await;
        self.check_offline()?;
        {
            let mut s = self.st();
            if let Some(bad) = overlaps(&s.write_fail, lba, blocks) {
                s.stats.write_errors += 1;
                return Err(BlockError::WriteFault { lba: bad });
            }
        }
        if self.st().volatile.is_some() {
            let bs = self.geometry().block_size as usize;
            let zero = Bytes::from(vec![0u8; blocks as usize * bs]);
            self.remember(lba, &zero).await?;
        }
        self.inner.write_zeroes(lba, blocks, unmap).await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.write_zeroes(lba, blocks, true).await
    }

    async fn block_status(&self, lba: u64, max_blocks: u64) -> Result<Extent> {
        self.check_offline()?;
        self.inner.block_status(lba, max_blocks).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::MemDevice;

    fn dev() -> FaultyDevice {
        FaultyDevice::new(Arc::new(MemDevice::with_name("f", 1 << 20)), 7)
    }

    fn blk(v: u8, n: usize) -> Bytes {
        Bytes::from(vec![v; 512 * n])
    }

    #[test]
    fn limits_are_the_inner_devices() {
        let l = Limits {
            max_transfer: 64,
            optimal_granularity: 8,
            atomic_write: 16,
            queue_depth: 4,
        };
        let inner = MemDevice::with_name("f", 1 << 20).set_limits(l);
        assert_eq!(FaultyDevice::new(Arc::new(inner), 7).limits(), l);
    }

    #[tokio::test]
    async fn the_inner_devices_status_shows_through() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let opts = crate::file::FileOptions {
            create_size: Some(1 << 20),
            ..Default::default()
        };
        let file =
            Arc::new(crate::FileDevice::open(&p, &opts, DeviceIdentity::from_name("f")).unwrap());
        let d = FaultyDevice::new(file.clone(), 1);
        let mut status = d.status();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        assert_eq!(file.rescan().unwrap(), 4096);
        status.changed().await.unwrap();
        assert_eq!(status.borrow().geometry.num_blocks, 4096);
    }

    #[tokio::test]
    async fn errors_and_offline() {
        let d = dev();
        d.fail_reads(10..20);
        assert!(matches!(
            d.read(5, 10).await,
            Err(BlockError::Medium { lba: 10 })
        ));
        assert!(d.read(0, 10).await.is_ok());
        d.fail_writes(100..101);
        assert!(matches!(
            d.write(99, blk(1, 2), WriteFlags::NONE).await,
            Err(BlockError::WriteFault { lba: 100 })
        ));
        d.set_offline(true);
        assert!(matches!(d.read(0, 1).await, Err(BlockError::Failed(_))));
        d.clear_faults();
        assert!(d.read(5, 10).await.is_ok());
        assert_eq!(d.stats().read_errors, 1);
    }

    #[tokio::test]
    async fn misdirected_lost_torn_and_bitflip() {
        let d = dev();
        d.misdirect_next_write(3);
        d.write(10, blk(7, 1), WriteFlags::NONE).await.unwrap();
        assert_eq!(d.read(10, 1).await.unwrap(), blk(0, 1));
        assert_eq!(d.read(13, 1).await.unwrap(), blk(7, 1));
        d.lose_next_writes(1);
        d.write(20, blk(9, 1), WriteFlags::NONE).await.unwrap();
        assert_eq!(d.read(20, 1).await.unwrap(), blk(0, 1));
        d.tear_next_write(1, TearReport::Error);
        assert!(d.write(30, blk(5, 3), WriteFlags::NONE).await.is_err());
        assert_eq!(
            d.read(30, 3).await.unwrap()[..],
            [blk(5, 1), blk(0, 2)].concat()[..]
        );
        d.flip_bit(30, 0).await.unwrap();
        assert_eq!(d.read(30, 1).await.unwrap()[0], 4);
    }

    #[tokio::test]
    async fn held_writes_land_when_released_even_if_dropped() {
        let d = Arc::new(dev());
        d.hold_next_writes(1);
        let d2 = Arc::clone(&d);
        let w = tokio::spawn(async move { d2.write(40, blk(6, 2), WriteFlags::NONE).await });
        while d.held_writes() == 0 {
            tokio::task::yield_now().await;
        }
        // Not written while held; its future can go away.
        assert_eq!(d.read(40, 2).await.unwrap(), blk(0, 2));
        w.abort();
        // Other writes pass.
        d.write(42, blk(1, 1), WriteFlags::NONE).await.unwrap();
        d.release_writes();
        while d.held_writes() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            d.read(40, 3).await.unwrap(),
            [blk(6, 2), blk(1, 1)].concat()
        );
    }

    #[tokio::test]
    async fn crash_keeps_flushed_and_fua_data() {
        let d = dev();
        d.enable_volatile_cache();
        d.write(0, blk(1, 8), WriteFlags::NONE).await.unwrap();
        d.flush().await.unwrap();
        d.write(8, blk(2, 8), WriteFlags::FUA).await.unwrap();
        for i in 0..64 {
            d.write(16 + i, blk(3, 1), WriteFlags::NONE).await.unwrap();
        }
        assert_eq!(d.unflushed_blocks(), 64);
        d.crash().await.unwrap();
        assert_eq!(d.read(0, 8).await.unwrap(), blk(1, 8));
        assert_eq!(d.read(8, 8).await.unwrap(), blk(2, 8));
        let after = d.read(16, 64).await.unwrap();
        let kept = after.chunks(512).filter(|c| c[0] == 3).count();
        assert!(
            kept > 0 && kept < 64,
            "a crash with 64 unflushed blocks keeps some and loses some ({kept})"
        );
        assert!(after
            .chunks(512)
            .all(|c| c.iter().all(|&b| b == c[0]) && (c[0] == 0 || c[0] == 3)));
    }
}
