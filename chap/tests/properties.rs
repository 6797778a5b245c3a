//! Property tests: arbitrary input never panics; honest peers always agree;
//! any tampering fails; value encodings round-trip.

mod common;

use base64::Engine;
use chap::{
    decode_binary, decode_number, encode_hex, Algorithm, AlgorithmList, Authenticator,
    AuthenticatorConfig, Credential, CredentialSet, ErrorKind, Responder, ResponderConfig, Step,
};
use common::{expect_continue, expect_done, pairs, Pairs};
use proptest::prelude::*;

fn alg() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "CHAP_A",
            "CHAP_I",
            "CHAP_C",
            "CHAP_N",
            "CHAP_R",
            "AuthMethod"
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "(0x|0X)[0-9a-fA-F]{0,80}",
        "(0b|0B)[A-Za-z0-9+/=]{0,80}",
        "[0-9,]{0,12}",
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| encode_hex(&b)),
        // Around the length limit of binary values.
        "0x[0-9a-f]{2040,2060}",
    ]
}

fn hostile_pairs() -> impl Strategy<Value = Pairs> {
    prop::collection::vec((key(), value()), 0..8)
}

fn secret() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..80)
}

fn creds(user: &str, secret: &[u8], mutual: Option<&[u8]>) -> CredentialSet {
    let set = CredentialSet::new().with_user(Credential::new(user, chap::Secret::new(secret)));
    match mutual {
        Some(m) => set.with_mutual(Credential::new("target", chap::Secret::new(m))),
        None => set,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary keys at any step of the authenticator: an error or a step,
    /// never a panic; protocol vs authentication kinds only.
    #[test]
    fn authenticator_never_panics(steps in prop::collection::vec(hostile_pairs(), 1..4),
                                  mutual in any::<bool>()) {
        let mut t = Authenticator::new(
            AuthenticatorConfig::default(),
            creds("u", b"secret-secret", mutual.then_some(&b"mutual-secret"[..])),
        );
        for s in &steps {
            if let Err(e) = t.step(s) {
                prop_assert_ne!(e.kind(), ErrorKind::Local);
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Hostile keys after a real first step (so step 2 parsing is reached).
    #[test]
    fn authenticator_step_two_never_panics(first in "[5-8](,[0-9]{1,3}){0,3}", second in hostile_pairs()) {
        let mut t = Authenticator::new(AuthenticatorConfig::default(), creds("u", b"s3cr3t-s3cr3t", Some(b"other")));
        if t.step([("CHAP_A", first.as_str())]).is_ok() {
            let _ = t.step(&second);
        }
    }

    /// Arbitrary keys fed to the responder, in either mode, never panic.
    #[test]
    fn responder_never_panics(steps in prop::collection::vec(hostile_pairs(), 1..4),
                              mutual in any::<bool>()) {
        let mut r = Responder::new(ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: Credential::new("u", "secret-secret"),
            mutual: mutual.then(|| Credential::new("t", "mutual-secret")),
        }).expect("config");
        r.start().expect("start");
        for s in &steps {
            let _ = r.step(s);
        }
    }

    /// Honest peers agree for any secrets, names, algorithms and challenge
    /// lengths, one-way and mutual.
    #[test]
    fn honest_peers_always_agree(
        alg in alg(),
        user in "[a-z0-9.:-]{1,64}",
        s in secret(),
        m in prop::option::of(secret()),
        len in prop::option::of(0usize..300),
    ) {
        prop_assume!(m.as_ref() != Some(&s));
        let mut t = Authenticator::new(
            AuthenticatorConfig { allowed: AlgorithmList::new([alg]).expect("l"), challenge_len: len },
            creds(&user, &s, m.as_deref()),
        );
        let mut i = Responder::new(ResponderConfig {
            algorithms: AlgorithmList::default(),
            credential: Credential::new(user.clone(), chap::Secret::new(s.clone())),
            mutual: m.as_ref().map(|m| Credential::new("target", chap::Secret::new(m.clone()))),
        }).expect("config");
        let c = expect_continue(t.step(i.start().expect("start")));
        if m.is_some() {
            let a = expect_continue(i.step(&c));
            let (back, peer) = expect_done(t.step(&a));
            prop_assert_eq!(peer.as_deref(), Some(user.as_str()));
            let (_, target) = expect_done(i.step(&back));
            prop_assert_eq!(target.as_deref(), Some("target"));
        } else {
            let (a, _) = expect_done(i.step(&c));
            let (_, peer) = expect_done(t.step(&a));
            prop_assert_eq!(peer.as_deref(), Some(user.as_str()));
        }
    }

    /// Flipping any bit of the response, or using any other secret, fails
    /// authentication.
    #[test]
    fn tampering_fails(alg in alg(), s in secret(), other in secret(), bit in 0usize..256) {
        let mut t = Authenticator::new(AuthenticatorConfig::default(), creds("u", &s, None));
        let mut i = Responder::new(ResponderConfig {
            algorithms: AlgorithmList::new([alg]).expect("l"),
            credential: Credential::new("u", chap::Secret::new(s.clone())),
            mutual: None,
        }).expect("config");
        let c = expect_continue(t.step(i.start().expect("start")));
        let (a, _) = expect_done(i.step(&c));
        let mut r = decode_binary("CHAP_R", a.get("CHAP_R").expect("R")).expect("R");
        let bit = bit % (r.len() * 8);
        r[bit / 8] ^= 1 << (bit % 8);
        let mut tampered = pairs(&a);
        common::set(&mut tampered, "CHAP_R", &encode_hex(&r));
        let err = t.step(&tampered).expect_err("tampered");
        prop_assert_eq!(err.kind(), ErrorKind::Authentication);

        prop_assume!(other != s);
        let mut t = Authenticator::new(AuthenticatorConfig::default(), creds("u", &s, None));
        let mut i = Responder::new(ResponderConfig {
            algorithms: AlgorithmList::new([alg]).expect("l"),
            credential: Credential::new("u", chap::Secret::new(other)),
            mutual: None,
        }).expect("config");
        let c = expect_continue(t.step(i.start().expect("start")));
        let (a, _) = expect_done(i.step(&c));
        prop_assert!(matches!(t.step(&a), Err(chap::ChapError::BadResponse(_))));
    }

    /// Binary values round-trip through hex (either case, odd digit counts)
    /// and base64 (with or without padding).
    #[test]
    fn binary_encodings_round_trip(bytes in prop::collection::vec(any::<u8>(), 1..=1024)) {
        prop_assert_eq!(decode_binary("CHAP_C", &encode_hex(&bytes)).expect("hex"), bytes.clone());
        prop_assert_eq!(decode_binary("CHAP_C", &format!("0X{}", hex::encode_upper(&bytes))).expect("HEX"), bytes.clone());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        prop_assert_eq!(decode_binary("CHAP_C", &format!("0b{b64}")).expect("b64"), bytes.clone());
        prop_assert_eq!(decode_binary("CHAP_C", &format!("0B{}", b64.trim_end_matches('='))).expect("b64"), bytes.clone());
        if bytes[0] < 0x10 {
            let h = hex::encode(&bytes);
            prop_assert_eq!(decode_binary("CHAP_C", &format!("0x{}", &h[1..])).expect("odd"), bytes.clone());
        }
    }

    /// Arbitrary strings never panic the value decoders, and whatever decodes
    /// obeys the length limits.
    #[test]
    fn value_decoders_total(s in prop_oneof![".{0,400}", "(0x|0b)[0-9A-Za-z+/=]{1360,2060}"]) {
        if let Ok(b) = decode_binary("CHAP_C", &s) {
            prop_assert!(!b.is_empty() && b.len() <= chap::MAX_CHALLENGE_LEN);
        }
        let _ = decode_number("CHAP_I", &s);
    }

    #[test]
    fn numbers_round_trip(n in any::<u64>()) {
        prop_assert_eq!(decode_number("CHAP_I", &n.to_string()).expect("dec"), n);
        prop_assert_eq!(decode_number("CHAP_I", &format!("0x{n:x}")).expect("hex"), n);
    }
}

#[test]
fn step_types_are_usable_with_borrowed_and_owned_pairs() {
    // Compile-time check of the accepted input shapes, with a run for each.
    let owned: Vec<(String, String)> = vec![("CHAP_A".into(), "5".into())];
    let borrowed: Vec<(&str, &str)> = vec![("CHAP_A", "5")];
    for input in 0..3 {
        let mut t = Authenticator::new(AuthenticatorConfig::default(), CredentialSet::new());
        let r = match input {
            0 => t.step(&owned),
            1 => t.step(borrowed.clone()),
            _ => t.step([("CHAP_A", "5")]),
        };
        assert!(matches!(r, Ok(Step::Continue(_))));
    }
}
