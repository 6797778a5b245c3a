//! The head-and-ISU network of the multipath fault tests: two network
//! namespaces of the test's own joined by two veth links, opie's iSCSI
//! target in the ISU namespace with a portal on each link, and the head
//! (the test's tokio runtime) in the other. Links go down and up with
//! `ip link set`, as a pulled cable or a dead switch port would. Needs root;
//! without it the tests say why and skip, except under `CI=true`, where that
//! is a failure.

#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Command as Cmd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blockdev::{DeviceIdentity, MemDevice, SharedDevice};
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};

/// The target name the head logs in to.
pub const IQN: &str = "iqn.2026-01.org.opie:mpnet";
/// The head's initiator name.
pub const INITIATOR: &str = "iqn.2026-01.org.opie:mpnet-head";

fn ip(args: &[&str]) {
    let out = Cmd::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Enters the namespace `name` on the calling thread (and the threads it
/// starts from now on).
fn enter(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: f is an open netns descriptor; setns changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The two namespaces and their links, removed on drop.
pub struct Net {
    /// The head's namespace.
    pub head: String,
    /// The ISU's namespace.
    pub isu: String,
    /// The head's end of each link (`ip link set` on it cuts the link).
    pub links: [String; 2],
    /// The ISU's address on each link.
    pub isu_addrs: [std::net::IpAddr; 2],
}

impl Net {
    /// Builds the network, or None (after saying why) without root.
    pub fn new() -> Option<Net> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot run under CI=true: the multipath netns tests need root"
            );
            eprintln!("SKIP: the multipath netns tests need root");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let net = Net {
            head: format!("mpnet-h-{tag}"),
            isu: format!("mpnet-i-{tag}"),
            links: ["mph0".into(), "mph1".into()],
            isu_addrs: ["10.71.1.2".parse().unwrap(), "10.71.2.2".parse().unwrap()],
        };
        for ns in [&net.head, &net.isu] {
            let _ = Cmd::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (i, link) in net.links.iter().enumerate() {
            let peer = format!("mpi{i}");
            ip(&[
                "-n", &net.head, "link", "add", link, "type", "veth", "peer", "name", &peer,
                "netns", &net.isu,
            ]);
            let head_addr = format!("10.71.{}.1/24", i + 1);
            let isu_addr = format!("{}/24", net.isu_addrs[i]);
            ip(&["-n", &net.head, "addr", "add", &head_addr, "dev", link]);
            ip(&["-n", &net.isu, "addr", "add", &isu_addr, "dev", &peer]);
            ip(&["-n", &net.head, "link", "set", link, "up"]);
            ip(&["-n", &net.isu, "link", "set", &peer, "up"]);
        }
        Some(net)
    }

    /// Takes link `i` down (`up` false) or up again.
    pub fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.head, "link", "set", &self.links[i], state]);
    }

    /// Enters the head's namespace on the calling thread: sockets it (and
    /// the runtime threads it starts) opens from now on are the head's.
    pub fn enter_head(&self) {
        enter(&self.head);
    }

    /// Starts opie's iSCSI target in the ISU namespace on its own thread,
    /// serving `disk` as LUN 0 of [`IQN`] on a free port of each link's
    /// address; returns the two portals. It serves until the process ends.
    pub fn start_target(&self, disk: SharedDevice) -> [SocketAddr; 2] {
        let (isu, addrs) = (self.isu.clone(), self.isu_addrs);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&isu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let lu = LuConfig {
                    device: disk,
                    read_only: false,
                    state_path: None,
                };
                let scsi = ScsiTarget::new(IQN, vec![(0, lu)], vec![]).unwrap();
                let cfg = ServerConfig {
                    portals: (0..2)
                        .map(|i| Portal {
                            listen: SocketAddr::new(addrs[i], 0),
                            advertise: None,
                            tpgt: 1,
                        })
                        .collect(),
                    targets: vec![TargetConfig {
                        iqn: IQN.into(),
                        alias: None,
                        scsi,
                        portals: None,
                    }],
                    ..ServerConfig::default()
                };
                let server = Server::bind(cfg).await.unwrap();
                let portals = server.local_addrs();
                tx.send([portals[0], portals[1]]).unwrap();
                let _ = server.run(std::future::pending::<()>()).await;
            });
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the target started")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.head, &self.isu] {
            let _ = Cmd::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A disk of `blocks` 512-byte blocks in memory, as the ISU's.
pub fn disk(blocks: u64) -> SharedDevice {
    Arc::new(MemDevice::new(
        512,
        blocks,
        DeviceIdentity::from_name("mpnet"),
    ))
}

pub mod flap;
pub mod head;
pub mod proxy;
#[path = "../../initiator-iscsi/tests/common/mod.rs"]
mod stamps;
pub mod workload;

/// Blocks `lba..lba + blocks` of `generation`, stamped (512-byte blocks).
pub fn stamps(lba: u64, blocks: u64, generation: u64) -> blockdev::Bytes {
    stamps::stamps(lba, blocks, generation, 512).into()
}

/// Checks blocks read from `lba` on against `generation`.
pub fn verify(data: &[u8], lba: u64, generation: u64) -> Result<(), String> {
    stamps::verify(data, lba, generation, 512)
}
