//! Fuzzes the AoE codec alone: any bytes from the wire decode or fail
//! cleanly, and whatever decodes encodes back to what was read (the Ethernet
//! and AoE headers to the same bytes, each command argument to bytes that
//! decode to the same argument); an IDENTIFY DEVICE page parses or fails
//! cleanly. The target behind the codec is fuzzed by target-aoe's `target`
//! fuzz target.
#![no_main]

use aoe_proto::frame::{
    encode_headers, AtaArg, ConfigArg, Frame, MaskArg, ReserveArg, AOE_HEADER_LEN, ETH_HEADER_LEN,
};
use aoe_proto::identify::Identify;
use libfuzzer_sys::fuzz_target;

/// Decodes `b` with `decode`; if it decodes, encoding the result must give
/// bytes that decode to the same value.
fn round_trip<T: PartialEq + std::fmt::Debug>(
    b: &[u8],
    decode: impl Fn(&[u8]) -> Option<T>,
    encode: impl Fn(&T, &mut Vec<u8>),
) {
    let Some(v) = decode(b) else { return };
    let mut out = Vec::new();
    encode(&v, &mut out);
    assert_eq!(decode(&out).as_ref(), Some(&v), "re-encoded {out:02x?}");
}

fuzz_target!(|data: &[u8]| {
    for b in [data, data.get(ETH_HEADER_LEN + AOE_HEADER_LEN..).unwrap_or(&[])] {
        round_trip(b, |b| AtaArg::decode(b).ok().map(|(a, _)| a), AtaArg::encode);
        round_trip(b, |b| ConfigArg::decode(b).ok(), ConfigArg::encode);
        round_trip(b, |b| MaskArg::decode(b).ok(), MaskArg::encode);
        round_trip(b, |b| ReserveArg::decode(b).ok(), ReserveArg::encode);
        let _ = Identify::parse(b);
    }
    let Ok(frame) = Frame::decode(data) else { return };
    let mut head = Vec::new();
    encode_headers(&mut head, frame.dst, frame.src, &frame.header);
    assert_eq!(&head[..], &data[..ETH_HEADER_LEN + AOE_HEADER_LEN]);
    assert_eq!(frame.payload, &data[ETH_HEADER_LEN + AOE_HEADER_LEN..]);
});
