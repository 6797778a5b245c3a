//! Replacing a member online: the copy under concurrent writes, a second
//! failure during the copy, the replaced member failing, a crash in the
//! middle, and which devices a replace accepts.

mod common;

use std::sync::Arc;

use blockdev::{BlockDevice, WriteFlags};
use common::*;
use raid::{ArrayHealth, MemberState, MemberStatus, RaidArray, RaidError};

/// A deterministic stream of write positions over `cap` blocks.
fn lbas(seed: u64, n: usize, cap: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (cap - 4)
        })
        .collect()
}

/// Writes 1 to 4 blocks of version `v` at each position, recording it.
async fn write_all(a: &RaidArray, model: &mut [Option<u64>], at: &[u64], v: u64) {
    for (i, &lba) in at.iter().enumerate() {
        let n = 1 + (i as u64 % 4);
        let fua = i % 5 == 0;
        a.write(lba, blocks(lba, n, v), WriteFlags { fua })
            .await
            .unwrap();
        for b in lba..lba + n {
            model[b as usize] = Some(v);
        }
    }
}

/// Copies until the replace ends; returns whether it finished.
async fn copy_to_end(a: &RaidArray) -> bool {
    a.replace_to_end().await.unwrap()
}

/// A filled 3-member array whose slot 1 is being replaced by `new`, with
/// `copy(rows)` rows copied.
struct Replacing {
    rig: Rig,
    new: Arc<blockdev::FaultyDevice>,
    a: RaidArray,
    model: Vec<Option<u64>>,
    cap: u64,
    rows: u64,
}

async fn replacing(copy: fn(u64) -> u64) -> Replacing {
    let mut rig = Rig::new(3, 2048, small_config());
    let new = rig.add_device(2048);
    let (a, model) = rig.filled(3).await;
    let cap = a.geometry().num_blocks;
    let rows = a.layout().await.rows;
    a.replace(1, new.clone()).await.unwrap();
    a.replace_step(copy(rows)).await.unwrap();
    Replacing {
        rig,
        new,
        a,
        model,
        cap,
        rows,
    }
}

fn identity(rig: &Rig, i: usize) -> blockdev::DeviceIdentity {
    rig.faulty[i].identity().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_under_concurrent_writes_then_every_block_reads_back_from_the_new_member() {
    let r = replacing(|_| 0).await;
    let (rig, new, a, model) = (r.rig, r.new, r.a, r.model);
    let (cap, rows) = (r.cap, r.rows);
    let st = a.states();
    assert_eq!(st.health, ArrayHealth::Replacing);
    assert!(!st.degraded, "a replace keeps full redundancy");

    // Writes run in their own task while the copy goes on.
    let w = BackgroundWriter::spawn(&a, model, move |v| {
        let lba = lbas(v, 1, cap)[0];
        (lba, 1 + v % 4)
    });
    let mut seen_progress = false;
    loop {
        w.wait(3).await;
        let (_, finished) = a.replace_step(5).await.unwrap();
        if finished {
            break;
        }
        let p = a.replace_progress().expect("running");
        assert_eq!((p.slot, p.total_rows), (1, rows));
        if let MemberStatus::Replacing { done_rows, .. } = a.states().members[1].status {
            assert_eq!(done_rows, p.done_rows);
            seen_progress |= done_rows > 0 && done_rows < rows;
        }
    }
    w.wait(10).await;
    assert!(seen_progress, "progress was reported mid-way");
    let model = w.stop().await;
    a.flush().await.unwrap();

    let st = a.states();
    assert_eq!(st.health, ArrayHealth::Clean);
    assert_eq!(st.members[1].device, Some(new.identity().clone()));
    assert_eq!(st.members[1].status, MemberStatus::Active);
    assert!(a.replace_progress().is_none());
    a.close().await.unwrap();
    drop(a);
    // Assembly takes the new member and refuses the old one.
    let (b, report) = rig.assemble_report(false).await.unwrap();
    assert!(report.missing_slots.is_empty(), "{report:?}");
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].0, identity(&rig, 1));
    assert_scrub_clean(&b).await;
    // The old member is released: nothing of the array needs it. The new
    // one holds every chunk: lose another member too.
    rig.faulty[1].set_offline(true);
    rig.faulty[0].set_offline(true);
    check_all(&b, &model).await;
}

#[tokio::test]
async fn a_second_member_failing_during_a_replace_loses_nothing() {
    let r = replacing(|rows| rows / 2).await;
    let (rig, new, a, mut model, cap) = (r.rig, r.new, r.a, r.model, r.cap);
    write_all(&a, &mut model, &lbas(3, 30, cap), 2).await;
    // Another member dies half-way through the copy.
    rig.faulty[2].set_offline(true);
    a.fail(2).await;
    assert_eq!(a.states().health, ArrayHealth::Degraded);
    write_all(&a, &mut model, &lbas(4, 30, cap), 3).await;
    check_all(&a, &model).await;
    assert!(copy_to_end(&a).await, "the copy goes on and finishes");
    let st = a.states();
    assert_eq!(st.members[1].device, Some(new.identity().clone()));
    assert_eq!(st.members[1].status, MemberStatus::Active);
    assert!(matches!(st.members[2].status, MemberStatus::Failed { .. }));
    // Slot 1 is the new device alone now, and slot 2 is gone: every block
    // still reads back.
    rig.faulty[1].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test]
async fn the_member_being_replaced_failing_turns_the_copy_into_a_rebuild() {
    let r = replacing(|rows| rows / 3).await;
    let (rig, new, a, mut model) = (r.rig, r.new, r.a, r.model);
    let (cap, rows) = (r.cap, r.rows);
    let at = a.replace_progress().unwrap().done_rows;
    write_all(&a, &mut model, &lbas(5, 40, cap), 2).await;
    rig.faulty[1].set_offline(true);
    a.fail(1).await;
    let st = a.states();
    assert_eq!(st.members[1].device, Some(new.identity().clone()));
    assert_eq!(
        st.members[1].status,
        MemberStatus::Rebuilding {
            done_rows: at,
            total_rows: rows
        },
        "rows copied so far are in sync on the replacement"
    );
    assert!(a.replace_progress().is_none());
    check_all(&a, &model).await;
    while !a.rebuild_step(1000).await.unwrap().1 {}
    assert_eq!(a.member_states()[1], MemberState::InSync);
    rig.faulty[0].set_offline(true);
    check_all(&a, &model).await;
}

#[tokio::test]
async fn a_crash_during_a_replace_resumes_it_and_recopies_rows_a_mirrored_write_tore() {
    for journal in [0, 64] {
        crash_mid_replace(journal).await;
    }
}

async fn crash_mid_replace(journal: u64) {
    let mut cfg = small_config();
    cfg.journal_blocks = journal;
    let mut rig = Rig::new(3, 2048, cfg);
    let new = rig.add_device(2048);
    for f in &rig.faulty {
        f.enable_volatile_cache();
    }
    let (a, mut model) = rig.filled(3).await;
    a.replace(1, new.clone()).await.unwrap();
    // checkpoint_rows is 8: 20 rows copied, 16 persisted and flushed.
    a.replace_step(20).await.unwrap();
    // Rows 0..8 (blocks 0..64) are behind the cursor: their writes go to
    // both devices. Written and not flushed, then the power goes: the old
    // member and the others keep them, the replacement loses them.
    let at: Vec<u64> = (0..8).map(|r| r * 8).collect();
    for &lba in &at {
        a.write(lba, blocks(lba, 8, 2), WriteFlags::NONE)
            .await
            .unwrap();
        for b in lba..lba + 8 {
            model[b as usize] = Some(2);
        }
    }
    drop(a);
    for f in &rig.faulty {
        let keep = !Arc::ptr_eq(f, &new);
        crash_keeping(f, |_| keep).await;
    }

    let (b, report) = rig.assemble_report(false).await.unwrap();
    assert_eq!(report.replace_resumed, Some((1, 16)), "{report:?}");
    assert_eq!(
        report.replace_recopied_rows, 8,
        "the rows of the dirty regions below the checkpoint: {report:?}"
    );
    assert_eq!(b.replace_progress().unwrap().done_rows, 16);
    check_all(&b, &model).await;
    assert!(copy_to_end(&b).await);
    assert_eq!(b.states().members[1].device, Some(new.identity().clone()));
    // The replacement alone holds slot 1, with the writes it had lost:
    // without member 0 its chunks are read, not reconstructed.
    rig.faulty[1].set_offline(true);
    rig.faulty[0].set_offline(true);
    check_all(&b, &model).await;
}

#[tokio::test]
async fn a_replace_accepts_a_larger_device_refuses_a_smaller_one_and_reports_the_waste() {
    let mut rig = Rig::new(0, 0, small_config());
    for blocks in [1000u64, 1200, 1500] {
        rig.add_device(blocks);
    }
    let small = rig.add_device(900);
    let large = rig.add_device(3000);
    let same_member = rig.faulty[2].clone();
    let a = rig.create(3).await;
    let before = a.size_report().await;
    assert!(before.used_per_member <= 1000);
    assert_eq!(
        before.wasted_blocks,
        1000 + 1200 + 1500 - 3 * before.used_per_member
    );
    // Fewer blocks than each member uses: refused, whatever the slot.
    let r = a.replace(0, small.clone()).await;
    assert!(matches!(r, Err(RaidError::Config(_))), "{r:?}");
    // A device already in the array: refused.
    let r = a.replace(0, same_member).await;
    assert!(matches!(r, Err(RaidError::Config(_))), "{r:?}");
    // A larger one is accepted; the array keeps its size, the rest is waste.
    a.replace(0, large.clone()).await.unwrap();
    // One replace at a time, and no grow meanwhile.
    let extra = rig.add_device(1500);
    assert!(matches!(
        a.replace(1, extra.clone()).await,
        Err(RaidError::Config(_))
    ));
    assert!(matches!(
        a.grow(extra.clone()).await,
        Err(RaidError::Config(_))
    ));
    assert!(copy_to_end(&a).await);
    let after = a.size_report().await;
    assert_eq!(after.capacity_blocks, before.capacity_blocks);
    assert_eq!(after.used_per_member, before.used_per_member);
    assert_eq!(
        after.wasted_blocks,
        3000 + 1200 + 1500 - 3 * after.used_per_member
    );
    // Grow follows the same rule: fewer blocks than a member uses are refused.
    let r = a.grow(small).await;
    assert!(matches!(r, Err(RaidError::Config(_))), "{r:?}");
}
