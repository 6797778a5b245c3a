//! A caller that drops a write while its first attempt is being fenced,
//! then writes, zeroes or flushes the same blocks through the device: the
//! later request waits for the fence, so the stale first attempt never
//! lands over it (the blocks stay held by the fence, not by the caller's
//! future). Without the hold the later write goes out at once through the
//! other path and the stale copy lands over it when the fence lets go.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use blockdev::{BlockDevice, Bytes, WriteFlags};
use common::{device_with_paths, stamp};
use multipath::{Config, SelectorKind};
use proptest::prelude::*;

const IO_TIMEOUT: Duration = Duration::from_millis(500);

/// What the caller does after dropping the first write.
#[derive(Debug, Clone)]
enum Then {
    /// Writes `blocks` blocks from `offset` into the first write's range.
    Write { offset: u64, blocks: u64 },
    /// Zeroes them.
    Zero { offset: u64, blocks: u64 },
    /// Flushes.
    Flush,
}

fn stamps(lba: u64, blocks: u64, generation: u8) -> Bytes {
    (lba..lba + blocks)
        .flat_map(|l| stamp(l, generation).to_vec())
        .collect::<Vec<u8>>()
        .into()
}

fn then() -> impl Strategy<Value = Then> {
    prop_oneof![
        (0u64..16, 1u64..16).prop_map(|(offset, blocks)| Then::Write { offset, blocks }),
        (0u64..16, 1u64..16).prop_map(|(offset, blocks)| Then::Zero { offset, blocks }),
        Just(Then::Flush),
    ]
}

/// The first write (`lba`, `blocks`) is held on path 0, which then dies;
/// multipath times it out, fences path 0 (the fence stays shut until
/// `fence_opens_ms` after the later request starts) and re-issues it on
/// path 1; the caller drops it `drop_ms` after the timeout and goes on.
fn case(lba: u64, blocks: u64, drop_ms: u64, then: Then, fence_opens_ms: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let first_blocks = blocks;
    rt.block_on(async {
        let (dev, paths) = device_with_paths(
            2,
            Config {
                // Round-robin: the first write takes path 0.
                selector: SelectorKind::RoundRobin,
                check_interval: Duration::from_secs(600),
                io_timeout: Some(IO_TIMEOUT),
                ..Config::default()
            },
        );
        let faults = &paths[0].faults;
        paths[0].fence_shut.store(true, Ordering::SeqCst);
        faults.hold_next_writes(1);
        let dies = async {
            while faults.held_writes() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            faults.set_path_down(true);
        };
        let first = tokio::time::timeout(
            IO_TIMEOUT + Duration::from_millis(drop_ms),
            dev.write(lba, stamps(lba, blocks, 1), WriteFlags::NONE),
        );
        let (first, ()) = tokio::join!(first, dies);
        assert!(
            first.is_err(),
            "the caller gave up while the fence was shut"
        );
        assert_eq!(faults.held_writes(), 1, "the stale copy is still out there");

        let opens = async {
            tokio::time::sleep(Duration::from_millis(fence_opens_ms)).await;
            paths[0].fence_shut.store(false, Ordering::SeqCst);
        };
        let later = async {
            match then {
                Then::Write { offset, blocks } => {
                    let at = lba + offset % first_blocks;
                    dev.write(at, stamps(at, blocks, 2), WriteFlags::NONE)
                        .await
                        .unwrap();
                    Some((at, stamps(at, blocks, 2)))
                }
                Then::Zero { offset, blocks } => {
                    let at = lba + offset % first_blocks;
                    dev.write_zeroes(at, blocks, false).await.unwrap();
                    Some((at, Bytes::from(vec![0u8; blocks as usize * 512])))
                }
                Then::Flush => {
                    dev.flush().await.unwrap();
                    assert_eq!(faults.held_writes(), 0, "a flush waits for the stale copy");
                    None
                }
            }
        };
        let (want, ()) = tokio::join!(later, opens);
        // Once the stale copy is gone for good, the newer data is there.
        while faults.held_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some((at, want)) = want {
            let got = dev.read(at, (want.len() / 512) as u32).await.unwrap();
            assert!(got == want, "newer data at {at}+{}", want.len() / 512);
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_dropped_fenced_write_never_lands_over_a_later_one(
        lba in 0u64..4000,
        blocks in 1u64..16,
        drop_ms in 1u64..300,
        then in then(),
        fence_opens_ms in 0u64..300,
    ) {
        case(lba, blocks, drop_ms, then, fence_opens_ms);
    }
}
