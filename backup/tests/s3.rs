//! Backups against a real S3 server: s3s-fs 0.14.1 on a loopback port over a
//! temporary directory (it checks SigV4 signatures and honours conditional
//! puts). Under `CI=true` a missing s3s-fs fails these tests.

mod common;
#[path = "common/s3s.rs"]
mod s3s;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime};

use backup::{BackupError, ChangedMap, OnBadChunk, RetryPolicy, S3Credentials, Store, StoreConfig};
use blockdev::MemDevice;
use common::{
    assert_restores, assert_verifies, change, content, filled, opts, opts_watched, restored, CS,
};

const SIZE: u64 = 8 << 20; // 128 chunks of 64 KiB
const BUCKET: &str = "backup-test";

/// A running s3s-fs, killed on drop.
struct Server {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(bin: &Path, dir: &Path, port: u16) -> Server {
        std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
        let mut s = Server {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        self.child = Some(s3s::spawn(
            &self.bin,
            &self.dir,
            self.port,
            "backup-ak",
            "backup-secret-key",
        ));
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn store(&self, secret: &str, retry: RetryPolicy) -> Store {
        Store::open(
            &StoreConfig::S3 {
                endpoint: format!("http://127.0.0.1:{}", self.port),
                bucket: BUCKET.into(),
                region: "us-east-1".into(),
                credentials: S3Credentials {
                    access_key: "backup-ak".into(),
                    secret_key: secret.into(),
                },
            },
            retry,
        )
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory and s3s-fs serving it on `port`; `None` (a skip) without s3s-fs outside CI.
fn started(port: u16) -> Option<(tempfile::TempDir, Server)> {
    let bin = s3s::s3s_fs()?;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&bin, tmp.path(), port);
    Some((tmp, server))
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_full_and_incremental_backups_restore_exactly() {
    let Some((_tmp, server)) = started(26010) else {
        return;
    };
    let store = server.store("backup-secret-key", RetryPolicy::default());
    let dev = filled("vol", SIZE, 21);
    let full = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap();
    assert_eq!(full.manifest.chunks_uploaded, 96);
    assert_restores(&store, "vol", &full.manifest.id, &dev).await;

    let mut ids = vec![full.manifest.id.clone()];
    let mut contents = vec![content(&dev)];
    for round in 0..3u64 {
        // About 1%: 2 of 128 chunks.
        let chunks = [round * 7 + 2, 100 + round];
        change(&dev, &chunks, 300 + round);
        let mut map = ChangedMap::new(CS, 128);
        for c in chunks {
            map.mark_bytes(c * u64::from(CS), 1);
        }
        let r = backup::run(
            dev.as_ref(),
            Some(&map),
            ids.last().map(String::as_str),
            &store,
            &opts("vol"),
        )
        .await
        .unwrap();
        assert_eq!((r.progress.chunks_read, r.progress.chunks_uploaded), (2, 2));
        ids.push(r.manifest.id.clone());
        contents.push(content(&dev));
    }
    for (id, want) in ids.iter().zip(&contents).skip(1) {
        assert_eq!(&restored(&store, "vol", id, SIZE).await, want);
    }
    assert_eq!(backup::list(&store, Some("vol")).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_the_auth_error() {
    let Some((_tmp, server)) = started(26011) else {
        return;
    };
    let store = server.store("not-the-secret", quick_retry());
    let dev = filled("vol", 1 << 20, 22);
    let err = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::AuthRefused(_)), "{err:?}");
    assert!(!err.retryable());
    assert!(!err.to_string().contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_killed_mid_upload_leaves_no_backup_and_gc_reclaims_orphans() {
    let Some((_tmp, mut server)) = started(26012) else {
        return;
    };
    let store = server.store("backup-secret-key", quick_retry());
    let dev = filled("vol", SIZE, 23);
    let (ropts, mut rx) = opts_watched("vol");
    let run = backup::run(dev.as_ref(), None, None, &store, &ropts);
    let killer = async {
        rx.wait_for(|p| p.chunks_uploaded >= 20).await.unwrap();
        server.kill();
    };
    let (res, ()) = tokio::join!(run, killer);
    let err = res.unwrap_err();
    assert!(
        matches!(err, BackupError::StoreUnreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.retryable());

    server.restart();
    assert!(
        backup::list(&store, None).await.unwrap().is_empty(),
        "nothing partial is visible"
    );
    let orphans = store.list("chunks").await.unwrap().len();
    assert!(orphans >= 20);

    // The volume changed meanwhile; the next run is correct.
    let dev = filled("vol", SIZE, 24);
    let r = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap();
    assert_restores(&store, "vol", &r.manifest.id, &dev).await;
    let later = SystemTime::now() + Duration::from_secs(7200);
    let g = backup::gc(&store, Duration::from_secs(3600), later)
        .await
        .unwrap();
    assert_eq!(g.chunks_swept as usize, orphans);
    assert_eq!(g.incomplete_removed, 1);
    assert_verifies(&store, "vol", &r.manifest.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_corrupt_chunk_is_named_and_its_range_reported() {
    let Some((tmp, server)) = started(26013) else {
        return;
    };
    let store = server.store("backup-secret-key", RetryPolicy::default());
    let dev = filled("vol", SIZE, 25);
    let r = backup::run(dev.as_ref(), None, None, &store, &opts("vol"))
        .await
        .unwrap();
    let (_, index) = backup::load(&store, "vol", &r.manifest.id).await.unwrap();
    let backup::ChunkRef::Stored(d) = index.chunks[9] else {
        panic!("chunk 9 holds data")
    };
    let file = tmp.path().join(BUCKET).join(d.path());
    let mut blob = std::fs::read(&file).unwrap();
    blob[100] ^= 1;
    std::fs::write(&file, blob).unwrap();

    let v = backup::verify(&store, "vol", &r.manifest.id, 4)
        .await
        .unwrap();
    assert_eq!(v.bad.iter().map(|b| b.chunk).collect::<Vec<_>>(), vec![9]);
    let range = 9 * u64::from(CS)..10 * u64::from(CS);
    let target = MemDevice::with_name("t", SIZE);
    let rep = backup::restore(&store, "vol", &r.manifest.id, &target, OnBadChunk::Skip, 4)
        .await
        .unwrap();
    assert_eq!(rep.unrestored.bad_ranges(), vec![range]);
}
