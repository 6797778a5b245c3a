//! The README's promise: a backup in a directory store can be restored
//! without opie, by python3 (stdlib) and the zstd CLI.

mod common;

use backup::{RetryPolicy, RunOptions, Store, StoreConfig};
use common::{content, filled, CS};

fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn python_and_zstd_restore_a_backup_bit_exact() {
    if !have("python3") || !have("zstd") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 and zstd are required under CI (interop/test-all installs them)"
        );
        eprintln!("SKIP: python3 or zstd missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = Store::open(&StoreConfig::Dir(dir.clone()), RetryPolicy::default()).unwrap();
    // An odd size: the last chunk is short.
    let size = (4 << 20) + 3 * 512;
    let dev = filled("py", size, 11);
    // A compressible chunk, so the zstd path is taken too.
    let text: Vec<u8> = b"opie backup "
        .iter()
        .copied()
        .cycle()
        .take(CS as usize)
        .collect();
    dev.write_bytes(u64::from(CS), &text);
    let r = backup::run(
        dev.as_ref(),
        None,
        None,
        &store,
        &RunOptions {
            chunk_size: CS,
            ..RunOptions::new("py")
        },
    )
    .await
    .unwrap();
    assert!(r.manifest.zero_chunks > 0);
    let (_, index) = backup::load(&store, "py", &r.manifest.id).await.unwrap();
    let backup::ChunkRef::Stored(d) = index.chunks[1] else {
        panic!("chunk 1 holds text")
    };
    let blob = std::fs::read(dir.join(d.path())).unwrap();
    assert_eq!(blob[5], 1, "chunk 1 is stored zstd-compressed");
    let out = tmp.path().join("restored.img");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/restore_without_opie.py");
    let status = std::process::Command::new("python3")
        .arg(script)
        .arg(&dir)
        .arg("py")
        .arg(&r.manifest.id)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&out).unwrap(), content(&dev));
}
