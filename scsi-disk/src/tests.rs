//! Command-level tests: every family through `ScsiTarget::submit` over a
//! real `MemDevice` or `FileDevice`, with sense data checked byte by byte.

use std::sync::Arc;
use std::time::Duration;

use blockdev::{BlockDevice, DeviceIdentity, MemDevice};
use bytes::Bytes;

use super::sense::{key, Asc};
use super::*;

mod provisioning;

const BS: usize = 512;
const BLOCKS: u64 = 8192;

struct Rig<D = MemDevice> {
    target: Arc<ScsiTarget>,
    dev: Arc<D>,
    a: Nexus,
    b: Nexus,
}

fn nexus(id: u64, isid_last: u8) -> Nexus {
    Nexus {
        id,
        initiator: InitiatorPort::iscsi(
            &format!("iqn.2026-01.test:init{id}"),
            [0x80, 0, 0, 0, 0, isid_last],
        ),
        relative_port: 1,
    }
}

fn rig_with(read_only: bool, state_path: Option<std::path::PathBuf>) -> Rig {
    let dev = MemDevice::new(512, BLOCKS, DeviceIdentity::from_name("disk0"));
    rig_on(dev, read_only, state_path)
}

fn rig_on(dev: MemDevice, read_only: bool, state_path: Option<std::path::PathBuf>) -> Rig {
    rig_over(Arc::new(dev), read_only, state_path)
}

/// One LU over any device; both nexuses logged in, their POWER ON unit
/// attentions still pending.
fn rig_over<D: BlockDevice + 'static>(
    dev: Arc<D>,
    read_only: bool,
    state_path: Option<std::path::PathBuf>,
) -> Rig<D> {
    let target = ScsiTarget::new(
        "iqn.2026-01.test:target",
        vec![(
            0,
            LuConfig {
                device: dev.clone(),
                read_only,
                state_path,
            },
        )],
        vec![],
    )
    .expect("target");
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    assert!(target.nexus_login(&a).is_empty());
    assert!(target.nexus_login(&b).is_empty());
    Rig { target, dev, a, b }
}

async fn rig() -> Rig {
    let r = rig_with(false, None);
    // Consume the POWER ON unit attentions.
    for n in [&r.a, &r.b] {
        let resp = r.target.submit(n, cmd(&[0, 0, 0, 0, 0, 0], &[])).await;
        assert_eq!(resp.status, status::CHECK_CONDITION);
    }
    r
}

fn futures_run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn cmd(cdb: &[u8], data: &[u8]) -> Command {
    let mut c = cdb.to_vec();
    if c.len() < 16 {
        c.resize(16, 0);
    }
    Command {
        lun: 0,
        cdb: Bytes::from(c),
        data_out: Bytes::copy_from_slice(data),
        expected_in: 1 << 20,
        tag: 0,
        attr: TaskAttr::Simple,
        data_in_from_file: false,
    }
}

impl<D> Rig<D> {
    async fn run(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Response {
        self.target.submit(n, cmd(cdb, data)).await
    }
    async fn good(&self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Bytes {
        let r = self.run(n, cdb, data).await;
        assert_eq!(
            r.status,
            status::GOOD,
            "cdb {cdb:02x?}: sense {:02x?}",
            r.sense
        );
        r.data_in
    }
    async fn check(&self, n: &Nexus, cdb: &[u8], data: &[u8], k: u8, asc: Asc) -> [u8; 18] {
        let r = self.run(n, cdb, data).await;
        assert_eq!(r.status, status::CHECK_CONDITION, "cdb {cdb:02x?}");
        let s: [u8; 18] = r
            .sense
            .as_deref()
            .expect("sense")
            .try_into()
            .expect("18 bytes");
        assert_eq!(s[0] & 0x7f, 0x70);
        assert_eq!(s[7], 10);
        assert_eq!(
            (s[2], s[12], s[13]),
            (k, asc.0, asc.1),
            "cdb {cdb:02x?} sense {s:02x?}"
        );
        s
    }
}

fn read10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn write10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = read10(lba, n);
    c[0] = 0x2A;
    c
}

fn cdb16(op: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

#[tokio::test]
async fn power_on_unit_attention_then_ready() {
    let r = rig_with(false, None);
    let s = r
        .check(
            &r.a,
            &[0x00; 6],
            &[],
            key::UNIT_ATTENTION,
            Asc::POWER_ON_RESET,
        )
        .await;
    assert_eq!(s[15], 0);
    r.good(&r.a, &[0x00; 6], &[]).await;
    // INQUIRY does not consume the other nexus' attention.
    r.good(&r.b, &[0x12, 0, 0, 0, 36, 0], &[]).await;
    let sense = r.good(&r.b, &[0x03, 0, 0, 0, 18, 0], &[]).await;
    assert_eq!((sense[2], sense[12], sense[13]), (6, 0x29, 0));
    let sense = r.good(&r.b, &[0x03, 0, 0, 0, 18, 0], &[]).await;
    assert_eq!((sense[2], sense[12]), (0, 0));
}

#[tokio::test]
async fn standard_inquiry() {
    let r = rig().await;
    let d = r.good(&r.a, &[0x12, 0, 0, 1, 4, 0], &[]).await;
    assert_eq!(d.len(), 74);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    assert_eq!(d[3], 0x12);
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(d[5] & 0x30, 0x10, "implicit ALUA");
    assert_eq!(d[7] & 0x02, 0x02, "CmdQue");
    assert_eq!(&d[8..12], b"OPIE");
    let short = r.good(&r.a, &[0x12, 0, 0, 0, 5, 0], &[]).await;
    assert_eq!(&short[..], &d[..5]);
    let s = r
        .check(
            &r.a,
            &[0x12, 0, 0x80, 0, 255, 0],
            &[],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        )
        .await;
    assert_eq!(&s[15..18], &[0xC0, 0, 2]);
    r.check(
        &r.a,
        &[0x12, 0x02, 0, 0, 255, 0],
        &[],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
}

#[tokio::test]
async fn vpd_pages() {
    let r = rig().await;
    let sup = r.good(&r.a, &[0x12, 1, 0, 0, 255, 0], &[]).await;
    assert_eq!(&sup[4..], &[0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]);
    for &p in &sup[4..] {
        let d = r.good(&r.a, &[0x12, 1, p, 0x10, 0, 0], &[]).await;
        assert_eq!(d[1], p);
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len() - 4);
    }
    let serial = r.good(&r.a, &[0x12, 1, 0x80, 0, 255, 0], &[]).await;
    assert_eq!(&serial[4..], r.dev.identity().serial.as_bytes());
    let id = r.good(&r.a, &[0x12, 1, 0x83, 0, 255, 0], &[]).await;
    assert_eq!(&id[4..8], &[0x01, 0x03, 0, 16]);
    assert_eq!(&id[8..24], &r.dev.identity().naa6());
    assert_eq!(&id[24..28], &[0x02, 0x01, 0, 40]);
    assert_eq!(&id[28..36], b"OPIE    ");
    assert_eq!(&id[36..68], r.dev.identity().to_string().as_bytes());
    assert_eq!(&id[68..76], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    assert_eq!(&id[76..84], &[0x51, 0x95, 0, 4, 0, 0, 0, 1]);
    // The initiator's reading of the two pages gives the whole identity back.
    assert_eq!(
        identification::identity_from_vpd(&serial, &id).as_ref(),
        Ok(r.dev.identity())
    );
    // Same on another nexus (another portal of the same port group).
    assert_eq!(r.good(&r.b, &[0x12, 1, 0x83, 0, 255, 0], &[]).await, id);
    let lbp = r.good(&r.a, &[0x12, 1, 0xB2, 0, 255, 0], &[]).await;
    assert_eq!(lbp[5], 0xE4, "LBPU LBPWS LBPWS10 LBPRZ");
    assert_eq!(lbp[6] & 7, 2, "thin");
    let bl = r.good(&r.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]).await;
    assert_eq!(bl.len(), 64);
    assert_eq!(bl[5], 255);
    assert!(u32::from_be_bytes([bl[8], bl[9], bl[10], bl[11]]) >= 8192);
    r.check(
        &r.a,
        &[0x12, 1, 0x99, 0, 255, 0],
        &[],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
}

#[tokio::test]
async fn read_write_round_trip_and_bounds() {
    let r = rig().await;
    let data: Vec<u8> = (0..4 * BS).map(|i| (i * 7 % 251) as u8).collect();
    r.good(&r.a, &write10(100, 4), &data).await;
    assert_eq!(&r.good(&r.a, &read10(100, 4), &[]).await[..], &data[..]);
    let mut buf = vec![0u8; 4 * BS];
    r.dev.read_bytes(100 * BS as u64, &mut buf);
    assert_eq!(buf, data);
    // 6, 12 and 16-byte forms.
    assert_eq!(
        &r.good(&r.a, &[0x08, 0, 0, 100, 1, 0], &[]).await[..],
        &data[..BS]
    );
    let mut c12 = [0u8; 12];
    c12[0] = 0xA8;
    c12[2..6].copy_from_slice(&101u32.to_be_bytes());
    c12[6..10].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(&r.good(&r.a, &c12, &[]).await[..], &data[BS..2 * BS]);
    assert_eq!(
        &r.good(&r.a, &cdb16(0x88, 102, 2), &[]).await[..],
        &data[2 * BS..]
    );
    // Zero blocks, beyond the end, protection field, short data-out.
    assert!(r.good(&r.a, &read10(0, 0), &[]).await.is_empty());
    r.check(
        &r.a,
        &read10(BLOCKS as u32, 1),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::LBA_OUT_OF_RANGE,
    )
    .await;
    r.check(
        &r.a,
        &cdb16(0x88, u64::MAX, 1),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::LBA_OUT_OF_RANGE,
    )
    .await;
    let mut prot = read10(0, 1);
    prot[1] = 0x20;
    let s = r
        .check(
            &r.a,
            &prot,
            &[],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        )
        .await;
    assert_eq!(&s[15..18], &[0xCF, 0, 1]);
    // Less data than the CDB asks for: the whole blocks sent are written.
    r.good(&r.a, &write10(300, 2), &data[..BS]).await;
    assert_eq!(&r.good(&r.a, &read10(300, 1), &[]).await[..], &data[..BS]);
    r.check(
        &r.a,
        &write10(0, 2),
        &data[..200],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CIU,
    )
    .await;
    // READ(6) with 0 blocks means 256 blocks.
    assert_eq!(
        r.good(&r.a, &[0x08, 0, 0, 0, 0, 0], &[]).await.len(),
        256 * BS
    );
}

#[tokio::test]
async fn medium_error_maps_to_sense() {
    let dev = Arc::new(blockdev::FaultyDevice::new(
        Arc::new(MemDevice::new(512, 64, DeviceIdentity::from_name("f"))),
        1,
    ));
    dev.fail_reads(5..6);
    let t = ScsiTarget::new(
        "iqn.t",
        vec![(
            0,
            LuConfig {
                device: dev.clone(),
                read_only: false,
                state_path: None,
            },
        )],
        vec![],
    )
    .expect("target");
    let n = nexus(1, 1);
    let r = t.submit(&n, cmd(&read10(4, 4), &[])).await;
    assert_eq!(r.status, status::CHECK_CONDITION);
    let s = r.sense.expect("sense");
    assert_eq!((s[0], s[2], s[12], s[13]), (0xF0, 3, 0x11, 0));
    assert_eq!(&s[3..7], &[0, 0, 0, 5]);
}

#[tokio::test]
async fn verify_and_write_verify() {
    let r = rig().await;
    let data = vec![0xA5u8; 2 * BS];
    r.good(&r.a, &write10(10, 2), &data).await;
    let mut v = read10(10, 2);
    v[0] = 0x2F;
    r.good(&r.a, &v, &[]).await; // medium verification
    v[1] = 0x02; // BYTCHK=01
    r.good(&r.a, &v, &data).await;
    let mut bad = data.clone();
    bad[BS + 3] = 0;
    let s = r
        .check(
            &r.a,
            &v,
            &bad,
            key::MISCOMPARE,
            Asc::MISCOMPARE_DURING_VERIFY,
        )
        .await;
    assert_eq!(s[0], 0xF0);
    assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), BS as u32 + 3);
    v[1] = 0x06; // BYTCHK=11: one block against all
    r.good(&r.a, &v, &data[..BS]).await;
    v[1] = 0x04; // reserved
    r.check(
        &r.a,
        &v,
        &data,
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
    let mut wv = write10(20, 1);
    wv[0] = 0x2E;
    wv[1] = 0x02;
    r.good(&r.a, &wv, &data[..BS]).await;
    assert_eq!(&r.good(&r.a, &read10(20, 1), &[]).await[..], &data[..BS]);
}

#[tokio::test]
async fn compare_and_write() {
    let r = rig().await;
    let old = vec![1u8; BS];
    r.good(&r.a, &write10(7, 1), &old).await;
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&7u64.to_be_bytes());
    caw[13] = 1;
    let mut buf = old.clone();
    buf.extend_from_slice(&[2u8; BS]);
    r.good(&r.a, &caw, &buf).await;
    assert_eq!(&r.good(&r.a, &read10(7, 1), &[]).await[..], &[2u8; BS][..]);
    // Now the compare data is stale: miscompare at byte 0, nothing written.
    let s = r
        .check(
            &r.b,
            &caw,
            &buf,
            key::MISCOMPARE,
            Asc::MISCOMPARE_DURING_VERIFY,
        )
        .await;
    assert_eq!(&s[3..7], &[0, 0, 0, 0]);
    assert_eq!(&r.good(&r.a, &read10(7, 1), &[]).await[..], &[2u8; BS][..]);
    r.check(
        &r.a,
        &caw,
        &buf[..BS],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CIU,
    )
    .await;
    caw[13] = 0;
    r.good(&r.a, &caw, &[]).await;
    // Zero blocks but data sent (an NLB that wrapped past 255): refused.
    r.check(
        &r.a,
        &caw,
        &buf,
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
}

#[tokio::test]
async fn compare_and_write_is_atomic_across_nexuses() {
    let r = Arc::new(rig().await);
    let zero = vec![0u8; BS];
    r.good(&r.a, &write10(3, 1), &zero).await;
    // Many CAWs race to move the block from 0 to their own value: exactly one wins.
    let mut tasks = Vec::new();
    for i in 1..=16u8 {
        let r = Arc::clone(&r);
        tasks.push(tokio::spawn(async move {
            let mut caw = [0u8; 16];
            caw[0] = 0x89;
            caw[2..10].copy_from_slice(&3u64.to_be_bytes());
            caw[13] = 1;
            let mut buf = vec![0u8; BS];
            buf.extend_from_slice(&[i; BS]);
            let n = if i % 2 == 0 { &r.a } else { &r.b };
            r.run(n, &caw, &buf).await.status
        }));
    }
    let mut wins = 0;
    for t in tasks {
        if t.await.expect("task") == status::GOOD {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn orwrite_and_write_atomic() {
    let r = rig().await;
    r.good(&r.a, &write10(0, 1), &[0x0Fu8; BS]).await;
    r.good(&r.a, &cdb16(0x8B, 0, 1), &[0xF0u8; BS]).await;
    assert_eq!(
        &r.good(&r.a, &read10(0, 1), &[]).await[..],
        &[0xFFu8; BS][..]
    );
    let mut wa = [0u8; 16];
    wa[0] = 0x9C;
    wa[12..14].copy_from_slice(&8u16.to_be_bytes());
    r.good(&r.a, &wa, &[3u8; 8 * BS]).await;
    assert_eq!(
        &r.good(&r.a, &read10(0, 8), &[]).await[..],
        &[3u8; 8 * BS][..]
    );
}

/// WRITE ATOMIC(16) of `n` blocks at `lba`.
fn write_atomic(lba: u64, n: u16) -> [u8; 16] {
    let mut wa = [0u8; 16];
    wa[0] = 0x9C;
    wa[2..10].copy_from_slice(&lba.to_be_bytes());
    wa[12..14].copy_from_slice(&n.to_be_bytes());
    wa
}

/// A big-endian u32 of the Block Limits page at page byte `at`.
fn bl32(bl: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bl[at..at + 4].try_into().unwrap())
}

/// A rig over a MemDevice that states `limits`, with its unit attentions consumed.
async fn rig_limited(limits: blockdev::Limits) -> Rig {
    let dev = MemDevice::new(512, BLOCKS, DeviceIdentity::from_name("disk0")).set_limits(limits);
    let r = rig_on(dev, false, None);
    for n in [&r.a, &r.b] {
        r.run(n, &[0, 0, 0, 0, 0, 0], &[]).await;
    }
    r
}

#[tokio::test]
async fn no_atomic_write_is_advertised_or_done_on_a_device_without_one() {
    let r = rig_limited(blockdev::Limits::default()).await;
    let bl = r.good(&r.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]).await;
    // MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT, ATOMIC TRANSFER
    // LENGTH GRANULARITY, and the boundary fields: all 0.
    assert_eq!(&bl[44..64], &[0u8; 20][..]);
    let s = r
        .check(
            &r.a,
            &write_atomic(0, 1),
            &[3u8; BS],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_OPCODE,
        )
        .await;
    assert_eq!(s[15], 0xC0, "field pointer to the opcode");
    assert_eq!(&r.good(&r.a, &read10(0, 1), &[]).await[..], &[0u8; BS][..]);
}

#[tokio::test]
async fn atomic_writes_are_advertised_and_taken_up_to_the_devices_unit() {
    let r = rig_limited(blockdev::Limits {
        atomic_write: 16,
        ..blockdev::Limits::default()
    })
    .await;
    let bl = r.good(&r.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]).await;
    assert_eq!(bl32(&bl, 44), 16, "MAXIMUM ATOMIC TRANSFER LENGTH");
    assert_eq!(
        &bl[48..64],
        &[0u8; 16][..],
        "no alignment, granularity or boundary"
    );
    r.good(&r.a, &write_atomic(1, 16), &[5u8; 16 * BS]).await;
    assert_eq!(
        &r.good(&r.a, &read10(1, 16), &[]).await[..],
        &[5u8; 16 * BS][..]
    );
    let s = r
        .check(
            &r.a,
            &write_atomic(0, 17),
            &[6u8; 17 * BS],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        )
        .await;
    assert_eq!(
        u16::from_be_bytes([s[16], s[17]]),
        12,
        "the transfer length"
    );
    assert_eq!(&r.good(&r.a, &read10(0, 1), &[]).await[..], &[0u8; BS][..]);
    // An atomic unit beyond the maximum transfer is cut to it.
    let r = rig_limited(blockdev::Limits {
        atomic_write: u32::MAX,
        max_transfer: 32,
        ..blockdev::Limits::default()
    })
    .await;
    let bl = r.good(&r.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]).await;
    assert_eq!((bl32(&bl, 8), bl32(&bl, 44)), (32, 32));
}

#[tokio::test]
async fn transfer_limits_follow_the_device() {
    let r = rig_limited(blockdev::Limits {
        max_transfer: 64,
        optimal_granularity: 8,
        ..blockdev::Limits::default()
    })
    .await;
    let bl = r.good(&r.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]).await;
    assert_eq!(
        u16::from_be_bytes([bl[6], bl[7]]),
        8,
        "OPTIMAL TRANSFER LENGTH GRANULARITY"
    );
    assert_eq!(bl32(&bl, 8), 64, "MAXIMUM TRANSFER LENGTH");
    assert_eq!(bl32(&bl, 12), 64, "OPTIMAL TRANSFER LENGTH");
    r.check(
        &r.a,
        &read10(0, 65),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
    // WRITE SAME, longer than a transfer, calls the device in pieces it takes.
    let mut ws = [0u8; 10];
    ws[0] = 0x41;
    ws[7..9].copy_from_slice(&200u16.to_be_bytes());
    r.good(&r.a, &ws, &[0xEEu8; BS]).await;
    assert_eq!(
        &r.good(&r.a, &read10(136, 64), &[]).await[..],
        &[0xEEu8; 64 * BS][..]
    );
    // Without device limits: what this emulation takes, as before.
    let r = rig_limited(blockdev::Limits::default()).await;
    let bl = r.good(&r.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]).await;
    assert_eq!(u16::from_be_bytes([bl[6], bl[7]]), 1);
    assert_eq!((bl32(&bl, 8), bl32(&bl, 12)), (65536, 2048));
}

#[tokio::test]
async fn write_same_unmap_and_lba_status() {
    let r = rig().await;
    r.good(&r.a, &write10(0, 64), &[0x55u8; 64 * BS]).await;
    let mut ws = [0u8; 10];
    ws[0] = 0x41;
    ws[7..9].copy_from_slice(&16u16.to_be_bytes());
    r.good(&r.a, &ws, &[0xEEu8; BS]).await;
    assert_eq!(
        &r.good(&r.a, &read10(0, 16), &[]).await[..],
        &[0xEEu8; 16 * BS][..]
    );
    r.check(
        &r.a,
        &ws,
        &[0xEEu8; 2 * BS],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CIU,
    )
    .await;
    ws[1] = 0x10; // ANCHOR
    r.check(
        &r.a,
        &ws,
        &[0u8; BS],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
    // UNMAP on a thin LU deallocates whatever the pattern; LBPRZ: zeroes.
    let mut wsu = [0u8; 10];
    wsu[0] = 0x41;
    wsu[1] = 0x08;
    wsu[2..6].copy_from_slice(&40u32.to_be_bytes());
    wsu[7..9].copy_from_slice(&8u16.to_be_bytes());
    r.good(&r.a, &wsu, &[0xFFu8; BS]).await;
    assert_eq!(
        &r.good(&r.a, &read10(40, 8), &[]).await[..],
        &[0u8; 8 * BS][..]
    );
    // WRITE SAME(16) with UNMAP and NDOB deallocates: GET LBA STATUS shows it.
    let mut ws16 = cdb16(0x93, 0, 128);
    ws16[1] = 0x09;
    r.good(&r.a, &ws16, &[]).await;
    assert_eq!(
        &r.good(&r.a, &read10(0, 16), &[]).await[..],
        &[0u8; 16 * BS][..]
    );
    let mut gls = cdb16(0x9E, 0, 24);
    gls[1] = 0x12;
    let st = r.good(&r.a, &gls, &[]).await;
    assert_eq!(st.len(), 24);
    assert_eq!(u32::from_be_bytes([st[0], st[1], st[2], st[3]]), 20);
    assert_eq!(&st[8..16], &0u64.to_be_bytes());
    assert_eq!(st[20], 1, "deallocated");
    // Inside a physical block (8 logical blocks) the first descriptor still
    // starts at the starting LBA (SBC-4 5.8.2.3), not at a physical boundary.
    let mut gls = cdb16(0x9E, 9, 24);
    gls[1] = 0x12;
    let st = r.good(&r.a, &gls, &[]).await;
    assert_eq!(&st[8..16], &9u64.to_be_bytes());
    assert_eq!(st[20], 1, "deallocated");
    r.check(
        &r.a,
        &{
            let mut c = cdb16(0x9E, BLOCKS, 24);
            c[1] = 0x12;
            c
        },
        &[],
        key::ILLEGAL_REQUEST,
        Asc::LBA_OUT_OF_RANGE,
    )
    .await;
    // UNMAP with one good and one bad descriptor changes nothing.
    r.good(&r.a, &write10(200, 1), &[9u8; BS]).await;
    let mut list = vec![0u8; 8];
    list[0..2].copy_from_slice(&38u16.to_be_bytes());
    list[2..4].copy_from_slice(&32u16.to_be_bytes());
    for (lba, n) in [(200u64, 1u32), (BLOCKS, 1)] {
        list.extend_from_slice(&lba.to_be_bytes());
        list.extend_from_slice(&n.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
    }
    let mut um = [0u8; 10];
    um[0] = 0x42;
    um[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
    r.check(
        &r.a,
        &um,
        &list,
        key::ILLEGAL_REQUEST,
        Asc::LBA_OUT_OF_RANGE,
    )
    .await;
    assert_eq!(
        &r.good(&r.a, &read10(200, 1), &[]).await[..],
        &[9u8; BS][..]
    );
    list.truncate(24);
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    um[7..9].copy_from_slice(&24u16.to_be_bytes());
    r.good(&r.a, &um, &list).await;
    assert_eq!(
        &r.good(&r.a, &read10(200, 1), &[]).await[..],
        &[0u8; BS][..]
    );
    um[7..9].copy_from_slice(&4u16.to_be_bytes());
    r.check(
        &r.a,
        &um,
        &list,
        key::ILLEGAL_REQUEST,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    )
    .await;
}

#[tokio::test]
async fn read_capacity() {
    let r = rig().await;
    let d = r.good(&r.a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(&d[..], &[0, 0, 0x1f, 0xff, 0, 0, 2, 0]);
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9E;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let d = r.good(&r.a, &rc16, &[]).await;
    assert_eq!(&d[..8], &(BLOCKS - 1).to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[13], 3, "8 logical blocks per physical block");
    assert_eq!(d[14] & 0xC0, 0xC0, "LBPME LBPRZ");
}

/// MODE SELECT(6) parameter list setting (or clearing) SWP in the control page.
async fn set_swp(r: &Rig, n: &Nexus, on: bool) {
    let cur = r.good(n, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).await;
    let mut sel = vec![0u8, 0, 0, 0];
    sel.extend_from_slice(&cur[4..]);
    if on {
        sel[4 + 4] |= 0x08;
    } else {
        sel[4 + 4] &= !0x08;
    }
    r.good(n, &[0x15, 0x10, 0, 0, sel.len() as u8, 0], &sel)
        .await;
}

#[tokio::test]
async fn mode_change_undone_before_seen_is_not_announced() {
    let r = rig().await;
    // Set and restore SWP from a: b never saw the protected state.
    set_swp(&r, &r.a, true).await;
    set_swp(&r, &r.a, false).await;
    r.good(&r.b, &[0; 6], &[]).await;
    // A change that stays is announced once, even if it changes twice more
    // (to a value b has not seen) before b looks.
    set_swp(&r, &r.a, true).await;
    r.check(
        &r.b,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::MODE_PARAMETERS_CHANGED,
    )
    .await;
    r.good(&r.b, &[0; 6], &[]).await;
    // b has now seen SWP set: clearing it is a change for b.
    set_swp(&r, &r.a, false).await;
    r.check(
        &r.b,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::MODE_PARAMETERS_CHANGED,
    )
    .await;
    // The nexus that changed the parameters is never told.
    r.good(&r.a, &[0; 6], &[]).await;
}

#[tokio::test]
async fn lun_reset_restores_default_mode_parameters() {
    let r = rig().await;
    set_swp(&r, &r.a, true).await;
    r.check(
        &r.a,
        &write10(0, 1),
        &[0u8; BS],
        key::DATA_PROTECT,
        Asc::WRITE_PROTECTED,
    )
    .await;
    assert_eq!(
        r.target
            .task_management(&r.a, 0, TmfFunction::LunReset)
            .await,
        TmfResponse::Complete
    );
    // The reset is reported, not a separate mode change.
    r.check(
        &r.b,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::BUS_DEVICE_RESET,
    )
    .await;
    r.good(&r.b, &[0; 6], &[]).await;
    r.check(
        &r.a,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::BUS_DEVICE_RESET,
    )
    .await;
    let hdr = r.good(&r.a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).await;
    assert_eq!(hdr[2] & 0x80, 0, "no longer write protected");
    assert_eq!(hdr[4 + 4] & 0x08, 0, "SWP back to its default");
    r.good(&r.a, &write10(0, 1), &[0u8; BS]).await;
}

#[tokio::test]
async fn mode_sense_select_and_swp() {
    let r = rig().await;
    let all = r.good(&r.a, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).await;
    assert_eq!(usize::from(all[0]) + 1, all.len());
    assert_eq!(all[3], 8, "block descriptor");
    assert_eq!(all[2] & 0x80, 0, "not write protected");
    let ch = r.good(&r.a, &[0x1A, 0x08, 0x4A, 0, 255, 0], &[]).await;
    assert_eq!(&ch[4..6], &[0x0A, 0x0A]);
    assert_eq!(ch[4 + 4], 0x08, "SWP changeable");
    // Set SWP through MODE SELECT(6) from nexus a.
    let cur = r.good(&r.a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).await;
    let mut sel = vec![0u8, 0, 0, 0];
    sel.extend_from_slice(&cur[4..]);
    sel[4 + 4] |= 0x08;
    r.good(&r.a, &[0x15, 0x10, 0, 0, sel.len() as u8, 0], &sel)
        .await;
    r.check(
        &r.a,
        &write10(0, 1),
        &[0u8; BS],
        key::DATA_PROTECT,
        Asc::WRITE_PROTECTED,
    )
    .await;
    r.check(
        &r.b,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::MODE_PARAMETERS_CHANGED,
    )
    .await;
    let hdr = r.good(&r.a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]).await;
    assert_eq!(hdr[2] & 0x80, 0x80, "WP");
    // Changing a non-changeable field is refused with a pointer to it.
    let mut bad = sel.clone();
    bad[4 + 3] ^= 0x10;
    let s = r
        .check(
            &r.a,
            &[0x15, 0x10, 0, 0, bad.len() as u8, 0],
            &bad,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_PARAM_LIST,
        )
        .await;
    assert_eq!(&s[15..18], &[0x80, 0, 7]);
    sel[4 + 4] &= !0x08;
    r.good(&r.a, &[0x15, 0x10, 0, 0, sel.len() as u8, 0], &sel)
        .await;
    r.good(&r.a, &write10(0, 1), &[0u8; BS]).await;
    r.check(
        &r.a,
        &[0x1A, 0, 0x3F, 0, 255, 0]
            .map(|b| b)
            .iter()
            .enumerate()
            .map(|(i, b)| if i == 2 { 0xC8 } else { *b })
            .collect::<Vec<_>>(),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    )
    .await;
    // MODE SENSE(10) with a long LBA block descriptor.
    let d = r
        .good(&r.a, &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0], &[])
        .await;
    assert_eq!(d[4] & 1, 1);
    assert_eq!(&d[6..8], &16u16.to_be_bytes());
    assert_eq!(&d[8..16], &BLOCKS.to_be_bytes());
}

#[tokio::test]
async fn read_only_lun() {
    let r = rig_with(true, None);
    r.run(&r.a, &[0; 6], &[]).await;
    for cdb in [
        write10(0, 1).to_vec(),
        cdb16(0x8A, 0, 1).to_vec(),
        cdb16(0x8B, 0, 1).to_vec(),
        {
            let mut c = write10(0, 1);
            c[0] = 0x41;
            c[1] = 0x08;
            c.to_vec()
        },
        vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        {
            let mut c = cdb16(0x89, 0, 0);
            c[13] = 1;
            c.to_vec()
        },
        vec![0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        r.check(
            &r.a,
            &cdb,
            &[0u8; 2 * BS],
            key::DATA_PROTECT,
            Asc::WRITE_PROTECTED,
        )
        .await;
    }
    let ms = r.good(&r.a, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).await;
    assert_eq!(ms[2] & 0x80, 0x80);
    r.good(&r.a, &read10(0, 1), &[]).await;
}

#[tokio::test]
async fn report_luns_and_absent_lun() {
    let r = rig().await;
    let d = r
        .good(&r.a, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[])
        .await;
    assert_eq!(&d[..], &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut c = cmd(&[0x12, 0, 0, 0, 36, 0], &[]);
    c.lun = 5;
    let inq = r.target.submit(&r.a, c).await;
    assert_eq!(inq.data_in[0], 0x7f);
    let mut c = cmd(&read10(0, 1), &[]);
    c.lun = 5;
    let resp = r.target.submit(&r.a, c).await;
    assert_eq!(
        resp.sense.as_deref().map(|s| (s[2], s[12])),
        Some((5, 0x25))
    );
    assert!(!r.target.lun_exists(5));
}

#[tokio::test]
async fn unknown_opcode_and_naca() {
    let r = rig().await;
    let s = r
        .check(
            &r.a,
            &[0xC7; 16],
            &[],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_OPCODE,
        )
        .await;
    assert_eq!(&s[15..18], &[0xC0, 0, 0]);
    let s = r
        .check(
            &r.a,
            &[0x00, 0, 0, 0, 0, 0x04],
            &[],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        )
        .await;
    assert_eq!(&s[15..18], &[0xCA, 0, 5]);
}

#[tokio::test]
async fn report_supported_opcodes() {
    let r = rig().await;
    let all = r
        .good(&r.a, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[])
        .await;
    let len = u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize;
    assert_eq!(len + 4, all.len());
    assert_eq!(len % 8, 0);
    for d in all[4..].chunks(8) {
        if d[5] & 1 == 0 {
            assert_eq!(&d[2..4], &[0, 0]);
        }
    }
    // One command, no service action.
    let one = r
        .good(&r.a, &[0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0], &[])
        .await;
    assert_eq!(&one[..5], &[0, 3, 0, 10, 0x28]);
    r.check(
        &r.a,
        &[0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
    let sa = r
        .good(
            &r.a,
            &[0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 1, 0, 0, 0],
            &[],
        )
        .await;
    assert_eq!(&sa[..6], &[0, 3, 0, 16, 0x9E, 0x1f]);
    // With timeouts descriptors.
    let t = r
        .good(&r.a, &[0xA3, 0x0C, 0x80, 0, 0, 0, 0, 0, 0x20, 0, 0, 0], &[])
        .await;
    assert_eq!((t.len() - 4) % 20, 0);
    assert_eq!(t[4 + 5] & 0x02, 0x02);
    assert_eq!(&t[12..14], &[0, 10]);
}

#[tokio::test]
async fn reserve6_release_and_resets() {
    let r = rig().await;
    r.good(&r.a, &[0x16, 0, 0, 0, 0, 0], &[]).await;
    r.good(&r.a, &[0x16, 0, 0, 0, 0, 0], &[]).await;
    let c = r.run(&r.b, &[0x16, 0, 0, 0, 0, 0], &[]).await;
    assert_eq!(c.status, status::RESERVATION_CONFLICT);
    assert_eq!(
        r.run(&r.b, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    r.good(&r.b, &[0x12, 0, 0, 0, 36, 0], &[]).await;
    r.good(&r.b, &[0x17, 0, 0, 0, 0, 0], &[]).await; // not the holder: no effect
    assert_eq!(
        r.run(&r.b, &read10(0, 1), &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    // LUN reset releases it and raises BUS DEVICE RESET on every nexus.
    assert_eq!(
        r.target
            .task_management(&r.a, 0, TmfFunction::LunReset)
            .await,
        TmfResponse::Complete
    );
    r.check(
        &r.b,
        &read10(0, 1),
        &[],
        key::UNIT_ATTENTION,
        Asc::BUS_DEVICE_RESET,
    )
    .await;
    r.check(
        &r.a,
        &read10(0, 1),
        &[],
        key::UNIT_ATTENTION,
        Asc::BUS_DEVICE_RESET,
    )
    .await;
    r.good(&r.b, &read10(0, 1), &[]).await;
    // Nexus loss releases it too.
    r.good(&r.a, &[0x16, 0, 0, 0, 0, 0], &[]).await;
    r.target.nexus_logout(&r.a);
    r.good(&r.b, &read10(0, 1), &[]).await;
    assert_eq!(
        r.target
            .task_management(&r.a, 9, TmfFunction::LunReset)
            .await,
        TmfResponse::LunDoesNotExist
    );
}

#[tokio::test]
async fn alua_states() {
    let r = rig().await;
    let rtpg = r
        .good(&r.a, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[])
        .await;
    assert_eq!(
        &rtpg[..],
        &[0, 0, 0, 12, 0x00, 0xCF, 0, 1, 0, 2, 0, 1, 0, 0, 0, 1]
    );
    r.target
        .set_port_group_state(1, AluaState::Standby)
        .expect("group");
    r.check(
        &r.a,
        &read10(0, 1),
        &[],
        key::UNIT_ATTENTION,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    )
    .await;
    r.check(
        &r.a,
        &read10(0, 1),
        &[],
        key::NOT_READY,
        Asc::NOT_READY_STANDBY,
    )
    .await;
    r.good(&r.a, &[0x12, 0, 0, 0, 36, 0], &[]).await;
    r.good(&r.a, &[0x1A, 0, 0x3F, 0, 255, 0], &[]).await;
    let ext = r
        .good(&r.a, &[0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[])
        .await;
    assert_eq!((ext[4], ext[8]), (0x10, 0x02));
    r.target
        .set_port_group_state(1, AluaState::Unavailable)
        .expect("group");
    r.check(
        &r.a,
        &[0x1A, 0, 0x3F, 0, 255, 0],
        &[],
        key::UNIT_ATTENTION,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    )
    .await;
    r.check(
        &r.a,
        &[0x1A, 0, 0x3F, 0, 255, 0],
        &[],
        key::NOT_READY,
        Asc::NOT_READY_UNAVAILABLE,
    )
    .await;
    r.target
        .set_port_group_state(1, AluaState::Transitioning)
        .expect("group");
    r.run(&r.a, &[0; 6], &[]).await;
    r.check(
        &r.a,
        &[0; 6],
        &[],
        key::NOT_READY,
        Asc::NOT_READY_TRANSITION,
    )
    .await;
    assert!(r
        .target
        .set_port_group_state(7, AluaState::Offline)
        .is_err());
}

#[tokio::test]
async fn synchronize_cache_prefetch_defects_start_stop() {
    let r = rig().await;
    r.good(&r.a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).await;
    r.good(&r.a, &cdb16(0x91, 0, 8), &[]).await;
    r.check(
        &r.a,
        &cdb16(0x91, BLOCKS, 1),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::LBA_OUT_OF_RANGE,
    )
    .await;
    r.good(&r.a, &[0x34, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &[])
        .await;
    r.check(
        &r.a,
        &cdb16(0x90, BLOCKS - 1, 2),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::LBA_OUT_OF_RANGE,
    )
    .await;
    assert_eq!(
        &r.good(&r.a, &[0x37, 0, 0x0c, 0, 0, 0, 0, 0, 4, 0], &[])
            .await[..],
        &[0, 0x0c, 0, 0]
    );
    assert_eq!(
        r.good(&r.a, &[0xB7, 0x0d, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &[])
            .await
            .len(),
        8
    );
    r.good(&r.a, &[0x1B, 0, 0, 0, 0x01, 0], &[]).await;
    r.good(&r.a, &[0x1B, 0, 0, 0, 0x00, 0], &[]).await;
    r.good(&r.a, &[0x1E, 0, 0, 0, 1, 0], &[]).await;
    r.check(
        &r.a,
        &[0x1B, 0, 0, 0, 0x02, 0],
        &[],
        key::ILLEGAL_REQUEST,
        Asc::MEDIUM_REMOVAL_PREVENTED,
    )
    .await;
    r.good(&r.a, &[0x1E, 0, 0, 0, 0, 0], &[]).await;
    r.good(&r.a, &[0x1B, 0, 0, 0, 0x02, 0], &[]).await;
}

#[tokio::test]
async fn sanitize_block_erase_and_overwrite() {
    let r = rig().await;
    r.good(&r.a, &write10(0, 4), &[0x61u8; 4 * BS]).await;
    r.good(&r.a, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[])
        .await;
    assert_eq!(
        &r.good(&r.a, &read10(0, 4), &[]).await[..],
        &[0u8; 4 * BS][..]
    );
    assert_eq!(r.dev.allocated_bytes(), 0);
    let mut p = vec![0x01, 0, 0, 4];
    p.extend_from_slice(b"opie");
    r.good(&r.a, &[0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0], &p)
        .await;
    assert_eq!(
        &r.good(&r.a, &read10(BLOCKS as u32 - 1, 1), &[]).await[..8],
        b"opieopie"
    );
    for (cdb, data) in [
        (vec![0x48, 0x01, 0, 0, 0, 0, 0, 0, 4, 0], p.clone()),
        (vec![0x48, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], p.clone()),
        (vec![0x48, 0x04, 0, 0, 0, 0, 0, 0, 0, 0], vec![]),
        (vec![0x48, 0x1F, 0, 0, 0, 0, 0, 0, 8, 0], p.clone()),
        (vec![0x48, 0x02, 0, 1, 0, 0, 0, 0, 0, 0], vec![]),
    ] {
        r.check(
            &r.a,
            &cdb,
            &data,
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        )
        .await;
    }
    let mut zero_count = p.clone();
    zero_count[0] = 0;
    r.check(
        &r.a,
        &[0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0],
        &zero_count,
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_PARAM_LIST,
    )
    .await;
}

#[tokio::test]
async fn sanitize_in_progress_blocks_medium_access() {
    let r = rig().await;
    // IMMED: the command returns at once, the operation continues.
    let mut p = vec![0x1F, 0, 2, 0];
    p.extend_from_slice(&[0xAB; 512]);
    r.good(&r.a, &[0x48, 0x81, 0, 0, 0, 0, 0, 0x02, 0x04, 0], &p)
        .await;
    let mut saw_progress = false;
    loop {
        let resp = r.run(&r.b, &read10(0, 1), &[]).await;
        match resp.status {
            status::GOOD => break,
            _ => {
                let s = resp.sense.expect("sense");
                if (s[2], s[12], s[13]) == (2, 0x04, 0x1B) {
                    saw_progress = true;
                    assert_eq!(s[15], 0x80);
                    r.good(&r.b, &[0x12, 0, 0, 0, 36, 0], &[]).await;
                    let rs = r.good(&r.b, &[0x03, 0, 0, 0, 18, 0], &[]).await;
                    if rs[2] == 2 {
                        assert_eq!(rs[12], 0x04);
                    }
                } else {
                    assert_eq!(s[2], 6, "only a unit attention may come first");
                }
                tokio::task::yield_now().await;
            }
        }
    }
    let _ = saw_progress;
    assert_eq!(&r.good(&r.a, &read10(5, 1), &[]).await[..], &[0xAB; BS][..]);
}

fn pr_out(sa: u8, rtype: u8) -> [u8; 10] {
    [0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0]
}

fn pr_params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

const PR_IN_KEYS: [u8; 10] = [0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
const PR_IN_RES: [u8; 10] = [0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0];

#[tokio::test]
async fn persistent_reservations_state_machine() {
    let r = rig().await;
    let (a, b) = (&r.a, &r.b);
    // Unregistered nexus may not reserve.
    assert_eq!(
        r.run(a, &pr_out(1, 1), &pr_params(0xA, 0, 0)).await.status,
        status::RESERVATION_CONFLICT
    );
    r.good(a, &pr_out(0, 0), &pr_params(0, 0xA, 0)).await;
    r.good(b, &pr_out(6, 0), &pr_params(0, 0xB, 0)).await;
    let keys = r.good(a, &PR_IN_KEYS, &[]).await;
    assert_eq!(&keys[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
    assert_eq!(&keys[8..16], &0xAu64.to_be_bytes());
    assert_eq!(&keys[16..24], &0xBu64.to_be_bytes());
    // Wrong key: conflict.
    assert_eq!(
        r.run(a, &pr_out(0, 0), &pr_params(0xB, 0xC, 0))
            .await
            .status,
        status::RESERVATION_CONFLICT
    );
    // a reserves WRITE EXCLUSIVE: b (registered, not holder) may read, not write.
    r.good(a, &pr_out(1, 1), &pr_params(0xA, 0, 0)).await;
    let res = r.good(b, &PR_IN_RES, &[]).await;
    assert_eq!(&res[4..8], &16u32.to_be_bytes());
    assert_eq!(&res[8..16], &0xAu64.to_be_bytes());
    assert_eq!(res[21], 1);
    r.good(b, &read10(0, 1), &[]).await;
    assert_eq!(
        r.run(b, &write10(0, 1), &[0u8; BS]).await.status,
        status::RESERVATION_CONFLICT
    );
    r.good(a, &write10(0, 1), &[0u8; BS]).await;
    // b may not reserve; releasing with the wrong type is an error.
    assert_eq!(
        r.run(b, &pr_out(1, 1), &pr_params(0xB, 0, 0)).await.status,
        status::RESERVATION_CONFLICT
    );
    r.check(
        a,
        &pr_out(2, 3),
        &pr_params(0xA, 0, 0),
        key::ILLEGAL_REQUEST,
        Asc::INVALID_RELEASE_OF_PR,
    )
    .await;
    // b preempts a: a's registration goes, b holds EXCLUSIVE ACCESS now.
    r.good(b, &pr_out(4, 3), &pr_params(0xB, 0xA, 0)).await;
    r.check(
        a,
        &read10(0, 1),
        &[],
        key::UNIT_ATTENTION,
        Asc::REGISTRATIONS_PREEMPTED,
    )
    .await;
    assert_eq!(
        r.run(a, &read10(0, 1), &[]).await.status,
        status::RESERVATION_CONFLICT
    );
    let full = r.good(b, &[0x5E, 3, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]).await;
    assert_eq!(&full[8..16], &0xBu64.to_be_bytes());
    assert_eq!((full[20], full[21]), (1, 3));
    assert_eq!(full[26..28], [0, 1]);
    // Generation counts REGISTER, REGISTER AND IGNORE and PREEMPT.
    assert_eq!(&full[..4], &3u32.to_be_bytes());
    // a registers again and b clears everything.
    r.good(a, &pr_out(0, 0), &pr_params(0, 0xA2, 0)).await;
    r.good(b, &pr_out(3, 0), &pr_params(0xB, 0, 0)).await;
    r.check(
        a,
        &read10(0, 1),
        &[],
        key::UNIT_ATTENTION,
        Asc::RESERVATIONS_PREEMPTED,
    )
    .await;
    assert_eq!(&r.good(a, &PR_IN_KEYS, &[]).await[4..8], &[0, 0, 0, 0]);
    // Bad parameter list length and bad type.
    r.check(
        a,
        &[0x5F, 0, 0, 0, 0, 0, 0, 0, 20, 0],
        &pr_params(0, 1, 0),
        key::ILLEGAL_REQUEST,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    )
    .await;
    r.good(a, &pr_out(0, 0), &pr_params(0, 0xA, 0)).await;
    r.check(
        a,
        &pr_out(1, 2),
        &pr_params(0xA, 0, 0),
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
    // RESERVE(6) conflicts while persistent reservations are in use.
    assert_eq!(
        r.run(a, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
        status::RESERVATION_CONFLICT
    );
}

#[tokio::test]
async fn all_registrants_reservation_survives_holder_unregistering() {
    let r = rig().await;
    let (a, b) = (&r.a, &r.b);
    r.good(a, &pr_out(0, 0), &pr_params(0, 1, 0)).await;
    r.good(b, &pr_out(0, 0), &pr_params(0, 2, 0)).await;
    r.good(a, &pr_out(1, 8), &pr_params(1, 0, 0)).await;
    let res = r.good(b, &PR_IN_RES, &[]).await;
    assert_eq!(
        &res[8..16],
        &[0; 8],
        "all-registrants reservations report key 0"
    );
    r.good(b, &write10(0, 1), &[0u8; BS]).await;
    r.good(a, &pr_out(0, 0), &pr_params(1, 0, 0)).await; // a unregisters
    assert_eq!(r.good(b, &PR_IN_RES, &[]).await[21], 8);
    r.good(b, &pr_out(0, 0), &pr_params(2, 0, 0)).await; // last registrant leaves
    assert_eq!(&r.good(b, &PR_IN_RES, &[]).await[4..8], &[0, 0, 0, 0]);
}

#[tokio::test]
async fn register_and_move_and_spec_i_pt() {
    let r = rig().await;
    let (a, b) = (&r.a, &r.b);
    // a registers itself and b in one go with SPEC_I_PT.
    let mut p = pr_params(0, 0x11, 0x08);
    let tid = {
        let name = b.initiator.to_string();
        assert!(name.ends_with(",i,0x800000000002"));
        let mut n = name.into_bytes();
        n.push(0);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        let mut t = vec![0x45, 0];
        t.extend_from_slice(&(n.len() as u16).to_be_bytes());
        t.extend_from_slice(&n);
        t
    };
    p.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let mut cdb = pr_out(0, 0);
    cdb[8] = p.len() as u8;
    r.good(a, &cdb, &p).await;
    assert_eq!(&r.good(b, &PR_IN_KEYS, &[]).await[4..8], &[0, 0, 0, 16]);
    // Move a's reservation to b.
    r.good(a, &pr_out(1, 1), &pr_params(0x11, 0, 0)).await;
    let mut mv = vec![0u8; 24];
    mv[0..8].copy_from_slice(&0x11u64.to_be_bytes());
    mv[8..16].copy_from_slice(&0x22u64.to_be_bytes());
    mv[17] = 0x02; // UNREG
    mv[18..20].copy_from_slice(&1u16.to_be_bytes());
    mv[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    mv.extend_from_slice(&tid);
    let mut cdb = pr_out(7, 1);
    cdb[8] = mv.len() as u8;
    r.good(a, &cdb, &mv).await;
    let res = r.good(b, &PR_IN_RES, &[]).await;
    assert_eq!(&res[8..16], &0x22u64.to_be_bytes());
    let keys = r.good(b, &PR_IN_KEYS, &[]).await;
    assert_eq!(&keys[4..8], &[0, 0, 0, 8], "a unregistered");
    assert_eq!(
        r.run(a, &write10(0, 1), &[0u8; BS]).await.status,
        status::RESERVATION_CONFLICT
    );
}

#[tokio::test]
async fn aptpl_state_is_persisted_and_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lun0.pr");
    {
        let r = rig_with(false, Some(path.clone()));
        r.run(&r.a, &[0; 6], &[]).await;
        r.good(&r.a, &pr_out(0, 0), &pr_params(0, 0x77, 0x01)).await;
        r.good(&r.a, &pr_out(1, 5), &pr_params(0x77, 0, 0)).await;
        let caps = r.good(&r.a, &[0x5E, 2, 0, 0, 0, 0, 0, 0, 8, 0], &[]).await;
        assert_eq!(caps[2] & 0x01, 0x01, "PTPL_C");
        assert_eq!(caps[3] & 0x01, 0x01, "PTPL_A");
    }
    assert!(path.exists());
    assert!(!dir.path().join("lun0.pr.tmp").exists());
    // A new target over the same state path ("restart") has the registration and reservation.
    let r = rig_with(false, Some(path.clone()));
    r.run(&r.b, &[0; 6], &[]).await;
    let keys = r.good(&r.b, &PR_IN_KEYS, &[]).await;
    assert_eq!(&keys[8..16], &0x77u64.to_be_bytes());
    let res = r.good(&r.b, &PR_IN_RES, &[]).await;
    assert_eq!(res[21], 5);
    assert_eq!(
        r.run(&r.b, &write10(0, 1), &[0u8; BS]).await.status,
        status::RESERVATION_CONFLICT
    );
    // Clearing APTPL forgets it on the next restart.
    r.run(&r.a, &[0; 6], &[]).await;
    r.good(&r.a, &pr_out(0, 0), &pr_params(0x77, 0x78, 0)).await;
    drop(r);
    let r = rig_with(false, Some(path.clone()));
    r.run(&r.b, &[0; 6], &[]).await;
    assert_eq!(&r.good(&r.b, &PR_IN_KEYS, &[]).await[4..8], &[0, 0, 0, 0]);
    // A corrupt state file is an error at start, not a silent reset.
    std::fs::write(&path, "junk").expect("write");
    let bad = ScsiTarget::new(
        "t",
        vec![(
            0,
            LuConfig {
                device: Arc::new(MemDevice::with_name("x", 1 << 20)),
                read_only: false,
                state_path: Some(path),
            },
        )],
        vec![],
    );
    assert!(matches!(bad, Err(ScsiError::State { .. })));
}

#[tokio::test]
async fn aptpl_without_state_path_is_refused() {
    let r = rig().await;
    r.check(
        &r.a,
        &pr_out(0, 0),
        &pr_params(0, 1, 0x01),
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_PARAM_LIST,
    )
    .await;
    assert_eq!(&r.good(&r.a, &PR_IN_KEYS, &[]).await[4..8], &[0, 0, 0, 0]);
}

fn xcopy_params(
    naa: &[u8; 16],
    list_id: u8,
    blocks: u16,
    src: u64,
    dst: u64,
    dst_idx: u16,
) -> Vec<u8> {
    let mut s = vec![0u8; 28];
    s[0] = 0x02;
    s[2..4].copy_from_slice(&0x18u16.to_be_bytes());
    s[6..8].copy_from_slice(&dst_idx.to_be_bytes());
    s[10..12].copy_from_slice(&blocks.to_be_bytes());
    s[12..20].copy_from_slice(&src.to_be_bytes());
    s[20..28].copy_from_slice(&dst.to_be_bytes());
    xcopy_list(naa, list_id, &s)
}

/// A type 0x0A segment descriptor: `bytes` bytes from byte `src_off` of
/// block `src` to byte `dst_off` of block `dst`, both on target 0.
fn b2b_offset_segment(bytes: u32, src: u64, src_off: u16, dst: u64, dst_off: u16) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = 0x0A;
    s[2..4].copy_from_slice(&0x1Cu16.to_be_bytes());
    s[8..12].copy_from_slice(&bytes.to_be_bytes());
    s[12..20].copy_from_slice(&src.to_be_bytes());
    s[20..28].copy_from_slice(&dst.to_be_bytes());
    s[28..30].copy_from_slice(&src_off.to_be_bytes());
    s[30..32].copy_from_slice(&dst_off.to_be_bytes());
    s
}

/// An EXTENDED COPY parameter list: one identification target descriptor
/// naming `naa` (512-byte blocks) and one segment descriptor.
fn xcopy_list(naa: &[u8; 16], list_id: u8, segment: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[8..12].copy_from_slice(&(segment.len() as u32).to_be_bytes());
    let mut t = vec![0u8; 32];
    t[0] = 0xE4;
    t[4] = 0x01;
    t[5] = 0x03;
    t[7] = 16;
    t[8..24].copy_from_slice(naa);
    t[29..32].copy_from_slice(&[0, 2, 0]);
    p.extend_from_slice(&t);
    p.extend_from_slice(segment);
    p
}

impl Rig {
    /// EXTENDED COPY of parameter list `p` from nexus a, which must fail
    /// with this sense key and code; the sense data.
    async fn xcopy_fails(&self, p: &[u8], k: u8, asc: Asc) -> [u8; 18] {
        self.check(&self.a, &xcopy_cdb(p.len()), p, k, asc).await
    }
}

fn xcopy_cdb(len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[tokio::test]
async fn extended_copy_and_results() {
    let r = rig().await;
    let naa = r.dev.identity().naa6();
    let data: Vec<u8> = (0..32 * BS).map(|i| (i % 253) as u8).collect();
    r.good(&r.a, &write10(0, 32), &data).await;
    let rcr = |sa: u8, id: u8| {
        let mut c = [0u8; 16];
        c[0] = 0x84;
        c[1] = sa;
        c[2] = id;
        c[10..14].copy_from_slice(&1024u32.to_be_bytes());
        c
    };
    r.check(
        &r.a,
        &rcr(0, 5),
        &[],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_FIELD_IN_CDB,
    )
    .await;
    let p = xcopy_params(&naa, 5, 32, 0, 1000, 0);
    r.good(&r.a, &xcopy_cdb(p.len()), &p).await;
    assert_eq!(&r.good(&r.a, &read10(1000, 32), &[]).await[..], &data[..]);
    let st = r.good(&r.a, &rcr(0, 5), &[]).await;
    assert_eq!(st[4], 1);
    assert_eq!(&st[5..7], &[0, 1]);
    assert_eq!(&st[8..12], &((32 * BS) as u32).to_be_bytes());
    let op = r.good(&r.a, &rcr(3, 0), &[]).await;
    assert_eq!(&op[8..10], &8u16.to_be_bytes());
    assert_eq!(&op[op.len() - 4..], &[3, 0x02, 0x0A, 0xE4]);
    // Truncated list, bad index, beyond the end, unknown designator, bad types.
    r.check(
        &r.a,
        &xcopy_cdb(p.len() - 1),
        &p,
        key::ILLEGAL_REQUEST,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    )
    .await;
    let bad = xcopy_params(&naa, 1, 8, 0, 0, 1);
    r.xcopy_fails(&bad, key::COPY_ABORTED, Asc::UNREACHABLE_COPY_TARGET)
        .await;
    let bad = xcopy_params(&naa, 1, 8, 0, BLOCKS - 1, 0);
    r.xcopy_fails(&bad, key::COPY_ABORTED, Asc::NONE).await;
    let bad = xcopy_params(&[0x61; 16], 1, 8, 0, 0, 0);
    r.xcopy_fails(&bad, key::COPY_ABORTED, Asc::UNREACHABLE_COPY_TARGET)
        .await;
    let mut bad = p.clone();
    bad[16] = 0xE0;
    r.xcopy_fails(
        &bad,
        key::ILLEGAL_REQUEST,
        Asc::UNSUPPORTED_TARGET_DESCRIPTOR,
    )
    .await;
    let mut bad = p.clone();
    bad[48] = 0x09;
    r.xcopy_fails(
        &bad,
        key::ILLEGAL_REQUEST,
        Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR,
    )
    .await;
    r.good(&r.a, &xcopy_cdb(0), &[]).await;
}

#[tokio::test]
async fn extended_copy_with_byte_offsets_keeps_the_bytes_around_the_range() {
    let r = rig().await;
    let naa = r.dev.identity().naa6();
    let src: Vec<u8> = (0..3200 * BS).map(|i| (i % 251) as u8).collect();
    r.good(&r.a, &write10(0, 3200), &src).await;
    let old = vec![0xEE; 3300 * BS];
    r.good(&r.a, &write10(4000, 3300), &old).await;
    // Within one block, across two blocks, and 1.5 MiB (several pieces)
    // starting and ending inside blocks.
    for (i, &(bytes, s_lba, s_off, d_lba, d_off)) in [
        (40u32, 1u64, 100u16, 4000u64, 300u16),
        (1000, 2, 7, 4010, 450),
        (1536 * 1024 + 37, 0, 5, 4100, 11),
    ]
    .iter()
    .enumerate()
    {
        let p = xcopy_list(
            &naa,
            1,
            &b2b_offset_segment(bytes, s_lba, s_off, d_lba, d_off),
        );
        r.good(&r.a, &xcopy_cdb(p.len()), &p).await;
        let from = s_lba as usize * BS + usize::from(s_off);
        let to = (d_lba - 4000) as usize * BS + usize::from(d_off);
        let mut want = old.clone();
        want[to..to + bytes as usize].copy_from_slice(&src[from..from + bytes as usize]);
        let first = d_lba as u32;
        let blocks = (to + bytes as usize).div_ceil(BS) - to / BS + 1;
        let got = r.good(&r.a, &read10(first, blocks as u16), &[]).await;
        let at = to / BS * BS;
        assert!(
            got[..] == want[at..at + blocks * BS],
            "segment {i}: the copied bytes, and only them, changed"
        );
    }
    // Nothing to copy is no error.
    let p = xcopy_list(&naa, 2, &b2b_offset_segment(0, 0, 0, 4000, 0));
    r.good(&r.a, &xcopy_cdb(p.len()), &p).await;
}

#[tokio::test]
async fn extended_copy_refuses_bad_byte_offsets_and_ranges() {
    let r = rig().await;
    let naa = r.dev.identity().naa6();
    let before = r.good(&r.a, &read10(100, 2), &[]).await;
    // The segment descriptor starts at byte 48 of the list.
    for (seg, field) in [
        (b2b_offset_segment(10, 0, 512, 100, 0), 48 + 28),
        (b2b_offset_segment(10, 0, 0, 100, 512), 48 + 30),
        (b2b_offset_segment(10, 0, 0xFFFF, 100, 0), 48 + 28),
        (b2b_offset_segment(65535 * 512 + 1, 0, 0, 100, 0), 48 + 8),
    ] {
        let p = xcopy_list(&naa, 1, &seg);
        let s = r
            .xcopy_fails(&p, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAM_LIST)
            .await;
        // SKSV set, pointing into the parameter list (C/D = 0), at the field.
        assert_eq!((s[15], u16::from_be_bytes([s[16], s[17]])), (0x80, field));
    }
    // A range that ends one byte into the block past the end, at either side.
    for seg in [
        b2b_offset_segment(512, BLOCKS - 1, 1, 100, 0),
        b2b_offset_segment(512, 100, 0, BLOCKS - 1, 1),
        b2b_offset_segment(2, BLOCKS - 1, 511, 0, 0),
        b2b_offset_segment(1, u64::MAX, 1, 0, 0),
    ] {
        let p = xcopy_list(&naa, 1, &seg);
        r.xcopy_fails(&p, key::COPY_ABORTED, Asc::NONE).await;
    }
    // A descriptor of the wrong length for its type.
    let mut p = xcopy_list(&naa, 1, &b2b_offset_segment(10, 0, 0, 100, 0));
    p[51] = 0x18;
    r.xcopy_fails(&p, key::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_PARAM_LIST)
        .await;
    assert_eq!(
        r.good(&r.a, &read10(100, 2), &[]).await,
        before,
        "nothing written"
    );
}

#[tokio::test]
async fn a_copy_into_another_unit_holds_its_removal_and_a_removed_unit_is_unreachable() {
    let r = rig().await;
    let inner = Arc::new(MemDevice::new(
        512,
        BLOCKS,
        DeviceIdentity::from_name("lu1"),
    ));
    let slow = Arc::new(blockdev::FaultyDevice::new(inner.clone(), 1));
    let naa1 = slow.identity().naa6();
    let cfg = LuConfig {
        device: slow.clone(),
        read_only: false,
        state_path: None,
    };
    r.target.add_lun(1, cfg).expect("lun 1");
    // The inventory change is reported first, after the addition and the removal.
    let inventory_changed = || {
        r.check(
            &r.a,
            &[0; 6],
            &[],
            key::UNIT_ATTENTION,
            Asc::REPORTED_LUNS_DATA_CHANGED,
        )
    };
    inventory_changed().await;
    r.good(&r.a, &write10(0, 8), &[0x77; 8 * BS]).await;
    // LUN 0 (target 0) to LUN 1 (target 1), 8 blocks at LBA 0.
    let to_lun1 = |list_id| {
        let mut p = xcopy_params(&r.dev.identity().naa6(), list_id, 8, 0, 0, 1);
        let mut t1 = p[16..48].to_vec();
        t1[8..24].copy_from_slice(&naa1);
        p.splice(48..48, t1);
        p[2..4].copy_from_slice(&64u16.to_be_bytes());
        p
    };
    let p = to_lun1(1);
    slow.hold_next_writes(1);
    let copy = tokio::spawn({
        let (t, a) = (r.target.clone(), r.a.clone());
        async move { t.submit(&a, cmd(&xcopy_cdb(p.len()), &p)).await }
    });
    while slow.held_writes() == 0 {
        tokio::task::yield_now().await;
    }
    let mut removal = tokio::spawn(r.target.remove_lun(1).expect("lun 1").wait());
    tokio::task::yield_now().await;
    assert!(
        !removal.is_finished(),
        "the removal waits for the copy's write"
    );
    slow.release_writes();
    assert_eq!(copy.await.expect("copy").status, status::GOOD);
    (&mut removal).await.expect("removal");
    assert_eq!(
        inner.read(0, 8).await.expect("read")[..],
        [0x77; 8 * BS][..]
    );
    // LUN 1 is gone: the same copy finds no copy target.
    inventory_changed().await;
    r.xcopy_fails(&to_lun1(2), key::COPY_ABORTED, Asc::UNREACHABLE_COPY_TARGET)
        .await;
}

#[tokio::test]
async fn ordered_task_waits_for_older_simple_tasks() {
    let r = rig().await;
    // An ORDERED write submitted after a SIMPLE write to the same block lands last,
    // whatever order the futures are polled in.
    let first = r.target.submit(&r.a, cmd(&write10(0, 1), &[1u8; BS]));
    let mut c = cmd(&write10(0, 1), &[2u8; BS]);
    c.attr = TaskAttr::Ordered;
    let second = r.target.submit(&r.a, c);
    let (s2, s1) = tokio::join!(second, first);
    assert_eq!((s1.status, s2.status), (status::GOOD, status::GOOD));
    assert_eq!(&r.good(&r.a, &read10(0, 1), &[]).await[..], &[2u8; BS][..]);
}

/// A target with one 4 MiB LUN on a sparse file in `dir`.
fn file_target(dir: &std::path::Path) -> Arc<ScsiTarget> {
    let opts = blockdev::file::FileOptions {
        create_size: Some(4 << 20),
        ..Default::default()
    };
    let dev = Arc::new(
        blockdev::FileDevice::open(dir.join("d.img"), &opts, DeviceIdentity::from_name("f"))
            .expect("file device"),
    );
    ScsiTarget::new(
        "iqn.t",
        vec![(
            0,
            LuConfig {
                device: dev,
                read_only: false,
                state_path: None,
            },
        )],
        vec![],
    )
    .expect("target")
}

#[tokio::test]
async fn file_device_round_trip_and_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = file_target(dir.path());
    let n = nexus(1, 1);
    // A file makes no write atomic: none is advertised, WRITE ATOMIC is refused.
    let bl = t.submit(&n, cmd(&[0x12, 1, 0xB0, 0, 255, 0], &[])).await;
    assert_eq!(bl32(&bl.data_in, 44), 0);
    let wa = t.submit(&n, cmd(&write_atomic(0, 8), &[1u8; 8 * BS])).await;
    assert_eq!(wa.status, status::CHECK_CONDITION);
    let sense = wa.sense.expect("sense");
    assert_eq!((sense[2], sense[12]), (key::ILLEGAL_REQUEST, 0x20));
    let mut w = write10(8, 8);
    w[1] = 0x08; // FUA
    assert_eq!(
        t.submit(&n, cmd(&w, &[7u8; 8 * BS])).await.status,
        status::GOOD
    );
    let r = t.submit(&n, cmd(&read10(8, 8), &[])).await;
    assert_eq!(&r.data_in[..], &[7u8; 8 * BS][..]);
    assert_eq!(
        t.submit(&n, cmd(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]))
            .await
            .status,
        status::GOOD
    );
    let mut um = vec![0u8; 24];
    um[0..2].copy_from_slice(&22u16.to_be_bytes());
    um[2..4].copy_from_slice(&16u16.to_be_bytes());
    um[8..16].copy_from_slice(&8u64.to_be_bytes());
    um[16..20].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(
        t.submit(&n, cmd(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &um))
            .await
            .status,
        status::GOOD
    );
    let r = t.submit(&n, cmd(&read10(8, 8), &[])).await;
    assert_eq!(&r.data_in[..], &[0u8; 8 * BS][..]);
    t.flush_all().await.expect("flush");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// No CDB and parameter list, however malformed, panics the target;
        /// every answer is a well-formed status.
        #[test]
        fn arbitrary_commands_never_panic(
            op in prop::sample::select(super::super::opcodes::OPS.iter().map(|o| o.op).collect::<Vec<_>>()),
            rest in prop::collection::vec(any::<u8>(), 0..20),
            data in prop::collection::vec(any::<u8>(), 0..600),
            small_lba in any::<bool>(),
        ) {
            let r = rig_with(false, None);
            let mut cdb = vec![op];
            cdb.extend_from_slice(&rest);
            if small_lba && cdb.len() >= 10 {
                // Keep some commands inside the medium so they reach the device.
                for b in &mut cdb[2..6] { *b = 0; }
            }
            // Sanitize overwrites of the whole medium are slow; keep them small.
            let dev_cmd = cmd(&cdb, &data);
            let resp = futures_run(async {
                assert!(r.target.nexus_login(&r.a).is_empty());
                r.target.submit(&r.a, dev_cmd.clone()).await;
                r.target.submit(&r.a, dev_cmd).await
            });
            prop_assert!(matches!(resp.status, 0x00 | 0x02 | 0x04 | 0x18));
            if resp.status == 0x02 {
                let s = resp.sense.expect("sense with CHECK CONDITION");
                prop_assert_eq!(s.len(), 18);
                prop_assert_eq!(s[0] & 0x7f, 0x70);
            }
        }

        /// Random PR OUT sequences from three nexuses keep the state consistent:
        /// a reservation is only ever held by a registered nexus.
        #[test]
        fn pr_sequences_keep_invariants(ops in prop::collection::vec((0u8..3, 0u8..8, 0u8..9, 0u64..4, 0u64..4, any::<bool>()), 1..40)) {
            let r = rig_with(false, None);
            let c = nexus(3, 3);
            assert!(r.target.nexus_login(&c).is_empty());
            futures_run(async {
                for (who, sa, rtype, key, sa_key, all_tg) in ops {
                    let n = [&r.a, &r.b, &c][usize::from(who)];
                    let mut cdb = pr_out(sa, rtype);
                    let p = pr_params(key, sa_key, if all_tg { 0x04 } else { 0 });
                    if sa == 7 { cdb[8] = 24; }
                    let _ = r.run(n, &cdb, &p).await;
                    let lu = r.target.lu(0).expect("lu");
                    let st = lu.state().pr.clone();
                    if let Some(res) = &st.res {
                        assert!(st.regs.iter().any(|g| g.nexus == res.holder) || matches!(res.rtype, 7 | 8));
                        assert!(!st.regs.is_empty());
                    }
                }
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_writes_never_interleave() {
    let r = Arc::new(rig().await);
    // 256-block writes (spanning several 64 KiB chunks of the memory device)
    // racing over the same range: afterwards the range holds one of them whole.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let r = Arc::clone(&r);
        tasks.push(tokio::spawn(async move {
            let n = if i % 2 == 0 { &r.a } else { &r.b };
            r.good(n, &write10(64, 256), &vec![i + 1; 256 * BS]).await;
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let d = r.good(&r.a, &read10(64, 256), &[]).await;
    assert!(d.iter().all(|&b| b == d[0]), "torn write");
}

#[tokio::test]
async fn write_same_to_the_end_and_task_management_attentions() {
    let r = rig().await;
    let mut ws = [0u8; 10];
    ws[0] = 0x41;
    ws[2..6].copy_from_slice(&(BLOCKS as u32 - 4).to_be_bytes());
    r.good(&r.a, &ws, &[0x3Cu8; BS]).await; // 0 blocks: up to the last block
    assert_eq!(
        &r.good(&r.a, &read10(BLOCKS as u32 - 4, 4), &[]).await[..],
        &[0x3Cu8; 4 * BS][..]
    );
    assert_eq!(
        r.target
            .task_management(&r.a, 0, TmfFunction::ClearTaskSet)
            .await,
        TmfResponse::Complete
    );
    r.check(
        &r.b,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
    )
    .await;
    r.good(&r.a, &[0; 6], &[]).await;
    r.target
        .task_management(&r.a, 0, TmfFunction::TargetWarmReset)
        .await;
    for n in [&r.a, &r.b] {
        r.check(n, &[0; 6], &[], key::UNIT_ATTENTION, Asc::POWER_ON_RESET)
            .await;
        r.good(n, &[0; 6], &[]).await;
    }
}

#[tokio::test]
async fn persistent_reservations_work_in_standby() {
    let r = rig().await;
    r.target
        .set_port_group_state(1, AluaState::Standby)
        .expect("group");
    r.run(&r.a, &[0; 6], &[]).await; // the state-change attention
    r.good(&r.a, &pr_out(0, 0), &pr_params(0, 5, 0)).await;
    r.good(&r.a, &PR_IN_KEYS, &[]).await;
    r.check(
        &r.a,
        &write10(0, 1),
        &[0u8; BS],
        key::NOT_READY,
        Asc::NOT_READY_STANDBY,
    )
    .await;
}

/// A rig whose device (over `dev`) takes `latency` for every operation; the
/// POWER ON attentions are consumed.
async fn slow_rig(latency: Duration) -> Rig {
    let (r, faulty) = faulty_rig().await;
    faulty.set_latency(latency, None);
    r
}

/// A rig over a fault-injecting device (over `dev`), returned too; the
/// POWER ON attentions are consumed.
async fn faulty_rig() -> (Rig, Arc<blockdev::FaultyDevice>) {
    let dev = Arc::new(MemDevice::new(512, BLOCKS, DeviceIdentity::from_name("s")));
    let faulty = Arc::new(blockdev::FaultyDevice::new(dev.clone(), 1));
    let target = ScsiTarget::new(
        "iqn.t",
        vec![(
            0,
            LuConfig {
                device: faulty.clone(),
                read_only: false,
                state_path: None,
            },
        )],
        vec![],
    )
    .expect("target");
    let (a, b) = (nexus(1, 1), nexus(2, 2));
    for n in [&a, &b] {
        assert!(target.nexus_login(n).is_empty());
        target.submit(n, cmd(&[0, 0, 0, 0, 0, 0], &[])).await;
    }
    (Rig { target, dev, a, b }, faulty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_keeps_its_range_lock_until_its_io_has_landed() {
    let (r, faulty) = faulty_rig().await;
    faulty.hold_next_writes(1);
    let mut first = r
        .target
        .submit(&r.a, cmd(&write10(0, 16), &[0xAA; 16 * BS]));
    // Run it until the device holds its write, then drop it, as a transport
    // drops a command whose answer is no longer wanted.
    while faulty.held_writes() == 0 {
        tokio::select! {
            _ = &mut first => panic!("the held write completed"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    drop(first);
    // An overlapping write waits for the dropped one's range lock, which is
    // released only once its I/O is over.
    let second = tokio::spawn(r.target.submit(&r.a, cmd(&write10(8, 8), &[0x5C; 8 * BS])));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let overtook = second.is_finished();
    faulty.release_writes();
    assert_eq!(second.await.expect("second write").status, status::GOOD);
    while faulty.held_writes() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kept = r.dev.read(8, 8).await.expect("read")[..] == [0x5C; 8 * BS][..];
    assert!(
        !overtook && kept,
        "an overlapping write ran while a dropped write was still in the device: {overtook}; \
         the newer data survived: {kept}"
    );
}

#[tokio::test]
async fn preempt_and_abort_fences_the_preempted_nexus_in_flight_writes() {
    let slow = Duration::from_millis(300);
    let r = slow_rig(slow).await;
    let (t, a, b) = (r.target.clone(), r.a.clone(), r.b.clone());
    r.good(&a, &pr_out(0, 0), &pr_params(0, 0xA, 0)).await;
    r.good(&b, &pr_out(0, 0), &pr_params(0, 0xB, 0)).await;
    // b holds WRITE EXCLUSIVE (registrants only) and has a slow write running.
    r.good(&b, &pr_out(1, 5), &pr_params(0xB, 0, 0)).await;
    let t2 = t.clone();
    let b2 = b.clone();
    let write = tokio::spawn(async move { t2.submit(&b2, cmd(&write10(7, 1), &[0x5A; BS])).await });
    tokio::time::sleep(slow / 4).await; // the write is in the device now
                                        // a preempts b and aborts its tasks: the command completes only once b's
                                        // write is out of the device, and that write ends TASK ABORTED.
    let started = std::time::Instant::now();
    r.good(&a, &pr_out(5, 5), &pr_params(0xA, 0xB, 0)).await;
    assert!(
        write.is_finished(),
        "PREEMPT AND ABORT returned while the preempted write was still running"
    );
    assert!(started.elapsed() >= slow / 2, "{:?}", started.elapsed());
    assert_eq!(write.await.expect("write").status, status::TASK_ABORTED);
    // b learns of it, and from now on is fenced: its writes conflict.
    r.check(
        &b,
        &[0; 6],
        &[],
        key::UNIT_ATTENTION,
        Asc::REGISTRATIONS_PREEMPTED,
    )
    .await;
    let next = r.run(&b, &write10(7, 1), &[0u8; BS]).await;
    assert_eq!(next.status, status::RESERVATION_CONFLICT);
    // The aborted write did reach the medium (a write in the device cannot be
    // recalled); nothing of b's arrives after the preemption.
    let blk = r.dev.read(7, 1).await.expect("read");
    assert_eq!(&blk[..], &[0x5A; BS][..]);
}

#[tokio::test]
async fn lun_reset_aborts_other_nexus_tasks_and_waits_for_them() {
    let slow = Duration::from_millis(300);
    let r = slow_rig(slow).await;
    let (t, a, b) = (r.target.clone(), r.a.clone(), r.b.clone());
    // b: one write running, one ORDERED task queued behind it.
    let mut tasks = Vec::new();
    for attr in [TaskAttr::Simple, TaskAttr::Ordered] {
        let (t2, b2) = (t.clone(), b.clone());
        let mut c = cmd(&write10(3, 1), &[0x33; BS]);
        c.attr = attr;
        let fut = t2.submit(&b2, c);
        tasks.push(tokio::spawn(fut));
    }
    tokio::time::sleep(slow / 4).await;
    let started = std::time::Instant::now();
    assert_eq!(
        t.task_management(&a, 0, TmfFunction::LunReset).await,
        TmfResponse::Complete
    );
    assert!(started.elapsed() >= slow / 2, "{:?}", started.elapsed());
    for task in tasks {
        assert!(
            task.is_finished(),
            "LUN RESET completed before b's tasks ended"
        );
        assert_eq!(task.await.expect("task").status, status::TASK_ABORTED);
    }
    // The ORDERED write never ran: one slow write's worth of time, not two.
    assert!(started.elapsed() < slow * 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_ordered_write_waits_until_a_file_backed_read_has_been_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = file_target(dir.path());
    let n = nexus(1, 1);
    t.submit(&n, cmd(&[0; 6], &[])).await; // POWER ON attention
                                           // 64 KiB of 0x11, read twice so it sits in the page cache.
    let blocks = 128u16;
    let len = usize::from(blocks) * BS;
    assert_eq!(
        t.submit(&n, cmd(&write10(0, blocks), &vec![0x11; len]))
            .await
            .status,
        status::GOOD
    );
    let mut read = cmd(&read10(0, blocks), &[]);
    read.data_in_from_file = true;
    let mut r = t.submit(&n, read.clone()).await;
    for _ in 0..3 {
        if r.data_in_file.is_some() {
            break;
        }
        r = t.submit(&n, read.clone()).await;
    }
    let Some(file) = r.data_in_file.take() else {
        eprintln!("no cachestat(2) on this kernel: the READ went the copying way");
        return;
    };
    // An ORDERED write of the same blocks is held back while the READ's data
    // still sits in the page cache waiting to be sent.
    let mut w = cmd(&write10(0, blocks), &vec![0x22; len]);
    w.attr = TaskAttr::Ordered;
    let mut write = tokio::spawn(t.submit(&n, w));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut write)
            .await
            .is_err(),
        "the ORDERED write ran before the READ's data was sent"
    );
    assert_eq!(
        &file.to_bytes().expect("read slice")[..],
        &vec![0x11; len][..]
    );
    drop((file, r));
    assert_eq!(write.await.expect("write").status, status::GOOD);
}
