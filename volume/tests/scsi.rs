//! A volume exported through the project's SCSI emulation: its VPD
//! identity pages are the same on every head and across restarts, and a
//! grow raises CAPACITY DATA HAS CHANGED.

use std::sync::Arc;

use blockdev::{Bytes, MemDevice, SharedDevice};
use scsi_disk::sense::{key, Asc};
use scsi_disk::{status, Command, InitiatorPort, LuConfig, Nexus, Response, ScsiTarget, TaskAttr};
use volume::Pool;

const TARGET: &str = "iqn.2026-12.test.opie:head.v";

fn nexus() -> Nexus {
    Nexus {
        id: 1,
        initiator: InitiatorPort::iscsi("iqn.2026-12.test:client", [0x80, 0, 0, 0, 0, 1]),
        relative_port: 1,
    }
}

async fn run(t: &Arc<ScsiTarget>, cdb: &[u8]) -> Response {
    let mut c = cdb.to_vec();
    c.resize(16, 0);
    let cmd = Command {
        lun: 0,
        cdb: Bytes::from(c),
        data_out: Bytes::new(),
        expected_in: 4096,
        tag: 1,
        attr: TaskAttr::Simple,
        data_in_from_file: false,
    };
    t.submit(&nexus(), cmd).await
}

fn sense(r: &Response) -> Option<(u8, Asc)> {
    let s = r.sense.as_ref()?;
    Some((s[2] & 0x0f, Asc(s[12], s[13])))
}

/// A target exporting volume `name` of `pool` as LUN 0, logged in, its
/// power-on attention taken.
async fn export(pool: &Pool, name: &str) -> Arc<ScsiTarget> {
    let cfg = LuConfig {
        device: pool.open_volume(name).unwrap(),
        read_only: false,
        state_path: None,
    };
    let t = ScsiTarget::new(TARGET, vec![(0, cfg)], vec![]).unwrap();
    assert!(t.nexus_login(&nexus()).is_empty());
    let tur = run(&t, &[0; 6]).await;
    assert_eq!(
        sense(&tur),
        Some((key::UNIT_ATTENTION, Asc::POWER_ON_RESET))
    );
    t
}

/// VPD pages 80h (serial) and 83h (designators).
async fn vpd(t: &Arc<ScsiTarget>) -> (Bytes, Bytes) {
    let page = |p: u8| [0x12, 0x01, p, 0x00, 0xff, 0x00];
    let (a, b) = (run(t, &page(0x80)).await, run(t, &page(0x83)).await);
    assert_eq!((a.status, b.status), (status::GOOD, status::GOOD));
    (a.data_in, b.data_in)
}

async fn capacity(t: &Arc<ScsiTarget>) -> u64 {
    let r = run(t, &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]).await;
    assert_eq!(r.status, status::GOOD);
    u64::from_be_bytes(r.data_in[..8].try_into().unwrap()) + 1
}

#[tokio::test]
async fn identity_is_the_same_on_every_head_and_a_grow_raises_capacity_changed() {
    let dev: SharedDevice = Arc::new(MemDevice::with_name("scsi", 4 << 20));
    let pool = Pool::format(dev.clone(), 8, false).await.unwrap();
    pool.create("v", 64 * 512).await.unwrap();
    pool.create("w", 64 * 512).await.unwrap();
    let head1 = export(&pool, "v").await;
    // A second head opens the same device on its own.
    let other = Pool::open(dev.clone()).await.unwrap();
    let head2 = export(&other, "v").await;
    let pages = vpd(&head1).await;
    assert_eq!(vpd(&head2).await, pages, "the same identity on both heads");
    assert_ne!(
        vpd(&export(&pool, "w").await).await,
        pages,
        "another volume, another identity"
    );

    assert_eq!(capacity(&head1).await, 64);
    pool.grow("v", 200 * 512).await.unwrap();
    let tur = run(&head1, &[0; 6]).await;
    assert_eq!(
        sense(&tur),
        Some((key::UNIT_ATTENTION, Asc::CAPACITY_DATA_CHANGED))
    );
    assert_eq!(capacity(&head1).await, 200);

    // After a restart the identity is still the same.
    drop((head1, head2, pool, other));
    let pool = Pool::open(dev).await.unwrap();
    assert_eq!(vpd(&export(&pool, "v").await).await, pages);
}
