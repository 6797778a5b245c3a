//! The pipelined session against opie's target in-process: many callers
//! at once, every block verified; the target's pings and ours.

use std::sync::Arc;
use std::time::Duration;

use blockdev::{DeviceIdentity, MemDevice};
use initiator_iscsi::{Command, KeepaliveConfig, LoginConfig, PipelineConfig, PipelinedSession};
use target_iscsi::access::Access;

mod common;
use common::{stamps, verify, INITIATOR, IQN};

fn rw16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

async fn session(cfg: PipelineConfig) -> (PipelinedSession, tokio::sync::oneshot::Sender<()>) {
    let device = Arc::new(MemDevice::new(512, 1 << 16, DeviceIdentity::from_name("p")));
    let (addr, stop) = common::start(device, Access::default()).await;
    let mut login = LoginConfig::new(INITIATOR, Some(IQN));
    login.limits.max_recv_data_segment_length = 16384;
    let s = PipelinedSession::connect(addr, login, cfg).await.unwrap();
    // The new nexus's unit attention.
    let _ = s.command(Command::new(0, &[0; 6])).await.unwrap();
    (s, stop)
}

#[tokio::test]
async fn concurrent_callers_share_one_session_and_every_block_reads_back() {
    let (s, _stop) = session(PipelineConfig {
        queue_depth: 8,
        ..PipelineConfig::default()
    })
    .await;
    let s = Arc::new(s);
    // 64 callers at once, more than the queue depth: each writes its own
    // 24 blocks (over several PDUs: immediate data, then R2T), reads them
    // back and checks every block.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let lba = i * 100;
            for generation in 1..=3 {
                let data = stamps(lba, 24, generation, 512);
                let w = s
                    .command(Command::write(0, &rw16(0x8a, lba, 24), data))
                    .await
                    .unwrap();
                assert!(w.is_good(), "{w:?}");
                let r = s
                    .command(Command::read(0, &rw16(0x88, lba, 24), 24 * 512))
                    .await
                    .unwrap();
                assert!(r.is_good() && r.residual == 0, "{r:?}");
                verify(&r.data, lba, generation, 512).unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::into_inner(s).unwrap().logout().await.unwrap();
}

#[tokio::test]
async fn an_idle_session_pings_and_stays_up() {
    // Pings every 20 ms, each answered: an idle second is 50 of them.
    let (s, _stop) = session(PipelineConfig {
        queue_depth: 4,
        keepalive: KeepaliveConfig {
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        },
        ..PipelineConfig::default()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!s.is_closed());
    let r = s
        .command(Command::read(0, &rw16(0x88, 0, 1), 512))
        .await
        .unwrap();
    assert!(r.is_good());
    s.logout().await.unwrap();
}
