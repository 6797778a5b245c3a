//! Suspending a member for maintenance and resuming it: no I/O reaches it
//! meanwhile, no spare replaces it, and only what was written meanwhile is
//! resynced when it returns.

mod common;

use std::time::Duration;

use blockdev::{BlockDevice, WriteFlags};
use common::*;
use raid::{ArrayHealth, MemberState, MemberStatus, RaidError};

/// Writes 3 blocks of version `v` at each of `lbas`, in the model too.
async fn write_at(a: &raid::RaidArray, model: &mut [Option<u64>], lbas: &[u64], v: u64) {
    for &lba in lbas {
        a.write(lba, blocks(lba, 3, v), WriteFlags::NONE)
            .await
            .unwrap();
        for b in lba..lba + 3 {
            model[b as usize] = Some(v);
        }
    }
}

/// Rebuilds to the end; returns the rows rebuilt.
async fn rebuild_all(a: &raid::RaidArray) -> u64 {
    let mut rebuilt = 0;
    loop {
        let (n, done) = a.rebuild_step(1000).await.unwrap();
        rebuilt += n;
        if done {
            return rebuilt;
        }
    }
}

#[tokio::test]
async fn a_suspended_member_gets_no_io_and_its_resume_resyncs_only_the_regions_written_meanwhile() {
    let rig = Rig::new(4, 2048, small_config());
    let (a, mut model) = rig.filled(3).await;
    let rows = a.layout().await.rows;
    a.add_spare(rig.shared(3)).await.unwrap();
    a.suspend(1).await.unwrap();
    // Any I/O to it from here on would fail it.
    rig.faulty[1].set_offline(true);
    let st = a.states();
    assert!(
        matches!(st.members[1].status, MemberStatus::Suspended { .. }),
        "{st:?}"
    );
    assert_eq!(st.health, ArrayHealth::Degraded);
    // Rows 0 and 12 (8 volume blocks a row): two regions of 4 rows.
    write_at(&a, &mut model, &[0, 100], 2).await;
    a.flush().await.unwrap();
    check_all(&a, &model).await;
    // Long past the spare timeout: it is not failed, so no spare comes.
    rig.clock.advance(Duration::from_secs(3600));
    let r = a.maintain().await.unwrap();
    assert_eq!(r.spare_activated, None);
    assert_eq!(a.spare_count(), 1);
    assert!(matches!(
        a.member_states()[1],
        MemberState::Suspended { .. }
    ));

    rig.faulty[1].set_offline(false);
    let report = a.resume(1, rig.shared(1)).await.unwrap();
    assert_eq!(report.rows_to_resync, 8, "{report:?} of {rows} rows");
    assert_eq!(report.blocks_to_resync, 8 * 4);
    assert_eq!(report.total_rows, rows);
    assert_eq!(a.states().health, ArrayHealth::Rebuilding);
    assert_eq!(rebuild_all(&a).await, 8, "only the rows written meanwhile");
    assert_eq!(a.states().health, ArrayHealth::Clean);
    // The resumed member is complete: lose another one.
    rig.faulty[0].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test]
async fn a_suspension_survives_a_restart_and_resumes_after_it() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, mut model) = rig.filled(3).await;
    a.suspend(2).await.unwrap();
    write_at(&a, &mut model, &[40], 3).await;
    a.close().await.unwrap();
    drop(a);

    let (b, report) = rig.assemble_report(false).await.unwrap();
    assert_eq!(report.suspended_slots, vec![2]);
    assert!(report.missing_slots.is_empty(), "{report:?}");
    assert!(
        report
            .refused
            .iter()
            .any(|(_, why)| why.contains("suspended")),
        "{report:?}"
    );
    assert!(matches!(
        b.member_states()[2],
        MemberState::Suspended { .. }
    ));
    check_all(&b, &model).await;
    write_at(&b, &mut model, &[200], 4).await;
    let r = b.resume(2, rig.shared(2)).await.unwrap();
    // Row 5 (lba 40..43) and row 25 (lba 200..203): regions 1 and 6.
    assert_eq!(r.rows_to_resync, 8, "{r:?}");
    assert_eq!(rebuild_all(&b).await, 8);
    rig.faulty[1].set_offline(true);
    check_all(&b, &model).await;
}

#[tokio::test]
async fn a_member_suspended_too_long_is_failed_by_the_caller_and_a_spare_takes_it() {
    let rig = Rig::new(4, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    a.add_spare(rig.shared(3)).await.unwrap();
    a.suspend(0).await.unwrap();
    rig.clock.advance(Duration::from_secs(50));
    assert!(a
        .fail_suspended_longer_than(Duration::from_secs(60))
        .await
        .is_empty());
    rig.clock.advance(Duration::from_secs(10));
    assert_eq!(
        a.fail_suspended_longer_than(Duration::from_secs(60)).await,
        vec![0]
    );
    assert!(matches!(a.member_states()[0], MemberState::Faulty { .. }));
    write_at(&a, &mut model, &[8], 2).await;
    rig.clock.advance(Duration::from_secs(30));
    assert_eq!(a.maintain().await.unwrap().spare_activated, Some(0));
    rebuild_all(&a).await;
    assert_eq!(a.states().health, ArrayHealth::Clean);
    rig.faulty[1].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test]
async fn suspend_and_resume_refuse_what_would_lose_data_or_take_another_device() {
    let rig = Rig::new(4, 1024, small_config());
    let (a, _) = rig.filled(3).await;
    a.suspend(1).await.unwrap();
    // A second member out would leave no redundancy for two.
    assert!(matches!(a.suspend(2).await, Err(RaidError::Config(_))));
    assert!(matches!(a.suspend(1).await, Err(RaidError::Config(_))));
    // Another device in its place is refused, by identity.
    let r = a.resume(1, rig.shared(3)).await;
    assert!(matches!(r, Err(RaidError::Assembly(_))), "{r:?}");
    // Only a suspended slot resumes; a suspended one is not re-added.
    assert!(matches!(
        a.resume(0, rig.shared(0)).await,
        Err(RaidError::Config(_))
    ));
    assert!(a.re_add(rig.shared(1)).await.is_err());
    a.resume(1, rig.shared(1)).await.unwrap();
    rebuild_all(&a).await;
    assert!(!a.degraded());
    // And a capacity it never had: the volume is unchanged.
    assert_eq!(a.states().capacity_blocks, a.geometry().num_blocks);
}

#[tokio::test]
async fn a_crash_while_a_member_is_suspended_assembles_with_the_journal_and_needs_force_without() {
    for journal in [64, 0] {
        let mut cfg = small_config();
        cfg.journal_blocks = journal;
        let rig = Rig::new(3, 2048, cfg);
        let (a, mut model) = rig.filled(3).await;
        a.suspend(0).await.unwrap();
        write_at(&a, &mut model, &[16, 300], 2).await;
        a.flush().await.unwrap();
        a.write(24, blocks(24, 3, 3), WriteFlags::FUA)
            .await
            .unwrap();
        model[24..27].fill(Some(3));
        drop(a); // the head dies: never closed
        let b = match rig.assemble(false).await {
            Ok(b) => {
                assert!(
                    journal > 0,
                    "a dirty degraded array without journal started"
                );
                b
            }
            Err(RaidError::Assembly(_)) if journal == 0 => rig.assemble(true).await.unwrap(),
            Err(e) => panic!("journal {journal}: {e}"),
        };
        assert!(matches!(
            b.member_states()[0],
            MemberState::Suspended { .. }
        ));
        check_all(&b, &model).await;
        let r = b.resume(0, rig.shared(0)).await.unwrap();
        // Rows 2, 3 (lba 16..27) in region 0, row 37 (lba 300..303) in region 9.
        assert_eq!(r.rows_to_resync, 8, "journal {journal}: {r:?}");
        assert_eq!(rebuild_all(&b).await, 8);
        rig.faulty[2].set_offline(true);
        check_all(&b, &model).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_under_concurrent_writes_lose_nothing() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, model) = rig.filled(3).await;
    let rows = a.layout().await.rows;
    // Writes to the first 64 rows (8 blocks a row) go on throughout.
    let w = BackgroundWriter::spawn(&a, model, |v| ((v * 37) % (64 * 8 - 3), 3));
    w.wait(10).await;
    a.suspend(1).await.unwrap();
    rig.faulty[1].set_offline(true);
    w.wait(50).await;
    rig.faulty[1].set_offline(false);
    let report = a.resume(1, rig.shared(1)).await.unwrap();
    assert!(report.rows_to_resync <= 64, "{report:?}");
    let mut rebuilt = 0;
    loop {
        w.wait(2).await;
        let (n, done) = a.rebuild_step(4).await.unwrap();
        rebuilt += n;
        if done {
            break;
        }
    }
    w.wait(10).await;
    let model = w.stop().await;
    a.flush().await.unwrap();
    // Rows written during the rebuild may add to what the resume counted,
    // never beyond the rows the writer touched.
    assert!(rebuilt <= 64 && rebuilt < rows, "{rebuilt} of {rows}");
    assert_eq!(a.states().health, ArrayHealth::Clean);
    rig.faulty[2].set_offline(true);
    check_all(&a, &model).await;
}
