//! Verified random I/O for the fault tests: several writers, each on its
//! own region, write runs of blocks stamped with their address, a
//! generation and a CRC32C, and read runs back checking every block against
//! the generation they last wrote there. Errors and mismatches are counted,
//! not panicked on, so a run reports all of them; every I/O's start and end
//! are logged for the failover figures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockdev::{SharedDevice, WriteFlags};
use tokio::time::Instant;

use super::flap::Rng;
use super::stamps::{stamps, verify};

const BS: usize = 512;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// I/Os that ended.
    pub ios: u64,
    /// Errors that reached the caller.
    pub errors: Vec<String>,
    /// Blocks that read back other than last written.
    pub mismatches: Vec<String>,
    /// Every I/O: whether it was a write, its start and its end, in the
    /// order they ended.
    pub log: Vec<Logged>,
}

/// One I/O as logged.
#[derive(Debug, Clone, Copy)]
pub struct Logged {
    /// A write (else a read).
    pub write: bool,
    /// When it was called.
    pub start: Instant,
    /// When it returned.
    pub end: Instant,
}

impl Report {
    /// Asserts that no error reached the caller and every block read
    /// back as last written.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.errors,
            Vec::<String>::new(),
            "errors reached the caller"
        );
        assert_eq!(
            self.mismatches,
            Vec::<String>::new(),
            "blocks read back wrong"
        );
    }

    /// For a link cut at `down` and its path taken out of use at
    /// `failed` (by the multipath layer; the link's return if it never
    /// was): how long after the cut the last read (`writes` false) or write
    /// that may have gone to the cut path ended. For reads that is the
    /// failover: the read re-issued and completed on the other path. A
    /// write is reported only once the cut path is also fenced (its session
    /// reinstated, or the ISU's session timeout passed), so for writes it
    /// is bounded by the cut's length, not by the failover.
    pub fn failover(&self, down: Instant, failed: Instant, writes: bool) -> Duration {
        self.log
            .iter()
            .filter(|l| l.write == writes && l.start <= failed && l.end > down)
            .map(|l| l.end - down)
            .max()
            .unwrap_or_default()
    }
}

/// A stop flag set after `d`.
pub fn stop_after(d: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        s.store(true, Ordering::SeqCst);
    });
    stop
}

/// Runs `writers` writers on `dev`, each on its own `region` blocks, until
/// `stop` is set; every run of 1 to 16 blocks written is read back later at
/// random.
pub async fn run(dev: SharedDevice, writers: u64, region: u64, stop: Arc<AtomicBool>) -> Report {
    let report = Arc::new(Mutex::new(Report::default()));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (dev, report, stop) = (dev.clone(), report.clone(), stop.clone());
            tokio::spawn(async move { writer(dev, w, region, &stop, report).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(report).unwrap().into_inner().unwrap()
}

async fn writer(
    dev: SharedDevice,
    w: u64,
    region: u64,
    stop: &AtomicBool,
    report: Arc<Mutex<Report>>,
) {
    let base = w * region;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
    // The generation last written to each block of the region (0: never).
    let mut written = vec![0u64; region as usize];
    let mut generation = 0;
    while !stop.load(Ordering::SeqCst) {
        let blocks = 1 + rng.range(0, 16);
        let at = rng.range(0, region - blocks + 1);
        let lba = base + at;
        let start = Instant::now();
        let write = rng.range(0, 10) < 6;
        let outcome = if write {
            generation += 1;
            let flags = WriteFlags {
                fua: generation % 4 == 0,
            };
            let data = stamps(lba, blocks, generation, BS);
            let r = dev.write(lba, data.into(), flags).await;
            if r.is_ok() {
                written[at as usize..(at + blocks) as usize].fill(generation);
            }
            r.map(|()| Vec::new())
        } else {
            dev.read(lba, blocks as u32).await.map(|data| {
                let mut bad = Vec::new();
                for (i, block) in data.chunks(BS).enumerate() {
                    let expected = written[at as usize + i];
                    if expected > 0 {
                        if let Err(e) = verify(block, lba + i as u64, expected, BS) {
                            bad.push(e);
                        }
                    }
                }
                bad
            })
        };
        let end = Instant::now();
        let failed = {
            let mut r = report.lock().unwrap();
            r.ios += 1;
            r.log.push(Logged { write, start, end });
            match outcome {
                Ok(bad) => {
                    r.mismatches.extend(bad);
                    false
                }
                Err(e) => {
                    r.errors.push(format!(
                        "{} {lba}+{blocks}: {e}",
                        if write { "write" } else { "read" }
                    ));
                    true
                }
            }
        };
        if failed {
            // A device failing at once must not make this a busy loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
