//! The initiator against opie's target in-process: CHAP one-way and
//! mutual, digests, discovery, writes through immediate, unsolicited and
//! solicited data, reads, pings, task management and logout.

use std::net::SocketAddr;
use std::sync::Arc;

use blockdev::{DeviceIdentity, MemDevice};
use chap::{AlgorithmList, Credential, ResponderConfig};
use initiator_iscsi::tmf::{self, Function};
use initiator_iscsi::{Auth, Command, Error, LoginConfig, LoginError, Session, TaskManagement};
use iscsi_proto::digest::Digest;
use target_iscsi::access::AuthMethod;

mod common;
use common::{INITIATOR, IQN};

async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let device = Arc::new(MemDevice::new(512, 8192, DeviceIdentity::from_name("i")));
    let access = common::chap_access(&common::host_and_disk_secrets(), AuthMethod::None);
    common::start(device, access).await
}

fn chap(secret: &str, target_secret: Option<&str>) -> LoginConfig {
    let mut c = LoginConfig::new(INITIATOR, Some(IQN));
    c.auth = Auth::Chap(ResponderConfig {
        algorithms: AlgorithmList::default(),
        credential: Credential::new("host", secret),
        mutual: target_secret.map(|s| Credential::new("disk", s)),
    });
    c
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let (l, b) = (lba.to_be_bytes(), blocks.to_be_bytes());
    vec![0x2a, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

#[tokio::test]
async fn a_session_with_mutual_chap_and_digests_does_it_all() {
    let (addr, _stop) = start().await;
    let mut cfg = chap("host-secret-16by", Some("disk-secret-16by"));
    cfg.limits.header_digests = vec![Digest::Crc32c];
    cfg.limits.data_digests = vec![Digest::Crc32c];
    // Everything solicited but the immediate data: R2Ts for the rest.
    cfg.limits.initial_r2t = true;
    cfg.limits.first_burst_length = 8192;
    let mut s = Session::connect(addr, cfg).await.unwrap();
    assert_eq!(s.info().authenticated_target.as_deref(), Some("disk"));
    assert_eq!(s.info().target_alias.as_deref(), Some("itest"));
    assert_eq!(s.connection().digests(), (Digest::Crc32c, Digest::Crc32c));
    assert!(s.params().initial_r2t && s.params().immediate_data);

    // The new nexus's unit attention, then GOOD.
    let tur = s.command(Command::new(0, &[0; 6])).await.unwrap();
    assert!(tur.is_unit_attention(), "{tur:?}");
    assert!(s.command(Command::new(0, &[0; 6])).await.unwrap().is_good());

    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let w = s
        .command(Command::write(0, &write10(64, 2048), data.clone()))
        .await
        .unwrap();
    assert!(w.is_good(), "{w:?}");
    let r = s
        .command(Command::read(0, &read10(64, 2048), 1 << 20))
        .await
        .unwrap();
    assert!(r.is_good() && r.data == data);
    // A short read: the rest is a residual.
    let r = s
        .command(Command::read(0, &read10(64, 1), 4096))
        .await
        .unwrap();
    assert_eq!((r.data.len(), r.residual), (512, 3584));

    assert_eq!(&s.ping(b"hello").await.unwrap()[..], b"hello");
    // A task that has ended is not there to abort; a LUN reset completes.
    let t = s.start(Command::new(0, &[0; 6])).await.unwrap();
    s.wait(t).await.unwrap();
    let a = s
        .task_management(TaskManagement::abort_task(0, t))
        .await
        .unwrap();
    assert_eq!(a.response, tmf::NO_SUCH_TASK);
    let reset = TaskManagement::of_lun(Function::LunReset, 0);
    assert_eq!(
        s.task_management(reset).await.unwrap().response,
        tmf::COMPLETE
    );
    let after = s.command(Command::new(0, &[0; 6])).await.unwrap();
    assert!(
        after.is_unit_attention(),
        "the reset's attention: {after:?}"
    );
    s.logout().await.unwrap();
}

#[tokio::test]
async fn one_way_chap_discovery_and_failures() {
    let (addr, _stop) = start().await;
    let s = Session::connect(addr, chap("host-secret-16by", None))
        .await
        .unwrap();
    assert_eq!(s.info().authenticated_target, None);
    s.logout().await.unwrap();

    let e = Session::connect(addr, chap("wrong-secret-16b", None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Login(LoginError::AuthenticationFailed)),
        "{e}"
    );
    let e = Session::connect(addr, chap("host-secret-16by", Some("not-the-disks-16")))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Login(LoginError::TargetNotAuthenticated(_))),
        "{e}"
    );
    let e = Session::connect(addr, LoginConfig::new(INITIATOR, Some(IQN)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Login(LoginError::AuthenticationFailed)),
        "CHAP required: {e}"
    );

    let mut d = Session::connect(addr, LoginConfig::new(INITIATOR, None))
        .await
        .unwrap();
    let targets = d.send_targets("All").await.unwrap();
    assert_eq!(targets.get("TargetName"), Some(IQN));
    assert_eq!(
        targets.get("TargetAddress"),
        Some(format!("{addr},1").as_str())
    );
    d.logout().await.unwrap();
}
