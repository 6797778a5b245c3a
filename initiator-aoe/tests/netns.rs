//! The initiator against opie's AoE server on veth pairs in a private
//! network namespace: two networks (a bridge each), the target and the
//! initiator on both. Needs root; without it the test says why and skips,
//! except under `CI=true`, where that is a failure.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command as Cmd;
use std::sync::Arc;
use std::time::Duration;

use blockdev::file::{FileDevice, FileOptions};
use blockdev::{BlockDevice, Bytes, DeviceIdentity, WriteFlags};
use initiator_aoe::{AoeDevice, Settings};
use target_aoe::{AoeConfig, AoeDisk, AoeDiskConfig, AoeServer};

const SHELF: u16 = 9;
const SLOT: u8 = 1;

fn ip(args: &[&str]) {
    let st = Cmd::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// The namespace, removed on drop; the creating thread lives in it.
struct Netns(String);

impl Netns {
    fn enter() -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot run under CI=true: AoE netns tests need root"
            );
            eprintln!("SKIP: AoE netns tests need root");
            return None;
        }
        let ns = format!("aoei-{}", std::process::id());
        let _ = Cmd::new("ip").args(["netns", "del", &ns]).status();
        ip(&["netns", "add", &ns]);
        let f = File::open(format!("/run/netns/{ns}")).expect("open netns");
        // SAFETY: f is an open netns descriptor; setns changes only this thread's namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        Some(Netns(ns))
    }

    /// Bridge `br` with veth ports `a` and `b` on it.
    fn network(&self, br: &str, ports: [&str; 2]) {
        ip(&["link", "add", br, "type", "bridge"]);
        ip(&["link", "set", br, "up"]);
        for p in ports {
            let peer = format!("{p}p");
            ip(&["link", "add", p, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "master", br, "up"]);
            ip(&["link", "set", p, "up"]);
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{p}/disable_ipv6"), "1");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Cmd::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn stamped_blocks_written_over_two_networks_read_back() {
    let Some(ns) = Netns::enter() else { return };
    ns.network("br0", ["tgt0", "ini0"]);
    ns.network("br1", ["tgt1", "ini1"]);
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDevice::open(
        dir.path().join("d.img"),
        &FileOptions {
            create_size: Some(4 << 20),
            ..FileOptions::default()
        },
        DeviceIdentity::from_name("d"),
    )
    .unwrap();
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
    let disk = AoeDisk {
        config: AoeDiskConfig {
            slot: SLOT,
            mac_mask: None,
            config_string: None,
        },
        device: Arc::new(dev),
        state_path: dir.path().join("d.config"),
    };
    let server = rt
        .block_on(async { AoeServer::start(&cfg, vec![disk]) })
        .unwrap();
    rt.block_on(async {
        let ifs = vec!["ini0".to_string(), "ini1".to_string()];
        let d = AoeDevice::open(
            &ifs,
            SHELF,
            SLOT,
            Settings::default(),
            Duration::from_secs(2),
        )
        .await
        .expect("open the AoE device");
        assert_eq!(d.geometry().num_blocks, 8192);
        assert_eq!(d.identity(), &DeviceIdentity::from_name("d"));
        // Writes of 1..=40 sectors, every sector stamped with its address
        // and a generation: 64 apart from each other all in flight at once,
        // then 64 overlapping ones one after another.
        let d = Arc::new(d);
        let stamp = |lba: u64, gen: u8| {
            let mut s = vec![gen; 512];
            s[..8].copy_from_slice(&lba.to_le_bytes());
            s
        };
        let mut want = vec![None::<u8>; 8192];
        let mut jobs = Vec::new();
        for k in 0..128u64 {
            let (lba, n, gen) = if k < 64 {
                (k * 120, 1 + (k % 40), 1)
            } else {
                ((k * 97) % 8000, 1 + (k % 40), k as u8)
            };
            let data: Vec<u8> = (lba..lba + n).flat_map(|l| stamp(l, gen)).collect();
            for l in lba..lba + n {
                want[l as usize] = Some(gen);
            }
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
        let all = d.read(0, 8192).await.expect("read");
        for (l, w) in want.iter().enumerate() {
            let s = &all[l * 512..(l + 1) * 512];
            let expect = match w {
                Some(g) => stamp(l as u64, *g),
                None => vec![0; 512],
            };
            assert!(s == &expect[..], "sector {l}");
        }
    });
    rt.block_on(server.shutdown()).unwrap();
}
