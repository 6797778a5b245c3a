//! Cancellation (the `blockdev::BlockDevice` contract): a request whose
//! future is dropped may still land, but before any later overlapping
//! request and before a later flush returns, so it never overwrites newer
//! data; and the array stays consistent (every block matches its tag, parity
//! matches the data). The members here hold writes the way a slow disk or a
//! remote target does (`FaultyDevice::hold_next_writes`), and do not order a
//! dropped write against later ones themselves.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use blockdev::{BlockDevice, FaultyDevice, WriteFlags};
use common::*;
use raid::RaidArray;

type Io<'a, T> = Pin<Box<dyn Future<Output = blockdev::Result<T>> + Send + 'a>>;

/// Polls `io` until `member` holds one of its writes, then drops it, as a
/// caller that gives up on it (an aborted task, a closed session) does.
async fn drop_once_held<T>(mut io: Io<'_, T>, member: &FaultyDevice) {
    while member.held_writes() == 0 {
        let p = io.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(
            p.is_pending(),
            "the request ended although a member holds it"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(io);
}

/// Gives the tasks just spawned time to run ahead of the held writes (a
/// correct array holds them back; the time is a chance for a wrong one to
/// show, not a deadline).
async fn let_run() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Nothing the members hold is left, every block matches its tag and
/// parity matches the data, and with the member `gone` away every block
/// still reads back as `model` says.
async fn assert_settled(rig: &Rig, a: &RaidArray, model: &[Option<u64>], gone: usize) {
    for f in &rig.faulty {
        while f.held_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Checked before anything reads (and so repairs) the blocks.
    a.flush().await.unwrap();
    let report = a.check().await.unwrap();
    assert!(report.clean(), "{report:?}");
    check_all(a, model).await;
    rig.faulty[gone].set_offline(true);
    check_all(a, model).await;
}

/// Writes version 4 of block `lba` while member `m` still holds what a
/// dropped request wrote, then lets the member go on: the newer write must
/// win, and the array be consistent.
async fn newer_write_then_release(
    rig: &Rig,
    a: &RaidArray,
    model: &mut [Option<u64>],
    lba: u64,
    m: usize,
) {
    let a2 = a.clone();
    let newer =
        tokio::spawn(async move { a2.write(lba, blocks(lba, 1, 4), WriteFlags::FUA).await });
    let_run().await;
    rig.faulty[m].release_writes();
    newer.await.unwrap().unwrap();
    model[lba as usize] = Some(4);
    assert_settled(rig, a, model, (m + 1) % rig.faulty.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_lands_before_a_later_overlapping_one() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    let lay = a.layout().await;
    let row = 2;
    let lba = row * lay.row_data_blocks();
    // A write to the row makes its bitmap region dirty, so the next write's
    // first member writes are the row's own.
    a.write(lba + 1, blocks(lba + 1, 1, 2), WriteFlags::FUA)
        .await
        .unwrap();
    model[lba as usize + 1] = Some(2);
    let slot = lay.data_member(row, lay.locate(lba).1);
    let m = rig.index_of(&a, slot);
    // The block's member holds its data and tag writes; parity goes through.
    rig.faulty[m].hold_next_writes(2);
    drop_once_held(
        a.write(lba, blocks(lba, 1, 3), WriteFlags::FUA),
        &rig.faulty[m],
    )
    .await;
    newer_write_then_release(&rig, &a, &mut model, lba, m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_after_a_dropped_write_returns_once_it_landed() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    let lay = a.layout().await;
    let (lba, n) = (3 * lay.row_data_blocks(), lay.row_data_blocks());
    // A whole row (a full-stripe write, not FUA); one member holds it.
    let m = rig.index_of(&a, lay.parity_member(3));
    rig.faulty[m].hold_next_writes(1);
    drop_once_held(
        a.write(lba, blocks(lba, n, 3), WriteFlags::NONE),
        &rig.faulty[m],
    )
    .await;
    let (a2, f) = (a.clone(), rig.faulty[m].clone());
    let flush = tokio::spawn(async move {
        a2.flush().await.unwrap();
        f.held_writes()
    });
    let_run().await;
    rig.faulty[m].release_writes();
    assert_eq!(
        flush.await.unwrap(),
        0,
        "the flush returned with the dropped write still on its way"
    );
    for b in lba..lba + n {
        model[b as usize] = Some(3);
    }
    assert_settled(&rig, &a, &model, (m + 1) % 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_of_whole_rows_finishes_the_rows_it_began() {
    let rig = Rig::new(4, 1024, small_config());
    let (a, mut model) = rig.filled(4).await;
    let lay = a.layout().await;
    let per = lay.row_data_blocks();
    let (lba, n) = (4 * per, 3 * per);
    let m = rig.index_of(&a, 0);
    // The three whole rows go as one batch: one write to each member,
    // which this member holds.
    rig.faulty[m].hold_next_writes(1);
    drop_once_held(
        a.write(lba, blocks(lba, n, 3), WriteFlags::FUA),
        &rig.faulty[m],
    )
    .await;
    // Newer single blocks in each of the three rows.
    let newer: Vec<u64> = (0..3).map(|r| lba + r * per + 1).collect();
    let tasks: Vec<_> = newer
        .iter()
        .map(|&b| {
            let a = a.clone();
            tokio::spawn(async move { a.write(b, blocks(b, 1, 4), WriteFlags::FUA).await })
        })
        .collect();
    let_run().await;
    rig.faulty[m].release_writes();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // A row the dropped write had locked is written whole; one it had not
    // is not written at all.
    let got = a.read(lba, n as u32).await.unwrap();
    for r in 0..3 {
        let row = lba + r * per;
        let landed = got[(r * per) as usize * BS..][..BS] == pattern(row, 3)[..];
        for b in row..row + per {
            model[b as usize] = Some(if landed { 3 } else { 1 });
        }
    }
    for b in newer {
        model[b as usize] = Some(4);
    }
    assert_settled(&rig, &a, &model, (m + 1) % 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_read_repairs_before_a_later_write() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    let lay = a.layout().await;
    let row = 5;
    let lba = row * lay.row_data_blocks();
    let (_, k, i) = lay.locate(lba);
    let slot = lay.data_member(row, k);
    let m = rig.index_of(&a, slot);
    // Rot under the block: a read repairs it from parity, and the member
    // holds that repair.
    rig.faulty[m]
        .flip_bit(lay.member_block(row, i), 3)
        .await
        .unwrap();
    rig.faulty[m].hold_next_writes(1);
    drop_once_held(a.read(lba, 1), &rig.faulty[m]).await;
    newer_write_then_release(&rig, &a, &mut model, lba, m).await;
}

/// The members' own order is not needed: a write dropped with nothing held
/// lands at once, and the array stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_requests_at_every_point_leaves_the_array_consistent() {
    let rig = Rig::new(3, 1024, small_config());
    let (a, mut model) = rig.filled(3).await;
    let a = Arc::new(a);
    for (polls, lba) in (0..12u64).zip((0..).step_by(5)) {
        let mut w = a.write(lba, blocks(lba, 3, 5), WriteFlags::FUA);
        for _ in 0..polls {
            if w.as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
            {
                break;
            }
        }
        drop(w);
        // Whatever of it ran, its rows are whole: each block is old or new.
        a.flush().await.unwrap();
        let got = a.read(lba, 3).await.unwrap();
        for (j, blk) in got.chunks_exact(BS).enumerate() {
            let b = lba + j as u64;
            let v = if blk == &pattern(b, 5)[..] { 5 } else { 1 };
            model[b as usize] = Some(v);
        }
    }
    assert_settled(&rig, &a, &model, 0).await;
}
