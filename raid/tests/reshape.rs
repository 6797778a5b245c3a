//! Growing a live array.

mod common;

use blockdev::{BlockDevice, WriteFlags};
use common::*;

#[tokio::test]
async fn grow_with_io_during_reshape() {
    for start in [2usize, 3, 4] {
        let mut rig = Rig::new(start, 1024, small_config());
        let a = rig.create(start).await;
        let cap = a.geometry().num_blocks;
        let mut model = vec![None; cap as usize];
        a.write(0, blocks(0, cap, 1), WriteFlags::NONE)
            .await
            .unwrap();
        model.iter_mut().for_each(|m| *m = Some(1));
        let dev = rig.add_device(1024);
        a.grow(dev).await.unwrap();
        check_all(&a, &model).await;
        let mut v = 2;
        while !a.reshape_step().await.unwrap() {
            // I/O continues between windows, on both sides of the boundary.
            for lba in [0, cap / 2, cap - 5] {
                a.write(lba, blocks(lba, 5, v), WriteFlags::NONE)
                    .await
                    .unwrap();
                for b in lba..lba + 5 {
                    model[b as usize] = Some(v);
                }
            }
            v += 1;
            check_all(&a, &model).await;
        }
        let grown = a.geometry().num_blocks;
        assert_eq!(
            grown,
            cap * start as u64 / (start as u64 - 1),
            "capacity grows to the new width"
        );
        assert_eq!(a.layout().await.members, start as u32 + 1);
        model.resize(grown as usize, None);
        check_all(&a, &model).await;
        // The new capacity is writable, and the grown array survives failures
        // and reassembly.
        a.write(grown - 3, blocks(grown - 3, 3, 99), WriteFlags::NONE)
            .await
            .unwrap();
        for b in grown - 3..grown {
            model[b as usize] = Some(99);
        }
        a.close().await.unwrap();
        let _ = &mut rig;
        rig.faulty[0].set_offline(true);
        let b = rig.assemble(false).await.unwrap();
        check_all(&b, &model).await;
    }
}

#[tokio::test]
async fn reshape_resumes_after_crash() {
    for crash_after in [0usize, 1, 3] {
        let mut rig = Rig::new(3, 1024, small_config());
        let a = rig.create(3).await;
        let cap = a.geometry().num_blocks;
        a.write(0, blocks(0, cap, 1), WriteFlags::NONE)
            .await
            .unwrap();
        a.flush().await.unwrap();
        let dev = rig.add_device(1024);
        for f in &rig.faulty {
            f.enable_volatile_cache();
        }
        a.grow(dev).await.unwrap();
        for _ in 0..crash_after {
            a.reshape_step().await.unwrap();
        }
        // Crash: unflushed member writes are lost or torn.
        drop(a);
        for f in &rig.faulty {
            f.crash().await.unwrap();
        }
        let (b, _) = rig.assemble_report(false).await.unwrap();
        assert!(b.reshape_progress().await.is_some());
        let model = vec![Some(1); cap as usize];
        check_all(&b, &model).await;
        b.reshape_to_end().await.unwrap();
        check_all(&b, &model).await;
        assert_eq!(b.layout().await.members, 4);
    }
}

#[tokio::test]
async fn grow_refuses_small_or_mismatched_members() {
    let mut rig = Rig::new(3, 1024, small_config());
    let a = rig.create(3).await;
    let small = rig.add_device(100);
    assert!(a.grow(small).await.is_err());
    a.fail(0).await;
    let ok = rig.add_device(1024);
    assert!(a.grow(ok).await.is_err(), "no reshape while degraded");
}

/// A grow that starts while a scrub runs goes in between two of its rows;
/// the scrub then stops instead of reading moved rows in the old layout,
/// and finds nothing wrong on the way.
#[tokio::test]
async fn grow_during_scrub_stops_the_scrub_cleanly() {
    let mut rig = Rig::new(3, 1024, small_config());
    let (a, model) = rig.filled(3).await;
    let rows = a.layout().await.rows;
    for f in &rig.faulty {
        f.set_latency(std::time::Duration::from_millis(2), None);
    }
    let scrub = tokio::spawn({
        let a = a.clone();
        async move { a.scrub().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let dev = rig.add_device(1024);
    a.grow(dev).await.unwrap();
    // The whole reshape runs while the scrub may still be going: rows it
    // has not reached move to the new layout.
    while !a.reshape_step().await.unwrap() {}
    let r = scrub.await.unwrap().unwrap();
    assert!(r.stopped_by_reshape, "{r:?}");
    assert!(r.rows > 0 && r.rows < rows, "{r:?}");
    assert_eq!(
        (r.unrecoverable, r.data_repaired, r.parity_repaired),
        (0, 0, 0)
    );
    for f in &rig.faulty {
        f.set_latency(std::time::Duration::ZERO, None);
    }
    assert!(a.check().await.unwrap().clean());
    let r = a.scrub().await.unwrap();
    assert!(!r.stopped_by_reshape);
    assert_eq!(r.rows, a.layout().await.rows);
    assert_eq!(
        (r.unrecoverable, r.data_repaired, r.parity_repaired),
        (0, 0, 0)
    );
    check_all(&a, &model).await;
}
