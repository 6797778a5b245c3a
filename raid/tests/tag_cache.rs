//! The tag-block cache: reads answered from it, never stale through the
//! array, never trusted over the media by scrub, never turning a good block
//! bad; bounded; a failed member's entries dropped.

mod common;

use blockdev::{BlockDevice, WriteFlags};
use common::*;

#[tokio::test]
async fn reads_of_a_chunk_whose_tags_are_cached_do_not_read_them_again() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, model) = rig.filled(3).await;
    check_all(&a, &model).await;
    let first = a.tag_cache_stats();
    assert!(first.entries > 0 && first.bytes > 0, "{first:?}");
    check_all(&a, &model).await;
    let second = a.tag_cache_stats();
    assert_eq!(second.misses, first.misses, "tags read again: {second:?}");
    assert!(second.hits > first.hits);
    assert!(second.bytes <= second.limit);
}

#[tokio::test]
async fn the_cache_stays_within_its_bound() {
    let mut cfg = small_config();
    cfg.tag_cache_bytes = 3 * BS;
    let rig = Rig::new(3, 2048, cfg);
    let (a, model) = rig.filled(3).await;
    check_all(&a, &model).await;
    check_all(&a, &model).await;
    let s = a.tag_cache_stats();
    assert_eq!((s.limit, s.entries), (3 * BS, 3), "{s:?}");
    assert!(s.bytes <= s.limit);
}

#[tokio::test]
async fn scrub_finds_a_rotten_tag_block_the_cache_holds_good() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, model) = rig.filled(3).await;
    check_all(&a, &model).await;
    let lay = a.layout().await;
    let (row, k, _) = lay.locate(20);
    let m = rig.index_of(&a, lay.data_member(row, k));
    rig.faulty[m]
        .flip_bit(lay.tag_block(row, 0), 100)
        .await
        .unwrap();
    // The read path verifies the (intact) data against the cached copy.
    check_all(&a, &model).await;
    assert_eq!(a.integrity_stats().checksum_errors, 0);
    // Check and scrub read the media, and find the damage.
    assert!(!a.check().await.unwrap().clean());
    let r = a.scrub().await.unwrap();
    assert!(r.data_repaired > 0, "{r:?}");
    assert_eq!(r.unrecoverable, 0);
    assert!(a.check().await.unwrap().clean());
    check_all(&a, &model).await;
}

#[tokio::test]
async fn a_cached_tag_that_fails_to_verify_is_read_again_from_the_member() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, _) = rig.filled(3).await;
    let lay = a.layout().await;
    let (row, k, _) = lay.locate(0);
    let m = rig.index_of(&a, lay.data_member(row, k));
    let at = lay.member_block(row, 0);
    let span = lay.chunk_blocks + lay.tag_blocks;
    let old = rig.faulty[m].read(at, span).await.unwrap();
    a.write(0, blocks(0, 1, 2), WriteFlags::FUA).await.unwrap();
    assert_eq!(&a.read(0, 1).await.unwrap()[..], &blocks(0, 1, 2)[..]);
    // Behind the array, the member's chunk goes back to its old data and
    // tags together: what the member holds is consistent, the cached tags
    // (of version 2) are not.
    rig.faulty[m].write(at, old, WriteFlags::FUA).await.unwrap();
    let before = a.integrity_stats();
    // As without the cache: the member's tags vouch for its data.
    assert_eq!(&a.read(0, 1).await.unwrap()[..], &blocks(0, 1, 1)[..]);
    assert_eq!(a.integrity_stats(), before, "a good block looked bad");
}

#[tokio::test]
async fn a_failed_member_drops_its_cached_tags() {
    let rig = Rig::new(3, 2048, small_config());
    let (a, model) = rig.filled(3).await;
    check_all(&a, &model).await;
    let before = a.tag_cache_stats().entries;
    a.fail(0).await;
    let after = a.tag_cache_stats().entries;
    assert!(after < before && after > 0, "{before} -> {after}");
    check_all(&a, &model).await;
}
