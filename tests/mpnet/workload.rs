//! Verified random I/O for the fault tests: several writers, each on its
//! own region, write runs of blocks stamped with their address, a
//! generation and a CRC32C, and read runs back checking every block against
//! the generation they last wrote there. Errors and mismatches are counted,
//! not panicked on, so a run reports all of them; every I/O's start and end
//! are logged for the failover figures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockdev::{SharedDevice, WriteFlags};
use tokio::time::Instant;

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
    /// Start and end of every I/O, in the order they ended.
    pub log: Vec<(Instant, Instant)>,
}

impl Report {
    /// For a link cut at `down` and its path taken out of use at
    /// `failed` (by the multipath layer): how long after the cut the last
    /// I/O that may have gone to the cut path ended, i.e. the longest a
    /// caller waited because of the cut.
    pub fn failover(&self, down: Instant, failed: Instant) -> Duration {
        self.log
            .iter()
            .filter(|(start, end)| *start <= failed && *end > down)
            .map(|(_, end)| *end - down)
            .max()
            .unwrap_or_default()
    }
}

/// A small xorshift generator: reproducible per writer, no shared state.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs `writers` writers on `dev`, each on its own `region` blocks, until
/// `until`; every run of 1 to 16 blocks written is read back later at
/// random.
pub async fn run(dev: SharedDevice, writers: u64, region: u64, until: Instant) -> Report {
    let report = Arc::new(Mutex::new(Report::default()));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (dev, report) = (dev.clone(), report.clone());
            tokio::spawn(async move { writer(dev, w, region, until, report).await })
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
    until: Instant,
    report: Arc<Mutex<Report>>,
) {
    let base = w * region;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
    // The generation last written to each block of the region (0: never).
    let mut written = vec![0u64; region as usize];
    let mut generation = 0;
    while Instant::now() < until {
        let blocks = 1 + rng.below(16);
        let at = rng.below(region - blocks + 1);
        let lba = base + at;
        let start = Instant::now();
        let write = rng.below(10) < 6;
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
        let mut r = report.lock().unwrap();
        r.ios += 1;
        r.log.push((start, end));
        match outcome {
            Ok(bad) => r.mismatches.extend(bad),
            Err(e) => r.errors.push(format!(
                "{} {lba}+{blocks}: {e}",
                if write { "write" } else { "read" }
            )),
        }
    }
}
