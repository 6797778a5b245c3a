//! Crash consistency of table commits: whatever a crash, a torn or a lost
//! write does to a commit, reopening shows the old table or the new one,
//! never a mix, and a commit that returned success survives.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use blockdev::fault::TearReport;
use blockdev::{
    BlockDevice, BlockError, Bytes, DeviceIdentity, FaultyDevice, Geometry, MemDevice,
    SharedDevice, WriteFlags,
};
use volume::{Pool, UnitExtent, VolumeError};

const UNIT: u64 = 8;

/// What a reopen shows of the table: every volume's name, extents and flag.
type Shape = Vec<(String, Vec<UnitExtent>, bool)>;

fn shape(pool: &Pool) -> Shape {
    pool.list()
        .into_iter()
        .map(|v| (v.name, v.extents, v.read_only))
        .collect()
}

/// Power fails after `left` more operations: the device then fails every
/// call, as one whose host lost power (the test crashes the volatile cache
/// below it afterwards).
#[derive(Debug)]
struct PowerCut {
    inner: Arc<FaultyDevice>,
    left: AtomicUsize,
}

impl PowerCut {
    fn step(&self) -> blockdev::Result<()> {
        let left = self.left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(BlockError::Failed("power cut".into()));
        }
        self.left.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl BlockDevice for PowerCut {
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }
    async fn read(&self, lba: u64, blocks: u32) -> blockdev::Result<Bytes> {
        self.step()?;
        self.inner.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, flags: WriteFlags) -> blockdev::Result<()> {
        self.step()?;
        self.inner.write(lba, data, flags).await
    }
    async fn flush(&self) -> blockdev::Result<()> {
        self.step()?;
        self.inner.flush().await
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> blockdev::Result<()> {
        self.step()?;
        self.inner.write_zeroes(lba, blocks, unmap).await
    }
}

const DEVICE_BYTES: usize = 4 << 20;

/// A memory device holding `image`, behind a fault injector with a
/// volatile cache (empty: everything so far is durable).
fn device(image: &[u8], seed: u64) -> (Arc<MemDevice>, Arc<FaultyDevice>) {
    let mem = Arc::new(MemDevice::with_name("crash", DEVICE_BYTES as u64));
    mem.write_bytes(0, image);
    let faulty = Arc::new(FaultyDevice::new(mem.clone(), seed));
    faulty.enable_volatile_cache();
    (mem, faulty)
}

/// The medium of the starting point of every scenario: a device filled with
/// a non-zero pattern (so zeroing shows), formatted, with volumes `a`, `b`
/// and 40 more (enough, with long names, that the table spans several
/// blocks and a crash can tear it), `a` filled with 0x11; and the shape of
/// its table.
async fn start() -> (Vec<u8>, Shape) {
    let mem = Arc::new(MemDevice::with_name("crash", DEVICE_BYTES as u64));
    mem.write_bytes(0, &vec![0xA5; DEVICE_BYTES]);
    let pool = Pool::format(mem.clone(), UNIT, false).await.unwrap();
    pool.create("a", 16 * 512).await.unwrap();
    pool.create("b", 8 * 512).await.unwrap();
    for i in 0..40 {
        let name = format!("pad-{i:02}-{}", "x".repeat(56));
        pool.create(&name, 512).await.unwrap();
    }
    let va = pool.open_volume("a").unwrap();
    va.write(0, Bytes::from(vec![0x11; 16 * 512]), WriteFlags::NONE)
        .await
        .unwrap();
    let mut image = vec![0; DEVICE_BYTES];
    mem.read_bytes(0, &mut image);
    (image, shape(&pool))
}

/// The table changes each scenario runs, on a pool holding "a" (open
/// handles dropped) and "b".
#[derive(Debug, Clone, Copy)]
enum Change {
    Create,
    Grow,
    Delete,
    ReadOnly,
}

impl Change {
    async fn run(self, pool: &Pool) -> volume::Result<()> {
        match self {
            Change::Create => pool.create("c", 40 * 512).await.map(drop),
            Change::Grow => pool.grow("a", 64 * 512).await.map(drop),
            Change::Delete => pool.delete("a").await,
            Change::ReadOnly => pool.set_read_only("b", true).await.map(drop),
        }
    }
}

/// The shape a change leads to, computed on a device of its own.
async fn after(image: &[u8], change: Change) -> Shape {
    let (_, faulty) = device(image, 1);
    let pool = Pool::open(faulty).await.unwrap();
    change.run(&pool).await.unwrap();
    shape(&pool)
}

/// Reopens the pool on the medium and checks it shows `old` or `new`
/// (`new` for sure when the change returned success), and that every
/// volume reads what it should: `a` its data where the old table had it,
/// every other block zeroes.
async fn check_reopen(mem: &Arc<MemDevice>, old: &Shape, new: &Shape, ok: bool, what: &str) {
    let pool = Pool::open(mem.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = shape(&pool);
    assert!(
        got == *new || (!ok && got == *old),
        "{what}: reopen shows neither table: {got:?}"
    );
    for (name, extents, _) in &got {
        let v = pool.open_volume(name).unwrap();
        let blocks = v.geometry().num_blocks;
        let data = v.read(0, blocks as u32).await.unwrap();
        let kept = if name == "a" { 16 * 512 } else { 0 };
        assert!(
            data[..kept].iter().all(|&b| b == 0x11) && data[kept..].iter().all(|&b| b == 0),
            "{what}: volume {name} ({extents:?}) reads wrong data"
        );
    }
}

#[tokio::test]
async fn a_power_cut_at_every_step_of_a_commit_leaves_the_old_or_the_new_table() {
    let (image, old) = start().await;
    for change in [
        Change::Create,
        Change::Grow,
        Change::Delete,
        Change::ReadOnly,
    ] {
        let new = after(&image, change).await;
        let mut step = 0;
        loop {
            // Four crash outcomes of the unflushed blocks: all lost, all
            // kept, each block at random, and the table area kept while
            // everything else is lost (a cache writes back in any order).
            let mut done = false;
            for mode in 0..4 {
                let (mem, faulty) = device(&image, step as u64 * 4 + mode);
                let cut = Arc::new(PowerCut {
                    inner: faulty.clone(),
                    left: AtomicUsize::new(step),
                });
                let pool = Pool::open(cut.clone() as SharedDevice).await;
                let r = match pool {
                    Ok(pool) => change.run(&pool).await,
                    Err(e) => Err(e),
                };
                match mode {
                    0 => faulty.crash_with(|_, _| 0).await.unwrap(),
                    1 => faulty.crash_with(|_, v| v - 1).await.unwrap(),
                    2 => faulty.crash().await.unwrap(),
                    _ => {
                        let table_area = 2 * volume::table::COPY_BYTES as u64 / 512;
                        faulty
                            .crash_with(|lba, v| if lba < table_area { v - 1 } else { 0 })
                            .await
                            .unwrap()
                    }
                }
                let what =
                    format!("{change:?}, power cut after {step} operations, crash mode {mode}");
                check_reopen(&mem, &old, &new, r.is_ok(), &what).await;
                done = r.is_ok();
            }
            if done {
                break;
            }
            step += 1;
            assert!(step < 64, "{change:?} never completed");
        }
    }
}

#[tokio::test]
async fn a_torn_or_lost_table_write_is_never_reported_committed() {
    let (image, old) = start().await;
    for change in [Change::Create, Change::Grow, Change::Delete] {
        let new = after(&image, change).await;
        // Tear the copy at every 32nd block and at its last, acknowledged or
        // failed; then lose it whole.
        let copy_blocks = (volume::table::COPY_BYTES / 512) as u64;
        let mut faults: Vec<(Option<u64>, TearReport)> = (0..copy_blocks)
            .step_by(32)
            .chain([copy_blocks - 1])
            .flat_map(|k| [(Some(k), TearReport::Ack), (Some(k), TearReport::Error)])
            .collect();
        faults.push((None, TearReport::Ack));
        for (keep, report) in faults {
            let (mem, faulty) = device(&image, 9);
            let pool = Pool::open(faulty.clone()).await.unwrap();
            // The next write is the table copy (zeroing is not a write).
            match keep {
                Some(k) => faulty.tear_next_write(k, report),
                None => faulty.lose_next_writes(1),
            }
            let r = change.run(&pool).await;
            let what = format!("{change:?}, copy write {keep:?} {report:?}");
            match &r {
                // A tear that kept every block that differs is a whole write.
                Ok(()) => assert_eq!(shape(&pool), new, "{what}"),
                Err(VolumeError::CommitNotVerified) | Err(VolumeError::Device(_)) => {
                    assert_eq!(shape(&pool), old, "{what}: the pool keeps the old table")
                }
                Err(e) => panic!("{what}: {e}"),
            }
            assert!(
                r.is_err() || keep.is_some_and(|k| k > 0),
                "{what}: reported committed"
            );
            faulty.crash().await.unwrap();
            check_reopen(&mem, &old, &new, r.is_ok(), &what).await;
            if r.is_ok() {
                continue;
            }
            // The next change goes to the same copy and succeeds.
            change.run(&pool).await.unwrap();
            assert_eq!(shape(&pool), new);
            check_reopen(&mem, &old, &new, true, &what).await;
        }
    }
}

#[tokio::test]
async fn both_copies_damaged_is_an_error_not_a_guess() {
    let (image, _) = start().await;
    let (mem, _) = device(&image, 3);
    let copy = volume::table::COPY_BYTES as u64;
    mem.write_bytes(100, &[0xFF; 4]);
    // One damaged copy: the other serves.
    assert!(Pool::open(mem.clone()).await.is_ok());
    mem.write_bytes(copy + 100, &[0xFF; 4]);
    let e = Pool::open(mem.clone()).await.unwrap_err();
    assert!(matches!(e, VolumeError::Corrupt(_, _)), "{e}");
    assert!(matches!(
        Pool::format(mem.clone(), UNIT, false).await,
        Err(VolumeError::AlreadyFormatted { .. })
    ));
}
