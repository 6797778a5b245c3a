//! Fuzzes the AoE frame parser and the target state machine behind it: any
//! bytes from the wire must decode or fail cleanly, and every reply the target
//! builds must itself decode and fit the interface MTU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target_aoe::frame::{
    AtaArg, ConfigArg, Frame, Mac, MaskArg, ReserveArg, AOE_HEADER_LEN, ATA_ARG_LEN, ETH_HEADER_LEN,
};
use target_aoe::target::{InterfaceInfo, Outcome, Target, TargetSettings};

fuzz_target!(|data: &[u8]| {
    let _ = AtaArg::decode(data);
    let _ = ConfigArg::decode(data);
    let _ = MaskArg::decode(data);
    let _ = ReserveArg::decode(data);
    let Ok(frame) = Frame::decode(data) else { return };
    // The server hands the target frames it owns, so write data is shared.
    let owned = blockdev::Bytes::copy_from_slice(data);
    let Ok(owned_frame) = Frame::decode(&owned) else {
        panic!("the same bytes decode differently")
    };
    for (mtu, shelf) in [(1500usize, frame.header.shelf), (9000, 1)] {
        let settings = TargetSettings {
            shelf,
            slot: frame.header.slot,
            buffer_count: 16,
            write_back: mtu == 9000,
            model: "fuzz".into(),
            sectors: 4096,
            identity: blockdev::DeviceIdentity::from_name("fuzz"),
            read_only: false,
        };
        let mut t = Target::new(settings, vec![], b"cfg".to_vec());
        let iface = InterfaceInfo { mac: Mac([2, 0, 0, 0, 0, 1]), mtu };
        // Twice: the first frame may change state (mask, reservation, config).
        for pass in 0..2 {
            let outcome = if pass == 0 {
                t.handle(&iface, &frame)
            } else {
                t.handle_owned(&iface, &owned_frame, Some(&owned))
            };
            match outcome {
                Outcome::Reply(r) => {
                    let bytes = r.to_vec();
                    assert!(bytes.len() <= mtu + 14, "reply larger than the MTU");
                    let f = Frame::decode(&bytes).expect("replies decode");
                    assert!(f.header.is_response());
                    assert_eq!(f.header.tag, frame.header.tag);
                }
                Outcome::Io(req) => {
                    assert_eq!(req.ctx.tag(), frame.header.tag);
                    if let target_aoe::target::IoOp::Write { data: d, .. } = &req.op {
                        let at = ETH_HEADER_LEN + AOE_HEADER_LEN + ATA_ARG_LEN;
                        assert_eq!(&d[..], &data[at..at + d.len()], "the frame's own data");
                    }
                }
                Outcome::Ignore(_) => {}
            }
        }
    }
});
