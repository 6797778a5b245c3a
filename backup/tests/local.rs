//! Backups through `LocalFileSystem`: the whole cycle on a directory store.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backup::{
    BackupError, ChangedMap, ChunkProblem, OnBadChunk, Retention, RetryPolicy, Store, StoreConfig,
};
use blockdev::{BlockDevice, FaultyDevice, MemDevice};
use common::{
    assert_restores, assert_verifies, change, content, files, filled, opts, opts_watched, restored,
    CS,
};

const SIZE: u64 = 16 << 20; // 256 chunks of 64 KiB

/// `mem` behind a device whose reads of chunk `chunk` fail.
fn failing_at(mem: &Arc<MemDevice>, chunk: u64) -> FaultyDevice {
    let faulty = FaultyDevice::new(mem.clone() as Arc<dyn BlockDevice>, 1);
    let lba = chunk * u64::from(CS) / 512;
    faulty.fail_reads(lba..lba + 1);
    faulty
}

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &StoreConfig::Dir(dir.path().join("store")),
        RetryPolicy::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn full_backup_restores_bit_exact_and_skips_zero_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let dev = filled("vol", SIZE, 1);
    let (ropts, rx) = opts_watched("vol");
    let report = backup::run(dev.as_ref(), None, None, &store, &ropts)
        .await
        .unwrap();
    let m = &report.manifest;
    assert_eq!(m.chunks, 256);
    assert_eq!(
        m.zero_chunks, 64,
        "every fourth chunk is zero and stored as a marker"
    );
    assert_eq!(m.chunks_uploaded, 192);
    assert_eq!(m.identity.uuid, dev.identity().to_string());
    assert_eq!(
        files(&tmp.path().join("store/chunks")).len(),
        192,
        "no object for zero chunks"
    );
    assert_eq!(rx.borrow().chunks_done, 256, "progress reaches the end");
    assert_eq!(rx.borrow().bytes_read, SIZE);
    assert_restores(&store, "vol", &m.id, &dev).await;
    let listed = backup::list(&store, Some("vol")).await.unwrap();
    assert_eq!(listed, vec![m.clone()]);
    assert!(
        !tmp.path()
            .join(format!("store/backups/vol/{}/running", m.id))
            .exists(),
        "the in-progress marker is gone once the manifest is written"
    );
}

#[tokio::test]
async fn incremental_reads_and_uploads_only_changed_chunks_and_each_backup_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let dev = filled("vol", SIZE, 2);
    let mut ids = Vec::new();
    let mut contents = Vec::new();
    let full = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap();
    ids.push(full.manifest.id.clone());
    contents.push(content(&dev));
    for round in 0..3u64 {
        // About 1%: 3 of 256 chunks, one of them a zero chunk.
        let chunks = [round * 10 + 1, round * 10 + 3, 200 + round];
        change(&dev, &chunks, 100 + round);
        let mut map = ChangedMap::new(CS, 256);
        for c in chunks {
            map.mark_bytes(c * u64::from(CS) + 512, 4096);
        }
        let r = backup::run(
            dev.as_ref(),
            Some(&map),
            Some(ids.last().unwrap()),
            &store,
            &opts("vol"),
        )
        .await
        .unwrap();
        assert_eq!(
            r.progress.chunks_read, 3,
            "only the changed chunks are read"
        );
        assert_eq!(
            r.progress.chunks_uploaded, 3,
            "only the changed chunks are uploaded"
        );
        assert_eq!(
            r.manifest.parent.as_deref(),
            Some(ids.last().unwrap().as_str())
        );
        ids.push(r.manifest.id.clone());
        contents.push(content(&dev));
    }
    // Every backup is logically full: each of the last three restores exactly.
    for (id, want) in ids.iter().zip(&contents).skip(1) {
        assert_eq!(&restored(&store, "vol", id, SIZE).await, want);
    }
    // Without a changed map, a parent still spares the uploads (not the reads).
    change(&dev, &[7], 999);
    let r = backup::run(
        dev.as_ref(),
        None,
        Some(ids.last().unwrap()),
        &store,
        &opts("vol"),
    )
    .await
    .unwrap();
    assert_eq!(r.progress.chunks_read, 256);
    assert_eq!(r.progress.chunks_uploaded, 1);
    assert_restores(&store, "vol", &r.manifest.id, &dev).await;
}

#[tokio::test]
async fn corrupt_chunk_is_named_by_verify_and_restore_reports_its_range() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let dev = filled("vol", SIZE, 3);
    let r = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap();
    let (_, index) = backup::load(&store, "vol", &r.manifest.id).await.unwrap();
    let victim = 5u64;
    let backup::ChunkRef::Stored(d) = index.chunks[victim as usize] else {
        panic!("chunk 5 holds data")
    };
    let path = tmp.path().join("store").join(d.path());
    let mut blob = std::fs::read(&path).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 0x40;
    std::fs::write(&path, blob).unwrap();

    let report = backup::verify(&store, "vol", &r.manifest.id, 4)
        .await
        .unwrap();
    assert_eq!(report.bad.len(), 1);
    assert_eq!(report.bad[0].chunk, victim);
    assert_eq!(report.bad[0].problem, ChunkProblem::BadChecksum);
    let range = victim * u64::from(CS)..(victim + 1) * u64::from(CS);
    assert_eq!(report.bad_ranges(), vec![range.clone()]);

    // The default refuses before writing anything.
    let target = MemDevice::with_name("t", SIZE);
    target.write_bytes(0, &[0xAA; 4096]);
    match backup::restore(
        &store,
        "vol",
        &r.manifest.id,
        &target,
        OnBadChunk::Refuse,
        4,
    )
    .await
    {
        Err(BackupError::RestoreRefused(v)) => assert_eq!(v.bad_ranges(), vec![range.clone()]),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(content(&target)[..4096], [0xAA; 4096], "nothing written");

    // Skip writes the rest and names exactly the lost range.
    let rep = backup::restore(&store, "vol", &r.manifest.id, &target, OnBadChunk::Skip, 4)
        .await
        .unwrap();
    assert_eq!(rep.unrestored.bad_ranges(), vec![range.clone()]);
    let (got, want) = (content(&target), content(&dev));
    assert_eq!(got[..range.start as usize], want[..range.start as usize]);
    assert_eq!(got[range.end as usize..], want[range.end as usize..]);

    // A missing chunk is named as missing.
    std::fs::remove_file(&path).unwrap();
    let report = backup::verify(&store, "vol", &r.manifest.id, 4)
        .await
        .unwrap();
    assert_eq!(report.bad[0].problem, ChunkProblem::Missing);
}

#[tokio::test]
async fn failed_run_leaves_no_backup_next_run_is_correct_and_gc_reclaims_orphans() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let mem = filled("vol", SIZE, 4);
    // The read of chunk 100 fails: chunks before it are uploaded, then the run dies.
    let faulty = failing_at(&mem, 100);
    let err = backup::run(&faulty, None, None, &store, &opts("vol"))
        .await
        .unwrap_err();
    match &err {
        BackupError::SourceRead { range, .. } => assert_eq!(range.start, 100 * u64::from(CS)),
        other => panic!("expected a source read error, got {other:?}"),
    }
    assert!(!err.retryable());
    assert!(
        backup::list(&store, None).await.unwrap().is_empty(),
        "no manifest, no backup"
    );
    let orphans = files(&tmp.path().join("store/chunks")).len();
    assert!(orphans > 0);

    // Within the grace the orphans stay (a run could still be using them).
    let g = backup::gc(&store, Duration::from_secs(3600), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(g.chunks_swept, 0);
    assert_eq!(g.chunks_in_grace as usize, orphans);

    // A different volume's full backup references none of them; GC past the grace reclaims them all.
    let other = filled("other", SIZE, 5);
    let ok = backup::run(other.as_ref(), None, None, &store, &opts("other"))
        .await
        .unwrap();
    let later = SystemTime::now() + Duration::from_secs(7200);
    let g = backup::gc(&store, Duration::from_secs(3600), later)
        .await
        .unwrap();
    assert_eq!(g.chunks_swept as usize, orphans);
    assert_eq!(
        g.incomplete_removed, 1,
        "the failed run's marker is removed"
    );
    assert!(store.list("backups/vol").await.unwrap().is_empty());
    assert_restores(&store, "other", &ok.manifest.id, &other).await;

    // The next run of the failed volume is correct.
    faulty.clear_faults();
    let r = backup::run(&faulty, None, None, &store, &opts("vol"))
        .await
        .unwrap();
    assert_restores(&store, "vol", &r.manifest.id, &mem).await;
}

#[tokio::test]
async fn a_rerun_rewrites_an_old_orphan_so_gc_cannot_sweep_it_under_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let mem = filled("vol", SIZE, 6);
    let faulty = failing_at(&mem, 50);
    backup::run(&faulty, None, None, &store, &opts("vol"))
        .await
        .unwrap_err();
    // Age the orphans past the grace.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for e in files(&tmp.path().join("store/chunks")) {
        std::fs::File::options()
            .write(true)
            .open(&e)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    faulty.clear_faults();
    // A run that finds them present rewrites them: they are young again and GC keeps them.
    let (ropts, mut rx) = opts_watched("vol");
    let run = async { backup::run(&faulty, None, None, &store, &ropts).await };
    let collector = async {
        // GC while the run is still going (before its manifest exists).
        rx.wait_for(|p| p.chunks_done >= 60).await.unwrap();
        backup::gc(&store, Duration::from_secs(3600), SystemTime::now())
            .await
            .unwrap()
    };
    let (r, g) = tokio::join!(run, collector);
    let r = r.unwrap();
    assert_eq!(g.chunks_swept, 0, "{g:?}");
    assert_verifies(&store, "vol", &r.manifest.id).await;
}

#[tokio::test]
async fn prune_keeps_what_the_rule_keeps_and_gc_frees_only_unreferenced_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let dev = filled("vol", SIZE, 7);
    let mut last = None::<String>;
    let mut ids = Vec::new();
    for round in 0..4u64 {
        change(&dev, &[round], 50 + round);
        let r = backup::run(dev.as_ref(), None, last.as_deref(), &store, &opts("vol"))
            .await
            .unwrap();
        last = Some(r.manifest.id.clone());
        ids.push(r.manifest.id);
    }
    let removed = backup::prune(
        &store,
        "vol",
        &Retention {
            keep_last: 2,
            ..Retention::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(removed, ids[..2].to_vec());
    let left: Vec<String> = backup::list(&store, Some("vol"))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, ids[2..].to_vec());
    let later = SystemTime::now() + Duration::from_secs(7200);
    let g = backup::gc(&store, Duration::from_secs(3600), later)
        .await
        .unwrap();
    // The pruned backups' own versions of chunks 0 and 1 (two per pruned round's change, minus shared) go.
    assert!(g.chunks_swept >= 2, "{g:?}");
    assert_eq!(g.incomplete_removed, 2);
    for id in &ids[2..] {
        assert_verifies(&store, "vol", id).await;
    }
    assert_eq!(restored(&store, "vol", &ids[3], SIZE).await, content(&dev));
}

#[test]
fn secrets_are_read_from_toml_and_never_shown() {
    let c = backup::S3Credentials::from_secrets_toml(
        "[s3]\naccess_key = \"AKID\"\nsecret_key = \"very-secret-value\"\n",
    )
    .unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("AKID"));
    assert!(!shown.contains("very-secret-value"));
    let cfg = StoreConfig::S3 {
        endpoint: "http://127.0.0.1:1".into(),
        bucket: "b".into(),
        region: "us-east-1".into(),
        credentials: c,
    };
    assert!(!format!("{cfg:?}").contains("very-secret-value"));
    assert!(matches!(
        backup::S3Credentials::from_secrets_toml("[other]\n"),
        Err(BackupError::Invalid(_))
    ));
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let cfg = StoreConfig::S3 {
        endpoint: "http://backup.example:9000".into(),
        bucket: "b".into(),
        region: "r".into(),
        credentials: backup::S3Credentials {
            access_key: "a".into(),
            secret_key: "s".into(),
        },
    };
    assert!(matches!(
        Store::open(&cfg, RetryPolicy::default()),
        Err(BackupError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_prefixed_store_keeps_its_backups_under_the_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let root = store(&tmp);
    let store = root.clone().with_prefix("heads/h1");
    let dev = filled("vol", SIZE, 5);
    let r = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap();
    let m = &r.manifest;
    assert!(tmp
        .path()
        .join(format!("store/heads/h1/backups/vol/{}/manifest.json", m.id))
        .exists());
    assert!(
        !tmp.path().join("store/backups").exists(),
        "nothing outside the prefix"
    );
    assert_restores(&store, "vol", &m.id, &dev).await;
    assert!(backup::list(&root, Some("vol")).await.unwrap().is_empty());
}

/// A rate-limited run reads no faster than its limit: 16 chunks of 64 KiB
/// at 64 KiB/s, the first free (the bucket starts one chunk full), take at
/// least 15 s on tokio's clock (paused: the sleeps advance it, not the wall).
#[tokio::test(start_paused = true)]
async fn a_rate_limited_run_reads_no_faster_than_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let dev = filled("rl", 16 * u64::from(CS), 7);
    let limited = backup::RunOptions {
        rate_limit: Some(u64::from(CS)),
        ..opts("rl")
    };
    let t0 = tokio::time::Instant::now();
    let r = backup::run(dev.as_ref(), None, None, &store, &limited)
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.progress.chunks_read, 16);
    assert!(took >= Duration::from_secs(15), "{took:?}");
    assert!(took < Duration::from_secs(17), "{took:?}");
    assert_restores(&store, "rl", &r.manifest.id, &dev).await;
}
