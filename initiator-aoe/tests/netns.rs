//! The initiator against opie's AoE server on veth links in a private
//! network namespace: two networks (a bridge each), the target and the
//! initiator on both. Needs root (see `common`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::file::{FileDevice, FileOptions};
use blockdev::{BlockDevice, Bytes, DeviceIdentity, WriteFlags};
use common::{check, ip, stamped, Netns};
use initiator_aoe::{AoeDevice, AoePath, AttachError, Driver, OpenError, Settings};
use multipath::Path;
use target_aoe::{AoeConfig, AoeDisk, AoeDiskConfig, AoeServer};

const SHELF: u16 = 9;
const SECTORS: u64 = 8192;

/// Two networks at `mtu` and opie's AoE server on them exporting a 4 MiB
/// disk named `d<slot>` at each of `slots`.
fn serve(
    ns: &Netns,
    mtu: u32,
    slots: &[u8],
) -> (tokio::runtime::Runtime, AoeServer, tempfile::TempDir) {
    ns.network("br0", ["tgt0", "ini0"], mtu);
    ns.network("br1", ["tgt1", "ini1"], mtu);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = AoeConfig {
        interfaces: vec!["tgt0".into(), "tgt1".into()],
        shelf: SHELF,
        buffer_count: Some(16),
        mac_mask: vec![],
        write_back: false,
    };
    let disks = slots
        .iter()
        .map(|&slot| {
            let dev = FileDevice::open(
                dir.path().join(format!("d{slot}.img")),
                &FileOptions {
                    create_size: Some(SECTORS * 512),
                    ..FileOptions::default()
                },
                DeviceIdentity::from_name(&format!("d{slot}")),
            )
            .unwrap();
            AoeDisk {
                config: AoeDiskConfig {
                    slot,
                    mac_mask: None,
                    config_string: None,
                },
                device: Arc::new(dev),
                state_path: dir.path().join(format!("d{slot}.config")),
            }
        })
        .collect();
    let server = rt
        .block_on(async { AoeServer::start(&cfg, disks) })
        .unwrap();
    (rt, server, dir)
}

fn ifs() -> Vec<String> {
    vec!["ini0".to_string(), "ini1".to_string()]
}

/// Target SHELF.1 on both interfaces, default settings.
async fn open_slot1() -> AoeDevice {
    AoeDevice::open(
        &ifs(),
        SHELF,
        1,
        Settings::default(),
        Duration::from_secs(2),
    )
    .await
    .expect("open the AoE device")
}

#[test]
fn stamped_blocks_written_over_two_networks_read_back() {
    let Some(ns) = Netns::enter() else { return };
    let (rt, server, _dir) = serve(&ns, 1500, &[1]);
    rt.block_on(async {
        let d = open_slot1().await;
        assert_eq!(d.geometry().num_blocks, SECTORS);
        assert_eq!(d.identity(), &DeviceIdentity::from_name("d1"));
        // Writes of 1..=40 sectors: 64 apart from each other all in flight
        // at once, then 64 overlapping ones one after another.
        let d = Arc::new(d);
        let mut want = vec![0u64; SECTORS as usize];
        let mut jobs = Vec::new();
        for k in 0..128u64 {
            let (lba, n, gen) = if k < 64 {
                (k * 120, 1 + (k % 40), 1)
            } else {
                ((k * 97) % 8000, 1 + (k % 40), k)
            };
            let data = stamped(lba, n, gen);
            want[lba as usize..(lba + n) as usize].fill(gen);
            let d = d.clone();
            let job =
                tokio::spawn(
                    async move { d.write(lba, Bytes::from(data), WriteFlags::NONE).await },
                );
            if k < 64 {
                jobs.push(job);
            } else {
                job.await.unwrap().expect("write");
            }
            if k == 63 {
                for j in jobs.drain(..) {
                    j.await.unwrap().expect("write");
                }
            }
        }
        d.flush().await.expect("flush");
        let all = d.read(0, SECTORS as u32).await.expect("read");
        for (l, g) in want.iter().enumerate() {
            check(l as u64, &all[l * 512..(l + 1) * 512], *g);
        }
    });
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn discovery_lists_every_target_and_devices_share_one_driver() {
    let Some(ns) = Netns::enter() else { return };
    let (rt, server, _dir) = serve(&ns, 1500, &[1, 2]);
    rt.block_on(async {
        let driver = Driver::open(&ifs()).unwrap();
        let found = driver.discover(Duration::from_millis(300)).await;
        let slots: Vec<_> = found.iter().map(|f| (f.shelf, f.slot)).collect();
        assert_eq!(slots, [(SHELF, 1), (SHELF, 2)]);
        for f in &found {
            assert_eq!(f.buffer_count, 16);
            assert_eq!(f.macs.keys().collect::<Vec<_>>(), ["ini0", "ini1"]);
            assert!(f.macs.values().all(|m| m.len() == 1));
            assert_ne!(f.macs["ini0"], f.macs["ini1"], "one MAC per target port");
        }
        let settings = Settings {
            stale_horizon: Duration::from_millis(300),
            ..Settings::default()
        };
        let wait = Duration::from_secs(2);
        let a = AoeDevice::attach(&driver, &[], SHELF, 1, settings, wait)
            .await
            .unwrap();
        let b = AoeDevice::attach(&driver, &ifs()[1..], SHELF, 2, settings, wait)
            .await
            .unwrap();
        assert_eq!(b.identity(), &DeviceIdentity::from_name("d2"));
        // The same target on an interface it is already attached on: its
        // replies could not be told apart.
        let again = AoeDevice::attach(&driver, &ifs()[1..], SHELF, 1, settings, wait).await;
        assert!(
            matches!(
                again,
                Err(OpenError::Attach(AttachError::InUse { slot: 1, .. }))
            ),
            "{again:?}"
        );
        for (d, gen) in [(&a, 1), (&b, 2)] {
            d.write(0, Bytes::from(stamped(0, 64, gen)), WriteFlags::NONE)
                .await
                .unwrap();
        }
        for (d, gen) in [(&a, 1), (&b, 2)] {
            let r = d.read(0, 64).await.unwrap();
            for l in 0..64 {
                check(l, &r[l as usize * 512..][..512], gen);
            }
        }
        // As a multipath path: the check passes, and the fence holds until
        // the stale horizon has passed since the last write was sent.
        let path = AoePath::new(Arc::new(a));
        path.check().await.expect("check");
        let t0 = Instant::now();
        path.device()
            .write(8, Bytes::from(stamped(8, 1, 3)), WriteFlags::NONE)
            .await
            .unwrap();
        path.fence().await;
        assert!(t0.elapsed() >= settings.stale_horizon);
    });
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn jumbo_frames_and_a_link_down_mid_io_lose_nothing() {
    let Some(ns) = Netns::enter() else { return };
    let (rt, server, _dir) = serve(&ns, 9000, &[1]);
    rt.block_on(async {
        let d = open_slot1().await;
        let d = Arc::new(d);
        // 8 writers, each on its own 512-sector region, 40 generations of
        // 16-sector writes (QD 8, jumbo frames), read back as they go;
        // ini0 goes down after a while and comes back later.
        let mut jobs = Vec::new();
        for w in 0..8u64 {
            let d = d.clone();
            jobs.push(tokio::spawn(async move {
                for gen in 1..=40u64 {
                    let lba = w * 512 + (gen * 16) % 512;
                    d.write(lba, Bytes::from(stamped(lba, 16, gen)), WriteFlags::NONE)
                        .await
                        .expect("write");
                    let r = d.read(lba, 16).await.expect("read");
                    for l in 0..16 {
                        check(lba + l, &r[l as usize * 512..][..512], gen);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            jobs.iter().all(|j| !j.is_finished()),
            "the link goes down mid-I/O"
        );
        ip(&["link", "set", "ini0", "down"]);
        tokio::time::sleep(Duration::from_millis(700)).await;
        ip(&["link", "set", "ini0", "up"]);
        for j in jobs {
            j.await.unwrap();
        }
    });
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn a_path_that_appears_after_the_open_is_learned_and_used() {
    let Some(ns) = Netns::enter() else { return };
    let (rt, server, _dir) = serve(&ns, 1500, &[1]);
    // Network 1 is cut at the initiator's bridge port while the device opens.
    ip(&["link", "set", "ini1p", "down"]);
    rt.block_on(async {
        let settings = Settings {
            rediscover_interval: Duration::from_millis(200),
            give_up: Duration::from_secs(3),
            ..Settings::default()
        };
        let d = AoeDevice::open(&ifs(), SHELF, 1, settings, Duration::from_secs(2))
            .await
            .expect("open on network 0");
        ip(&["link", "set", "ini1p", "up"]);
        tokio::time::sleep(Duration::from_millis(600)).await;
        // Only the path learned since can carry this.
        ip(&["link", "set", "ini0", "down"]);
        d.write(16, Bytes::from(stamped(16, 8, 5)), WriteFlags::NONE)
            .await
            .expect("write over network 1");
        let r = d.read(16, 8).await.expect("read over network 1");
        for l in 0..8 {
            check(16 + l, &r[l as usize * 512..][..512], 5);
        }
    });
    rt.block_on(server.shutdown()).unwrap();
}

#[test]
fn multipath_over_one_aoe_path_per_network_survives_a_link_down() {
    let Some(ns) = Netns::enter() else { return };
    let (rt, server, _dir) = serve(&ns, 1500, &[1]);
    rt.block_on(async {
        let driver = Driver::open(&ifs()).unwrap();
        let settings = Settings {
            stale_horizon: Duration::from_millis(500),
            ..Settings::default()
        };
        let mut paths: Vec<Arc<dyn Path>> = Vec::new();
        for i in 0..2 {
            let d = AoeDevice::attach(
                &driver,
                &ifs()[i..=i],
                SHELF,
                1,
                settings,
                Duration::from_secs(2),
            )
            .await
            .expect("attach one path per network");
            paths.push(Arc::new(AoePath::new(Arc::new(d))));
        }
        let config = multipath::Config {
            io_timeout: Some(Duration::from_millis(400)),
            ..multipath::Config::default()
        };
        let m = Arc::new(multipath::MultipathDevice::new(paths, config).unwrap());
        let mut jobs = Vec::new();
        for w in 0..4u64 {
            let m = m.clone();
            jobs.push(tokio::spawn(async move {
                for gen in 1..=30u64 {
                    let lba = w * 256 + (gen * 8) % 256;
                    m.write(lba, Bytes::from(stamped(lba, 8, gen)), WriteFlags::NONE)
                        .await
                        .expect("write");
                    let r = m.read(lba, 8).await.expect("read");
                    for l in 0..8 {
                        check(lba + l, &r[l as usize * 512..][..512], gen);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(jobs.iter().all(|j| !j.is_finished()), "cut mid-I/O");
        ip(&["link", "set", "ini0", "down"]);
        for j in jobs {
            j.await.unwrap();
        }
    });
    rt.block_on(server.shutdown()).unwrap();
}
