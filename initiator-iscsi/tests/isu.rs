//! The initiator against opie's ISU target (target-iscsi in-process: the
//! server `opie isu` runs; the binary is out of reach of this crate's
//! tests): discovery and the target both behind mutual CHAP, each of the
//! four CHAP algorithms, digests on and off; SendTargets, then a login to
//! the address it returned, then verified I/O through `IscsiDevice` at a
//! queue depth above one.

use std::net::SocketAddr;
use std::sync::Arc;

use blockdev::{BlockDevice, DeviceIdentity, MemDevice};
use chap::{Algorithm, AlgorithmList, Credential, ResponderConfig};
use initiator_iscsi::{
    Auth, Error, IscsiDevice, LoginConfig, LoginError, PipelineConfig, PipelinedSession, Session,
};
use iscsi_proto::digest::Digest;
use target_iscsi::access::AuthMethod;

mod common;
use common::{verified_writers, INITIATOR, IQN};

const SECRET: &str = "host-secret-16by";
const TARGET_SECRET: &str = "disk-secret-16by";
const DISCOVERY_SECRET: &str = "disc-secret-16by";
const PORTAL_SECRET: &str = "portal-secret-16";

/// A target whose discovery and whose disk both require CHAP, mutual
/// credentials configured for both.
async fn start(disk: Arc<MemDevice>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let access = common::chap_access(
        &format!(
            "[discovery]\nmutual = {{ user = \"portal\", secret = \"{PORTAL_SECRET}\" }}\n\
             [[discovery.chap]]\nuser = \"finder\"\nsecret = \"{DISCOVERY_SECRET}\"\n\
             [target.\"{IQN}\"]\nmutual = {{ user = \"disk\", secret = \"{TARGET_SECRET}\" }}\n\
             [[target.\"{IQN}\".chap]]\nuser = \"host\"\nsecret = \"{SECRET}\"\n"
        ),
        AuthMethod::Chap,
    );
    common::start(disk, access).await
}

/// Mutual CHAP with `alg` only, and CRC32C digests both ways when `digests`.
fn login(target: Option<&str>, alg: Algorithm, digests: bool, mutual: (&str, &str)) -> LoginConfig {
    let mut c = LoginConfig::new(INITIATOR, target);
    let (user, secret) = if target.is_some() {
        ("host", SECRET)
    } else {
        ("finder", DISCOVERY_SECRET)
    };
    c.auth = Auth::Chap(ResponderConfig {
        algorithms: AlgorithmList::new([alg]).unwrap(),
        credential: Credential::new(user, secret),
        mutual: Some(Credential::new(mutual.0, mutual.1)),
    });
    let digest = if digests {
        Digest::Crc32c
    } else {
        Digest::None
    };
    c.limits.header_digests = vec![digest];
    c.limits.data_digests = vec![digest];
    c
}

/// SendTargets over a discovery session: the one target and its address.
async fn discover(portal: SocketAddr, alg: Algorithm, digests: bool) -> (String, SocketAddr) {
    let cfg = login(None, alg, digests, ("portal", PORTAL_SECRET));
    let mut d = Session::connect(portal, cfg).await.unwrap();
    assert_eq!(d.info().authenticated_target.as_deref(), Some("portal"));
    let found = d.send_targets("All").await.unwrap();
    d.logout().await.unwrap();
    let name = found.get("TargetName").expect("a target").to_owned();
    let address = found.get("TargetAddress").expect("its address");
    let (addr, _tpgt) = address.rsplit_once(',').expect("address,tpgt");
    (name, addr.parse().unwrap())
}

#[tokio::test]
async fn every_chap_algorithm_mutual_with_and_without_digests_carries_verified_io() {
    for alg in Algorithm::ALL {
        for digests in [false, true] {
            let disk = Arc::new(MemDevice::new(
                512,
                4096,
                DeviceIdentity::from_name("isu-disk"),
            ));
            let (portal, _stop) = start(disk.clone()).await;
            let (name, addr) = discover(portal, alg, digests).await;
            assert_eq!((name.as_str(), addr), (IQN, portal), "{alg:?}");

            let cfg = login(Some(&name), alg, digests, ("disk", TARGET_SECRET));
            let session = PipelinedSession::connect(addr, cfg, PipelineConfig::default())
                .await
                .unwrap_or_else(|e| panic!("{alg:?} digests {digests}: {e}"));
            assert_eq!(session.info().authenticated_target.as_deref(), Some("disk"));
            let expect = if digests {
                Digest::Crc32c
            } else {
                Digest::None
            };
            let params = &session.info().params;
            assert_eq!((params.header_digest, params.data_digest), (expect, expect));
            let dev = Arc::new(IscsiDevice::open(session, 0).await.unwrap());
            assert_eq!(dev.identity(), disk.identity());
            // 6 callers at once, 24 blocks each, 3 generations.
            for w in verified_writers(dev.clone(), 6, 32, 24, 3) {
                w.await.unwrap();
            }

            // A target that is not who it claims is refused, by this side.
            let wrong = login(Some(IQN), alg, digests, ("disk", "not-the-disks-16"));
            let e = Session::connect(addr, wrong).await.unwrap_err();
            assert!(
                matches!(e, Error::Login(LoginError::TargetNotAuthenticated(_))),
                "{alg:?}: {e}"
            );
        }
    }
}
