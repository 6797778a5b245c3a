//! Member failures, hot spares, rebuild, returning members and assembly rules.

mod common;

use std::time::Duration;

use blockdev::{BlockDevice, WriteFlags};
use common::*;
use raid::{MemberState, RaidArray, RaidError};

#[tokio::test]
async fn background_maintenance_pulls_in_the_spare_and_rebuilds() {
    let mut cfg = small_config();
    cfg.spare_timeout = Duration::ZERO;
    let rig = Rig::new(4, 1024, cfg);
    let (a, model) = rig.filled(3).await;
    a.add_spare(rig.faulty[3].clone()).await.unwrap();
    rig.faulty[1].set_offline(true);
    check_all(&a, &model).await;
    assert!(a.degraded());
    let task = a.spawn_maintenance(Duration::from_millis(2));
    tokio::time::timeout(Duration::from_secs(120), async {
        while a.degraded() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the background task rebuilds onto the spare");
    assert_eq!(a.member_states()[1], MemberState::InSync);
    assert_eq!(a.spare_count(), 0);
    check_all(&a, &model).await;
    // The task holds the array weakly: it ends once the array is dropped.
    drop(a);
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("the task ends with the array")
        .unwrap();
}

#[tokio::test]
async fn hot_spare_replaces_failed_member_after_timeout() {
    let mut cfg = small_config();
    cfg.rebuild_rows_per_sec = Some(10);
    let mut rig = Rig::new(4, 1024, cfg);
    let (a, mut model) = rig.filled(3).await;
    let spare = rig.faulty[3].clone();
    a.add_spare(spare.clone()).await.unwrap();
    rig.faulty[0].set_offline(true);
    check_all(&a, &model).await;
    assert!(a.degraded());
    // Before the timeout nothing happens.
    rig.clock.advance(Duration::from_secs(29));
    assert_eq!(a.maintain().await.unwrap().spare_activated, None);
    rig.clock.advance(Duration::from_secs(1));
    let r = a.maintain().await.unwrap();
    assert_eq!(r.spare_activated, Some(0));
    assert_eq!(a.member_states()[0], MemberState::Rebuilding);
    // Rate limit: 10 rows per second of injected time.
    rig.clock.advance(Duration::from_secs(1));
    let r = a.maintain().await.unwrap();
    assert_eq!(r.rows_rebuilt, 10);
    let p = r.rebuild.unwrap();
    assert_eq!(p.done_rows, 10);
    assert!((p.rows_per_sec - 10.0).abs() < 1e-9, "{p:?}");
    let total = p.total_rows;
    assert_eq!(
        p.eta,
        Some(Duration::from_secs_f64((total - 10) as f64 / 10.0))
    );
    // Writes during the rebuild land on both sides of its position.
    a.write(0, blocks(0, 2, 2), WriteFlags::NONE).await.unwrap();
    let last = model.len() as u64 - 2;
    a.write(last, blocks(last, 2, 2), WriteFlags::NONE)
        .await
        .unwrap();
    for b in [0, 1, last, last + 1] {
        model[b as usize] = Some(2);
    }
    check_all(&a, &model).await;
    loop {
        rig.clock.advance(Duration::from_secs(5));
        if a.maintain().await.unwrap().rebuild_finished {
            break;
        }
    }
    assert!(!a.degraded());
    // The rebuilt member alone plus one other serves everything: fail another.
    rig.faulty[1].set_offline(true);
    check_all(&a, &model).await;
    let _ = rig.add_device(16);
}

#[tokio::test]
async fn rebuild_resumes_from_checkpoint_after_restart() {
    let rig = Rig::new(4, 1024, small_config());
    let (a, model) = rig.filled(3).await;
    a.add_spare(rig.shared(3)).await.unwrap();
    a.fail(1).await;
    rig.clock.advance(Duration::from_secs(60));
    a.maintain().await.unwrap();
    // maintain() rebuilt one batch of 8 rows; 20 more, then a crash. With a
    // checkpoint every 8 rows, the last one persisted is at row 24.
    assert_eq!(a.rebuild_progress().unwrap().done_rows, 8);
    a.rebuild_step(20).await.unwrap();
    drop(a);
    let (b, report) = rig.assemble_report(true).await.unwrap();
    assert!(
        report
            .refused
            .iter()
            .all(|(_, why)| why.contains("another device")),
        "{report:?}"
    );
    let p = b.rebuild_progress().expect("rebuild resumes");
    assert_eq!(p.done_rows, 24, "resumes at the last checkpoint");
    check_all(&b, &model).await;
    while !b.rebuild_step(100).await.unwrap().1 {}
    assert!(!b.degraded());
    rig.faulty[0].set_offline(true);
    check_all(&b, &model).await;
}

#[tokio::test]
async fn returning_member_resyncs_only_regions_written_while_away() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, mut model) = rig.filled(3).await;
    let rows = a.layout().await.rows;
    rig.faulty[2].set_offline(true);
    a.fail(2).await;
    // Write to two regions (4 rows each) while member 2 is away.
    for lba in [0u64, 100] {
        a.write(lba, blocks(lba, 3, 5), WriteFlags::NONE)
            .await
            .unwrap();
        for b in lba..lba + 3 {
            model[b as usize] = Some(5);
        }
    }
    a.flush().await.unwrap();
    rig.faulty[2].set_offline(false);
    a.re_add(rig.shared(2)).await.unwrap();
    let (rebuilt, done) = a.rebuild_step(rows + 1).await.unwrap();
    assert!(done);
    assert_eq!(
        rebuilt, 8,
        "two dirty regions of 4 rows, not all {rows} rows"
    );
    assert!(!a.degraded());
    // Now member 2 must be complete: lose another member.
    rig.faulty[0].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test]
async fn assembly_refuses_foreign_and_stale_members() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, model) = rig.filled(3).await;
    a.close().await.unwrap();
    // A member of another array.
    let other = Rig::new(2, 1024, small_config());
    let o = other.create(2).await;
    o.close().await.unwrap();
    let mut devs = rig.all();
    devs.push(other.shared(0));
    let (b, report) =
        RaidArray::assemble(devs, rig.cfg.clone(), rig.clock.clone(), Default::default())
            .await
            .unwrap();
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].1.contains("another array"));
    check_all(&b, &model).await;
    // Member 0 misses updates: it is stale and refused.
    rig.faulty[0].set_offline(true);
    b.write(0, blocks(0, 1, 2), WriteFlags::FUA).await.unwrap();
    b.close().await.unwrap();
    rig.faulty[0].set_offline(false);
    let (c, report) = rig.assemble_report(false).await.unwrap();
    assert!(
        report.refused[0].1.contains("faulty") || report.refused[0].1.contains("stale"),
        "{report:?}"
    );
    assert_eq!(report.missing_slots, vec![0]);
    let mut model = model;
    model[0] = Some(2);
    check_all(&c, &model).await;
    // Not enough members: refused.
    let r = RaidArray::assemble(
        vec![rig.shared(1)],
        rig.cfg.clone(),
        rig.clock.clone(),
        Default::default(),
    )
    .await;
    assert!(r.is_err());
}

#[tokio::test]
async fn dirty_degraded_array_needs_force() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, _) = rig.filled(3).await;
    a.write(0, blocks(0, 1, 2), WriteFlags::FUA).await.unwrap();
    drop(a); // crash: never closed, superblocks say dirty
    rig.faulty[1].set_offline(true);
    let r = rig.assemble(false).await;
    assert!(matches!(r, Err(RaidError::Assembly(_))), "{r:?}");
    let b = rig.assemble(true).await.unwrap();
    assert!(b.degraded());
}

#[tokio::test]
async fn mixed_sizes_use_the_smallest_and_report_waste() {
    let mut rig = Rig::new(0, 0, small_config());
    for blocks in [1000u64, 1200, 1500] {
        rig.add_device(blocks);
    }
    let a = rig.create(3).await;
    let r = a.size_report().await;
    assert!(r.used_per_member <= 1000);
    assert_eq!(
        r.wasted_blocks,
        (1000 - r.used_per_member) + (1200 - r.used_per_member) + (1500 - r.used_per_member)
    );
    assert_eq!(r.capacity_blocks, a.geometry().num_blocks);
}

#[tokio::test]
async fn a_member_that_fails_under_a_write_is_failed_and_the_write_succeeds() {
    let mut cfg = small_config();
    cfg.journal_blocks = 64;
    let rig = Rig::new(3, 2048, cfg);
    let (a, mut model) = rig.filled(3).await;
    // Row 0's bitmap region is dirty after this, so the next write's first
    // write to the parity member is its journal record.
    a.write(0, blocks(0, 1, 2), WriteFlags::FUA).await.unwrap();
    let parity = a.layout().await.parity_member(0);
    let dev = rig.index_of(&a, parity);
    rig.faulty[dev].fail_writes(0..u64::MAX);
    a.write(1, blocks(1, 1, 2), WriteFlags::FUA)
        .await
        .expect("the row is written again without the failed member");
    model[0] = Some(2);
    model[1] = Some(2);
    assert!(matches!(
        a.member_states()[parity as usize],
        MemberState::Faulty { .. }
    ));
    check_all(&a, &model).await;
}
