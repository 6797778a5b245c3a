//! Property test: random sequences of create, grow, delete, write, unmap
//! and reopen against a model. Volumes never overlap, each reads back what
//! it was given, new space reads zeroes (the device starts full of a
//! pattern, and deleted volumes leave their data behind), and the free
//! space adds up. The same on a device that starts zeroed and is formatted
//! knowing it ([`Pool::format_zeroed`]): space never used is handed out
//! without zeroing, a deleted volume's space is zeroed before reuse, so
//! nothing of it ever shows in a new volume.

use std::collections::BTreeMap;
use std::sync::Arc;

use blockdev::{BlockDevice, Bytes, MemDevice, SharedDevice, WriteFlags};
use proptest::prelude::*;
use volume::{table, Pool, Volume, VolumeError};

const BS: usize = 512;
const UNIT: u64 = 8;
const DEVICE_BYTES: u64 = 2 << 20;
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Debug, Clone)]
enum Op {
    Create {
        name: usize,
        units: u64,
    },
    Grow {
        name: usize,
        units: u64,
    },
    Delete {
        name: usize,
        close_first: bool,
    },
    Write {
        name: usize,
        at: f64,
        blocks: u64,
        stamp: u32,
    },
    Unmap {
        name: usize,
        at: f64,
        blocks: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        3 => (name.clone(), 1..48u64).prop_map(|(name, units)| Op::Create { name, units }),
        2 => (name.clone(), 0..40u64).prop_map(|(name, units)| Op::Grow { name, units }),
        2 => (name.clone(), any::<bool>())
            .prop_map(|(name, close_first)| Op::Delete { name, close_first }),
        4 => (name.clone(), 0.0..1.0f64, 1..40u64, 1..u32::MAX)
            .prop_map(|(name, at, blocks, stamp)| Op::Write { name, at, blocks, stamp }),
        1 => (name, 0.0..1.0f64, 1..40u64)
            .prop_map(|(name, at, blocks)| Op::Unmap { name, at, blocks }),
        1 => Just(Op::Reopen),
    ]
}

/// Block `b` of a volume written with `stamp` (0: zeroes).
fn block(stamp: u32, b: u64) -> Vec<u8> {
    if stamp == 0 {
        return vec![0; BS];
    }
    let mut v = vec![stamp as u8; BS];
    v[..4].copy_from_slice(&stamp.to_le_bytes());
    v[4..12].copy_from_slice(&b.to_le_bytes());
    v
}

struct World {
    dev: SharedDevice,
    pool: Pool,
    model: BTreeMap<&'static str, Vec<u32>>,
    open: BTreeMap<&'static str, Arc<Volume>>,
    free_units: u64,
}

impl World {
    fn handle(&mut self, name: &'static str) -> Arc<Volume> {
        self.open
            .entry(name)
            .or_insert_with(|| self.pool.open_volume(name).unwrap())
            .clone()
    }

    /// Units the volumes' changed-block maps take (hidden; a volume gets
    /// one when there is room).
    fn map_units(&self) -> u64 {
        self.pool
            .list()
            .iter()
            .filter_map(|v| self.pool.info(&table::change_map_name(&v.uuid)).ok())
            .map(|m| m.size_blocks / UNIT)
            .sum()
    }

    /// A range of `blocks` blocks at fraction `at` of volume `name`, clipped.
    fn range(&self, name: &str, at: f64, blocks: u64) -> (u64, u64) {
        let size = self.model[name].len() as u64;
        let lba = ((size as f64 * at) as u64).min(size - 1);
        (lba, blocks.min(size - lba))
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create { name, units } => {
                let name = NAMES[name];
                let free = self.free_units - self.map_units();
                let r = self.pool.create(name, units * UNIT * BS as u64).await;
                if self.model.contains_key(name) {
                    assert!(matches!(r, Err(VolumeError::Exists(_))), "{r:?}");
                } else if units > free {
                    assert!(matches!(r, Err(VolumeError::NoSpace { .. })), "{r:?}");
                } else {
                    assert_eq!(r.unwrap().size_blocks, units * UNIT);
                    self.model.insert(name, vec![0; (units * UNIT) as usize]);
                    self.free_units -= units;
                }
            }
            Op::Grow { name, units } => {
                let name = NAMES[name];
                let Some(have) = self.model.get(name).map(|m| m.len() as u64 / UNIT) else {
                    let r = self.pool.grow(name, UNIT * BS as u64).await;
                    assert!(matches!(r, Err(VolumeError::NotFound(_))), "{r:?}");
                    return;
                };
                let free = self.free_units - self.map_units();
                let r = self
                    .pool
                    .grow(name, (have + units) * UNIT * BS as u64)
                    .await;
                if units > free {
                    assert!(matches!(r, Err(VolumeError::NoSpace { .. })), "{r:?}");
                } else {
                    assert_eq!(r.unwrap().size_blocks, (have + units) * UNIT);
                    if let Some(v) = self.open.get(name) {
                        assert_eq!(v.geometry().num_blocks, (have + units) * UNIT);
                    }
                    self.model
                        .get_mut(name)
                        .unwrap()
                        .resize(((have + units) * UNIT) as usize, 0);
                    self.free_units -= units;
                }
            }
            Op::Delete { name, close_first } => {
                let name = NAMES[name];
                if close_first {
                    self.open.remove(name);
                }
                let r = self.pool.delete(name).await;
                if !self.model.contains_key(name) {
                    assert!(matches!(r, Err(VolumeError::NotFound(_))), "{r:?}");
                } else if self.open.contains_key(name) {
                    assert!(matches!(r, Err(VolumeError::InUse { .. })), "{r:?}");
                } else {
                    r.unwrap();
                    let m = self.model.remove(name).unwrap();
                    self.free_units += m.len() as u64 / UNIT;
                }
            }
            Op::Write {
                name,
                at,
                blocks,
                stamp,
            } => {
                let name = NAMES[name];
                if !self.model.contains_key(name) {
                    return;
                }
                let (lba, n) = self.range(name, at, blocks);
                let data: Vec<u8> = (lba..lba + n).flat_map(|b| block(stamp, b)).collect();
                let v = self.handle(name);
                v.write(lba, Bytes::from(data), WriteFlags::NONE)
                    .await
                    .unwrap();
                let m = self.model.get_mut(name).unwrap();
                m[lba as usize..(lba + n) as usize].fill(stamp);
            }
            Op::Unmap { name, at, blocks } => {
                let name = NAMES[name];
                if !self.model.contains_key(name) {
                    return;
                }
                let (lba, n) = self.range(name, at, blocks);
                self.handle(name).unmap(lba, n).await.unwrap();
                let m = self.model.get_mut(name).unwrap();
                m[lba as usize..(lba + n) as usize].fill(0);
            }
            Op::Reopen => {
                self.open.clear();
                self.pool = Pool::open(self.dev.clone()).await.unwrap();
            }
        }
    }

    async fn check(&mut self) {
        let list = self.pool.list();
        let names: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
        let want: Vec<&str> = self.model.keys().copied().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, want);
        let space = self.pool.space();
        let mut units: Vec<(u64, u64)> = list
            .iter()
            .flat_map(|v| v.extents.iter().map(|e| (e.start, e.end())))
            .collect();
        units.sort_unstable();
        assert!(
            units.windows(2).all(|w| w[0].1 <= w[1].0),
            "volumes overlap: {units:?}"
        );
        assert!(units
            .iter()
            .all(|&(s, e)| s * UNIT >= space.reserved_blocks && e * UNIT <= space.total_blocks));
        // The model's free units include those of the maps.
        assert_eq!(
            space.free_blocks + self.map_units() * UNIT,
            self.free_units * UNIT
        );
        for info in list {
            let name = NAMES.iter().find(|n| **n == info.name).unwrap();
            let m = self.model[name].clone();
            assert_eq!(info.size_blocks, m.len() as u64);
            let data = self.handle(name).read(0, m.len() as u32).await.unwrap();
            for (b, &stamp) in m.iter().enumerate() {
                assert!(
                    data[b * BS..(b + 1) * BS] == block(stamp, b as u64)[..],
                    "volume {name} block {b}: want stamp {stamp}"
                );
            }
        }
    }
}

/// Runs `ops` on a current-thread runtime.
fn run_on_runtime(ops: Vec<Op>, zeroed: bool) {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(run(ops, zeroed));
}

async fn run(ops: Vec<Op>, zeroed: bool) {
    let mem = Arc::new(MemDevice::with_name("model", DEVICE_BYTES));
    let dev: SharedDevice = mem.clone();
    let pool = if zeroed {
        Pool::format_zeroed(dev.clone(), UNIT).await.unwrap()
    } else {
        mem.write_bytes(0, &vec![0xA5; DEVICE_BYTES as usize]);
        Pool::format(dev.clone(), UNIT, false).await.unwrap()
    };
    let free_units = pool.space().free_blocks / UNIT;
    let mut w = World {
        dev,
        pool,
        model: BTreeMap::new(),
        open: BTreeMap::new(),
        free_units,
    };
    for op in &ops {
        w.apply(op).await;
        w.check().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn volumes_keep_their_data_apart(ops in proptest::collection::vec(op(), 1..40)) {
        run_on_runtime(ops, false);
    }

    #[test]
    fn volumes_keep_their_data_apart_on_a_zeroed_device(ops in proptest::collection::vec(op(), 1..40)) {
        run_on_runtime(ops, true);
    }
}
