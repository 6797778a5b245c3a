//! PDU framing and header decoding: any byte stream, with or without
//! digests, decodes or fails cleanly; decoded headers re-encode to the same.
#![no_main]

use bytes::BytesMut;
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::Decoder;
use iscsi_proto::pdu::{Ahs, Bhs, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dec = Decoder {
        header_digest: if mode & 1 != 0 { Digest::Crc32c } else { Digest::None },
        data_digest: if mode & 2 != 0 { Digest::Crc32c } else { Digest::None },
        max_data: 8192,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(p)) = dec.decode(&mut buf) {
        let _ = Ahs::decode(&p.ahs);
        if let Ok(bhs) = p.bhs {
            let f = Framing::of(&p.raw);
            let again = Bhs::decode(&bhs.to_bytes(f)).expect("re-encoded header decodes");
            assert_eq!(again, bhs);
        }
    }
});
