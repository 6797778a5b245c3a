//! Fuzzes the AoE target state machine with any bytes from the wire that
//! decode as a frame: every reply the target builds must itself decode and fit
//! the interface MTU, and only frames from a station (not a group address) to
//! the interface or broadcast are answered. (The codec alone is fuzzed by
//! aoe-proto's `frame` target.)
#![no_main]

use aoe_proto::frame::{Frame, Mac, AOE_HEADER_LEN, ATA_ARG_LEN, ETH_HEADER_LEN, FLAG_ERROR};
use libfuzzer_sys::fuzz_target;
use target_aoe::target::{InterfaceInfo, Outcome, Target, TargetSettings};

fuzz_target!(|data: &[u8]| {
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
            // A device that takes fewer sectors than a jumbo frame holds.
            limits: blockdev::Limits {
                max_transfer: if mtu == 9000 { 4 } else { 0 },
                ..blockdev::Limits::default()
            },
        };
        let mut t = Target::new(settings, vec![], b"cfg".to_vec());
        // At MTU 1500 the frame is for this interface (unless it is a group
        // address), so its content is exercised; at 9000 the interface has
        // a MAC of its own, which exercises dropping frames for others.
        let mac = if mtu == 1500 && !frame.dst.is_group() {
            frame.dst
        } else {
            Mac([2, 0, 0, 0, 0, 1])
        };
        let iface = InterfaceInfo { mac, mtu };
        // Twice: the first frame may change state (mask, reservation, config).
        for pass in 0..2 {
            let outcome = if pass == 0 {
                t.handle(&iface, &frame)
            } else {
                t.handle_owned(&iface, &owned_frame, Some(&owned))
            };
            match outcome {
                Outcome::Reply(r) => {
                    // Replies only to a station, for frames to us or broadcast.
                    assert!(!frame.src.is_group(), "reply to a group source");
                    assert!(frame.dst == iface.mac || frame.dst == Mac::BROADCAST);
                    let bytes = r.to_vec();
                    assert!(bytes.len() <= mtu + 14, "reply larger than the MTU");
                    let f = Frame::decode(&bytes).expect("replies decode");
                    assert!(f.header.is_response());
                    assert_eq!(f.header.tag, frame.header.tag);
                }
                Outcome::Persist(req) => {
                    assert!(!frame.src.is_group(), "a change from a group source");
                    // Answered with the state now in effect, or undone.
                    let r = req.ctx.persisted(&t.snapshot(req.part)).to_vec();
                    assert!(r.len() <= mtu + 14, "reply larger than the MTU");
                    let f = Frame::decode(&r).expect("replies decode");
                    assert_eq!(f.header.tag, frame.header.tag);
                    assert_eq!(f.header.flags & FLAG_ERROR, 0, "a state reply of the right kind");
                }
                Outcome::Io(req) => {
                    assert!(!frame.src.is_group(), "I/O for a group source");
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
