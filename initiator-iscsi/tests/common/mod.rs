//! opie's iSCSI target in-process, for the initiator's tests.

#![allow(dead_code)]

pub mod wire;

use std::net::SocketAddr;

use blockdev::SharedDevice;
use chap::SecretsStore;
use scsi_disk::{LuConfig, ScsiTarget};
use target_iscsi::access::{Access, AuthMethod, TargetAccess};
use target_iscsi::server::{Portal, Server, ServerConfig, TargetConfig};

/// The target name the tests log in to.
pub const IQN: &str = "iqn.2026-01.org.opie:initiator-test";
/// The initiator name the tests log in as.
pub const INITIATOR: &str = "iqn.2026-01.org.opie:host";

/// A target serving `device` as LUN 0 of [`IQN`] on a loopback port, with
/// `access`; it serves until the sender is dropped.
pub async fn start(
    device: SharedDevice,
    access: Access,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let lu = LuConfig {
        device,
        read_only: false,
        state_path: None,
    };
    start_lu(lu, access).await
}

/// A target serving `lu` as LUN 0 of [`IQN`], as [`start`] does.
pub async fn start_lu(
    lu: LuConfig,
    access: Access,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let scsi = ScsiTarget::new(IQN, vec![(0, lu)], vec![]).unwrap();
    let cfg = ServerConfig {
        portals: vec![Portal {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            tpgt: 1,
        }],
        targets: vec![TargetConfig {
            iqn: IQN.into(),
            alias: Some("itest".into()),
            scsi,
            portals: None,
        }],
        access,
        ..ServerConfig::default()
    };
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// Secrets for [`IQN`]: the initiator `host` (secret `host-secret-16by`),
/// the target `disk` for mutual CHAP (`disk-secret-16by`).
pub fn host_and_disk_secrets() -> String {
    format!(
        "[target.\"{IQN}\"]\nmutual = {{ user = \"disk\", secret = \"disk-secret-16by\" }}\n\
         [[target.\"{IQN}\".chap]]\nuser = \"host\"\nsecret = \"host-secret-16by\"\n"
    )
}

/// CHAP required for [`IQN`] (and for discovery when `discovery` says
/// so), with the credentials of `secrets` (a secrets-store TOML file).
pub fn chap_access(secrets: &str, discovery: AuthMethod) -> Access {
    let mut access = Access {
        secrets: SecretsStore::from_toml_str(secrets).unwrap(),
        discovery,
        ..Access::default()
    };
    access.targets.insert(
        IQN.into(),
        TargetAccess {
            auth: AuthMethod::Chap,
            ..TargetAccess::default()
        },
    );
    access
}

/// One block of verified I/O: its address, a generation, bytes derived
/// from both, and a CRC32C of all that in its last four bytes.
pub fn stamp(lba: u64, generation: u64, block_size: usize) -> Vec<u8> {
    let mut b = vec![0u8; block_size];
    b[..8].copy_from_slice(&lba.to_be_bytes());
    b[8..16].copy_from_slice(&generation.to_be_bytes());
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation;
    for byte in &mut b[16..block_size - 4] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    let crc = crc32c::crc32c(&b[..block_size - 4]);
    b[block_size - 4..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Blocks `lba..` of generation `generation`, stamped.
pub fn stamps(lba: u64, blocks: u64, generation: u64, block_size: usize) -> Vec<u8> {
    (lba..lba + blocks)
        .flat_map(|l| stamp(l, generation, block_size))
        .collect()
}

/// Checks what was read from `lba` on: each block whole (its CRC), at its
/// address and of `generation`; the first fault found.
pub fn verify(data: &[u8], lba: u64, generation: u64, block_size: usize) -> Result<(), String> {
    for (i, b) in data.chunks(block_size).enumerate() {
        let at = lba + i as u64;
        let crc = crc32c::crc32c(&b[..block_size - 4]);
        if b[block_size - 4..] != crc.to_be_bytes() {
            return Err(format!("block {at}: bad CRC"));
        }
        let (l, g) = (&b[..8], &b[8..16]);
        if l != at.to_be_bytes() {
            return Err(format!("block {at}: holds block {:?}", l));
        }
        if g != generation.to_be_bytes() {
            return Err(format!("block {at}: generation {:?}, not {generation}", g));
        }
    }
    Ok(())
}

/// `writers` callers at once, each on its own `blocks` blocks (`stride`
/// apart from the next's): `generations` times each writes its blocks
/// stamped (FUA every other time), reads them back and checks them.
pub fn verified_writers(
    dev: SharedDevice,
    writers: u64,
    stride: u64,
    blocks: u64,
    generations: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|i| {
            let dev = dev.clone();
            tokio::spawn(async move {
                let lba = i * stride;
                for generation in 1..=generations {
                    let flags = blockdev::WriteFlags {
                        fua: generation % 2 == 0,
                    };
                    let data = stamps(lba, blocks, generation, 512);
                    dev.write(lba, data.into(), flags).await.unwrap();
                    let back = dev.read(lba, blocks as u32).await.unwrap();
                    verify(&back, lba, generation, 512).unwrap();
                }
            })
        })
        .collect()
}
