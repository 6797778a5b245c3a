//! A fully provisioned logical unit (LBPME = 0): a RAID5 array over three
//! `MemDevice`s, as a head volume is (the array frees nothing on unmap, it
//! writes zeroes, so it reports `thin: false`). What only logical block
//! provisioning management offers is neither reported nor accepted: UNMAP,
//! SANITIZE BLOCK ERASE and the UNMAP bit of WRITE SAME; the thin rig of the
//! other tests keeps all three.

use std::sync::Arc;

use blockdev::{BlockDevice, DeviceIdentity, MemDevice, SharedDevice};
use raid::{Config, RaidArray, SystemClock};

use super::super::sense::{key, Asc};
use super::{cdb16, read10, rig, rig_over, write10, Rig, BS};

async fn raid_rig() -> Rig<RaidArray> {
    let members: Vec<SharedDevice> = (0..3)
        .map(|i| {
            Arc::new(MemDevice::new(
                BS as u32,
                4096,
                DeviceIdentity::from_name(&format!("m{i}")),
            )) as SharedDevice
        })
        .collect();
    let cfg = Config {
        chunk_blocks: 8,
        ..Config::default()
    };
    let array = RaidArray::create(members, vec![], cfg, Arc::new(SystemClock::new()))
        .await
        .expect("create the array");
    assert!(!array.features().thin, "the array is fully provisioned");
    let r = rig_over(Arc::new(array), false, None);
    for n in [&r.a, &r.b] {
        // Consume the POWER ON unit attentions.
        r.run(n, &[0; 6], &[]).await;
    }
    r
}

/// The (opcode, service action) pairs of REPORT SUPPORTED OPERATION CODES.
async fn reported<D>(r: &Rig<D>) -> Vec<(u8, u16)> {
    let all = r
        .good(&r.a, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[])
        .await;
    all[4..]
        .chunks(8)
        .map(|d| (d[0], u16::from_be_bytes([d[2], d[3]])))
        .collect()
}

/// SANITIZE BLOCK ERASE, IMMED clear, no parameter list.
const BLOCK_ERASE: [u8; 10] = [0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];

#[tokio::test]
async fn a_fully_provisioned_lu_has_no_block_erase_and_no_unmap() {
    let r = raid_rig().await;
    let data = vec![0xA5u8; 8 * BS];
    r.good(&r.a, &write10(0, 8), &data).await;

    let ops = reported(&r).await;
    assert!(
        !ops.contains(&(0x48, 0x02)),
        "BLOCK ERASE reported: {ops:02x?}"
    );
    assert!(!ops.iter().any(|o| o.0 == 0x42), "UNMAP reported");
    assert!(ops.contains(&(0x48, 0x01)), "OVERWRITE stays");
    assert!(ops.contains(&(0x48, 0x03)), "CRYPTOGRAPHIC ERASE stays");
    // Asked for by name: SUPPORT = 001b, not supported.
    let one = r
        .good(
            &r.a,
            &[0xA3, 0x0C, 0x03, 0x48, 0, 0x02, 0, 0, 0, 0x20, 0, 0],
            &[],
        )
        .await;
    assert_eq!(one[1] & 0x07, 0x01);

    // SBC-4 5.30.1: a service action not supported is INVALID FIELD IN CDB,
    // pointing at the SERVICE ACTION field; nothing is erased.
    let s = r
        .check(
            &r.a,
            &BLOCK_ERASE,
            &[],
            key::ILLEGAL_REQUEST,
            Asc::INVALID_FIELD_IN_CDB,
        )
        .await;
    assert_eq!(&s[15..18], &[0xCC, 0, 1]);
    r.check(
        &r.a,
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        &[0u8; 24],
        key::ILLEGAL_REQUEST,
        Asc::INVALID_OPCODE,
    )
    .await;
    assert_eq!(&r.good(&r.a, &read10(0, 8), &[]).await[..], &data[..]);

    // Block Device Characteristics: WABEREQ 00b (no BLOCK ERASE), WACEREQ 01b.
    let bdc = r.good(&r.a, &[0x12, 1, 0xB1, 0, 255, 0], &[]).await;
    assert_eq!(bdc[7] & 0xF0, 0x10);
    // READ CAPACITY(16): LBPME = 0; Logical Block Provisioning VPD: nothing.
    let mut rc16 = cdb16(0x9E, 0, 32);
    rc16[1] = 0x10;
    let rc = r.good(&r.a, &rc16, &[]).await;
    assert_eq!(rc[14] & 0xC0, 0);
    let lbp = r.good(&r.a, &[0x12, 1, 0xB2, 0, 255, 0], &[]).await;
    assert_eq!((lbp[5], lbp[6] & 7), (0, 0));
}

#[tokio::test]
async fn a_thin_lu_keeps_block_erase_and_unmap() {
    let r = rig().await;
    let ops = reported(&r).await;
    assert!(ops.contains(&(0x48, 0x02)));
    assert!(ops.iter().any(|o| o.0 == 0x42));
    let bdc = r.good(&r.a, &[0x12, 1, 0xB1, 0, 255, 0], &[]).await;
    assert_eq!(bdc[7] & 0xF0, 0x50);
    r.good(&r.a, &BLOCK_ERASE, &[]).await;
}

#[tokio::test]
async fn a_fully_provisioned_lu_refuses_write_same_with_unmap() {
    let r = raid_rig().await;
    let data = vec![0x5Au8; 4 * BS];
    r.good(&r.a, &write10(16, 4), &data).await;
    let zero = vec![0u8; BS];
    let ws10 = [0x41, 0x08, 0, 0, 0, 16, 0, 0, 4, 0];
    let mut ws16 = cdb16(0x93, 16, 4);
    ws16[1] = 0x08;
    for cdb in [&ws10[..], &ws16[..]] {
        let s = r
            .check(
                &r.a,
                cdb,
                &zero,
                key::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_CDB,
            )
            .await;
        // SKSV, C/D, BPV, bit 3 of byte 1: the UNMAP bit.
        assert_eq!(&s[15..18], &[0xCB, 0, 1], "cdb {cdb:02x?}");
        assert_eq!(&r.good(&r.a, &read10(16, 4), &[]).await[..], &data[..]);
    }
    // Without the UNMAP bit the same WRITE SAME writes the zeroes.
    let mut plain = ws10;
    plain[1] = 0;
    r.good(&r.a, &plain, &zero).await;
    assert!(r
        .good(&r.a, &read10(16, 4), &[])
        .await
        .iter()
        .all(|&b| b == 0));
    // The usage data no longer offers the bit.
    for (op, sa) in [(0x41u8, 0u8), (0x93, 0)] {
        let one = r
            .good(
                &r.a,
                &[0xA3, 0x0C, 0x01, op, 0, sa, 0, 0, 0, 0x20, 0, 0],
                &[],
            )
            .await;
        assert_eq!(one[4 + 1] & 0x08, 0, "opcode {op:02x}");
    }
}
