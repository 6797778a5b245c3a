//! `IscsiDevice` against opie's target in-process, over a file-backed disk
//! with faults injected: the identity, geometry and limits of the disk
//! behind it, verified I/O (every block stamped with its address, a
//! generation and a CRC, read back), errors by class, and a grown disk
//! published as resized.

use std::sync::Arc;

use blockdev::file::FileOptions;
use blockdev::{
    BlockDevice, BlockError, DeviceIdentity, ErrorClass, FaultyDevice, FileDevice, WriteFlags,
};
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};
use scsi_disk::LuConfig;
use target_iscsi::access::Access;

mod common;
use common::{stamps, verified_writers, verify, INITIATOR, IQN};

const BLOCKS: u64 = 8192;

struct Setup {
    dev: Arc<IscsiDevice>,
    file: FileDevice,
    faults: Arc<FaultyDevice>,
    identity: DeviceIdentity,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The disk behind a target in-process, through a fault injector when
/// `faulty` (which does not pass on resizes).
async fn setup(read_only: bool, faulty: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let identity = DeviceIdentity::from_name("remote");
    let opts = FileOptions {
        create_size: Some(BLOCKS * 512),
        ..FileOptions::default()
    };
    let file = FileDevice::open(dir.path().join("d.img"), &opts, identity.clone()).unwrap();
    let faults = Arc::new(FaultyDevice::new(Arc::new(file.clone()), 1));
    let lu = LuConfig {
        device: if faulty {
            faults.clone()
        } else {
            Arc::new(file.clone())
        },
        read_only,
        state_path: None,
    };
    let (addr, stop) = common::start_lu(lu, Access::default()).await;
    let login = LoginConfig::new(INITIATOR, Some(IQN));
    let session = PipelinedSession::connect(addr, login, PipelineConfig::default())
        .await
        .unwrap();
    let dev = Arc::new(IscsiDevice::open(session, 0).await.unwrap());
    Setup {
        dev,
        file,
        faults,
        identity,
        _dir: dir,
        _stop: stop,
    }
}

#[tokio::test]
async fn the_remote_disk_is_the_disk_behind_it_and_every_block_reads_back() {
    let s = setup(false, true).await;
    let dev = &s.dev;
    assert_eq!(dev.identity(), &s.identity);
    assert_eq!(dev.geometry(), s.faults.geometry());
    assert!(!dev.read_only());
    // The Block Limits page's transfer limit holds, before the target.
    let max = dev.limits().max_transfer;
    assert!(max > 0);
    let e = dev.read(0, max + 1).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Invalid);
    // Writers at once, each on its own 40 blocks, three generations,
    // each read back and checked.
    for w in verified_writers(dev.clone(), 16, 300, 40, 3) {
        w.await.unwrap();
    }
    dev.flush().await.unwrap();
    // What the initiator wrote is on the disk behind it.
    let local = s.file.read(300, 40).await.unwrap();
    verify(&local, 300, 3, 512).unwrap();
    // Zeroes, written and unmapped, inside what writer 2 wrote (600..640).
    dev.write_zeroes(601, 10, false).await.unwrap();
    dev.unmap(611, 8).await.unwrap();
    let back = dev.read(600, 20).await.unwrap();
    verify(&back[..512], 600, 3, 512).unwrap();
    assert!(back[512..512 * 19].iter().all(|&b| b == 0));
    verify(&back[512 * 19..], 619, 3, 512).unwrap();
}

#[tokio::test]
async fn errors_keep_their_class_across_the_wire() {
    let s = setup(false, true).await;
    let dev = &s.dev;
    s.faults.fail_reads(100..101);
    let e = dev.read(98, 4).await.unwrap_err();
    assert!(matches!(e, BlockError::Medium { .. }), "{e:?}");
    s.faults.fail_writes(200..201);
    let e = dev
        .write(200, stamps(200, 1, 1, 512).into(), WriteFlags::NONE)
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Medium, "{e:?}");
    s.faults.clear_faults();
    s.faults.set_path_down(true);
    let e = dev.read(0, 1).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::RetryElsewhere, "{e:?}");
    s.faults.set_path_down(false);
    let e = dev.read(BLOCKS - 1, 2).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Invalid, "{e:?}");
    dev.read(BLOCKS - 1, 1).await.unwrap();
}

#[tokio::test]
async fn a_read_only_disk_refuses_writes() {
    let s = setup(true, true).await;
    assert!(s.dev.read_only());
    let e = s
        .dev
        .write(0, vec![0u8; 512].into(), WriteFlags::NONE)
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::ReadOnly);
}

#[tokio::test]
async fn a_grown_disk_is_published_as_resized() {
    let s = setup(false, false).await;
    let status = s.dev.status();
    assert_eq!(status.borrow().geometry.num_blocks, BLOCKS);
    // The ISU grows the file and rescans it.
    let path = s._dir.path().join("d.img");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 * BLOCKS * 512)
        .unwrap();
    assert_eq!(s.file.rescan().unwrap(), 2 * BLOCKS);
    // The next command meets CAPACITY DATA HAS CHANGED; the device re-reads
    // the capacity, publishes it, and the command is carried out.
    s.dev.read(0, 1).await.unwrap();
    assert!(
        status.has_changed().unwrap(),
        "published before the read returned"
    );
    assert_eq!(status.borrow().geometry.num_blocks, 2 * BLOCKS);
    assert_eq!(s.dev.geometry().num_blocks, 2 * BLOCKS);
    let data = stamps(2 * BLOCKS - 4, 4, 1, 512);
    s.dev
        .write(2 * BLOCKS - 4, data.into(), WriteFlags::NONE)
        .await
        .unwrap();
    verify(
        &s.dev.read(2 * BLOCKS - 4, 4).await.unwrap(),
        2 * BLOCKS - 4,
        1,
        512,
    )
    .unwrap();
}
