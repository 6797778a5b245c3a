//! The CHAP value decoders on arbitrary strings: never panic, and whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = chap::decode_binary("CHAP_C", s) {
        assert!(!bytes.is_empty() && bytes.len() <= chap::MAX_CHALLENGE_LEN);
        let again = chap::decode_binary("CHAP_C", &chap::encode_hex(&bytes));
        assert_eq!(again.ok().as_deref(), Some(bytes.as_slice()));
    }
    if let Ok(n) = chap::decode_number("CHAP_I", s) {
        assert_eq!(chap::decode_number("CHAP_I", &n.to_string()).ok(), Some(n));
    }
});
