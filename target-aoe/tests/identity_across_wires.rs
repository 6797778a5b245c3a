//! The same disk read over both wires names the same identity: what an
//! initiator parses from SCSI INQUIRY (VPD 0x80 and 0x83) equals what it
//! parses from the AoE IDENTIFY DEVICE reply, and both equal the device's
//! own identity, so the head matches a RAID member whichever wire it came
//! over.

use std::sync::Arc;

use aoe_proto::ata::CMD_IDENTIFY;
use aoe_proto::client::{ata_arg, request};
use aoe_proto::frame::{AtaArg, Command, Frame, Mac, ATA_ARG_LEN};
use aoe_proto::identify::Identify;
use blockdev::{BlockDevice, DeviceIdentity, MemDevice};
use bytes::Bytes;
use scsi_disk::identification::identity_from_vpd;
use scsi_disk::{InitiatorPort, LuConfig, Nexus, ScsiTarget, TaskAttr};
use target_aoe::target::{InterfaceInfo, Outcome, Target, TargetSettings};

const ME: Mac = Mac([2, 0, 0, 0, 0, 1]);
const HOST: Mac = Mac([2, 0, 0, 0, 0, 9]);

/// INQUIRY of VPD page `code`.
async fn inquiry_vpd(target: &Arc<ScsiTarget>, nexus: &Nexus, code: u8) -> Bytes {
    let cmd = scsi_disk::Command {
        lun: 0,
        cdb: Bytes::copy_from_slice(&[0x12, 1, code, 0x01, 0, 0]),
        data_out: Bytes::new(),
        expected_in: 256,
        tag: u32::from(code),
        attr: TaskAttr::Simple,
        data_in_from_file: false,
    };
    let r = target.submit(nexus, cmd).await;
    assert_eq!(r.status, scsi_disk::status::GOOD, "{:02x?}", r.sense);
    r.data_in
}

/// The identity an initiator reads over iSCSI's SCSI: INQUIRY of VPD 0x80 and 0x83.
async fn over_scsi(dev: Arc<MemDevice>) -> DeviceIdentity {
    let luns = vec![(
        0,
        LuConfig {
            device: dev,
            read_only: false,
            state_path: None,
        },
    )];
    let target = ScsiTarget::new("iqn.2026-01.test:wires", luns, vec![]).unwrap();
    let nexus = Nexus {
        id: 1,
        initiator: InitiatorPort::iscsi("iqn.2026-01.test:head", [0x80, 0, 0, 0, 0, 1]),
        relative_port: 1,
    };
    assert!(target.nexus_login(&nexus).is_empty());
    let (p80, p83) = (
        inquiry_vpd(&target, &nexus, 0x80).await,
        inquiry_vpd(&target, &nexus, 0x83).await,
    );
    identity_from_vpd(&p80, &p83).expect("an opie identity")
}

/// The identity an initiator reads over AoE: IDENTIFY DEVICE.
fn over_aoe(dev: &MemDevice) -> DeviceIdentity {
    // As the AoE server builds its targets' settings from the device.
    let mut target = Target::new(
        TargetSettings {
            shelf: 1,
            slot: 2,
            buffer_count: 8,
            write_back: false,
            model: "opie AoE disk".into(),
            sectors: dev.geometry().num_blocks,
            identity: dev.identity().clone(),
            read_only: dev.read_only(),
            limits: dev.limits(),
        },
        vec![],
        vec![],
    );
    let arg = AtaArg {
        cmd_status: CMD_IDENTIFY,
        sector_count: 1,
        ..AtaArg::default()
    };
    let f = request(ME, HOST, 1, 2, Command::Ata, 7, &ata_arg(&arg), &[]);
    let iface = InterfaceInfo { mac: ME, mtu: 1500 };
    let Outcome::Reply(reply) = target.handle(&iface, &Frame::decode(&f).unwrap()) else {
        panic!("IDENTIFY is answered at once");
    };
    let reply = reply.to_vec();
    let frame = Frame::decode(&reply).unwrap();
    let page = &frame.payload[ATA_ARG_LEN..];
    Identify::parse(page)
        .unwrap()
        .identity
        .expect("an opie identity")
}

#[tokio::test]
async fn one_disk_has_one_identity_on_both_wires() {
    let mut custom = DeviceIdentity::from_name("member");
    custom.serial = "RAID-MEMBER-0042".into();
    for id in [
        DeviceIdentity::from_name("d0"),
        DeviceIdentity::random(),
        custom,
    ] {
        let dev = Arc::new(MemDevice::new(512, 4096, id.clone()));
        let scsi = over_scsi(dev.clone()).await;
        let aoe = over_aoe(&dev);
        assert_eq!(scsi, id);
        assert_eq!(aoe, id);
    }
}
