//! Silent corruption: bit flips, misdirected, torn and lost writes, scrub.

mod common;

use blockdev::{fault::TearReport, BlockDevice, WriteFlags};
use common::*;
use raid::RaidArray;

/// Member block of volume block `lba`.
async fn member_of(a: &RaidArray, lba: u64) -> (usize, u64) {
    let l = a.layout().await;
    let (row, k, i) = l.locate(lba);
    (l.data_member(row, k) as usize, l.member_block(row, i))
}

/// Flips a bit of volume block `lba` on its member; returns the member.
async fn rot_data(rig: &Rig, a: &RaidArray, lba: u64) -> usize {
    let (m, blk) = member_of(a, lba).await;
    rig.faulty[m].flip_bit(blk, 1).await.unwrap();
    m
}

/// Flips a bit of block `i` of `row`'s parity chunk; returns its member.
async fn rot_parity(rig: &Rig, a: &RaidArray, row: u64, i: u32) -> usize {
    let lay = a.layout().await;
    let p = lay.parity_member(row) as usize;
    rig.faulty[p]
        .flip_bit(lay.member_block(row, i), 9)
        .await
        .unwrap();
    p
}

#[tokio::test]
async fn bit_flips_are_repaired_never_returned() {
    let rig = Rig::new(4, 2048, small_config());
    let (a, model) = rig.filled(4).await;
    for lba in [0u64, 5, 13, 40] {
        let (m, blk) = member_of(&a, lba).await;
        rig.faulty[m].flip_bit(blk, 77).await.unwrap();
    }
    check_all(&a, &model).await;
    let s = a.integrity_stats();
    assert_eq!(s.checksum_errors, 4);
    assert_eq!(s.repaired_blocks, 4);
    // Repaired on the medium: reading again finds nothing new.
    check_all(&a, &model).await;
    assert_eq!(a.integrity_stats().checksum_errors, 4);
}

#[tokio::test]
async fn misdirected_write_is_caught_at_both_ends() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, mut model) = rig.filled(3).await;
    // Row 0 data chunk 0 on member 0 (block 0). Its write lands one block off,
    // on block 1 of the same chunk: block 0 keeps stale data, block 1 is clobbered.
    let (m, _) = member_of(&a, 0).await;
    // Dirty the bitmap region first so the next member write is the data itself.
    a.write(2, blocks(2, 1, 1), WriteFlags::FUA).await.unwrap();
    rig.faulty[m].misdirect_next_write(1);
    a.write(0, blocks(0, 1, 2), WriteFlags::FUA).await.unwrap();
    model[0] = Some(2);
    check_all(&a, &model).await;
    let s = a.integrity_stats();
    assert!(s.repaired_blocks >= 2, "{s:?} {:?}", rig.faulty[m].stats());
}

#[tokio::test]
async fn torn_and_lost_writes_are_caught() {
    let rig = Rig::new(4, 2048, small_config());
    let (a, mut model) = rig.filled(4).await;
    // A 3-block write to one chunk lands only its first block, yet is acknowledged.
    let (m, _) = member_of(&a, 24).await;
    a.write(27, blocks(27, 1, 1), WriteFlags::FUA)
        .await
        .unwrap();
    rig.faulty[m].tear_next_write(1, TearReport::Ack);
    a.write(24, blocks(24, 3, 3), WriteFlags::FUA)
        .await
        .unwrap();
    model[24..27].fill(Some(3));
    check_all(&a, &model).await;
    // The data write of a block is lost but its tag lands.
    let (m, _) = member_of(&a, 50).await;
    a.write(51, blocks(51, 1, 1), WriteFlags::FUA)
        .await
        .unwrap();
    rig.faulty[m].lose_next_writes(1);
    a.write(50, blocks(50, 1, 4), WriteFlags::FUA)
        .await
        .unwrap();
    model[50] = Some(4);
    check_all(&a, &model).await;
    assert!(a.integrity_stats().repaired_blocks >= 3);
}

#[tokio::test]
async fn corruption_without_redundancy_is_an_error() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, _) = rig.filled(3).await;
    // Degrade, then rot a block: no second copy exists.
    let (m, blk) = member_of(&a, 2).await;
    let other = (m + 1) % 3;
    rig.faulty[other].set_offline(true);
    a.read(0, 1).await.ok();
    a.read(4, 1).await.ok();
    a.read(8, 1).await.ok();
    assert!(a.degraded());
    rig.faulty[m].flip_bit(blk, 3).await.unwrap();
    assert!(
        a.read(2, 1).await.is_err(),
        "corrupt block returned without redundancy"
    );
    assert!(a.integrity_stats().unrecoverable >= 1);
}

#[tokio::test]
async fn read_errors_are_repaired_by_rewrite() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, model) = rig.filled(3).await;
    let (m, blk) = member_of(&a, 9).await;
    rig.faulty[m].fail_reads(blk..blk + 1);
    check_all(&a, &model).await;
    assert!(
        !a.degraded(),
        "a medium error is repaired, not a member failure"
    );
    assert!(a.integrity_stats().read_errors >= 1);
}

#[tokio::test]
async fn latency_spikes_do_not_change_results() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, model) = rig.filled(3).await;
    for f in &rig.faulty {
        f.set_latency(
            std::time::Duration::ZERO,
            Some((0.3, std::time::Duration::from_millis(2))),
        );
    }
    let a2 = a.clone();
    let t = tokio::spawn(async move { a2.write(7, blocks(7, 9, 5), WriteFlags::NONE).await });
    let r = a.read(30, 10).await.unwrap();
    assert_eq!(&r[..], &blocks(30, 10, 1)[..]);
    t.await.unwrap().unwrap();
    let mut model = model;
    model[7..16].fill(Some(5));
    check_all(&a, &model).await;
}

#[tokio::test]
async fn scrub_finds_and_fixes_everything_it_can() {
    let rig = Rig::new(4, 2048, small_config());
    let (a, model) = rig.filled(4).await;
    let lay = a.layout().await;
    // Rot two data blocks and one parity block in different rows.
    rot_data(&rig, &a, 3).await;
    rot_data(&rig, &a, 30).await;
    rot_parity(&rig, &a, 5, 2).await;
    let r = a.scrub().await.unwrap();
    assert_eq!(r.rows, lay.rows);
    assert_eq!(r.data_repaired, 2);
    assert_eq!(r.parity_repaired, 1);
    assert_eq!(r.unrecoverable, 0);
    let again = a.scrub().await.unwrap();
    assert_eq!((again.data_repaired, again.parity_repaired), (0, 0));
    check_all(&a, &model).await;
    // Two bad blocks at one position cannot be fixed and are reported.
    let (m, blk) = member_of(&a, 12).await;
    rig.faulty[m].flip_bit(blk, 1).await.unwrap();
    let p = lay.parity_member(1) as usize;
    rig.faulty[p].flip_bit(blk, 1).await.unwrap();
    let r = a.scrub().await.unwrap();
    assert_eq!(r.unrecoverable, 1);
    assert!(a.read(12, 1).await.is_err());
}

#[tokio::test]
async fn check_reports_and_repairs_nothing() {
    let rig = Rig::new(4, 2048, small_config());
    let (a, model) = rig.filled(4).await;
    let lay = a.layout().await;
    assert!(a.check().await.unwrap().clean());
    // Rot one data block and one parity block.
    let m = rot_data(&rig, &a, 3).await;
    let p = rot_parity(&rig, &a, 5, 2).await;
    // Parity of volume block 40 loses its update (block and tag): the old
    // parity still matches its own tag, only the XOR shows the problem.
    let (row, _, i) = lay.locate(40);
    let pm = lay.parity_member(row) as usize;
    a.write(41, blocks(41, 1, 9), WriteFlags::FUA)
        .await
        .unwrap();
    rig.faulty[pm].lose_next_writes(2);
    a.write(40, blocks(40, 1, 9), WriteFlags::FUA)
        .await
        .unwrap();
    for _ in 0..2 {
        let r = a.check().await.unwrap();
        assert_eq!(r.rows, lay.rows);
        assert_eq!(r.incomplete_rows, 0);
        // The rotted blocks explain the XOR at their positions.
        assert_eq!((r.bad_blocks, r.parity_mismatches), (2, 1), "{r:?}");
        let (row3, _, i3) = lay.locate(3);
        assert!(r.findings.contains(&raid::Finding::BadBlock {
            row: row3,
            slot: m as u32,
            block: i3,
            parity: false,
            vouch: raid::integrity::Vouch::Neither,
        }));
        assert!(r.findings.contains(&raid::Finding::BadBlock {
            row: 5,
            slot: p as u32,
            block: 2,
            parity: true,
            vouch: raid::integrity::Vouch::Neither,
        }));
        assert!(r
            .findings
            .contains(&raid::Finding::ParityMismatch { row, block: i }));
    }
    let s = a.scrub().await.unwrap();
    assert_eq!((s.data_repaired, s.parity_repaired), (1, 2));
    let r = a.check().await.unwrap();
    assert!(r.clean(), "{r:?}");
    let mut model = model;
    model[40] = Some(9);
    model[41] = Some(9);
    check_all(&a, &model).await;
    // The repaired parity carries a tag that vouches for it: with the data
    // member gone, block 40 is rebuilt through it. With a member gone, its
    // rows are incomplete; the rest is still read.
    let (dm, _) = member_of(&a, 40).await;
    rig.faulty[dm].set_offline(true);
    assert_eq!(a.read(40, 1).await.unwrap(), blocks(40, 1, 9));
    let r = a.check().await.unwrap();
    assert_eq!(r.incomplete_rows, lay.rows);
    assert!(r.clean());
}
